//! Small-scale metrics (docs/tsit.md), computed in float64 on outputs in `[−1, 1]` mapped to
//! `[0, 1]`: FIDp on a frozen evaluation network's features, content accuracy, segmentation
//! score, StyleErr, HistDist, L1 and PSNR; and the training-free references.

use crate::config::{Arm, Config, Task};
use crate::data::TestSet;
use crate::folders;
use crate::model::{self, Tsit};
use crate::model::{GenInput, Generator, Mode};
use crate::nets::{batched, DigitNet, SceneNet, Segmenter};
use crate::summary::{self, Evaluation, JudgeInfo, Scores, Summary};
use crate::train::{self, Gan};
use reprise_core::metrics;
use reprise_core::run::{read_metrics, RunContext};
use reprise_core::{Error, Result};
use std::collections::BTreeMap;
use tch::Device;
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

/// A small task's end: the final checkpoint's outputs, the mean of the last two evaluations,
/// the references, the α sweep of FAdaIN (the full arm), a grid, the bn1-cancel diagnostic;
/// the summary.
pub(crate) fn final_eval(
    ctx: &RunContext,
    c: &Config,
    gan: &mut Gan,
    ev: &Evaluator,
    step: u64,
    step_ms: f64,
    judges: JudgeInfo,
) -> Result<Summary> {
    let pfn = if c.eval.train_bn {
        "batch norm (batch statistics in training and at test)"
    } else {
        "batch norm (batch statistics in training, running statistics at test)"
    };
    // Every evaluation logged during training (kept across resumes in metrics.jsonl).
    let evals: Vec<(u64, Metrics)> = read_metrics(ctx.dir())
        .into_iter()
        .filter(|r| r.values.contains_key("eval_fidp"))
        .map(|r| {
            let m = r
                .values
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("eval_")?.to_string(), v.as_f64()?)))
                .collect();
            (r.step, m)
        })
        .collect();
    let out = ev.generate(gan.g.as_ref(), c.model.vae, Mode::test(c.eval.train_bn));
    let fin = ev.metrics(&out);
    // The mean of the last two evaluations (docs/tsit.md, the small-scale protocol), beside the final one.
    let last2: Vec<&Metrics> = evals.iter().rev().take(2).map(|e| &e.1).collect();
    let mut mean2 = Metrics::new();
    for k in fin.keys() {
        let v: Vec<f64> = last2.iter().filter_map(|m| m.get(k).copied()).collect();
        if !v.is_empty() {
            mean2.insert(k.clone(), v.iter().sum::<f64>() / v.len() as f64);
        }
    }
    let t = &ev.test;
    let scores = |out: &Tensor| Scores::from_metrics(&ev.metrics(out));
    let references = summary::References {
        oracle: scores(&t.oracle),
        identity: t.style.as_ref().map(|_| scores(&t.content)),
        pixadain: t
            .style
            .as_ref()
            .map(|style| scores(&pix_adain(&t.content, style))),
    };
    let mut judged = summary::Judged {
        pfn: pfn.to_string(),
        fidp_floor: ev.floor,
        evals: evals
            .iter()
            .map(|(step, m)| summary::EvalPoint {
                step: *step,
                metrics: Scores::from_metrics(m),
            })
            .collect(),
        last: Scores::from_metrics(&fin),
        last2: Scores::from_metrics(&mean2),
        references,
        alpha_sweep: None,
        bn1_cancel_max_diff: None,
        bn1_cancel_max_diff_eps0: None,
        judges,
    };
    // The α sweep of FAdaIN at test (the model was trained with α = 1; the paper's FAdaIN, Sec. 3).
    if c.arm == Arm::Full && !c.eval.alphas.is_empty() {
        let mut sweep = Vec::new();
        for &a in &c.eval.alphas {
            gan.g.set_alpha(a);
            let out = ev.generate(gan.g.as_ref(), false, Mode::test(c.eval.train_bn));
            sweep.push(summary::AlphaPoint {
                alpha: a,
                metrics: scores(&out),
            });
        }
        gan.g.set_alpha(c.model.alpha);
        judged.alpha_sweep = Some(sweep);
    }
    // Image grids: rows of (content or label | style | output | target).
    // Pairs spread evenly over the test set (it is ordered by class for digits).
    let n = out.size()[0];
    let k = (c.eval.grid as i64).min(n);
    let pick = Tensor::from_slice(&(0..k).map(|i| i * n / k).collect::<Vec<i64>>());
    let sel = |x: &Tensor| x.index_select(0, &pick);
    let show_content = if c.task == Task::ScenesSis {
        label_colours(&sel(&t.labels))
    } else {
        sel(&t.content)
    };
    let mut cols = vec![show_content];
    if let Some(st) = &t.style {
        cols.push(sel(st));
    }
    cols.push(sel(&out));
    cols.push(sel(&t.oracle));
    let ncol = cols.len();
    let grid = Tensor::stack(&cols, 1).flatten(0, 1);
    reprise_core::plot::image_grid_labeled(
        &ctx.figures().join("grid.png"),
        &grid,
        ncol,
        4,
        -1.0,
        1.0,
        &grid_labels(c.task, t.style.is_some()),
    )?;
    if let Some((diff, diff0)) = bn1_cancel(c, gan, ev, ctx.device()) {
        judged.bn1_cancel_max_diff = Some(diff);
        judged.bn1_cancel_max_diff_eps0 = Some(diff0);
    }
    Ok(summary_of(
        c,
        gan,
        (step, step_ms),
        Evaluation::Judged(Box::new(judged)),
    ))
}
/// The ledger of a paper-scale run's test outputs: the batches written, for the generator and
/// settings of its key; removed once the summary is written ([`forget_test_parts`]).
pub(crate) const TEST_PARTS: &str = "test-outputs-parts.json";

/// The Inception features of the test batches written (`<first item>.safetensors`: `fake`,
/// `real`), kept until the FID over all of them is in the summary.
pub(crate) const TEST_FEATURES: &str = "test-outputs-features";

/// What the test outputs of a run depend on: its settings, its step and its generator's weights.
fn test_key(c: &Config, gan: &Gan, step: u64) -> Result<String> {
    let mut h = reprise_core::cache::Digest::new();
    h.bytes(reprise_core::plan::sorted_json(c, false)?.as_bytes());
    h.bytes(&step.to_le_bytes());
    h.vars(gan.g.vs())?;
    Ok(format!("{:016x}", h.value()))
}

/// A batch's saved Inception features (fake, real), if its file reads whole.
fn read_features(path: &std::path::Path) -> Option<(Tensor, Tensor)> {
    let named = Tensor::read_safetensors(path).ok()?;
    let get = |k: &str| {
        named
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
    };
    Some((get("fake")?, get("real")?))
}

/// Removes a finished evaluation's ledger of test batches and their saved features.
pub(crate) fn forget_test_parts(dir: &std::path::Path) -> Result<()> {
    reprise_core::checkpoint::remove_if_present(&dir.join(TEST_PARTS))?;
    let f = dir.join(TEST_FEATURES);
    match std::fs::remove_dir_all(&f) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(f, e)),
        _ => Ok(()),
    }
}

/// A paper-scale run's end: the test items' outputs as PNG files in `test_outputs/` (for an
/// external FID and segmenter, which the project cannot ship), a grid, and the summary.
///
/// Batch by batch, each from its own seed: a batch's PNGs (and, with `eval.fid_inception`, its
/// Inception features, in `test-outputs-features/`) are recorded in `test-outputs-parts.json`
/// as it ends, for this generator and these settings, so an evaluation stopped midway (hours of
/// generation at paper scale) writes only the batches left when resumed; the FID is computed
/// from every batch's features at the end.
pub(crate) fn write_test_outputs(
    ctx: &RunContext,
    c: &Config,
    gan: &Gan,
    f: &folders::FolderData,
    step: u64,
    step_ms: f64,
) -> Result<Summary> {
    let out_dir = ctx.dir().join("test_outputs");
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::Io(out_dir.clone(), e))?;
    let n = f.test.len().min(c.eval.n_test);
    let dev = ctx.device();
    let inception = match &c.eval.fid_inception {
        Some(p) => {
            let net = reprise_core::inception::FidInception::new(dev);
            net.load(p)?;
            Some(net)
        }
        None => None,
    };
    let mut parts: reprise_core::plan::Ledger<usize> =
        reprise_core::plan::Ledger::read_for(&ctx.dir().join(TEST_PARTS), &test_key(c, gan, step)?);
    let feat_dir = ctx.dir().join(TEST_FEATURES);
    let (mut feats_fake, mut feats_real) = (Vec::new(), Vec::new());
    let mut shown = Vec::new();
    let mut i = 0;
    while i < n {
        let k = (c.batch as usize).min(n - i);
        let feat_file = feat_dir.join(format!("{i}.safetensors"));
        // Written by an earlier sitting: its files, and its features where FID is measured.
        let saved = match (parts.get(&format!("batch {i}")), &inception) {
            (None, _) => None,
            (Some(_), None) => Some(None),
            (Some(_), Some(_)) => read_features(&feat_file).map(Some),
        };
        let grid_full = shown.len() >= c.eval.grid;
        if let (Some(feats), true) = (&saved, grid_full) {
            if let Some((fake, real)) = feats {
                feats_fake.push(fake.shallow_clone());
                feats_real.push(real.shallow_clone());
            }
            i += k;
            continue;
        }
        let idx: Vec<usize> = (i..i + k).collect();
        let (content, img) = f.load(false, &idx, None)?;
        let (content, img) = (content.to_device(dev), img.to_device(dev));
        tch::manual_seed(2021 + i as i64);
        let noise = train::draw_noise(c, k as i64, dev);
        let out = tch::no_grad(|| {
            gan.g
                .forward(
                    &GenInput {
                        content: &content,
                        style: c.task.is_ast().then_some(&img),
                        noise: noise.as_ref(),
                        real: c.model.vae.then_some(&img),
                    },
                    Mode::test(c.eval.train_bn),
                )
                .image
                .to_device(Device::Cpu)
        });
        match saved {
            // Generated again for the grid only.
            Some(Some((fake, real))) => {
                feats_fake.push(fake);
                feats_real.push(real);
            }
            Some(None) => {}
            None => {
                if let Some(net) = &inception {
                    // Images in [−1, 1] to pytorch-fid's [0, 1].
                    let fake = net.features(&((&out + 1.0) / 2.0)).to_device(Device::Cpu);
                    let real = net.features(&((&img + 1.0) / 2.0)).to_device(Device::Cpu);
                    std::fs::create_dir_all(&feat_dir)
                        .map_err(|e| Error::Io(feat_dir.clone(), e))?;
                    Tensor::write_safetensors(&[("fake", &fake), ("real", &real)], &feat_file)?;
                    feats_fake.push(fake);
                    feats_real.push(real);
                }
                for j in 0..k {
                    let name = f.test[i + j].b.file_stem().map_or_else(
                        || format!("{}", i + j),
                        |s| s.to_string_lossy().into_owned(),
                    );
                    reprise_core::plot::image_grid(
                        &out_dir.join(format!("{name}.png")),
                        &out.narrow(0, j as i64, 1),
                        1,
                        1,
                        -1.0,
                        1.0,
                    )?;
                }
                parts.record(&format!("batch {i}"), k)?;
            }
        }
        if !grid_full {
            let m = (c.eval.grid - shown.len()).min(k) as i64;
            let first = if c.task.is_ast() {
                content.narrow(0, 0, m).to_device(Device::Cpu)
            } else {
                // The label map's argmax, coloured (classes beyond six wrap around).
                let lab = content
                    .narrow(0, 0, m)
                    .narrow(
                        1,
                        0,
                        f.content_channels()
                            - i64::from(c.folder.as_ref().is_some_and(|x| x.instance_edge)),
                    )
                    .argmax(1, false)
                    .remainder(6)
                    .to_device(Device::Cpu);
                label_colours(&lab)
            };
            for r in 0..m {
                let mut row = vec![first.get(r)];
                if c.task.is_ast() {
                    row.push(img.get(r).to_device(Device::Cpu));
                }
                row.push(out.get(r));
                row.push(img.get(r).to_device(Device::Cpu));
                shown.push(Tensor::stack(&row, 0));
            }
        }
        i += k;
    }
    if !shown.is_empty() {
        let cols = shown[0].size()[0] as usize;
        let grid = Tensor::cat(&shown, 0);
        reprise_core::plot::image_grid_labeled(
            &ctx.figures().join("grid.png"),
            &grid,
            cols,
            1,
            -1.0,
            1.0,
            &grid_labels(c.task, c.task.is_ast()),
        )?;
    }
    let fid = (!feats_fake.is_empty()).then(|| {
        let to = |v: &[Tensor]| Tensor::cat(v, 0).to_kind(tch::Kind::Double);
        reprise_core::metrics::frechet_distance(&to(&feats_fake), &to(&feats_real))
    });
    let evaluation = if fid.is_some() {
        "FID of the test outputs against the test images on pytorch-fid's Inception-v3 (tsit.eval.fid_inception); outputs also written to test_outputs/ for a segmenter (DRN-D-105 / UperNet-101)"
    } else {
        "test outputs written to test_outputs/ for an external FID (Inception-v3; or give tsit.eval.fid_inception) and segmenter (DRN-D-105 / UperNet-101)"
    };
    Ok(summary_of(
        c,
        gan,
        (step, step_ms),
        Evaluation::Folder(summary::Folder {
            test_outputs: n,
            fid,
            evaluation: evaluation.to_string(),
        }),
    ))
}
/// A run's summary around its evaluation.
fn summary_of(
    c: &Config,
    gan: &Gan,
    (step, step_ms): (u64, f64),
    evaluation: Evaluation,
) -> Summary {
    Summary {
        task: c.task,
        arm: c.arm,
        iterations: step,
        batch: c.batch,
        step_ms,
        params_g: model::param_count(gan.g.vs()),
        params_d: model::param_count(&gan.d.vs),
        data_ms: None,
        evaluation,
        smoke: false,
    }
}
/// The bn1-cancel diagnostic (docs/tsit.md: the port check): B = 1, train-mode BN, power iterations frozen; the
/// output with FAdaIN everywhere against FAdaIN off at learned-skip blocks. Run on a copy of
/// the trained generator's weights so the run's BN statistics stay untouched. Returns the max
/// |Δ| with the model's BN ε (1e-5) and with ε = 1e-12: the cancellation is exact only as
/// ε → 0, since BN(a·x + b) = BN(x) needs a²σ² + ε = a²(σ² + ε).
fn bn1_cancel(c: &Config, gan: &Gan, ev: &Evaluator, dev: Device) -> Option<(f64, f64)> {
    if c.arm != Arm::Full {
        return None;
    }
    let mut g = Tsit::new(&c.model, (c.size, c.size), 3, true, true, dev);
    let mut dst = g.vs.variables();
    tch::no_grad(|| {
        for (k, v) in gan.g.vs().variables() {
            if let Some(t) = dst.get_mut(&k) {
                t.copy_(&v);
            }
        }
    });
    let t = &ev.test;
    let x = t.content.narrow(0, 0, 1).to_device(dev);
    let s = t.style.as_ref()?.narrow(0, 0, 1).to_device(dev);
    let z = t.noise.narrow(0, 0, 1).to_device(dev);
    let inp = GenInput {
        content: &x,
        style: Some(&s),
        noise: Some(&z),
        real: None,
    };
    let mode = Mode {
        bn_train: true,
        sn_update: false,
        sync_bn: false,
    };
    let learned: Vec<bool> = g.blocks.iter().map(|b| b.learned_skip()).collect();
    let diff = |g: &mut Tsit, eps: f64| {
        for b in g.blocks.iter_mut() {
            b.eps = eps;
        }
        tch::no_grad(|| {
            g.fadain_at = vec![true; learned.len()];
            let on = g.forward(&inp, mode).image;
            g.fadain_at = learned.iter().map(|l| !l).collect();
            let off = g.forward(&inp, mode).image;
            (on - off).abs().max().double_value(&[])
        })
    };
    Some((diff(&mut g, 1e-5), diff(&mut g, 1e-12)))
}
/// Label maps `N×S×S` as RGB in `[−1, 1]` (one fixed colour per class), for the grids.
pub(crate) fn label_colours(labels: &Tensor) -> Tensor {
    let pal = Tensor::from_slice(&[
        0.45f32, 0.7, 1.0, // sky
        0.2, 0.7, 0.2, // grass
        0.4, 0.4, 0.4, // road
        1.0, 0.8, 0.1, // disc
        0.7, 0.3, 0.2, // box
        0.0, 0.35, 0.1, // tree
    ])
    .view([6, 3]);
    let rgb = pal.index_select(0, &labels.flatten(0, -1).to_device(Device::Cpu));
    let s = labels.size();
    rgb.view([s[0], s[1], s[2], 3]).permute([0, 3, 1, 2]) * 2.0 - 1.0
}
/// The column headings of a run's image grid: the content (the label map in semantic
/// synthesis), the style image where the task has one, the output, the target.
fn grid_labels(task: Task, with_style: bool) -> reprise_core::plot::GridLabels {
    let mut columns = vec![if task.is_ast() {
        "content"
    } else {
        "label map"
    }
    .to_string()];
    if with_style {
        columns.push("style".into());
    }
    columns.push("output".into());
    columns.push("target".into());
    reprise_core::plot::GridLabels {
        columns,
        rows: vec![],
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
