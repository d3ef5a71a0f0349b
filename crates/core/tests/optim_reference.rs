//! reprise's optimizers against PyTorch 2.11's on a fixed problem: the parameters after 10
//! steps agree to 1e-6. The reference numbers come from `scripts/make_optim_fixture.py`.

use reprise_core::optim::{Group, Optimizer, Rule, Schedule};
use serde_json::Value;
use tch::{Kind, Tensor};

fn problem() -> (Tensor, Tensor, Tensor, Tensor) {
    let grid = |r: usize, c: usize, f: &dyn Fn(f64, f64) -> f64| -> Tensor {
        let v: Vec<f32> = (0..r * c)
            .map(|k| f((k / c) as f64, (k % c) as f64) as f32)
            .collect();
        Tensor::from_slice(&v).view([r as i64, c as i64])
    };
    let p0 = grid(3, 4, &|i, j| (4.0 * i + j).sin());
    let q0 = Tensor::from_slice(
        &(0..5)
            .map(|k| (3.0 * k as f64).cos() as f32)
            .collect::<Vec<_>>(),
    );
    let a = grid(3, 4, &|i, j| 1.0 + 0.5 * (i + 2.0 * j).cos());
    let b = grid(3, 4, &|i, j| 0.3 * (i - j));
    (p0, q0, a, b)
}

fn loss(p: &Tensor, q: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    let k = Kind::Float;
    (a * p - b).square().sum(k)
        + p.pow_tensor_scalar(4).sum(k) * 0.01
        + (q - 0.5).square().sum(k)
        + p.sum(k) * q.sum(k) * 0.1
}

#[test]
fn trajectories_match_pytorch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/optim_reference.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let steps = fixture["steps"].as_u64().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    tch::set_num_threads(1);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let f = |k: &str| c[k].as_f64();
        let rule = if c["opt"] == "sgd" {
            Rule::Sgd {
                momentum: f("momentum").unwrap(),
                dampening: f("dampening").unwrap(),
                nesterov: c["nesterov"].as_bool().unwrap(),
            }
        } else {
            let betas = c.get("betas").and_then(Value::as_array);
            Rule::Adam {
                beta1: betas.map_or(0.9, |b| b[0].as_f64().unwrap()),
                beta2: betas.map_or(0.999, |b| b[1].as_f64().unwrap()),
                eps: f("eps").unwrap_or(1e-8),
                decoupled: c["opt"] == "adamw",
            }
        };
        let (p0, q0, a, b) = problem();
        let p = p0.set_requires_grad(true);
        let q = q0.set_requires_grad(true);
        let wd = f("wd").unwrap();
        let mut opt = Optimizer::new(
            rule,
            vec![
                Group {
                    params: vec![("p".into(), p.shallow_clone())],
                    lr_mult: 1.0,
                    weight_decay: wd,
                },
                Group {
                    params: vec![("q".into(), q.shallow_clone())],
                    lr_mult: f("q_mult").unwrap_or(1.0),
                    weight_decay: wd,
                },
            ],
        );
        let warmup = c.get("warmup").and_then(Value::as_u64).unwrap_or(0);
        let lr = f("lr").unwrap();
        for t in 0..steps {
            opt.zero_grad();
            loss(&p, &q, &a, &b).backward();
            opt.step(Schedule::Constant.lr(lr, t, warmup)).unwrap();
        }
        for (k, t) in [("p", &p), ("q", &q)] {
            let got = Vec::<f32>::try_from(t.detach().view([-1])).unwrap();
            let want: Vec<f64> = c[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0.0, f64::max);
            eprintln!("{name}.{k}: max |reprise − PyTorch| = {worst:e}");
            assert!(
                worst <= 1e-6,
                "{name}.{k}: max |reprise − PyTorch| = {worst:e}"
            );
        }
    }
}
