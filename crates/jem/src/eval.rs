//! Evaluation: classification and calibration, OOD scores and AUROC, class-conditional samples
//! and their realism, accuracy under PGD. Everything runs in eval mode with fixed noise.

use crate::config::{Arm, Config, EvalConfig, PgdEval, SgldConfig};
use crate::model::Classifier;
use crate::report;
use crate::sampler::sgld;
use crate::sampler::ReplayBuffer;
use crate::summary::{self, Summary};
use reprise_core::attack::{Norm, Pgd};
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::synth::{ood_interp, ood_inverted, ood_shuffled, ood_uniform};
use reprise_core::data::Rng;
use reprise_core::metrics;
use reprise_core::plan::Ledger;
use reprise_core::predictions::Predictions;
use reprise_core::run::RunContext;
use reprise_core::Result;
use tch::{Device, Kind, Tensor};

/// Gaussian noise of `sigma` shaped like `like`, from the project's generator (repeatable).
pub(crate) fn fixed_noise(like: &Tensor, sigma: f64, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..like.numel())
        .map(|_| (rng.normal() * sigma) as f32)
        .collect();
    Tensor::from_slice(&v)
        .view(like.size().as_slice())
        .to_device(like.device())
}

/// The noisy test set and the OOD sets built from it (all in the model's [−1, 1] units).
pub struct EvalData {
    /// Clean test images.
    pub clean: Tensor,
    /// Test images with the fixed evaluation noise.
    pub x: Tensor,
    /// Test labels.
    pub y: Tensor,
    /// Each test image's position in the dataset it was drawn from (0, 1, … unless set), saved
    /// with the test predictions so the folds of a cross-validation can be pooled.
    pub index: Vec<i64>,
    /// OOD sets by name: uniform, shuffled, interp, inverted, then any user datasets.
    pub ood: Vec<(String, Tensor)>,
}

impl EvalData {
    /// Builds the sets from clean test images in [−1, 1]; every set gets σ noise, `interp`
    /// twice (it averages noisy test images, then adds noise, as the paper does).
    pub fn new(clean: &Tensor, y: &Tensor, sigma: f64) -> EvalData {
        let seed = 0x5eed;
        let x = clean + fixed_noise(clean, sigma, seed);
        let s = clean.size();
        let n = s[0];
        let noisy = |t: Tensor, k: u64| &t + fixed_noise(&t, sigma, seed + k);
        let ood = vec![
            (
                "uniform",
                noisy(ood_uniform(n, [s[1], s[2], s[3]], -1.0, 1.0, seed + 1), 11),
            ),
            ("shuffled", noisy(ood_shuffled(clean, seed + 2), 12)),
            ("interp", noisy(ood_interp(&x, seed + 3), 13)),
            ("inverted", noisy(ood_inverted(clean, -1.0, 1.0), 14)),
        ];
        EvalData {
            clean: clean.shallow_clone(),
            x,
            y: y.shallow_clone(),
            index: (0..n).collect(),
            ood: ood.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }
}

impl EvalData {
    /// Adds an OOD set from a dataset a user points to: its test split, mapped to [−1, 1], with
    /// the same σ noise; its images must have the test images' shape.
    pub(crate) fn add_dataset(
        &mut self,
        name: &str,
        spec: &reprise_core::spec::DataSpec,
        sigma: f64,
    ) -> reprise_core::Result<()> {
        let parts = reprise_core::data::load_splits(spec)?;
        let x = &parts.test.x * 2.0 - 1.0;
        if x.size()[1..] != self.clean.size()[1..] {
            return Err(reprise_core::Error::Data(format!(
                "OOD dataset `{name}` has images of shape {:?}, the test images {:?}",
                &x.size()[1..],
                &self.clean.size()[1..]
            )));
        }
        let k = 100 + self.ood.len() as u64;
        let noisy = &x + fixed_noise(&x, sigma, 0x5eed + k);
        self.ood.push((name.to_string(), noisy));
        Ok(())
    }
}

/// Classification and calibration on the noisy test set.
pub use reprise_core::metrics::Calibration as ClassMetrics;

/// The model's logits on the noisy test images, on the host.
pub(crate) fn test_logits(m: &Classifier, d: &EvalData) -> Tensor {
    m.logits(&d.x, 100).to_device(Device::Cpu)
}

/// Accuracy, NLL, ECE and the reliability bins.
pub(crate) fn classify(m: &Classifier, d: &EvalData, bins: usize) -> ClassMetrics {
    metrics::calibration(&test_logits(m, d), &d.y, bins)
}

/// The three OOD scores of a set, higher meaning more in-distribution.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// log p(x) = LSE f(x).
    pub px: Vec<f64>,
    /// max p(y|x).
    pub py: Vec<f64>,
    /// −‖∇ₓ LSE f(x)‖₂ (approximate mass).
    pub pxgrad: Vec<f64>,
}

/// Scores of `x` in batches of 100 (input gradients only).
pub fn scores(m: &Classifier, x: &Tensor) -> Scores {
    let mut s = Scores::default();
    let n = x.size()[0];
    for i in (0..n).step_by(100) {
        let b = x
            .narrow(0, i, 100.min(n - i))
            .to_device(m.vs.device())
            .set_requires_grad(true);
        let logits = m.forward_t(&b, false);
        let lse = logits.logsumexp([1].as_slice(), false);
        let g = Tensor::run_backward(&[lse.sum(Kind::Float)], &[&b], false, false)
            .pop()
            .expect("one gradient");
        let to_vec = |t: Tensor| {
            Vec::<f64>::try_from(t.detach().to_device(Device::Cpu).to_kind(Kind::Double))
                .expect("f64")
        };
        s.px.extend(to_vec(lse.shallow_clone()));
        s.py.extend(to_vec(
            logits.softmax(-1, Kind::Float).amax([1].as_slice(), false),
        ));
        s.pxgrad.extend(to_vec(-g.flatten(1, -1).norm_scalaropt_dim(
            2,
            [1].as_slice(),
            false,
        )));
    }
    s
}

/// The scores of the test set, of each OOD set, and the AUROC rows (set, [px, py, pxgrad]).
pub type OodResult = (Scores, Vec<(String, Scores)>, Vec<(String, [f64; 3])>);

/// AUROC of every score on every OOD set.
pub(crate) fn ood_auroc(m: &Classifier, d: &EvalData) -> OodResult {
    let inn = scores(m, &d.x);
    let mut per_set = Vec::new();
    let mut rows = Vec::new();
    for (name, x) in &d.ood {
        let o = scores(m, x);
        rows.push((
            name.to_string(),
            [
                metrics::auroc(&inn.px, &o.px),
                metrics::auroc(&inn.py, &o.py),
                metrics::auroc(&inn.pxgrad, &o.pxgrad),
            ],
        ));
        per_set.push((name.to_string(), o));
    }
    (inn, per_set, rows)
}

/// Class-conditional SGLD chains on f(x)[y] from U(−1, 1): `per_class` per class.
pub(crate) fn conditional_samples(
    m: &Classifier,
    shape: &[i64],
    classes: i64,
    e: &EvalConfig,
    s: &SgldConfig,
    seed: u64,
) -> (Tensor, Tensor) {
    let per = e.chains_per_class as i64;
    let y = Tensor::arange(classes, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(per, 0, None);
    let n = classes * per;
    let mut dims = vec![n];
    dims.extend_from_slice(shape);
    let x0 = ood_uniform(n, [shape[0], shape[1], shape[2]], -1.0, 1.0, seed).view(dims.as_slice());
    tch::manual_seed(seed as i64);
    let dev = m.vs.device();
    let f = |x: &Tensor| m.forward_t(x, false);
    let x = sgld(
        &f,
        &x0.to_device(dev),
        Some(&y.to_device(dev)),
        s,
        e.sample_steps,
    );
    (x.to_device(Device::Cpu), y)
}

/// The share of samples (clamped to [−1, 1]) whose distance to the nearest training image is
/// within the 95th percentile of that distance for the real test images.
pub fn realism_share(samples: &Tensor, train: &Tensor, test: &Tensor) -> f64 {
    let nearest = |x: &Tensor| -> Vec<f64> {
        let a = x.flatten(1, -1).to_kind(Kind::Float);
        let b = train.flatten(1, -1).to_kind(Kind::Float);
        let d = Tensor::cdist(&a, &b, 2.0, None::<i64>).amin([1].as_slice(), false);
        Vec::<f64>::try_from(d.to_kind(Kind::Double)).expect("f64")
    };
    let mut real = nearest(test);
    real.sort_by(f64::total_cmp);
    let q = real[((real.len() as f64 * 0.95).ceil() as usize).clamp(1, real.len()) - 1];
    let s = nearest(&samples.clamp(-1.0, 1.0));
    s.iter().filter(|&&d| d <= q).count() as f64 / s.len() as f64
}

/// Accuracy under PGD at one (norm, ε) of `p`'s grid on the first `p.images` test images. The attack works
/// in [0, 1] pixel units on the clean image; the model sees 2x − 1 plus the fixed test noise.
pub(crate) fn pgd_point(m: &Classifier, d: &EvalData, p: &PgdEval, norm: Norm, eps: f64) -> f64 {
    let n = (p.images as i64).min(d.clean.size()[0]);
    let dev = m.vs.device();
    let x01 = ((d.clean.narrow(0, 0, n) + 1.0) / 2.0).to_device(dev);
    let noise = (d.x.narrow(0, 0, n) - d.clean.narrow(0, 0, n)).to_device(dev);
    let y = d.y.narrow(0, 0, n).to_device(dev);
    let f = |x: &Tensor| m.forward_t(&(x * 2.0 - 1.0 + &noise), false);
    let xa = if eps > 0.0 {
        Pgd::eval(norm, eps, p.steps).run(&f, &x01, &y)
    } else {
        x01.shallow_clone()
    };
    tch::no_grad(|| metrics::accuracy(&f(&xa), &y))
}

/// The file of the final evaluation's finished parts, removed once `summary.json` is written.
pub(crate) const EVAL_PARTS: &str = "eval-parts.json";

/// What the final evaluation's results depend on: the run's settings, the step, and the
/// weights and replay buffer evaluated.
fn eval_key(
    c: &Config,
    model: &Classifier,
    buffer: Option<&ReplayBuffer>,
    step: u64,
) -> Result<String> {
    let mut h = reprise_core::cache::Digest::new();
    h.bytes(reprise_core::plan::sorted_json(c, false)?.as_bytes());
    h.bytes(&step.to_le_bytes());
    h.vars(&model.vs)?;
    if let Some(b) = buffer {
        h.tensor(&b.data)?;
    }
    Ok(format!("{:016x}", h.value()))
}

/// The final evaluation of a run trained `step` iterations at `step_ms` each: calibration,
/// OOD detection, samples and their realism against `train_x`, FIDs, PGD; the figures.
///
/// Each part is recorded as it ends (the summary so far, in [`EVAL_PARTS`], for these weights
/// and settings): a run stopped during its evaluation redoes only the parts left. Every part
/// draws from its own seed or draws nothing, so a part skipped changes none after it.
pub(crate) fn final_eval(
    ctx: &RunContext,
    c: &Config,
    model: &Classifier,
    buffer: Option<&ReplayBuffer>,
    (d, train_x): (&EvalData, &Tensor),
    (step, step_ms): (u64, f64),
) -> Result<Summary> {
    let shape = &train_x.size()[1..];
    let classes = model.classes() as usize;
    let figs = ctx.figures();
    let mut parts: Ledger<Summary> = Ledger::read_for(
        &ctx.dir().join(EVAL_PARTS),
        &eval_key(c, model, buffer, step)?,
    );
    let mut part = |name: &str,
                    s: &mut Summary,
                    run: &mut dyn FnMut(&mut Summary) -> Result<()>|
     -> Result<()> {
        match parts.get(name) {
            Some(done) => *s = done.clone(),
            None => {
                run(s)?;
                parts.record(name, s.clone())?;
            }
        }
        Ok(())
    };
    let mut s = Summary {
        arm: c.arm.name().to_string(),
        iterations: step,
        step_ms,
        classes,
        shape: shape.to_vec(),
        acc: f64::NAN,
        nll: f64::NAN,
        ece: f64::NAN,
        conf_minus_acc: f64::NAN,
        reliability: Vec::new(),
        auroc_px_mean: f64::NAN,
        realism_share: None,
        self_agreement: None,
        fid_samples: None,
        fid_buffer: None,
        scores: summary::Scores::default(),
        smoke: false,
    };
    part("classify", &mut s, &mut |s| {
        // The test predictions, kept so a sweep can pool them (the folds of a cross-validation).
        let logits = test_logits(model, d);
        Predictions::new(d.index.clone(), &logits, &d.y)?.save(
            &ctx.dir().join(reprise_core::predictions::FILE),
            &ctx.info().id,
        )?;
        let m = reprise_core::metrics::calibration(&logits, &d.y, c.eval.ece_bins);
        report::reliability_figure(
            &figs.join("reliability.png"),
            &[(c.arm.name().to_string(), m.bins.clone())],
        )?;
        let (inn, per_set, rows) = ood_auroc(model, d);
        (s.acc, s.nll, s.ece, s.conf_minus_acc) = (m.acc, m.nll, m.ece, m.conf_minus_acc);
        s.reliability = m.bins;
        s.auroc_px_mean = procedural_px_mean(&rows);
        s.scores.auroc = rows.into_iter().collect();
        let histograms: [(&str, &str, report::Pick); 2] = [
            ("hist_px.png", "log p(x) = LSE f(x)", |sc| &sc.px),
            ("hist_pxgrad.png", "−‖∇ₓ log p(x)‖", |sc| {
                &sc.pxgrad
            }),
        ];
        for (file, title, pick) in histograms {
            report::score_histogram(&figs.join(file), title, pick(&inn), &per_set, pick)?;
        }
        Ok(())
    })?;
    // pytorch-fid's network, loaded by the first part that needs it.
    let mut inception: Option<reprise_core::inception::FidInception> = None;
    let mut fid_to_test = |x: &Tensor| -> Result<Option<f64>> {
        let Some(p) = &c.eval.fid_inception else {
            return Ok(None);
        };
        if inception.is_none() {
            let net = reprise_core::inception::FidInception::new(model.vs.device());
            net.load(p)?;
            inception = Some(net);
        }
        let net = inception.as_ref().expect("loaded above");
        // Images in [−1, 1] to pytorch-fid's [0, 1]; the FID against the test images.
        let to01 = |t: &Tensor| ((t + 1.0) / 2.0).clamp(0.0, 1.0);
        Ok(Some(reprise_core::inception::fid(
            net,
            &to01(x),
            &to01(&d.clean),
            50,
        )))
    };
    if c.arm != Arm::BaseLong && c.eval.chains_per_class > 0 {
        part("samples", &mut s, &mut |s| {
            let (samples, ys) = conditional_samples(
                model,
                shape,
                classes as i64,
                &c.eval,
                &c.sgld,
                ctx.seed() ^ 0xc0de,
            );
            let mut ck = Checkpoint::new();
            ck.put("samples", &samples);
            ck.put("labels", &ys);
            ck.save(&ctx.dir().join("samples.safetensors"))?;
            // One row per class, labelled.
            reprise_core::plot::image_grid_labeled(
                &figs.join("samples.png"),
                &samples.clamp(-1.0, 1.0),
                c.eval.chains_per_class,
                3,
                -1.0,
                1.0,
                &reprise_core::plot::GridLabels {
                    columns: vec![],
                    rows: (0..classes).map(|k| format!("y = {k}")).collect(),
                },
            )?;
            s.realism_share = Some(realism_share(
                &samples,
                &train_x.to_device(Device::Cpu),
                &d.clean,
            ));
            s.self_agreement = Some(tch::no_grad(|| {
                reprise_core::metrics::accuracy(
                    &model.logits(&samples, 100).to_device(Device::Cpu),
                    &ys,
                )
            }));
            s.fid_samples = fid_to_test(&samples)?;
            Ok(())
        })?;
    }
    if let Some(b) = buffer {
        part("buffer", &mut s, &mut |s| {
            s.fid_buffer = fid_to_test(&b.data)?;
            buffer_grid(&figs.join("buffer_by_class.png"), model, b, shape, classes)
        })?;
    }
    if let Some(p) = &c.eval.pgd {
        for (norm, eps) in p.grid() {
            let n = match norm {
                reprise_core::attack::Norm::Linf => "linf",
                reprise_core::attack::Norm::L2 => "l2",
            };
            part(&format!("pgd {n} {eps}"), &mut s, &mut |s| {
                let acc = pgd_point(model, d, p, norm, eps);
                s.scores.pgd.push((n.to_string(), eps, acc));
                Ok(())
            })?;
        }
    }
    // This sitting's training, whatever the parts recorded.
    (s.iterations, s.step_ms) = (step, step_ms);
    Ok(s)
}

/// The replay buffer's samples binned by predicted class, as the paper's "conditional" grids:
/// up to 10 a row for the first 10 classes.
fn buffer_grid(
    path: &std::path::Path,
    model: &Classifier,
    b: &ReplayBuffer,
    shape: &[i64],
    classes: usize,
) -> Result<()> {
    let pred = model
        .logits(&b.data, 100)
        .argmax(-1, false)
        .to_device(Device::Cpu);
    let mut rows: Vec<Tensor> = Vec::new();
    for k in 0..classes.min(10) as i64 {
        let idx = pred.eq(k).nonzero().squeeze_dim(1);
        let take = idx.size()[0].min(10);
        let row = if take > 0 {
            b.data.index_select(0, &idx.narrow(0, 0, take))
        } else {
            Tensor::zeros(
                [0, shape[0], shape[1], shape[2]],
                (Kind::Float, Device::Cpu),
            )
        };
        let pad = Tensor::full(
            [10 - take, shape[0], shape[1], shape[2]],
            -1.0,
            (Kind::Float, Device::Cpu),
        );
        rows.push(Tensor::cat(&[row, pad], 0));
    }
    reprise_core::plot::image_grid_labeled(
        path,
        &Tensor::cat(&rows, 0).clamp(-1.0, 1.0),
        10,
        3,
        -1.0,
        1.0,
        &reprise_core::plot::GridLabels {
            columns: vec![],
            rows: (0..rows.len()).map(|k| format!("pred {k}")).collect(),
        },
    )
}

/// Mean log p(x) AUROC over the four procedural OOD sets (the P3 criterion; user datasets are
/// reported beside it, not averaged in).
pub(crate) fn procedural_px_mean(rows: &[(String, [f64; 3])]) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| crate::claims::OOD_SETS.contains(&r.0.as_str()))
        .map(|r| r.1[0])
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ood_sets_have_the_test_shape_and_are_repeatable() {
        let clean = Tensor::rand([30, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = Tensor::zeros([30], (Kind::Int64, Device::Cpu));
        let a = EvalData::new(&clean, &y, 0.03);
        let b = EvalData::new(&clean, &y, 0.03);
        assert!(a.x.equal(&b.x));
        for ((na, xa), (_, xb)) in a.ood.iter().zip(&b.ood) {
            assert_eq!(xa.size(), clean.size(), "{na}");
            assert!(xa.equal(xb), "{na}");
        }
        let noise = (&a.x - &clean).std(true).double_value(&[]);
        assert!((noise - 0.03).abs() < 0.01, "{noise}");
    }

    #[test]
    fn realism_share_counts_near_neighbours() {
        let train = Tensor::zeros([5, 1, 2, 2], (Kind::Float, Device::Cpu));
        let test = Tensor::full([20, 1, 2, 2], 0.1, (Kind::Float, Device::Cpu));
        let near = Tensor::full([4, 1, 2, 2], 0.05, (Kind::Float, Device::Cpu));
        let far = Tensor::full([4, 1, 2, 2], 5.0, (Kind::Float, Device::Cpu));
        assert_eq!(realism_share(&near, &train, &test), 1.0);
        // Far samples are clamped to 1 first, still beyond the real test distances.
        assert_eq!(realism_share(&far, &train, &test), 0.0);
    }
}
