//! `robust-transfer`: "Do Adversarially Robust ImageNet Models Transfer Better?" (Salman,
//! Ilyas, Engstrom, Kapoor, Madry; NeurIPS 2020, arXiv 2007.08489).
//!
//! One run is one source arm (`std`, PGD at an L2 or L∞ radius, or the Gaussian-noise control)
//! at one source seed: the source is trained ([`train`]) or loaded (`source.from`), attacked
//! on its holdout split, then transferred to every target ([`transfer`]) in fixed-feature and
//! full-network mode over the transfer seeds. [`report`] computes the paper's claims from a
//! sweep of such runs.

pub mod claims;
pub mod config;
pub mod data;
pub mod model;
pub mod report;
pub mod summary;
pub mod train;
pub mod transfer;

use config::SECTION;
pub use config::{validate, Arm, Config};

use crate::model::Net;
use crate::summary::{SourceMetrics, Summary};
use crate::transfer::Mode;
use reprise_core::attack::Pgd;
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::batch_indices;
use reprise_core::data::prefetch::Prefetch;
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::optim::{Optimizer, Schedule};
use reprise_core::plan::Record;
use reprise_core::run::{Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::train::{Averages, Steps};
use reprise_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "robust-transfer",
        title: "Do Adversarially Robust ImageNet Models Transfer Better? (arXiv 2007.08489)",
        validate,
        config: |t| reprise_core::run::section_with_defaults::<Config>(t, SECTION),
        inputs,
        plan: Some(plan),
        exports: &[reprise_core::run::Export {
            name: "source",
            file: Some("source.safetensors"),
            prefix: "model",
            inputs: Some("images in [0, 1], then (x - normalize.mean) / normalize.std, which the state dict does not hold"),
        }],
        data_parallel: true,
        run,
        report: report::report_run,
        report_sweep: report::report_sweep,
    }
}

/// `runner plan`: times `steps` source-training steps (the attack and the update) of the spec's
/// network, batch and attack on `dev` after two warm-up ones, on random inputs of its image
/// size; a run takes `epochs` × ⌈examples / batch⌉ of them, counted from the dataset when it is
/// in place (the transfers and evaluations are not counted).
pub fn plan(
    tree: &SpecTree,
    dev: tch::Device,
    steps: usize,
    ranks: usize,
) -> Result<reprise_core::run::StepPlan> {
    let c: Config = tree.typed(SECTION)?;
    let h = tree.header()?;
    let arm = Arm::parse(&c.source.arm).map_err(Error::msg)?;
    let (chans, size, classes) = match h.data.dataset.as_str() {
        "imagefolder" => (3, h.data.image_size.map_or(224, |s| s.crop as i64), 1000),
        "mnist-5k" | "mnist-idx" | "fashion-mnist" => (1, 28, 10),
        "digits" => (1, 8, 10),
        _ => (3, 32, 10),
    };
    let classes = c
        .source
        .classes
        .as_ref()
        .map_or(classes, |v| v.len() as i64);
    let size = if c.source.augment.resized_crop > 0 {
        c.source.augment.resized_crop
    } else {
        size
    };
    let net = model::Net::new(&c.model, &c.normalize, classes, c.source.init, dev, 0);
    let mut opt = c.source.amp.optimizer(train::sgd(
        net.params(true),
        c.source.momentum,
        c.source.weight_decay,
    ));
    // One rank's share of the batch.
    let batch = c.source.batch.div_ceil(ranks.max(1)) as i64;
    let x = Tensor::rand([batch, chans, size, size], (tch::Kind::Float, dev));
    let y = Tensor::randint(classes, [batch], (tch::Kind::Int64, dev));
    let t = reprise_core::timing::time_ms(dev, 2, steps, || {
        train::train_step(
            &net,
            &mut opt,
            (arm, arm.eps(), &c.source.attack),
            (&x, &y),
            (c.source.lr, c.source.amp),
            &reprise_core::parallel::Parallel::single(),
        )
        .map(|_| ())
    })?;
    let (total, from) = match reprise_core::data::train_size(&h.data) {
        Some((n, how)) => (
            Some(c.source.epochs * n.div_ceil(c.source.batch) as u64),
            format!("{} epochs of {n} training images ({how})", c.source.epochs),
        ),
        None => (
            None,
            format!(
                "unknown: {} epochs of a training set not in place here ({})",
                c.source.epochs,
                h.data
                    .path
                    .as_ref()
                    .map_or("no data.path".into(), |p| p.display().to_string())
            ),
        ),
    };
    Ok(reprise_core::run::StepPlan {
        what: format!(
            "one {} source step at {size}×{size}: batch {}{}, {} attack step(s)",
            c.source.arm,
            c.source.batch,
            reprise_core::run::per_rank(batch, ranks),
            c.source.attack.steps
        ),
        step_ms: t.median,
        spread_ms: (t.min, t.max),
        steps: total,
        steps_from: from,
        params: reprise_core::run::trained_params(&net.vs),
    })
}

/// The inputs a run reads that reprise cannot fetch: the source's dataset (unless the source
/// is loaded), the source weights (`source.from`: a file, or a run folder's
/// `source.safetensors`) and each transfer target's dataset.
pub fn inputs(tree: &SpecTree) -> Result<Vec<Input>, SpecError> {
    let c: Config = tree.typed(SECTION)?;
    let h = tree.header()?;
    let mut v = Vec::new();
    match &c.source.from {
        Some(p) => {
            let file = if p.is_dir() {
                p.join("source.safetensors")
            } else {
                p.clone()
            };
            v.push(Input::new(
                format!("{SECTION}.source.from"),
                file,
                InputKind::RobustResnet50,
            ));
        }
        None => v.extend(of_data("data", &h.data)),
    }
    for (i, t) in c.transfer.targets.iter().enumerate() {
        v.extend(of_data(
            &format!("{SECTION}.transfer.targets.{i}.data"),
            &t.data,
        ));
    }
    Ok(v)
}

fn save_source(ctx: &RunContext, net: &Net, opt: &Optimizer, step: u64) -> Result<()> {
    let mut ck = Checkpoint::new();
    ck.put_vars("model", &net.vs);
    opt.save(&mut ck, "optim");
    ck.set("step", step);
    ctx.checkpoints().save(step, &ck)?;
    Ok(())
}

/// Checks, copying nothing, that a source checkpoint holds every weight and optimizer state
/// with its kind and shape, and the step.
fn source_checkpoint_fits(net: &Net, opt: &Optimizer, ck: &Checkpoint) -> Result<()> {
    ck.check_vars("model", &net.vs)?;
    opt.check(ck, "optim")?;
    ck.get::<u64>("step").map(|_| ())
}

fn load_source_checkpoint(net: &Net, opt: &mut Optimizer, ck: &Checkpoint) -> Result<u64> {
    source_checkpoint_fits(net, opt, ck)?;
    ck.load_vars("model", &net.vs)?;
    opt.load(ck, "optim")?;
    ck.get("step")
}

/// Where a `source.from` points: a run folder's `source.safetensors`, or the file itself.
pub(crate) fn source_file(from: &Path) -> PathBuf {
    if from.is_dir() {
        from.join("source.safetensors")
    } else {
        from.to_path_buf()
    }
}

/// Trains the source (resuming from the last checkpoint); returns the milliseconds per step.
fn train_source(
    ctx: &mut RunContext,
    c: &Config,
    arm: Arm,
    net: &Net,
    (train, data_spec): (&data::Images, &reprise_core::spec::DataSpec),
) -> Result<f64> {
    let s = &c.source;
    let seed = ctx.seed();
    let dev = ctx.device();
    let n = train.len();
    if s.batch > n {
        return Err(Error::Data(format!(
            "batch {} is larger than the source's training set ({n})",
            s.batch
        )));
    }
    let per_epoch = n.div_ceil(s.batch) as u64;
    let total = ctx.iterations(s.epochs * per_epoch);
    let schedule = Schedule::MultiStep {
        milestones: s.decay_epochs.iter().map(|e| e * per_epoch).collect(),
        gamma: s.gamma,
    };
    let mut opt = s
        .amp
        .optimizer(train::sgd(net.params(true), s.momentum, s.weight_decay))
        .data_parallel(ctx.parallel());
    ctx.record_share("source", s.batch, s.amp)?;
    let mut step = 0;
    let fits = |ck: &Checkpoint| source_checkpoint_fits(net, &opt, ck);
    if let Some((_, ck)) = ctx.resume_point(fits)? {
        step = load_source_checkpoint(net, &mut opt, &ck)?;
    }
    // Data-parallel ranks split each batch (see train::train_step).
    let par = ctx.parallel();
    par.rows(s.batch as i64)?;
    let mut steps = Steps::begin(ctx, total, step, &[&net.vs])?;
    let mut means = Averages::new(&["loss"]);
    // This rank's rows of each step's batch, read, decoded and augmented ahead of the step by
    // a loader thread (`Prefetch`) as a DataLoader over a DistributedSampler would: the
    // union of the ranks' rows is the one-process batch.
    let workers = data_spec.workers_per_rank(par.world());
    let mut batches = {
        let images = train.share(workers);
        let (aug, batch, par) = (s.augment, s.batch, Arc::clone(&par));
        let pin = dev.is_cuda();
        let mut order: (u64, Vec<Vec<i64>>) = (u64::MAX, Vec::new());
        Prefetch::new(step, total, data_spec.prefetch_depth(), move |step| {
            let epoch = step / per_epoch;
            if order.0 != epoch {
                // The batch order depends on the source seed only: every arm sees the same data.
                order = (epoch, batch_indices(n, batch, seed, epoch, true, false));
            }
            let idx = &order.1[(step % per_epoch) as usize];
            let rows = par.rows(idx.len() as i64)?;
            // A streamed ImageFolder crops each whole decoded image (`Images::train_rows`).
            let (x, y) = images.train_rows(
                idx,
                rows,
                &aug,
                &mut reprise_core::seed::step_rng(seed, step),
            )?;
            // Pinned host memory, for a copy to the GPU that does not wait.
            let (x, y) = if pin {
                (x.pin_memory(dev), y.pin_memory(dev))
            } else {
                (x, y)
            };
            Ok((idx.len() as i64, x, y))
        })
    };
    while steps.start_next() {
        let step = steps.step();
        let (rows, x, y) = batches.take(step)?;
        let copy = |t: &Tensor| t.to_device_(dev, t.kind(), true, false);
        let shard = par.local_shard(rows, [copy(&x), copy(&y)])?;
        let ramp = if s.eps_ramp_epochs > 0 {
            ((step + 1) as f64 / (s.eps_ramp_epochs * per_epoch) as f64).min(1.0)
        } else {
            1.0
        };
        let lr = schedule.lr(s.lr, step, 0);
        let loss = train::train_step_rows(
            net,
            &mut opt,
            (arm, arm.eps() * ramp, &s.attack),
            &shard,
            (lr, s.amp),
            &par,
        )
        .map_err(|e| Error::msg(format!("source training, step {step}: {e}")))?;
        if !loss.is_finite() {
            return Err(Error::Diverged {
                step,
                why: format!("training loss {loss}"),
            });
        }
        means.add(&[loss]);
        steps.end_step(&format!("{arm} loss {loss:.3}"));
        let step = steps.step();
        if steps.at_every(per_epoch) {
            let mut vals = means.take();
            vals.push(("lr", lr));
            ctx.log_metrics(step, step as f64 / per_epoch as f64, &vals)?;
            let ep = step.div_ceil(per_epoch);
            if ep.is_multiple_of(s.checkpoint_every) || step == total {
                save_source(ctx, net, &opt, step)?;
            }
        }
        steps.stop_if_interrupted(ctx, |s| save_source(ctx, net, &opt, s))?;
    }
    drop(batches);
    if let data::Images::Folder(f) = train {
        tracing::info!(
            "source training: rank {} of {} decoded {} training images on {workers} threads",
            par.rank(),
            par.world(),
            f.decoded()
        );
    }
    Ok(steps.finish())
}

/// Robust evaluation of the source on its holdout split: clean accuracy and PGD accuracy at
/// each point of [`train::eval_points`].
fn evaluate_source(
    c: &Config,
    arm: Arm,
    net: &Net,
    holdout: &data::Images,
    step_ms: f64,
) -> Result<SourceMetrics> {
    let mut src_robust = BTreeMap::new();
    for (norm, eps) in train::eval_points(arm, &c.eval) {
        let attack = Pgd::eval(norm, eps, c.eval.pgd_steps);
        let a = train::accuracy(net, holdout, Some(&attack), c.eval.batch)?;
        src_robust.insert(train::point_key(norm, eps), a);
    }
    Ok(SourceMetrics {
        src_clean: train::accuracy(net, holdout, None, c.eval.batch)?,
        src_robust,
        source_step_ms: step_ms,
    })
}

/// Trains (or loads) the source, evaluates it, and transfers it to every target. Finished
/// stages are kept in the run folder (`source.safetensors`, `source.json`, one line per
/// transfer in `transfers.jsonl`), so a resumed run redoes only what was unfinished.
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let arm = Arm::parse(&c.source.arm).map_err(Error::msg)?;
    let h = ctx.header().clone();
    let dev = ctx.device();
    let dir = ctx.dir().to_path_buf();
    let par = ctx.parallel();
    // Data-parallel, every rank follows rank 0's ledger: the same stages are skipped or run.
    // (The source's evaluation record and the transfers' journal are shared where opened.)
    ctx.share_files(&["source.safetensors"])?;
    let transfer_only = c.source.from.is_some() && !c.eval.source;
    let splits = if transfer_only {
        None
    } else {
        Some(data::source_splits(&h.data, c.source.classes.as_deref())?)
    };
    let classes = match (&splits, &c.source.from) {
        (Some(s), _) => s.0.classes() as i64,
        (None, Some(from)) => head_size(&source_file(from))?,
        (None, None) => unreachable!("transfer_only needs source.from"),
    };
    let mut net = Net::new(&c.model, &c.normalize, classes, c.source.init, dev, h.seed);
    let src_file = dir.join("source.safetensors");
    let mut step_ms = f64::NAN;
    if src_file.is_file() {
        net.load_backbone_file(&src_file)?;
        net_load_head(&net, &src_file)?;
        ctx.begin(u64::MAX)?;
    } else if let Some(from) = &c.source.from {
        let f = source_file(from);
        net.load_backbone_file(&f)?;
        // The head too where the file has one for the source's classes: a released model's
        // source accuracy is then its own, never a random head's.
        let what = match (file_head_size(&f)?, !transfer_only) {
            (Some(n), _) if n == classes => {
                net_load_head(&net, &f)?;
                format!("backbone and head (fc, {n} classes)")
            }
            (Some(n), true) => {
                return Err(Error::msg(format!(
                    "{}: its head (fc) has {n} outputs, the source data {classes} classes: the source evaluation would be of another task's head; give the matching data, or set {SECTION}.eval.source=false to only transfer",
                    f.display()
                )))
            }
            (None, true) => {
                return Err(Error::msg(format!(
                    "{}: holds no head (fc.weight, fc.bias), so the source evaluation would measure a random one; convert the whole network, or set {SECTION}.eval.source=false to only transfer",
                    f.display()
                )))
            }
            (_, false) => "backbone (the head is not used: transfers only)".to_string(),
        };
        reprise_core::note!("source {what} loaded from {}", f.display());
        tracing::info!("source {what} loaded from {}", f.display());
        net.save(&src_file)?;
        ctx.begin(0)?;
    } else {
        let train = &splits.as_ref().expect("loaded unless transfer-only").0;
        step_ms = train_source(ctx, &c, arm, &net, (train, &h.data))?;
        net.save(&src_file)?;
    }
    // Rank 0's source on every rank, its BatchNorm statistics included (DDP's buffer
    // broadcast): the transfers' eval-mode features then agree.
    par.broadcast_vars(&net.vs)?;
    // The source's evaluation on its holdout, once (none when only transferring).
    let mut source: Record<SourceMetrics> = Record::open(ctx, "source.json")?;
    if let Some(splits) = &splits {
        source.stage(|| {
            reprise_core::note!(
                "evaluating the source on {} holdout examples",
                splits.1.len()
            );
            evaluate_source(&c, arm, &net, &splits.1, step_ms)
        })?;
    }
    let source = source.into_value();
    let outcomes = transfer::transfer_all(ctx, &c, &net)?;
    if !par.is_main() {
        // Rank 0 writes the summary and the report.
        return Ok(());
    }
    let mut means = BTreeMap::new();
    for mode in [Mode::Fixed, Mode::Full] {
        for t in &c.transfer.targets {
            let accs: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.mode == mode && o.target == t.name)
                .map(|o| o.acc)
                .collect();
            if !accs.is_empty() {
                let m = accs.iter().sum::<f64>() / accs.len() as f64;
                means.insert(format!("{}_{}", mode.name(), t.name), m);
            }
        }
    }
    ctx.write_summary(&Summary {
        arm,
        kind: arm.kind().to_string(),
        eps: arm.eps(),
        source_seed: h.seed,
        source,
        means: summary::Means(means),
        transfers: outcomes,
        smoke: false,
    })?;
    let md = report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

/// The number of outputs of the head `fc` in a safetensors file (2 when it has none).
fn head_size(file: &Path) -> Result<i64> {
    Ok(file_head_size(file)?.unwrap_or(2))
}

/// The number of outputs of the head `fc` in a safetensors file, if it has one.
fn file_head_size(file: &Path) -> Result<Option<i64>> {
    let named = Tensor::read_safetensors(file)
        .map_err(|e| Error::msg(format!("{}: cannot read safetensors: {e}", file.display())))?;
    Ok(named
        .iter()
        .find(|(k, _)| k == "fc.weight")
        .map(|(_, t)| t.size()[0]))
}

/// Loads the head `fc` of a saved source too (the backbone loader skips it): both its tensors
/// must be in the file with the head's shapes.
fn net_load_head(net: &Net, file: &Path) -> Result<()> {
    let named = Tensor::read_safetensors(file)
        .map_err(|e| Error::msg(format!("{}: cannot read safetensors: {e}", file.display())))?;
    reprise_core::nn::load_named(
        &net.vs,
        &named,
        &|n| n.starts_with("fc."),
        &file.display().to_string(),
    )
}
