//! The frozen helper networks: the perceptual-loss network (VGG-mini trained in the project, a
//! random-weight VGG-mini, or ImageNet VGG-19 from a file) and the small-scale evaluation
//! networks (digit classifier, scene segmenter, scene feature net; docs/tsit.md), each a different architecture
//! and seed from the perceptual net. All are trained here, briefly, then frozen; a trained
//! network is cached under its recipe's key so the runs of a sweep train it once.

use reprise_core::data::Rng;
use reprise_core::optim::{Optimizer, Rule};
use reprise_core::{Error, Result};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A 3×3 conv (pad 1) initialised as PyTorch's default.
fn conv3(p: nn::Path<'_>, i: i64, o: i64) -> nn::Conv2D {
    reprise_core::nn::conv2d(
        p,
        i,
        o,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    )
}

/// VGG-19's convolutions up to relu5_1: (in, out, torchvision index in `features`).
const VGG19: [(i64, i64, usize); 13] = [
    (3, 64, 0),
    (64, 64, 2),
    (64, 128, 5),
    (128, 128, 7),
    (128, 256, 10),
    (256, 256, 12),
    (256, 256, 14),
    (256, 256, 16),
    (256, 512, 19),
    (512, 512, 21),
    (512, 512, 23),
    (512, 512, 25),
    (512, 512, 28),
];

/// A frozen feature network for the perceptual loss: features at several depths, weighted.
#[derive(Debug)]
pub struct Perceptual {
    /// Its variables (never trained by the GAN).
    pub vs: nn::VarStore,
    convs: Vec<nn::Conv2D>,
    /// After which conv a 2× max-pool follows.
    pools: Vec<bool>,
    /// After which conv (0-based) a feature is taken, and its weight.
    taps: Vec<(usize, f64)>,
    head: Option<nn::Linear>,
}

impl Perceptual {
    /// VGG-mini: conv16-16-pool-32-32-pool-64-64-pool-128 (3×3, ReLU), features after the
    /// 2nd, 4th, 6th and 7th ReLU with weights 1/8, 1/4, 1/2, 1; a global-pool + fc head of
    /// `classes` outputs for its training.
    pub(crate) fn vgg_mini(device: Device, classes: i64) -> Perceptual {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let chans = [16, 16, 32, 32, 64, 64, 128];
        let mut convs = Vec::new();
        let mut c = 3;
        for (i, &o) in chans.iter().enumerate() {
            convs.push(conv3(&root / format!("conv{i}"), c, o));
            c = o;
        }
        let head = Some(reprise_core::nn::linear(&root / "head", 128, classes));
        Perceptual {
            vs,
            convs,
            pools: vec![false, true, false, true, false, true, false],
            taps: vec![(1, 0.125), (3, 0.25), (5, 0.5), (6, 1.0)],
            head,
        }
    }

    /// VGG-mini with Kaiming-normal (fan-in) weights and zero biases from `seed`.
    pub(crate) fn vgg_mini_random(device: Device, seed: u64) -> Perceptual {
        tch::manual_seed(seed as i64);
        let p = Perceptual::vgg_mini(device, 1);
        tch::no_grad(|| {
            for c in &p.convs {
                let s = c.ws.size();
                let fan_in = (s[1] * s[2] * s[3]) as f64;
                c.ws.shallow_clone()
                    .copy_(&(Tensor::randn(&s, (Kind::Float, device)) * (2.0 / fan_in).sqrt()));
                if let Some(b) = &c.bs {
                    let _ = b.shallow_clone().zero_();
                }
            }
        });
        p
    }

    /// VGG-19's layout up to relu5_1 (torchvision's `features.0` .. `features.28` convs) with
    /// PyTorch-default random weights: features at relu1_1 .. relu5_1 with weights 1/32, 1/16,
    /// 1/8, 1/4, 1; input in [−1, 1] as the official loss feeds it. [`Perceptual::vgg19`]
    /// loads ImageNet weights into it.
    pub fn vgg19_layout(device: Device) -> Perceptual {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let convs = VGG19
            .iter()
            .map(|&(i, o, idx)| conv3(&root / format!("features{idx}"), i, o))
            .collect();
        Perceptual {
            vs,
            convs,
            pools: vec![
                false, true, false, true, false, false, false, true, false, false, false, true,
                false,
            ],
            taps: vec![
                (0, 1.0 / 32.0),
                (2, 1.0 / 16.0),
                (4, 1.0 / 8.0),
                (8, 0.25),
                (12, 1.0),
            ],
            head: None,
        }
    }

    /// ImageNet VGG-19 up to relu5_1 from a safetensors file with torchvision's names
    /// (`features.{0,2,5,7,10,12,14,16,19,21,23,25,28}.weight` and `.bias`), frozen.
    pub fn vgg19(device: Device, path: &Path) -> Result<Perceptual> {
        let mut p = Perceptual::vgg19_layout(device);
        let named: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        for (c, &(_, _, idx)) in p.convs.iter().zip(VGG19.iter()) {
            for (what, dst) in [("weight", &c.ws), ("bias", c.bs.as_ref().expect("bias"))] {
                let key = format!("features.{idx}.{what}");
                let t = named
                    .get(&key)
                    .ok_or_else(|| Error::Data(format!("{}: no tensor `{key}`", path.display())))?;
                if t.size() != dst.size() {
                    return Err(Error::Data(format!(
                        "{}: `{key}` has shape {:?}, VGG-19 wants {:?}",
                        path.display(),
                        t.size(),
                        dst.size()
                    )));
                }
                tch::no_grad(|| dst.shallow_clone().copy_(t));
            }
        }
        p.vs.freeze();
        Ok(p)
    }

    /// The tapped features of `x`.
    pub fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let last = self.taps.last().map_or(0, |t| t.0);
        let mut h = x.shallow_clone();
        let mut out = Vec::new();
        let mut t = 0;
        for (i, c) in self.convs.iter().enumerate().take(last + 1) {
            h = c.forward(&h).relu();
            if t < self.taps.len() && self.taps[t].0 == i {
                out.push(h.shallow_clone());
                t += 1;
            }
            if self.pools[i] && i < last {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        out
    }

    /// Σ wᵢ·mean|Φᵢ(a) − Φᵢ(b)|, the target `b` without gradient.
    pub fn loss(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let fb = tch::no_grad(|| self.features(b));
        let fa = self.features(a);
        let mut l = Tensor::zeros([], (Kind::Float, a.device()));
        for ((x, y), (_, w)) in fa.iter().zip(&fb).zip(&self.taps) {
            l += (x - y).abs().mean(Kind::Float) * *w;
        }
        l
    }

    /// Classifier logits through the training head (VGG-mini only).
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let f = self.features(x);
        let h = f
            .last()
            .expect("taps")
            .mean_dim([2, 3].as_slice(), false, Kind::Float);
        self.head
            .as_ref()
            .expect("a trainable VGG-mini")
            .forward(&h)
    }
}

/// The evaluation digit classifier: conv32-pool-conv64-pool-fc128-fc10, ReLU, no BN; its
/// 128-d penultimate layer gives the FIDp features.
#[derive(Debug)]
pub struct DigitNet {
    /// Its variables.
    pub vs: nn::VarStore,
    c1: nn::Conv2D,
    c2: nn::Conv2D,
    f1: nn::Linear,
    f2: nn::Linear,
}

impl DigitNet {
    /// For `size × size` RGB digits.
    pub fn new(device: Device, size: i64) -> DigitNet {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let q = size / 4;
        DigitNet {
            c1: conv3(&r / "c1", 3, 32),
            c2: conv3(&r / "c2", 32, 64),
            f1: reprise_core::nn::linear(&r / "f1", 64 * q * q, 128),
            f2: reprise_core::nn::linear(&r / "f2", 128, 10),
            vs,
        }
    }

    /// The 128-d penultimate features (post-ReLU).
    pub fn features(&self, x: &Tensor) -> Tensor {
        let h = self.c1.forward(x).relu().max_pool2d_default(2);
        let h = self.c2.forward(&h).relu().max_pool2d_default(2);
        self.f1.forward(&h.flatten(1, -1)).relu()
    }

    /// Class logits.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.f2.forward(&self.features(x))
    }
}

/// The scene segmenter: a 2-level U-Net-lite of width 16 (two 3×3 convs per level, max-pool
/// down, nearest up with skip concatenation), 6 class logits per pixel.
#[derive(Debug)]
pub struct Segmenter {
    /// Its variables.
    pub vs: nn::VarStore,
    convs: Vec<nn::Conv2D>,
    out: nn::Conv2D,
}

impl Segmenter {
    /// A segmenter for `classes` classes.
    pub fn new(device: Device, classes: i64) -> Segmenter {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let w = 16;
        let io = [
            (3, w),
            (w, w),
            (w, 2 * w),
            (2 * w, 2 * w),
            (2 * w, 4 * w),
            (4 * w, 4 * w),
            (6 * w, 2 * w),
            (2 * w, 2 * w),
            (3 * w, w),
            (w, w),
        ];
        let convs = io
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| conv3(&r / format!("c{i}"), a, b))
            .collect();
        let out = reprise_core::nn::conv2d(&r / "out", w, classes, 1, Default::default());
        Segmenter { vs, convs, out }
    }

    /// Per-pixel logits `N×K×S×S`.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let c = |i: usize, h: &Tensor| self.convs[i].forward(h).relu();
        let e1 = c(1, &c(0, x));
        let e2 = c(3, &c(2, &e1.max_pool2d_default(2)));
        let b = c(5, &c(4, &e2.max_pool2d_default(2)));
        let d2 = c(
            7,
            &c(6, &Tensor::cat(&[crate::model::up_nearest(&b), e2], 1)),
        );
        let d1 = c(
            9,
            &c(8, &Tensor::cat(&[crate::model::up_nearest(&d2), e1], 1)),
        );
        self.out.forward(&d1)
    }
}

/// The scene feature net: a multi-label class-presence CNN (conv16-pool-conv32-pool-conv64-
/// pool, fc64, fc K) whose 64-d penultimate layer gives the scene FIDp features.
#[derive(Debug)]
pub struct SceneNet {
    /// Its variables.
    pub vs: nn::VarStore,
    convs: Vec<nn::Conv2D>,
    f1: nn::Linear,
    f2: nn::Linear,
}

impl SceneNet {
    /// For `size × size` renders and `classes` classes.
    pub fn new(device: Device, size: i64, classes: i64) -> SceneNet {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let q = size / 8;
        SceneNet {
            convs: vec![
                conv3(&r / "c0", 3, 16),
                conv3(&r / "c1", 16, 32),
                conv3(&r / "c2", 32, 64),
            ],
            f1: reprise_core::nn::linear(&r / "f1", 64 * q * q, 64),
            f2: reprise_core::nn::linear(&r / "f2", 64, classes),
            vs,
        }
    }

    /// The 64-d penultimate features (post-ReLU).
    pub fn features(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = c.forward(&h).relu().max_pool2d_default(2);
        }
        self.f1.forward(&h.flatten(1, -1)).relu()
    }

    /// Class-presence logits.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.f2.forward(&self.features(x))
    }
}

/// Draws a helper net's batch `(x, targets)` for example indices.
pub type BatchFn<'a> = dyn Fn(&[i64], &mut Rng) -> (Tensor, Tensor) + 'a;

/// What a helper network's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Class labels (cross-entropy).
    Class,
    /// Multi-hot presence (binary cross-entropy).
    Presence,
    /// Per-pixel labels (cross-entropy per pixel).
    Pixels,
}

/// Trains `logits` on batches `batch(indices, rng) -> (x, targets)` for `epochs`
/// over `n` examples with Adam (lr 1e-3, batch 64); the data order is seeded by `seed`.
pub(crate) fn train_classifier(
    vs: &nn::VarStore,
    n: usize,
    epochs: f64,
    seed: u64,
    logits: &dyn Fn(&Tensor) -> Tensor,
    batch: &BatchFn<'_>,
    kind: Targets,
) {
    let mut opt = Optimizer::for_vars(Rule::adam(), vs, 0.0);
    let mut rng = Rng::new(seed);
    let steps = ((n as f64 / 64.0).ceil() * epochs).ceil() as usize;
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut at = n;
    for _ in 0..steps {
        if at + 64 > n {
            rng.shuffle(&mut order);
            at = 0;
        }
        let idx = &order[at..at + 64.min(n)];
        at += 64;
        let (x, t) = batch(idx, &mut rng);
        let out = logits(&x);
        let loss = match kind {
            Targets::Class => out.cross_entropy_for_logits(&t),
            Targets::Presence => {
                out.binary_cross_entropy_with_logits::<Tensor>(&t, None, None, tch::Reduction::Mean)
            }
            Targets::Pixels => {
                out.cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Mean, -100, 0.0)
            }
        };
        opt.zero_grad();
        loss.backward();
        opt.step(1e-3)
            .expect("an optimizer of one process steps without a collective");
    }
}

/// Row-batched evaluation under `no_grad`.
pub fn batched(x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = x.size()[0];
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            let k = 250.min(n - i);
            out.push(f(&x.narrow(0, i, k)));
            i += k;
        }
        Tensor::cat(&out, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg_mini_taps_and_shapes() {
        let p = Perceptual::vgg_mini(Device::Cpu, 10);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let f = p.features(&x);
        let sizes: Vec<Vec<i64>> = f.iter().map(|t| t.size()).collect();
        assert_eq!(
            sizes,
            vec![
                vec![2, 16, 32, 32],
                vec![2, 32, 16, 16],
                vec![2, 64, 8, 8],
                vec![2, 128, 4, 4]
            ]
        );
        // ≈ 0.15 M parameters without the head (small-scale perceptual net).
        let n: i64 = p.convs.iter().map(|c| c.ws.numel() as i64 + 128).sum();
        assert!((n as f64 / 1e6 - 0.15).abs() < 0.02, "{n}");
        assert!(p.loss(&x, &x).double_value(&[]) == 0.0);
        assert_eq!(p.logits(&x).size(), vec![2, 10]);
    }

    #[test]
    fn vgg19_loads_torchvision_names_and_checks_shapes() {
        let src = Perceptual::vgg19_layout(Device::Cpu);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("vgg19.safetensors");
        let mut named = Vec::new();
        for (c, &(_, _, idx)) in src.convs.iter().zip(VGG19.iter()) {
            named.push((format!("features.{idx}.weight"), c.ws.copy()));
            named.push((
                format!("features.{idx}.bias"),
                c.bs.as_ref().unwrap().copy(),
            ));
        }
        Tensor::write_safetensors(&named, &f).unwrap();
        let p = Perceptual::vgg19(Device::Cpu, &f).unwrap();
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (a, b) = (src.features(&x), p.features(&x));
        assert_eq!(a.len(), 5);
        assert_eq!(b[4].size(), vec![1, 512, 2, 2]);
        assert!(a.iter().zip(&b).all(|(u, v)| u.equal(v)));
        // 12.9 M parameters used (official models/networks/architecture.py, VGG19: up to relu5_1).
        let n: i64 = p.vs.variables().values().map(|t| t.numel() as i64).sum();
        assert!((n as f64 / 1e6 - 12.94).abs() < 0.05, "{n}");
        named.pop();
        Tensor::write_safetensors(&named, &f).unwrap();
        let e = Perceptual::vgg19(Device::Cpu, &f).unwrap_err().to_string();
        assert!(e.contains("features.28.bias"), "{e}");
    }

    #[test]
    fn eval_nets_shapes() {
        let d = DigitNet::new(Device::Cpu, 32);
        let x = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(d.features(&x).size(), vec![3, 128]);
        let s = Segmenter::new(Device::Cpu, 6);
        assert_eq!(s.logits(&x).size(), vec![3, 6, 32, 32]);
        let f = SceneNet::new(Device::Cpu, 32, 6);
        assert_eq!(f.features(&x).size(), vec![3, 64]);
    }
}
