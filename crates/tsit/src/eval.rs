//! Small-scale metrics (docs/tsit.md), computed in float64 on outputs in `[−1, 1]` mapped to
//! `[0, 1]`: FIDp on a frozen evaluation network's features, content accuracy, segmentation
//! score, StyleErr, HistDist, L1 and PSNR; and the training-free references.

use crate::data::TestSet;
use crate::model::{GenInput, Generator, Mode};
use crate::nets::{batched, DigitNet, SceneNet, Segmenter};
use reprise_core::metrics;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Named metric values.
pub type Metrics = BTreeMap<String, f64>;

fn unit(x: &Tensor) -> Tensor {
    ((x.to_kind(Kind::Double) + 1.0) / 2.0).clamp(0.0, 1.0)
}

/// StyleErr: mean over channels of |μ_c(ŷ) − μ_c(y)| + |σ_c(ŷ) − σ_c(y)| (population σ), on
/// `[0, 1]` images, averaged over the set.
pub fn style_err(out: &Tensor, oracle: &Tensor) -> f64 {
    let stats = |t: &Tensor| {
        let u = unit(t);
        let (v, m) = u.var_mean_dim([2, 3].as_slice(), false, false);
        (m, v.sqrt())
    };
    let (m1, s1) = stats(out);
    let (m2, s2) = stats(oracle);
    ((m1 - m2).abs() + (s1 - s2).abs())
        .mean(Kind::Double)
        .double_value(&[])
}

/// HistDist: per channel 8 bins on `[0, 1]` (v → min(⌊8v⌋, 7)), normalised counts,
/// ½·Σ|h − h'|, averaged over channels and images.
pub fn hist_dist(out: &Tensor, oracle: &Tensor) -> f64 {
    let hist = |t: &Tensor| {
        let u = unit(t);
        let s = u.size();
        let bins = (u * 8.0).floor().clamp(0.0, 7.0).to_kind(Kind::Int64);
        bins.one_hot(8).to_kind(Kind::Double).sum_dim_intlist(
            [2, 3].as_slice(),
            false,
            Kind::Double,
        ) / (s[2] * s[3]) as f64
    };
    ((hist(out) - hist(oracle))
        .abs()
        .sum_dim_intlist(-1, false, Kind::Double)
        * 0.5)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Mean absolute difference on `[0, 1]`.
pub fn l1(out: &Tensor, oracle: &Tensor) -> f64 {
    (unit(out) - unit(oracle))
        .abs()
        .mean(Kind::Double)
        .double_value(&[])
}

/// Per-channel image-space AdaIN of each content image to its style image (population
/// statistics on `[0, 1]`, σ floored at 1e-5), clipped, back in `[−1, 1]`: the `pixAdaIN`
/// reference.
pub(crate) fn pix_adain(content: &Tensor, style: &Tensor) -> Tensor {
    let stats = |t: &Tensor| {
        let (v, m) = unit(t).var_mean_dim([2, 3].as_slice(), false, true);
        (m, v.sqrt().clamp_min(1e-5))
    };
    let (mc, sc) = stats(content);
    let (ms, ss) = stats(style);
    let y = ((unit(content) - mc) / sc * ss + ms).clamp(0.0, 1.0);
    (y * 2.0 - 1.0).to_kind(Kind::Float)
}

/// The frozen networks a task is evaluated with.
pub enum Judges {
    /// Digits: the classifier (content accuracy, FIDp features).
    Digits(DigitNet),
    /// Scenes: the segmenter (mIoU, pixel accuracy) and the feature net (FIDp features).
    Scenes(Segmenter, SceneNet),
}

impl Judges {
    fn features(&self, x: &Tensor) -> Tensor {
        match self {
            Judges::Digits(d) => batched(x, &|b| d.features(b)),
            Judges::Scenes(_, f) => batched(x, &|b| f.features(b)),
        }
    }
}

/// Evaluates output sets against a task's fixed test set.
pub struct Evaluator {
    /// The networks.
    pub judges: Judges,
    /// The test set.
    pub test: TestSet,
    oracle_feats: Tensor,
    /// FIDp between the oracle (or real) set and a second real set: the floor.
    pub floor: f64,
}

impl Evaluator {
    /// Prepares the reference features and the floor.
    pub fn new(judges: Judges, test: TestSet) -> Evaluator {
        let oracle_feats = judges.features(&test.oracle);
        let floor = metrics::frechet_distance(&oracle_feats, &judges.features(&test.floor_set));
        Evaluator {
            judges,
            test,
            oracle_feats,
            floor,
        }
    }

    /// Every metric of an output set (aligned with the test set).
    pub fn metrics(&self, out: &Tensor) -> Metrics {
        let mut m = Metrics::new();
        let t = &self.test;
        m.insert(
            "fidp".into(),
            metrics::frechet_distance(&self.judges.features(out), &self.oracle_feats),
        );
        m.insert("style_err".into(), style_err(out, &t.oracle));
        m.insert("hist_dist".into(), hist_dist(out, &t.oracle));
        m.insert("l1".into(), l1(out, &t.oracle));
        m.insert("psnr".into(), metrics::psnr(&unit(out), &unit(&t.oracle)));
        match &self.judges {
            Judges::Digits(d) => {
                let logits = batched(out, &|b| d.logits(b));
                m.insert("content_acc".into(), metrics::accuracy(&logits, &t.labels));
            }
            Judges::Scenes(s, _) => {
                let pred = batched(out, &|b| s.logits(b).argmax(1, false));
                let (acc, miou) = metrics::pixel_acc_miou(&pred, &t.labels, 6);
                m.insert("seg_acc".into(), acc);
                m.insert("seg_miou".into(), miou);
            }
        }
        m
    }

    /// The outputs of a generator on the whole test set (the fixed per-pair noise; running BN
    /// statistics unless `mode` asks for batch statistics).
    pub(crate) fn generate(&self, g: &dyn Generator, vae: bool, mode: Mode) -> Tensor {
        let t = &self.test;
        let n = t.content.size()[0];
        let dev = g.vs().device();
        tch::no_grad(|| {
            let mut out = Vec::new();
            let mut i = 0;
            while i < n {
                let k = 100.min(n - i);
                let c = t.content.narrow(0, i, k).to_device(dev);
                let s = t.style.as_ref().map(|s| s.narrow(0, i, k).to_device(dev));
                let real = t.oracle.narrow(0, i, k).to_device(dev);
                let z = if vae {
                    // ε for z = μ + σ·ε from E(ground truth): fixed per map, like the noise.
                    tch::manual_seed(2021 + i);
                    Some(Tensor::randn(
                        [k, g.latent_dim().unwrap_or(1)],
                        (Kind::Float, dev),
                    ))
                } else {
                    Some(t.noise.narrow(0, i, k).to_device(dev))
                };
                let o = g.forward(
                    &GenInput {
                        content: &c,
                        style: s.as_ref(),
                        noise: z.as_ref(),
                        real: vae.then_some(&real),
                    },
                    mode,
                );
                out.push(o.image.to_device(tch::Device::Cpu));
                i += k;
            }
            Tensor::cat(&out, 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn style_and_histogram_distances_by_hand() {
        // Two 1-channel-like images (3 equal channels) of 2 pixels each.
        let a = Tensor::from_slice(&[0.0f32, 1.0])
            .view([1, 1, 1, 2])
            .repeat([1, 3, 1, 1]);
        let b = Tensor::from_slice(&[0.5f32, 0.5])
            .view([1, 1, 1, 2])
            .repeat([1, 3, 1, 1]);
        let (pa, pb) = (&a * 2.0 - 1.0, &b * 2.0 - 1.0);
        // μ equal (0.5), σ 0.5 vs 0.
        assert!((style_err(&pa, &pb) - 0.5).abs() < 1e-12);
        // a: bins 0 and 7 (v = 1.0 falls in bin 7); b: bin 4 twice → ½·(½ + ½ + 1) = 1.
        assert!((hist_dist(&pa, &pb) - 1.0).abs() < 1e-12);
        assert!((l1(&pa, &pb) - 0.5).abs() < 1e-12);
        assert_eq!(hist_dist(&pa, &pa), 0.0);
        // pixAdaIN carries the style's statistics over.
        let c = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 0.5;
        let s = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 0.2 + 0.3;
        let y = pix_adain(&(&c * 2.0 - 1.0), &(&s * 2.0 - 1.0));
        assert!(style_err(&y, &(&s * 2.0 - 1.0)) < 1e-4);
    }
}
