//! A run's helper networks: the loss network (a VGG-mini trained on the task's renders, a
//! random one, or VGG-19 from a file) and the small tasks' evaluation judges (the digit
//! classifier; the scene segmenter and feature net). Trained ones are trained once per sweep
//! and cached in the sweep folder ([`reprise_core::cache`]).
use crate::config::{Config, PerceptualConfig, Task};
use crate::data::{self, TaskData};
use crate::eval::Judges;
use crate::nets::{self, DigitNet, Perceptual, SceneNet, Segmenter, Targets};
use crate::summary::JudgeInfo;
use reprise_core::cache;
use reprise_core::data::Rng;
use reprise_core::{Error, Result};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

/// The loss network of a run: VGG-19 or a random VGG-mini as configured, or a VGG-mini
/// trained on the task's renders (cached under `dir`).
pub(crate) fn perceptual(c: &Config, d: &TaskData, dir: &Path, dev: Device) -> Result<Perceptual> {
    match &c.perceptual {
        PerceptualConfig::Vgg19 { .. } | PerceptualConfig::Random { .. } => {
            perceptual_fixed(c, dev)
        }
        PerceptualConfig::Trained { epochs, seed } => {
            let k = if c.task == Task::DigitsAst { 10 } else { 6 };
            tch::manual_seed(*seed as i64);
            let mut p = Perceptual::vgg_mini(dev, k);
            let key = format!(
                "vgg-mini {:?} s{} n{} e{epochs} seed{seed}",
                c.task,
                c.size,
                d.train_len()
            );
            let file = cache::file(dir, "perceptual", &key);
            cache::vars(&p.vs, &file, || {
                let batch = |idx: &[i64], rng: &mut Rng| render_for(c.task, d, idx, rng, dev);
                train_helper(
                    &p.vs,
                    c.task,
                    d.train_len(),
                    *epochs,
                    *seed,
                    &|x| p.logits(x),
                    &batch,
                );
                reprise_core::note!("perceptual net (VGG-mini) trained: {}", file.display());
            })?;
            p.vs.freeze();
            Ok(p)
        }
    }
}

/// The loss network of a paper-scale run: VGG-19 from its file (or random VGG-mini, for
/// smoke tests); a VGG-mini trained in the project belongs to the small-scale tasks.
pub(crate) fn perceptual_fixed(c: &Config, dev: Device) -> Result<Perceptual> {
    match &c.perceptual {
        PerceptualConfig::Vgg19 { path } => Perceptual::vgg19(dev, path),
        PerceptualConfig::Random { seed } => {
            let mut p = Perceptual::vgg_mini_random(dev, *seed);
            p.vs.freeze();
            Ok(p)
        }
        PerceptualConfig::Trained { .. } => Err(Error::msg(
            "a paper-scale tsit task takes `perceptual: { vgg19: { path } }` (or `random` for a smoke test)",
        )),
    }
}

/// Helper-net training data: digits (plain or styled, labels) or scene renders (per-pixel
/// labels; turned into presence where a net wants it).
pub(crate) fn render_for(
    task: Task,
    d: &TaskData,
    idx: &[i64],
    rng: &mut Rng,
    dev: Device,
) -> (Tensor, Tensor) {
    let (x, y) = if task == Task::DigitsAst {
        d.digit_renders(idx, rng)
    } else {
        d.scene_renders(idx, rng)
    };
    (x.to_device(dev), y.to_device(dev))
}

/// Trains a helper net: a classifier of digits, or of which scene classes a render holds.
pub(crate) fn train_helper(
    vs: &tch::nn::VarStore,
    task: Task,
    n: usize,
    epochs: f64,
    seed: u64,
    logits: &dyn Fn(&Tensor) -> Tensor,
    batch: &nets::BatchFn<'_>,
) {
    if task == Task::DigitsAst {
        nets::train_classifier(vs, n, epochs, seed, logits, batch, Targets::Class);
    } else {
        let pres = |idx: &[i64], rng: &mut Rng| {
            let (x, l) = batch(idx, rng);
            (x, data::presence(&l, 6))
        };
        nets::train_classifier(vs, n, epochs, seed, logits, &pres, Targets::Presence);
    }
}

/// The evaluation networks (seed 1234), trained or loaded from the cache.
pub(crate) fn judges(
    c: &Config,
    d: &TaskData,
    dir: &Path,
    dev: Device,
) -> Result<(Judges, JudgeInfo)> {
    let mut info = JudgeInfo::default();
    let n = d.train_len();
    let ep = c.eval.net_epochs;
    let t0 = Instant::now();
    let j = if c.task == Task::DigitsAst {
        tch::manual_seed(1234);
        let mut net = DigitNet::new(dev, c.size);
        let key = format!(
            "digitnet s{} n{n} e{ep} gate{}",
            c.size, c.eval.classifier_gate
        );
        let file = cache::file(dir, "digits", &key);
        let oracle = d.test.oracle.to_device(dev);
        let labels = d.test.labels.to_device(dev);
        cache::vars(&net.vs, &file, || {
            // Train until the gate holds on styled test renders (at most 3× the epochs).
            for round in 0..3 {
                let batch = |idx: &[i64], rng: &mut Rng| render_for(c.task, d, idx, rng, dev);
                nets::train_classifier(
                    &net.vs,
                    n,
                    ep,
                    1234 + round,
                    &|x| net.logits(x),
                    &batch,
                    Targets::Class,
                );
                let acc = reprise_core::metrics::accuracy(
                    &nets::batched(&oracle, &|b| net.logits(b)),
                    &labels,
                );
                reprise_core::note!(
                    "digit classifier, round {}: {acc:.4} on styled test renders",
                    round + 1
                );
                if acc >= c.eval.classifier_gate {
                    break;
                }
            }
        })?;
        net.vs.freeze();
        let acc =
            reprise_core::metrics::accuracy(&nets::batched(&oracle, &|b| net.logits(b)), &labels);
        if acc < c.eval.classifier_gate {
            return Err(Error::msg(format!(
                "the evaluation digit classifier reaches {acc:.4} on styled test renders, below the gate {}",
                c.eval.classifier_gate
            )));
        }
        info.classifier_acc_styled = Some(acc);
        Judges::Digits(net)
    } else {
        tch::manual_seed(1234);
        let mut seg = Segmenter::new(dev, 6);
        let key = format!("segmenter {:?} s{} n{n} e{ep}", c.task, c.size);
        let file = cache::file(dir, "segmenter", &key);
        cache::vars(&seg.vs, &file, || {
            let batch = |idx: &[i64], rng: &mut Rng| render_for(c.task, d, idx, rng, dev);
            nets::train_classifier(
                &seg.vs,
                n,
                ep,
                1234,
                &|x| seg.logits(x),
                &batch,
                Targets::Pixels,
            );
        })?;
        seg.vs.freeze();
        tch::manual_seed(1235);
        let mut feat = SceneNet::new(dev, c.size, 6);
        let key = format!("scenenet {:?} s{} n{n} e{ep}", c.task, c.size);
        let file = cache::file(dir, "scenenet", &key);
        cache::vars(&feat.vs, &file, || {
            let batch = |idx: &[i64], rng: &mut Rng| render_for(c.task, d, idx, rng, dev);
            train_helper(&feat.vs, c.task, n, ep, 1235, &|x| feat.logits(x), &batch);
        })?;
        feat.vs.freeze();
        Judges::Scenes(seg, feat)
    };
    info.judges_secs = Some(t0.elapsed().as_secs_f64());
    Ok((j, info))
}
