//! deepthin has no official code: its merge and imitation loss are checked against the
//! paper's equations evaluated directly in float64 (plain loops, no LibTorch): the merge of
//! Sec. 3.3, A'_{i+1} = A_{i+1} G_{i,2} G_{i,1}, b'_{i+1} = b_{i+1} + A_{i+1}(G_{i,2} c_{i,1} +
//! c_{i,2}), W'_head = W_head G_{n,1}, b'_head = b_head + W_head c_{n,1}; and the imitation loss
//! of block i, L_i = 1/(N·D_i) Σ_x ‖B_(:i)(x) − S̄_i(S̄_(:i−1)(x))‖², with its gradient (central
//! differences in float64) and the first Adam step on it. The float32 results agree to 1e-5
//! relative.

use deepthin::model::{merge, Affine, Glue, Mlp, Net, Widened};
use deepthin::train::{block_optimizer, imitation_step};
use reprise_core::fixture::assert_close;
use tch::{Device, Kind, Tensor};

type M = Vec<Vec<f64>>;

fn mat(t: &Tensor) -> M {
    let s = t.size();
    let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    v.chunks(s[1] as usize).map(<[f64]>::to_vec).collect()
}

fn vecf(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

fn tensor(m: &M) -> Tensor {
    let flat: Vec<f64> = m.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([m.len() as i64, m[0].len() as i64])
}

fn mul(a: &M, b: &M) -> M {
    (0..a.len())
        .map(|i| {
            (0..b[0].len())
                .map(|j| (0..b.len()).map(|k| a[i][k] * b[k][j]).sum())
                .collect()
        })
        .collect()
}

fn mulv(a: &M, v: &[f64]) -> Vec<f64> {
    a.iter()
        .map(|r| r.iter().zip(v).map(|(p, q)| p * q).sum())
        .collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(p, q)| p + q).collect()
}

/// An affine map on each row: W h + b, optionally through ReLU.
fn affine(w: &M, b: &[f64], h: &M, relu: bool) -> M {
    h.iter()
        .map(|r| {
            add(&mulv(w, r), b)
                .into_iter()
                .map(|v| if relu { v.max(0.0) } else { v })
                .collect()
        })
        .collect()
}

struct Plain {
    w: M,
    b: Vec<f64>,
}

fn plain(a: &Affine) -> Plain {
    Plain {
        w: mat(&a.w),
        b: vecf(&a.b),
    }
}

fn setup() -> (Mlp, Mlp, Glue, Tensor) {
    let dev = Device::Cpu;
    let thin = Mlp::new(5, 3, 3, 4, dev, 0);
    let teacher = Mlp::new(5, 7, 3, 4, dev, 1);
    tch::manual_seed(2);
    let glue = Glue::random(3, 3, 7, dev);
    let x = Tensor::rand([6, 5], (Kind::Float, dev)) * 2.0 - 1.0;
    (thin, teacher, glue, x)
}

#[test]
fn the_merge_follows_its_equations_in_float64() {
    let (thin, teacher, glue, _) = setup();
    let merged = merge(&thin, &glue, &teacher.head);
    for i in 1..3 {
        let a = plain(&thin.blocks[i]);
        let (g1, g2) = (plain(&glue.up[i - 1]), plain(&glue.down[i - 1]));
        let w = mul(&a.w, &mul(&g2.w, &g1.w));
        let b = add(&a.b, &mulv(&a.w, &add(&mulv(&g2.w, &g1.b), &g2.b)));
        assert_close(&format!("A'_{i}"), &merged.blocks[i].w, &tensor(&w), 1e-5);
        assert_close(
            &format!("b'_{i}"),
            &merged.blocks[i].b,
            &Tensor::from_slice(&b),
            1e-5,
        );
    }
    let (h, g) = (plain(&teacher.head), plain(&glue.up[2]));
    assert_close("W'_head", &merged.head.w, &tensor(&mul(&h.w, &g.w)), 1e-5);
    let bh = add(&h.b, &mulv(&h.w, &g.b));
    assert_close("b'_head", &merged.head.b, &Tensor::from_slice(&bh), 1e-5);
    assert!(
        merged.blocks[0].w.equal(&thin.blocks[0].w),
        "the first block is unchanged"
    );
}

/// L_i in float64 for block `i` of S̄ with its parameters (thin block, up map, down map) given
/// as plain matrices, on the widened input `u` against the teacher's block output `target`.
fn loss64(i: usize, p: &[Plain], u: &M, target: &M) -> f64 {
    let (blk, up) = (&p[0], &p[1]);
    let v = if i == 0 {
        u.clone()
    } else {
        affine(&p[2].w, &p[2].b, u, false)
    };
    let s = affine(&up.w, &up.b, &affine(&blk.w, &blk.b, &v, true), false);
    let (n, d) = (s.len(), s[0].len());
    let sq: f64 = s
        .iter()
        .zip(target)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)))
        .sum();
    sq / (n * d) as f64
}

#[test]
fn the_imitation_loss_its_gradient_and_adam_step_follow_the_equations() {
    let (thin, teacher, glue, x) = setup();
    let i = 1;
    let w = Widened {
        thin: &thin,
        glue: Some(&glue),
    };
    let (u, target) = tch::no_grad(|| {
        (
            w.forward_blocks(&x)[i - 1].copy(),
            teacher.forward_blocks(&x)[i].copy(),
        )
    });
    let (u64_, t64) = (mat(&u), mat(&target));
    // The parameters block i trains, in block_params' order: A_i, b_i, G_{i,1}, c_{i,1},
    // G_{i−1,2}, c_{i−1,2}.
    let params = w.block_params(i);
    assert_eq!(params.len(), 6);
    let before: Vec<Tensor> = params.iter().map(|t| t.detach().copy()).collect();
    let as_plain = |ts: &[Tensor]| -> Vec<Plain> {
        (0..3)
            .map(|k| Plain {
                w: mat(&ts[2 * k]),
                b: vecf(&ts[2 * k + 1]),
            })
            .collect()
    };
    let p64 = as_plain(&before);
    let want = loss64(i, &p64, &u64_, &t64);
    let lr = 1e-3;
    let mut opt = block_optimizer(&w, i);
    let got = imitation_step(&w, i, &mut opt, &u, &target, lr).unwrap();
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "L_i {got} vs float64 {want}"
    );
    // Gradients by central differences of the float64 loss.
    let h = 1e-6;
    for (k, t) in params.iter().enumerate() {
        let base = Vec::<f64>::try_from(before[k].to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let fd: Vec<f64> = (0..base.len())
            .map(|j| {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[j] += d;
                    let mut ts: Vec<Tensor> =
                        before.iter().map(|b| b.to_kind(Kind::Double)).collect();
                    ts[k] = Tensor::from_slice(&v).view(before[k].size().as_slice());
                    loss64(i, &as_plain(&ts), &u64_, &t64)
                };
                (at(h) - at(-h)) / (2.0 * h)
            })
            .collect();
        let fd = Tensor::from_slice(&fd).view(before[k].size().as_slice());
        assert_close(&format!("∂L/∂param {k}"), &t.grad(), &fd, 1e-5);
        // Adam's first step: m̂ = g, v̂ = g², so p' = p − lr·g/(|g| + 1e-8).
        let g = fd.to_kind(Kind::Double);
        let stepped = before[k].to_kind(Kind::Double) - &g / (g.abs() + 1e-8) * lr;
        assert_close(&format!("param {k} after Adam"), t, &stepped, 1e-5);
    }
}
