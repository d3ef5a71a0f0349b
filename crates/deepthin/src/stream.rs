//! The families whose thin and wide networks share the width between blocks (the ResNet and
//! MobileBERT case of the paper): the residual MLP of architecture B (docs/deepthin.md) and a
//! pre-LayerNorm Transformer encoder. Imitation compares the stream directly, so there are no
//! linear pairs and nothing to merge; only the blocks' insides are widened in the teacher.

use crate::model::{Affine, Net};
use tch::{Device, Kind, Tensor};

fn normal(shape: &[i64], std: f64, dev: Device) -> Tensor {
    (Tensor::randn(shape, (Kind::Float, dev)) * std).set_requires_grad(true)
}

fn zeros(shape: &[i64], dev: Device) -> Tensor {
    Tensor::zeros(shape, (Kind::Float, dev)).set_requires_grad(true)
}

fn ones(shape: &[i64], dev: Device) -> Tensor {
    Tensor::ones(shape, (Kind::Float, dev)).set_requires_grad(true)
}

/// An affine map with N(0, std²) weights and a zero bias.
fn affine(inp: i64, out: i64, std: f64, dev: Device) -> Affine {
    Affine {
        w: normal(&[out, inp], std, dev),
        b: zeros(&[out], dev),
    }
}

/// Architecture B: `x₀ = E x`, `x_i = x_{i−1} + V_i ReLU(U_i x_{i−1} + a_i) + c_i`, a linear head.
#[derive(Debug)]
pub struct Residual {
    /// The embedding E (input → stream); part of block 1.
    pub embed: Affine,
    /// U_i (stream → hidden).
    pub up: Vec<Affine>,
    /// V_i (hidden → stream).
    pub down: Vec<Affine>,
    /// The head (stream → classes).
    pub head: Affine,
}

impl Residual {
    /// `depth` blocks of hidden width `hidden` on a `stream`-wide stream; LibTorch's generator
    /// seeded with `seed` first. Initialisation: E ~ N(0, 1/in), U He-normal (2/stream),
    /// V ~ N(0, 1/(hidden·depth)) so that each block adds about 1/depth of the stream's
    /// variance, head ~ N(0, 1/stream), zero biases.
    pub fn new(
        inp: i64,
        stream: i64,
        hidden: i64,
        depth: usize,
        classes: i64,
        dev: Device,
        seed: u64,
    ) -> Residual {
        tch::manual_seed(seed as i64);
        let embed = affine(inp, stream, (1.0 / inp as f64).sqrt(), dev);
        let mut up = Vec::new();
        let mut down = Vec::new();
        for _ in 0..depth {
            up.push(affine(stream, hidden, (2.0 / stream as f64).sqrt(), dev));
            down.push(affine(
                hidden,
                stream,
                (1.0 / (hidden as f64 * depth as f64)).sqrt(),
                dev,
            ));
        }
        let head = affine(stream, classes, (1.0 / stream as f64).sqrt(), dev);
        Residual {
            embed,
            up,
            down,
            head,
        }
    }
}

impl Net for Residual {
    fn depth(&self) -> usize {
        self.up.len()
    }

    fn block(&self, i: usize, h: &Tensor) -> Tensor {
        let x = if i == 0 {
            self.embed.apply(h)
        } else {
            h.shallow_clone()
        };
        let r = self.down[i].apply(&self.up[i].apply(&x).relu());
        x + r
    }

    fn logits(&self, h: &Tensor) -> Tensor {
        self.head.apply(h)
    }

    fn block_params(&self, i: usize) -> Vec<Tensor> {
        let mut p = self.up[i].params();
        p.extend(self.down[i].params());
        if i == 0 {
            p.extend(self.embed.params());
        }
        p
    }

    fn head_params(&self) -> Vec<Tensor> {
        self.head.params()
    }

    fn named(&self) -> Vec<(String, Tensor)> {
        let mut n = vec![
            ("embed.w".to_string(), self.embed.w.shallow_clone()),
            ("embed.b".to_string(), self.embed.b.shallow_clone()),
        ];
        for (i, (u, v)) in self.up.iter().zip(&self.down).enumerate() {
            n.push((format!("{i}.u.w"), u.w.shallow_clone()));
            n.push((format!("{i}.u.b"), u.b.shallow_clone()));
            n.push((format!("{i}.v.w"), v.w.shallow_clone()));
            n.push((format!("{i}.v.b"), v.b.shallow_clone()));
        }
        n.push(("head.w".into(), self.head.w.shallow_clone()));
        n.push(("head.b".into(), self.head.b.shallow_clone()));
        n
    }

    fn width(&self) -> i64 {
        self.embed.w.size()[0]
    }
}

/// One pre-LayerNorm encoder layer: `h + O·Attn(LN₁ h)`, then `+ F₂ GELU(F₁ LN₂ ·)`.
#[derive(Debug)]
pub struct Layer {
    /// LN₁ gain and bias.
    pub ln1: (Tensor, Tensor),
    /// Q, K and V in one map (stream → 3·heads·head_dim).
    pub qkv: Affine,
    /// The output map (heads·head_dim → stream).
    pub o: Affine,
    /// LN₂ gain and bias.
    pub ln2: (Tensor, Tensor),
    /// FFN in (stream → ffn).
    pub f1: Affine,
    /// FFN out (ffn → stream).
    pub f2: Affine,
    /// Heads.
    pub heads: i64,
    /// Width of a head.
    pub head_dim: i64,
}

impl Layer {
    fn new(d: i64, heads: i64, head_dim: i64, ffn: i64, dev: Device) -> Layer {
        let s = 0.02;
        Layer {
            ln1: (ones(&[d], dev), zeros(&[d], dev)),
            qkv: affine(d, 3 * heads * head_dim, s, dev),
            o: affine(heads * head_dim, d, s, dev),
            ln2: (ones(&[d], dev), zeros(&[d], dev)),
            f1: affine(d, ffn, s, dev),
            f2: affine(ffn, d, s, dev),
            heads,
            head_dim,
        }
    }

    fn forward(&self, h: &Tensor) -> Tensor {
        let (n, l, d) = h.size3().expect("N × L × d");
        let a = h.layer_norm([d], Some(&self.ln1.0), Some(&self.ln1.1), 1e-5, false);
        let qkv = self
            .qkv
            .apply(&a)
            .view([n, l, 3, self.heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]);
        let att = Tensor::scaled_dot_product_attention(
            &qkv.get(0),
            &qkv.get(1),
            &qkv.get(2),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([n, l, self.heads * self.head_dim]);
        let h = h + self.o.apply(&att);
        let f = h.layer_norm([d], Some(&self.ln2.0), Some(&self.ln2.1), 1e-5, false);
        let r = self.f2.apply(&self.f1.apply(&f).gelu("none"));
        h + r
    }

    fn params(&self) -> Vec<Tensor> {
        let mut p = vec![self.ln1.0.shallow_clone(), self.ln1.1.shallow_clone()];
        p.extend(self.qkv.params());
        p.extend(self.o.params());
        p.extend([self.ln2.0.shallow_clone(), self.ln2.1.shallow_clone()]);
        p.extend(self.f1.params());
        p.extend(self.f2.params());
        p
    }

    fn named(&self, i: usize) -> Vec<(String, Tensor)> {
        let t = |k: &str, v: &Tensor| (format!("{i}.{k}"), v.shallow_clone());
        vec![
            t("ln1.g", &self.ln1.0),
            t("ln1.b", &self.ln1.1),
            t("qkv.w", &self.qkv.w),
            t("qkv.b", &self.qkv.b),
            t("o.w", &self.o.w),
            t("o.b", &self.o.b),
            t("ln2.g", &self.ln2.0),
            t("ln2.b", &self.ln2.1),
            t("f1.w", &self.f1.w),
            t("f1.b", &self.f1.b),
            t("f2.w", &self.f2.w),
            t("f2.b", &self.f2.b),
        ]
    }
}

/// A BERT-like pre-LayerNorm encoder over token sequences: token and position embeddings (part
/// of block 1), `depth` layers on a shared stream, a final LayerNorm and a per-position linear
/// head (together the head).
#[derive(Debug)]
pub struct Encoder {
    /// Token embeddings, vocabulary × stream.
    pub tok: Tensor,
    /// Position embeddings, length × stream.
    pub pos: Tensor,
    /// The layers.
    pub layers: Vec<Layer>,
    /// The final LayerNorm's gain and bias.
    pub ln: (Tensor, Tensor),
    /// The head (stream → classes).
    pub head: Affine,
}

/// The shape of an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderShape {
    /// Vocabulary of the input tokens.
    pub vocab: i64,
    /// Sequence length.
    pub length: i64,
    /// Stream width.
    pub stream: i64,
    /// Attention heads per layer.
    pub heads: i64,
    /// Width of a head.
    pub head_dim: i64,
    /// FFN width.
    pub ffn: i64,
    /// Layers.
    pub depth: usize,
    /// Output classes per position.
    pub classes: i64,
}

impl Encoder {
    /// BERT's initialisation: N(0, 0.02²) embeddings and weights, zero biases, unit LayerNorm
    /// gains; LibTorch's generator seeded with `seed` first.
    pub fn new(s: EncoderShape, dev: Device, seed: u64) -> Encoder {
        tch::manual_seed(seed as i64);
        let d = s.stream;
        Encoder {
            tok: normal(&[s.vocab, d], 0.02, dev),
            pos: normal(&[s.length, d], 0.02, dev),
            layers: (0..s.depth)
                .map(|_| Layer::new(d, s.heads, s.head_dim, s.ffn, dev))
                .collect(),
            ln: (ones(&[d], dev), zeros(&[d], dev)),
            head: affine(d, s.classes, 0.02, dev),
        }
    }
}

impl Net for Encoder {
    fn depth(&self) -> usize {
        self.layers.len()
    }

    fn block(&self, i: usize, h: &Tensor) -> Tensor {
        if i == 0 {
            let l = h.size()[1];
            let e = Tensor::embedding(&self.tok, h, -1, false, false) + self.pos.narrow(0, 0, l);
            self.layers[0].forward(&e)
        } else {
            self.layers[i].forward(h)
        }
    }

    fn logits(&self, h: &Tensor) -> Tensor {
        let d = self.width();
        self.head
            .apply(&h.layer_norm([d], Some(&self.ln.0), Some(&self.ln.1), 1e-5, false))
    }

    fn block_params(&self, i: usize) -> Vec<Tensor> {
        let mut p = self.layers[i].params();
        if i == 0 {
            p.extend([self.tok.shallow_clone(), self.pos.shallow_clone()]);
        }
        p
    }

    fn head_params(&self) -> Vec<Tensor> {
        let mut p = vec![self.ln.0.shallow_clone(), self.ln.1.shallow_clone()];
        p.extend(self.head.params());
        p
    }

    fn named(&self) -> Vec<(String, Tensor)> {
        let mut n = vec![
            ("tok".to_string(), self.tok.shallow_clone()),
            ("pos".to_string(), self.pos.shallow_clone()),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            n.extend(l.named(i));
        }
        n.push(("head.ln.g".into(), self.ln.0.shallow_clone()));
        n.push(("head.ln.b".into(), self.ln.1.shallow_clone()));
        n.push(("head.w".into(), self.head.w.shallow_clone()));
        n.push(("head.b".into(), self.head.b.shallow_clone()));
        n
    }

    fn width(&self) -> i64 {
        self.tok.size()[1]
    }

    /// The stream's non-affine LayerNorm (imitation in the MobileBERT manner).
    fn feature(&self, h: &Tensor) -> Tensor {
        h.layer_norm([self.width()], None::<Tensor>, None::<Tensor>, 1e-5, false)
    }
}

/// The synthetic sorting task: `n` sequences of `length` tokens drawn uniformly from `vocab`
/// by a generator seeded with `seed`; the target at each position is the sorted sequence's
/// token there. Returns (inputs, targets), both int64 `n × length`.
pub(crate) fn sort_task(n: usize, length: usize, vocab: i64, seed: u64) -> (Tensor, Tensor) {
    let mut rng = reprise_core::data::Rng::new(seed);
    let mut x = Vec::with_capacity(n * length);
    let mut y = Vec::with_capacity(n * length);
    for _ in 0..n {
        let mut s: Vec<i64> = (0..length)
            .map(|_| rng.below(vocab as usize) as i64)
            .collect();
        x.extend_from_slice(&s);
        s.sort_unstable();
        y.extend_from_slice(&s);
    }
    let shape = [n as i64, length as i64];
    (
        Tensor::from_slice(&x).view(shape),
        Tensor::from_slice(&y).view(shape),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sort_task_targets_are_the_sorted_inputs() {
        let (x, y) = sort_task(50, 12, 10, 0);
        assert_eq!(x.size(), vec![50, 12]);
        let (sorted, _) = x.sort(1, false);
        assert!(sorted.equal(&y));
        assert!(x.max().int64_value(&[]) <= 9 && x.min().int64_value(&[]) >= 0);
        // Deterministic in the seed.
        assert!(sort_task(50, 12, 10, 0).0.equal(&x));
        assert!(!sort_task(50, 12, 10, 1).0.equal(&x));
    }

    #[test]
    fn encoder_attention_matches_a_hand_written_one() {
        let dev = Device::Cpu;
        let l = Layer::new(8, 2, 3, 16, dev);
        tch::no_grad(|| {
            let mut w = l.qkv.w.shallow_clone();
            w.copy_(&(Tensor::randn([18, 8], (Kind::Float, dev)) * 0.5));
        });
        let h = Tensor::randn([2, 5, 8], (Kind::Float, dev));
        let got = tch::no_grad(|| l.forward(&h));
        let want = tch::no_grad(|| {
            let a = h.layer_norm([8], Some(&l.ln1.0), Some(&l.ln1.1), 1e-5, false);
            let qkv = l.qkv.apply(&a);
            let mut heads = Vec::new();
            for k in 0..2 {
                let q = qkv.narrow(2, k * 3, 3);
                let kk = qkv.narrow(2, 6 + k * 3, 3);
                let v = qkv.narrow(2, 12 + k * 3, 3);
                let s = (q.matmul(&kk.transpose(1, 2)) / 3f64.sqrt()).softmax(-1, Kind::Float);
                heads.push(s.matmul(&v));
            }
            let h1 = &h + l.o.apply(&Tensor::cat(&heads, 2));
            let f = h1.layer_norm([8], Some(&l.ln2.0), Some(&l.ln2.1), 1e-5, false);
            &h1 + l.f2.apply(&l.f1.apply(&f).gelu("none"))
        });
        let e = (got - want).abs().max().double_value(&[]);
        assert!(e < 1e-5, "{e}");
    }

    #[test]
    fn residual_blocks_keep_the_stream_width_and_the_embedding_trains_with_block_one() {
        let dev = Device::Cpu;
        let net = Residual::new(20, 6, 4, 3, 5, dev, 0);
        let x = Tensor::rand([7, 20], (Kind::Float, dev));
        let b = net.forward_blocks(&x);
        assert!(b.iter().all(|t| t.size() == vec![7, 6]));
        assert_eq!(net.forward(&x).size(), vec![7, 5]);
        assert_eq!(net.block_params(0).len(), 6);
        assert_eq!(net.block_params(1).len(), 4);
        let n: i64 = net.params().iter().map(Tensor::numel).sum::<usize>() as i64;
        assert_eq!(n, 20 * 6 + 6 + 3 * (6 * 4 + 4 + 4 * 6 + 6) + 6 * 5 + 5);
    }

    #[test]
    fn named_tensors_round_trip_and_a_copied_head_reads_the_shared_stream() {
        let dev = Device::Cpu;
        let shape = |heads, ffn| EncoderShape {
            vocab: 10,
            length: 12,
            stream: 8,
            heads,
            head_dim: 4,
            ffn,
            depth: 2,
            classes: 10,
        };
        let wide = Encoder::new(shape(2, 32), dev, 1);
        let (x, _) = sort_task(6, 12, 10, 3);
        // Saved and loaded into a differently seeded twin: the same logits.
        let twin = Encoder::new(shape(2, 32), dev, 2);
        let saved: Vec<(String, Tensor)> = wide
            .named()
            .into_iter()
            .map(|(k, t)| (k, t.detach().copy()))
            .collect();
        crate::model::load_named(&twin, saved).unwrap();
        let (a, b) = tch::no_grad(|| (wide.forward(&x), twin.forward(&x)));
        assert!(a.equal(&b));
        // A file for another shape is refused.
        let thin = Encoder::new(shape(1, 4), dev, 3);
        assert!(crate::model::load_named(&thin, wide.named()).is_err());
        // The teacher's head (final LayerNorm and linear map) copied into the thin network
        // gives the teacher's logits on the teacher's stream.
        let n = crate::model::copy_named(&thin, &wide, "head.").unwrap();
        assert_eq!(n, 4);
        let h = tch::no_grad(|| wide.forward_blocks(&x).pop().unwrap());
        let (zt, zs) = tch::no_grad(|| (wide.logits(&h), thin.logits(&h)));
        assert!(zt.equal(&zs));
    }
}
