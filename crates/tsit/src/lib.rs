//! `tsit`: "TSIT: A Simple and Versatile Framework for Image-to-Image Translation" (Jiang et
//! al., ECCV 2020, arXiv 2007.12072).
//!
//! A run trains one arm (TSIT with both streams, TSIT without FAdaIN, TSIT for semantic
//! synthesis, or the pix2pixHD-style baseline) on one task for one seed: one generator step then
//! one discriminator step per iteration, each with its own TTUR Adam; it evaluates every
//! `eval.every` iterations with frozen evaluation networks trained in the project, and writes
//! image grids. [`report`] computes the spec's claims A1–A3 and S1–S3 from a sweep.

pub mod claims;
pub mod config;
pub mod data;
pub mod eval;
pub mod folders;
pub mod model;
pub mod nets;
pub mod official;
pub mod report;
pub mod scenes;
pub mod summary;
pub mod train;

pub use config::Config;

use crate::config::{Arm, PerceptualConfig, Sampling, Task};
use crate::data::TaskData;
use crate::eval::{Evaluator, Judges, Metrics};
use crate::model::{Discriminator, GenInput, Generator, Mode, P2phd, Tsit};
use crate::nets::{DigitNet, Perceptual, SceneNet, Segmenter, Targets};
use crate::summary::{Evaluation, JudgeInfo, Scores, Summary};
use crate::train::{Gan, StepError};
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::Rng;
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::run::{read_metrics, Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::train::Steps;
use reprise_core::{Error, Result};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "tsit",
        title: "TSIT: A Simple and Versatile Framework for Image-to-Image Translation (arXiv 2007.12072)",
        validate,
        config: |t| reprise_core::run::section_with_defaults::<Config>(t, "tsit"),
        inputs,
        plan: Some(plan),
        exports: &[
            reprise_core::run::Export { name: "generator", file: Some("generator.safetensors"), prefix: "g" },
            reprise_core::run::Export { name: "discriminator", file: None, prefix: "d" },
        ],
        data_parallel: true,
        run,
        report: report::report_run,
        report_sweep: report::report_sweep,
    }
}

/// `runner plan`: times `steps` TSIT iterations (a generator step, then a discriminator step)
/// of the spec's networks, batch and size on `dev` after two warm-up ones, on random inputs (a
/// VGG-19 of the layout of the paper's loss network, with random weights: the same work); a run
/// takes `tsit.iterations` of them (its evaluations and helper networks are not counted).
pub fn plan(
    tree: &SpecTree,
    dev: Device,
    steps: usize,
    ranks: usize,
) -> Result<reprise_core::run::StepPlan> {
    let mut c: Config = tree.typed("tsit")?;
    // One rank's share of the batch (the synchronised BatchNorm's two small all-reduces a layer
    // are not in the time).
    c.batch = (c.batch + ranks.max(1) as i64 - 1) / ranks.max(1) as i64;
    let in_c = match (&c.folder, c.task) {
        (_, t) if t.is_ast() => 3,
        (Some(f), _) => f.label_nc + i64::from(f.dontcare) + i64::from(f.instance_edge),
        (None, Task::ScenesSis) => 7,
        (None, _) => 3,
    };
    let mut p = match c.perceptual {
        PerceptualConfig::Vgg19 { .. } => Perceptual::vgg19_layout(dev),
        _ => Perceptual::vgg_mini(dev, 10),
    };
    p.vs.freeze();
    let mut gan = build_gan(&c, p, in_c, dev);
    let (h, w) = (c.size, c.size * c.aspect);
    let img = |ch: i64| Tensor::rand([c.batch, ch, h, w], (tch::Kind::Float, dev)) * 2.0 - 1.0;
    let (content, real) = (img(in_c), img(3));
    let style = c.task.is_ast().then(|| img(3));
    let mut failed = None;
    let ms = reprise_core::timing::median_ms(dev, 2, steps, || {
        let b = data::Batch {
            content: content.shallow_clone(),
            style: style.as_ref().map(Tensor::shallow_clone),
            real: real.shallow_clone(),
            target: real.shallow_clone(),
        };
        if let Err(e) = gan.step(&c, &b, (c.optim.lr_g, c.optim.lr_d)) {
            failed = Some(format!("{e:?}"));
        }
    });
    if let Some(e) = failed {
        tracing::info!("plan: a timed step stopped at its guard: {e}");
    }
    Ok(reprise_core::run::StepPlan {
        what: format!(
            "one {:?} iteration (G then D) at {h}×{w}: batch {}, nf {}",
            c.task, c.batch, c.model.nf
        ),
        step_ms: ms,
        steps: Some(c.iterations),
        steps_from: "tsit.iterations".into(),
        params: 0,
    })
}

/// The inputs a run reads that reprise cannot fetch: the dataset's folders, the VGG-19 of the
/// perceptual loss, the released checkpoint (`tsit.from`) and the FID Inception weights.
pub fn inputs(tree: &SpecTree) -> Result<Vec<Input>, SpecError> {
    let c: Config = tree.typed("tsit")?;
    let h = tree.header()?;
    let mut v: Vec<Input> = of_data("data", &h.data).into_iter().collect();
    if let PerceptualConfig::Vgg19 { path } = &c.perceptual {
        v.push(Input::new(
            "tsit.perceptual.vgg19.path",
            path,
            InputKind::Vgg19,
        ));
    }
    v.extend(
        c.from
            .map(|p| Input::new("tsit.from", p, InputKind::TsitCheckpoint)),
    );
    v.extend(
        c.eval
            .fid_inception
            .map(|p| Input::new("tsit.eval.fid_inception", p, InputKind::FidInception)),
    );
    Ok(v)
}

/// Checks the `tsit:` section.
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    let c: Config = tree.typed("tsit")?;
    let m = &c.model;
    // Sizes that decide what a run allocates, and counts that decide how long it runs.
    tree.require_ranges(&[
        ("tsit.size", c.size.into(), 8, 4096),
        ("tsit.aspect", c.aspect.into(), 1, 8),
        ("tsit.train", c.train as i128, 0, 10_000_000),
        ("tsit.test", c.test as i128, 0, 10_000_000),
        ("tsit.batch", c.batch.into(), 1, 4096),
        ("tsit.iterations", c.iterations.into(), 1, 1 << 32),
        (
            "tsit.checkpoint_every",
            c.checkpoint_every.into(),
            1,
            i128::MAX,
        ),
        ("tsit.model.nf", m.nf.into(), 1, 4096),
        ("tsit.model.cap", m.cap.into(), 1, 1 << 14),
        ("tsit.model.ndf", m.ndf.into(), 1, 4096),
        ("tsit.model.num_d", m.num_d as i128, 1, 8),
        ("tsit.model.n_layers_d", m.n_layers_d as i128, 1, 8),
        ("tsit.model.z_dim", m.z_dim.into(), 1, 4096),
        ("tsit.model.vae_size", m.vae_size.into(), 8, 4096),
        ("tsit.model.p2phd.ngf", m.p2phd.ngf.into(), 1, 4096),
        ("tsit.model.p2phd.n_down", m.p2phd.n_down as i128, 1, 8),
        ("tsit.model.p2phd.n_blocks", m.p2phd.n_blocks as i128, 0, 64),
        ("tsit.eval.every", c.eval.every.into(), 1, i128::MAX),
        ("tsit.eval.n_test", c.eval.n_test as i128, 1, 10_000_000),
        ("tsit.eval.grid", c.eval.grid as i128, 1, 64),
        ("tsit.loss.kld_devices", c.loss.kld_devices as i128, 1, 1024),
    ])?;
    tree.require(
        "tsit.loss.kld_devices",
        c.batch % c.loss.kld_devices.max(1) as i64 == 0,
        "must divide tsit.batch (each device takes an equal share of the batch)",
    )?;
    if let Some(f) = &c.folder {
        tree.require_ranges(&[
            (
                "tsit.folder.load_size",
                f.load_size.unwrap_or(c.size).into(),
                8,
                8192,
            ),
            ("tsit.folder.label_nc", f.label_nc.into(), 0, 1024),
            (
                "tsit.folder.style_repeat",
                f.style_repeat as i128,
                0,
                1_000_000,
            ),
            (
                "tsit.folder.content_repeat",
                f.content_repeat as i128,
                0,
                1_000_000,
            ),
        ])?;
    }
    let s = c.size;
    tree.require(
        "tsit.size",
        s >= 8 && (s as u64).is_power_of_two(),
        "must be a power of two, at least 8 (every stream level keeps H ≥ 2)",
    )?;
    let ast = c.task.is_ast();
    tree.require(
        "tsit.arm",
        match c.task {
            Task::DigitsAst | Task::ScenesAst | Task::FolderAst => {
                matches!(c.arm, Arm::Full | Arm::NoFadain)
            }
            Task::ScenesSis | Task::CityscapesSis | Task::Ade20kSis => {
                matches!(c.arm, Arm::TsitSis | Arm::P2phdLite)
            }
        },
        if ast {
            "style transfer trains `full` or `no-fadain`"
        } else {
            "semantic synthesis trains `tsit-sis` or `p2phd-lite`"
        },
    )?;
    tree.require("tsit.aspect", c.aspect >= 1, "must be at least 1")?;
    tree.require(
        "tsit.aspect",
        c.aspect == 1 || c.task.is_folder(),
        "the small-scale tasks are square",
    )?;
    if c.task.is_folder() {
        tree.require(
            "data.path",
            tree.get("data.path").is_some()
                || tree.get("data.dataset").and_then(|v| v.as_str()) == Some("synthetic"),
            "a paper-scale task reads its dataset's folders from data.path",
        )?;
        let f = c.folder.as_ref();
        tree.require(
            "tsit.folder",
            f.is_some(),
            "a paper-scale task needs this section",
        )?;
        if let (Some(f), false) = (f, c.task.is_ast()) {
            tree.require(
                "tsit.folder.label_nc",
                f.label_nc >= 1,
                "must be at least 1",
            )?;
        }
        if let Some(l) = f.and_then(|f| f.load_size) {
            tree.require(
                "tsit.folder.load_size",
                l >= s,
                "must be at least tsit.size",
            )?;
        }
        tree.require(
            "tsit.perceptual",
            !matches!(c.perceptual, PerceptualConfig::Trained { .. }),
            "a paper-scale task takes `vgg19: { path }` (or `random` for a smoke test)",
        )?;
    }
    let m = &c.model;
    tree.require("tsit.model.nf", m.nf >= 1, "must be at least 1")?;
    tree.require("tsit.model.cap", m.cap >= 1, "must be at least 1")?;
    tree.require("tsit.model.ndf", m.ndf >= 1, "must be at least 1")?;
    tree.require("tsit.model.num_d", m.num_d >= 1, "must be at least 1")?;
    tree.require(
        "tsit.model.n_layers_d",
        m.n_layers_d >= 1,
        "must be at least 1",
    )?;
    tree.require(
        "tsit.model.vae_size",
        !m.vae || (m.vae_size >= 8 && (m.vae_size as u64).is_power_of_two()),
        "must be a power of two, at least 8",
    )?;
    tree.require(
        "tsit.model.vae",
        !(m.vae && ast),
        "the VAE is for semantic synthesis",
    )?;
    tree.require(
        "tsit.model.p2phd.n_down",
        s >> m.p2phd.n_down >= 1,
        "downsamples the image below one pixel",
    )?;
    tree.require("tsit.batch", c.batch >= 1, "must be at least 1")?;
    if !c.task.is_folder() {
        tree.require("tsit.train", c.train >= 1, "must be at least 1")?;
        tree.require("tsit.test", c.test >= 2, "must be at least 2")?;
    }
    tree.require("tsit.iterations", c.iterations >= 1, "must be at least 1")?;
    tree.require("tsit.eval.every", c.eval.every >= 1, "must be at least 1")?;
    tree.require(
        "tsit.checkpoint_every",
        c.checkpoint_every >= 1,
        "must be at least 1",
    )?;
    let pos = |v: f64| v > 0.0 && v.is_finite();
    let nonneg = |v: f64| v >= 0.0 && v.is_finite();
    tree.require("tsit.optim.lr_g", pos(c.optim.lr_g), "must be positive")?;
    tree.require("tsit.optim.lr_d", pos(c.optim.lr_d), "must be positive")?;
    tree.require(
        "tsit.optim.beta1",
        (0.0..1.0).contains(&c.optim.beta1),
        "must be in [0, 1)",
    )?;
    tree.require(
        "tsit.optim.beta2",
        (0.0..1.0).contains(&c.optim.beta2),
        "must be in [0, 1)",
    )?;
    tree.require(
        "tsit.optim.decay_from",
        (0.0..=1.0).contains(&c.optim.decay_from),
        "must be in [0, 1]",
    )?;
    for (k, v) in [
        ("lambda_feat", c.loss.lambda_feat),
        ("lambda_vgg", c.loss.lambda_vgg),
        ("lambda_kld", c.loss.lambda_kld),
    ] {
        tree.require(&format!("tsit.loss.{k}"), nonneg(v), "must be non-negative")?;
    }
    tree.require(
        "tsit.model.alpha",
        (0.0..=1.0).contains(&m.alpha),
        "must be in [0, 1]",
    )?;
    tree.require(
        "tsit.eval.alphas",
        c.eval.alphas.iter().all(|a| (0.0..=1.0).contains(a)),
        "every α must be in [0, 1]",
    )?;
    if let PerceptualConfig::Trained { epochs, .. } = c.perceptual {
        tree.require("tsit.perceptual", pos(epochs), "epochs must be positive")?;
    }
    tree.require(
        "tsit.eval.net_epochs",
        pos(c.eval.net_epochs),
        "must be positive",
    )?;
    if !c.task.is_folder() && c.task != Task::DigitsAst {
        tree.require(
            "tsit.batch",
            c.batch as usize <= c.train,
            "is larger than the training set",
        )?;
    }
    Ok(())
}

/// Where helper networks are cached: in a sweep folder, beside the runs (shared by them);
/// else in the run folder.
fn cache_dir(ctx: &RunContext) -> std::path::PathBuf {
    match ctx.dir().parent() {
        Some(p) if p.join("sweep.json").is_file() => p.join(".tsit-nets"),
        _ => ctx.dir().join("nets"),
    }
}

fn perceptual(c: &Config, d: &TaskData, dir: &Path, dev: Device) -> Result<Perceptual> {
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
            let file = nets::cache_file(dir, "perceptual", &key);
            nets::cached(&p.vs, &file, || {
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
                eprintln!("perceptual net (VGG-mini) trained: {}", file.display());
            })?;
            p.vs.freeze();
            Ok(p)
        }
    }
}

/// The loss network of a paper-scale run: VGG-19 from its file (or random VGG-mini, for
/// smoke tests); a VGG-mini trained in the project belongs to the small-scale tasks.
fn perceptual_fixed(c: &Config, dev: Device) -> Result<Perceptual> {
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

/// A paper-scale run's end: the test items' outputs as PNG files in `test_outputs/` (for an
/// external FID and segmenter, which the project cannot ship), a grid, and the summary.
fn write_test_outputs(
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
    let (mut feats_fake, mut feats_real) = (Vec::new(), Vec::new());
    let mut shown = Vec::new();
    let mut i = 0;
    while i < n {
        let k = (c.batch as usize).min(n - i);
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
        if let Some(net) = &inception {
            // Images in [−1, 1] to pytorch-fid's [0, 1].
            feats_fake.push(net.features(&((&out + 1.0) / 2.0)).to_device(Device::Cpu));
            feats_real.push(net.features(&((&img + 1.0) / 2.0)).to_device(Device::Cpu));
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
        if shown.len() < c.eval.grid {
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

/// Helper-net training data: digits (plain or styled, labels) or scene renders (per-pixel
/// labels; turned into presence where a net wants it).
fn render_for(
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

fn train_helper(
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
fn judges(c: &Config, d: &TaskData, dir: &Path, dev: Device) -> Result<(Judges, JudgeInfo)> {
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
        let file = nets::cache_file(dir, "digits", &key);
        let oracle = d.test.oracle.to_device(dev);
        let labels = d.test.labels.to_device(dev);
        nets::cached(&net.vs, &file, || {
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
                eprintln!(
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
        let file = nets::cache_file(dir, "segmenter", &key);
        nets::cached(&seg.vs, &file, || {
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
        let file = nets::cache_file(dir, "scenenet", &key);
        nets::cached(&feat.vs, &file, || {
            let batch = |idx: &[i64], rng: &mut Rng| render_for(c.task, d, idx, rng, dev);
            train_helper(&feat.vs, c.task, n, ep, 1235, &|x| feat.logits(x), &batch);
        })?;
        feat.vs.freeze();
        Judges::Scenes(seg, feat)
    };
    info.judges_secs = Some(t0.elapsed().as_secs_f64());
    Ok((j, info))
}

/// The error a panic in a step carries: a failed collective of the synchronised BatchNorm
/// (which has no error path in a forward), or any other panic's message.
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    match panic.downcast::<Error>() {
        Ok(e) => *e,
        Err(p) => Error::msg(
            reprise_core::error::panic_message(p.as_ref())
                .unwrap_or_else(|| "a panic in the training step".into()),
        ),
    }
}

fn build_gan(c: &Config, p: Perceptual, in_c: i64, dev: Device) -> Gan {
    let g: Box<dyn Generator> = match c.arm {
        Arm::P2phdLite => Box::new(P2phd::new(&c.model.p2phd, in_c, c.model.init, dev)),
        arm => Box::new(Tsit::new(
            &c.model,
            (c.size, c.size * c.aspect),
            in_c,
            c.task.is_ast(),
            arm == Arm::Full,
            dev,
        )),
    };
    let conditional_d = !c.task.is_ast();
    let d = Discriminator::new(&c.model, if conditional_d { 3 + in_c } else { 3 }, dev);
    let opt_g = train::adam(&c.optim, g.vs());
    let opt_d = train::adam(&c.optim, &d.vs);
    Gan {
        g,
        d,
        p,
        opt_g,
        opt_d,
        conditional_d,
    }
}

fn save(ctx: &RunContext, gan: &Gan, step: u64) -> Result<()> {
    let mut ck = Checkpoint::new();
    ck.put_vars("g", gan.g.vs());
    ck.put_vars("d", &gan.d.vs);
    gan.opt_g.save(&mut ck, "opt_g");
    gan.opt_d.save(&mut ck, "opt_d");
    ck.set("step", step);
    ctx.checkpoints().save(step, &ck)?;
    Ok(())
}

/// Checks, copying nothing, that a checkpoint holds every tensor of G, D and their optimizers
/// with its kind and shape, and the step.
fn fits(gan: &Gan, ck: &Checkpoint) -> Result<()> {
    ck.check_vars("g", gan.g.vs())?;
    ck.check_vars("d", &gan.d.vs)?;
    gan.opt_g.check(ck, "opt_g")?;
    gan.opt_d.check(ck, "opt_d")?;
    ck.get::<u64>("step").map(|_| ())
}

fn load(gan: &mut Gan, ck: &Checkpoint) -> Result<()> {
    fits(gan, ck)?;
    ck.load_vars("g", gan.g.vs())?;
    ck.load_vars("d", &gan.d.vs)?;
    gan.opt_g.load(ck, "opt_g")?;
    gan.opt_d.load(ck, "opt_d")?;
    Ok(())
}

/// Loads official weights (`tsit.from`, see [`official`]) into the generator (and the
/// discriminator when the file has it), and writes the generator evaluated to
/// `generator.safetensors` in the run folder.
fn load_official(ctx: &RunContext, f: &std::path::Path, gan: &Gan) -> Result<()> {
    let named = reprise_core::nn::read_weights(
        f,
        "the official latest_net_G/D/E.pth convert with scripts/convert_tsit_ckpt.py",
    )?;
    let map = official::to_reprise(&named)?;
    let from = f.display().to_string();
    official::load(gan.g.vs(), official::Store::G, &map, &from)?;
    if map.keys().any(|(s, _)| *s == official::Store::D) {
        official::load(&gan.d.vs, official::Store::D, &map, &from)?;
    }
    gan.g
        .vs()
        .save(ctx.dir().join("generator.safetensors"))
        .map_err(|e| Error::msg(format!("cannot write generator.safetensors: {e}")))?;
    eprintln!("evaluating {from} (no training)");
    tracing::info!("evaluating {from} (no training)");
    Ok(())
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

/// The training items of `step`'s batch of `b` from `n`: the step's slice of its epoch's
/// seeded shuffle, the last partial batch dropped (`Sampling::Epochs`), or `b` draws from
/// `rng` with replacement.
fn batch_items(
    n: usize,
    b: usize,
    (sampling, seed, step): (Sampling, u64, u64),
    rng: &mut Rng,
) -> Vec<usize> {
    match sampling {
        Sampling::Replacement => (0..b).map(|_| rng.below(n)).collect(),
        Sampling::Epochs => {
            let per = (n / b.max(1)).max(1) as u64;
            let order = reprise_core::data::batch_indices(n, b, seed, step / per, true, true);
            order[(step % per) as usize]
                .iter()
                .map(|&i| i as usize)
                .collect()
        }
    }
}

/// Where a run's training batches come from.
enum Source {
    /// The small-scale tasks (generated or installed data, held in memory).
    Small(TaskData),
    /// A paper-scale dataset's folders, decoded per batch.
    Folder(folders::FolderData),
}

impl Source {
    fn train_len(&self) -> usize {
        match self {
            Source::Small(d) => d.train_len(),
            Source::Folder(f) => f.train.len(),
        }
    }

    /// The training batch of `step`: its content items are the step's slice of its epoch's
    /// seeded shuffle (`Sampling::Epochs`), or drawn from `rng` with replacement.
    fn batch(
        &self,
        task: Task,
        b: usize,
        (sampling, seed, step): (Sampling, u64, u64),
        rng: &mut Rng,
    ) -> Result<data::Batch> {
        let idx = batch_items(self.train_len(), b, (sampling, seed, step), rng);
        match self {
            Source::Small(d) => Ok(d.batch_of(&idx, rng)),
            Source::Folder(f) => {
                let (content, img) = f.load(true, &idx, Some(rng))?;
                Ok(if task.is_ast() {
                    data::Batch {
                        target: content.shallow_clone(),
                        content,
                        real: img.shallow_clone(),
                        style: Some(img),
                    }
                } else {
                    data::Batch {
                        content,
                        style: None,
                        target: img.shallow_clone(),
                        real: img,
                    }
                })
            }
        }
    }
}

/// Trains and evaluates one run (one arm, one seed).
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let h = ctx.header().clone();
    // Data-parallel: each rank trains on its rows of every batch (an equal share).
    let par = ctx.parallel();
    par.even(c.batch)?;
    let seed = h.seed;
    let dev = ctx.device();
    let dir = cache_dir(ctx);
    let (src, p, ev, judge_info, in_c) = if c.task.is_folder() {
        let fc = c
            .folder
            .clone()
            .ok_or_else(|| Error::Data("needs `tsit.folder`".into()))?;
        let root = if h.data.dataset == "synthetic" {
            // Smoke tests: a tiny dataset in the task's own layout, read by the real code.
            folders::write_synthetic(
                c.task,
                &ctx.dir().join("synthetic-data"),
                &fc,
                c.size,
                c.size * c.aspect,
                2 * c.batch.max(1) as usize,
            )?
        } else {
            h.data
                .path
                .clone()
                .ok_or_else(|| Error::Data("a paper-scale tsit task reads `data.path`".into()))?
        };
        let f = folders::FolderData::new(c.task, &root, &fc, c.size, c.size * c.aspect)?;
        let in_c = f.content_channels();
        let p = perceptual_fixed(&c, dev)?;
        (Source::Folder(f), p, None, JudgeInfo::default(), in_c)
    } else {
        let mut d = TaskData::new(&c, &h.data)?;
        let p = perceptual(&c, &d, &dir, dev)?;
        // The judges score rank 0's evaluation; the other ranks of a data-parallel run only train.
        let judged = par
            .is_main()
            .then(|| judges(&c, &d, &dir, dev))
            .transpose()?;
        let test = d.take_test();
        let in_c = if c.task == Task::ScenesSis { 7 } else { 3 };
        let (ev, judge_info) = match judged {
            Some((judges, info)) => (Some(Evaluator::new(judges, test)), info),
            None => (None, JudgeInfo::default()),
        };
        (Source::Small(d), p, ev, judge_info, in_c)
    };
    if c.batch as usize > src.train_len() {
        return Err(Error::Data(format!(
            "tsit.batch {} is larger than the training set ({} items)",
            c.batch,
            src.train_len()
        )));
    }
    tch::manual_seed(seed as i64);
    let mut gan = build_gan(&c, p, in_c, dev);
    // FADE's BatchNorm over every rank's rows, as the official code's SyncBatchNorm.
    gan.g.sync_batch_norm(&par);
    let total = ctx.iterations(c.iterations);
    // An epoch as the official loader counts it (drop_last): ⌊items / batch⌋ iterations.
    let per_epoch = (src.train_len() / (c.batch as usize).max(1)).max(1) as u64;
    let total = if c.from.is_some() { 0 } else { total };
    let mut step = 0u64;
    if let Some(f) = &c.from {
        load_official(ctx, f, &gan)?;
    } else if let Some((_, ck)) = ctx.resume_point(|ck| fits(&gan, ck))? {
        load(&mut gan, &ck)?;
        step = ck.get("step")?;
    }
    // Rank 0's networks on every rank: the GAN, and the loss network (trained or read from a
    // cache on each rank).
    let mut steps = Steps::begin(ctx, total, step, &[gan.g.vs(), &gan.d.vs, &gan.p.vs])?;
    let mut data_secs = 0.0;
    let mut sums = [0.0f64; 6];
    let mut n_log = 0u64;
    let vae = c.model.vae;
    while steps.start_next() {
        let step = steps.step();
        let t0 = Instant::now();
        let mut rng = reprise_core::seed::step_rng(seed, step);
        let b = src.batch(c.task, c.batch as usize, (c.sampling, seed, step), &mut rng)?;
        data_secs += t0.elapsed().as_secs_f64();
        let f = train::lr_factor(&c.optim, step, total, per_epoch);
        let rows = |t: &Tensor| par.shard(&t.to_device(dev));
        let mine = data::Batch {
            content: rows(&b.content)?,
            style: b.style.as_ref().map(rows).transpose()?,
            real: rows(&b.real)?,
            target: rows(&b.target)?,
        };
        let n = c.batch;
        let (start, len) = par.rows(n)?;
        // This rank's rows of the noise drawn for the whole batch.
        let mut noise = |_: i64| train::draw_noise(&c, n, dev).map(|z| z.narrow(0, start, len));
        let st = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gan.step_with(
                &c,
                &mine,
                (c.optim.lr_g * f, c.optim.lr_d * f),
                &par,
                &mut noise,
            )
        }))
        .unwrap_or_else(|panic| Err(StepError::Failed(panic_error(panic))))
        .map_err(|e| e.at(step))?;
        for (s, v) in sums
            .iter_mut()
            .zip([st.g_gan, st.g_fm, st.g_vgg, st.g_kld, st.d_real, st.d_fake])
        {
            *s += v;
        }
        n_log += 1;
        steps.end_step(&format!(
            "G {:.3} FM {} P {} D {:.3}/{:.3}",
            st.g_gan,
            reprise_core::progress::term(st.g_fm, 3),
            reprise_core::progress::term(st.g_vgg, 3),
            st.d_real,
            st.d_fake
        ));
        let step = steps.step();
        let eval_now = step.is_multiple_of(c.eval.every) || step == total;
        if step.is_multiple_of(50) || eval_now {
            let k = n_log.max(1) as f64;
            let names = ["g_gan", "g_fm", "g_vgg", "g_kld", "d_real", "d_fake"];
            let mut vals: Vec<(String, f64)> = names
                .iter()
                .zip(sums)
                .map(|(n, s)| (n.to_string(), s / k))
                .collect();
            vals.push(("lr_factor".into(), f));
            (sums, n_log) = ([0.0; 6], 0);
            if let (true, Some(ev)) = (eval_now, &ev) {
                let out = ev.generate(gan.g.as_ref(), vae, Mode::test(c.eval.train_bn));
                for (k, v) in ev.metrics(&out) {
                    vals.push((format!("eval_{k}"), v));
                }
            }
            let refs: Vec<(&str, f64)> = vals.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            ctx.log_metrics(step, step as f64 / total as f64, &refs)?;
        }
        if step.is_multiple_of(c.checkpoint_every) || eval_now {
            save(ctx, &gan, step)?;
        }
        steps.stop_if_interrupted(ctx, |s| save(ctx, &gan, s))?;
    }
    let (step, done) = (steps.step(), steps.ran());
    let step_ms = steps.finish();
    if !par.is_main() {
        // Rank 0 evaluates and writes the summary and the report.
        return Ok(());
    }
    let mut summary = match (&ev, &src) {
        (Some(ev), _) => final_eval(ctx, &c, &mut gan, ev, step, step_ms, judge_info)?,
        (None, Source::Folder(f)) => write_test_outputs(ctx, &c, &gan, f, step, step_ms)?,
        (None, Source::Small(_)) => unreachable!("small tasks have an evaluator"),
    };
    // The batches are drawn on the training thread: their share of an iteration.
    if done > 0 {
        summary.data_ms = Some(data_secs * 1000.0 / done as f64);
    }
    ctx.write_summary(&summary)?;
    let md = report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

fn final_eval(
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
            .map(|style| scores(&eval::pix_adain(&t.content, style))),
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

    #[test]
    fn epoch_sampling_visits_each_item_at_most_once_an_epoch() {
        let (n, b) = (11, 3);
        let mut rng = Rng::new(0);
        let epoch = |e: u64, rng: &mut Rng| -> Vec<usize> {
            (3 * e..3 * e + 3)
                .flat_map(|step| batch_items(n, b, (Sampling::Epochs, 7, step), rng))
                .collect()
        };
        let first = epoch(0, &mut rng);
        let mut seen = first.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9, "3 batches of 3 distinct items; 2 dropped");
        let second = epoch(1, &mut rng);
        assert_ne!(first, second, "a new shuffle each epoch");
        assert_eq!(
            first,
            epoch(0, &mut Rng::new(5)),
            "seeded by the run, not the step rng"
        );
        let drawn = batch_items(n, b, (Sampling::Replacement, 7, 0), &mut Rng::new(1));
        assert_eq!(drawn.len(), 3);
        let mut r = Rng::new(1);
        assert_eq!(drawn, (0..3).map(|_| r.below(n)).collect::<Vec<_>>());
    }
}
