//! `jem`: "Your Classifier is Secretly an Energy Based Model and You Should Treat it Like One"
//! (Grathwohl et al., ICLR 2020, arXiv 1912.03263).
//!
//! A classifier's logits f(x) define p(x, y) ∝ exp f(x)[y]. Training adds to the cross-entropy
//! on labelled data the term log p(x), trained by persistent contrastive divergence with SGLD
//! samples from a replay buffer ([`sampler`]). A spec's `jem.arm` chooses the run: the
//! controlled baseline (`base`, w_px = 0), `jem`, or the longer-trained baseline (`base-long`).
//! Evaluation ([`eval`]) covers accuracy, NLL, calibration, OOD detection with three scores,
//! class-conditional samples and accuracy under PGD; [`report`] computes the paper's claims
//! from a sweep's runs.

pub mod claims;
pub mod config;
pub mod eval;
pub mod model;
pub mod report;
pub mod sampler;
pub mod summary;

pub use config::{Arm, Config};

use crate::eval::EvalData;
use crate::model::Classifier;
use crate::sampler::{sgld_with, ReplayBuffer};
use crate::summary::Summary;
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::augment::{Augment, Loader};
use reprise_core::data::{self, Rng};
use reprise_core::error::StepError;
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::optim::{Optimizer, Rule, Schedule};
use reprise_core::parallel::Parallel;
use reprise_core::predictions::Predictions;
use reprise_core::run::{per_rank, Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::train::Steps;
use reprise_core::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "jem",
        title: "Your Classifier is Secretly an Energy Based Model (arXiv 1912.03263)",
        validate,
        config: |t| reprise_core::run::section_with_defaults::<Config>(t, "jem"),
        inputs,
        plan: Some(plan),
        exports: &[reprise_core::run::Export {
            name: "model",
            file: Some("model.safetensors"),
            prefix: "model",
        }],
        data_parallel: true,
        run,
        report: report::report_run,
        report_sweep: report::report_sweep,
    }
}

/// `runner plan`: times `steps` training iterations of the spec's model, batch and sampler on
/// `dev` after two warm-up ones, on random inputs of the dataset's shape (the iteration a run
/// repeats `iterations` times; its evaluations are not counted).
pub fn plan(
    tree: &SpecTree,
    dev: Device,
    steps: usize,
    ranks: usize,
) -> Result<reprise_core::run::StepPlan> {
    let c: Config = tree.typed("jem")?;
    let h = tree.header()?;
    let shape: Vec<i64> = match h.data.dataset.as_str() {
        "digits" => vec![1, 8, 8],
        "mnist-5k" | "mnist-idx" | "fashion-mnist" => vec![1, 28, 28],
        _ => vec![3, 32, 32],
    };
    let classes: usize = if h.data.dataset.ends_with("100") {
        100
    } else {
        10
    };
    let model = Classifier::new(&c.model, &shape, classes as i64, dev, 0);
    let mut opt = optimizer(&c, &model);
    let (w_px, w_xy, full) = c.arm_budget();
    let mut buffer =
        (w_px > 0.0 || w_xy > 0.0).then(|| ReplayBuffer::new(c.buffer.size, &shape, classes, 1));
    // One rank's share of the batch.
    let rows = c.optim.batch.div_ceil(ranks.max(1)) as i64;
    let mut dims = vec![rows];
    dims.extend_from_slice(&shape);
    let x = Tensor::rand(dims.as_slice(), (Kind::Float, dev)) * 2.0 - 1.0;
    let y = Tensor::randint(classes as i64, [rows], (Kind::Int64, dev));
    let mut rng = Rng::new(0);
    let mut failed = None;
    let ms = reprise_core::timing::median_ms(dev, 2, steps, || {
        let xd = (w_px > 0.0).then_some(&x);
        if let Err(e) = train_step(
            &model,
            &mut opt,
            buffer.as_mut(),
            &c,
            &StepBatch {
                weights: (w_px, w_xy),
                labelled: (&x, &y),
                data: xd,
                lr: c.optim.lr,
            },
            (&mut rng, &mut sampler::gaussian),
            &Parallel::single(),
        ) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        // Random inputs can trip the energy guard; the time is still the step's.
        tracing::info!("plan: a timed step stopped at its guard: {e}");
    }
    Ok(reprise_core::run::StepPlan {
        what: format!(
            "one {} iteration: batch {}{}, SGLD K = {}{}",
            c.arm.name(),
            c.optim.batch,
            per_rank(rows, ranks),
            c.sgld.steps,
            if w_px > 0.0 {
                ""
            } else {
                " (not used by this arm)"
            }
        ),
        step_ms: ms,
        steps: Some(full),
        steps_from: format!(
            "jem.{}",
            if c.arm == Arm::BaseLong {
                "long_iterations"
            } else {
                "iterations"
            }
        ),
        params: reprise_core::run::trained_params(&model.vs),
    })
}

/// The inputs a run reads that reprise cannot fetch: the dataset, the released checkpoint
/// (`jem.from`), the FID Inception weights and any user OOD set.
pub fn inputs(tree: &SpecTree) -> Result<Vec<Input>, SpecError> {
    let c: Config = tree.typed("jem")?;
    let h = tree.header()?;
    let mut v: Vec<Input> = of_data("data", &h.data).into_iter().collect();
    for (name, d) in &c.eval.ood_datasets {
        v.extend(of_data(&format!("jem.eval.ood_datasets.{name}"), d));
    }
    v.extend(
        c.from
            .map(|p| Input::new("jem.from", p, InputKind::JemCheckpoint)),
    );
    v.extend(
        c.eval
            .fid_inception
            .map(|p| Input::new("jem.eval.fid_inception", p, InputKind::FidInception)),
    );
    Ok(v)
}

fn check(tree: &SpecTree, path: &str, ok: bool, msg: &str) -> Result<(), SpecError> {
    tree.require(path, ok, msg)
}

/// Checks the `jem:` section: types, and values a run could not use.
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    let c: Config = tree.typed("jem")?;
    let h = tree.header()?;
    let pos = "must be a positive number";
    check(
        tree,
        "jem.optim.lr",
        c.optim.lr > 0.0 && c.optim.lr.is_finite(),
        pos,
    )?;
    check(
        tree,
        "jem.iterations",
        c.iterations > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.optim.batch",
        c.optim.batch > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.optim.weight_decay",
        c.optim.weight_decay >= 0.0,
        "must not be negative",
    )?;
    check(tree, "jem.optim.gamma", c.optim.gamma > 0.0, pos)?;
    check(
        tree,
        "jem.optim.decay_at",
        c.optim.decay_at.iter().all(|f| (0.0..=1.0).contains(f)),
        "fractions of the iterations must lie in [0, 1]",
    )?;
    check(
        tree,
        "jem.noise_sigma",
        c.noise_sigma >= 0.0,
        "must not be negative",
    )?;
    check(
        tree,
        "jem.p_x_weight",
        c.p_x_weight >= 0.0,
        "must not be negative",
    )?;
    check(
        tree,
        "jem.p_xy_weight",
        c.p_xy_weight >= 0.0,
        "must not be negative",
    )?;
    check(
        tree,
        "jem.sgld.max_step",
        c.sgld.max_step.is_none_or(|m| m > 0.0),
        pos,
    )?;
    check(tree, "jem.sgld.step_size", c.sgld.step_size > 0.0, pos)?;
    check(
        tree,
        "jem.sgld.noise",
        c.sgld.noise >= 0.0,
        "must not be negative",
    )?;
    check(
        tree,
        "jem.buffer.size",
        c.buffer.size > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.buffer.reinit",
        (0.0..=1.0).contains(&c.buffer.reinit),
        "must lie in [0, 1]",
    )?;
    check(
        tree,
        "jem.eval.every",
        c.eval.every > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.eval.ece_bins",
        c.eval.ece_bins > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.checkpoint_every",
        c.checkpoint_every > 0,
        "must be at least 1",
    )?;
    check(
        tree,
        "jem.long_iterations",
        c.arm != Arm::BaseLong || c.long_iterations.is_some_and(|n| n > 0),
        "the base-long arm needs long_iterations",
    )?;
    if let config::ModelConfig::Wrn(w) = &c.model {
        check(
            tree,
            "jem.model.wrn.depth",
            w.depth >= 10 && (w.depth - 4).is_multiple_of(6),
            "WRN depth must be 6n + 4 (10, 16, 22, 28, ...)",
        )?;
    }
    if let Some(s) = h.data.split {
        check(
            tree,
            "jem.optim.batch",
            c.optim.batch <= s.train.max(1) || s.train == 0,
            "is larger than the training split",
        )?;
    }
    let classes = match h.data.dataset.as_str() {
        "cifar100" | "synthetic-cifar100" => 100,
        _ => 10,
    };
    check(
        tree,
        "jem.buffer.size",
        c.buffer.size.is_multiple_of(classes),
        "must be a multiple of the number of classes",
    )?;
    // Sizes that decide what a run allocates, and counts that decide how long it runs (after the checks with more specific messages).
    let mut sizes: Vec<(String, i128, i128, i128)> = vec![
        ("jem.iterations".into(), c.iterations.into(), 1, 1 << 32),
        ("jem.optim.batch".into(), c.optim.batch as i128, 1, 1 << 16),
        (
            "jem.buffer.size".into(),
            c.buffer.size as i128,
            1,
            10_000_000,
        ),
        ("jem.sgld.steps".into(), c.sgld.steps as i128, 0, 100_000),
        (
            "jem.eval.ece_bins".into(),
            c.eval.ece_bins as i128,
            1,
            100_000,
        ),
        (
            "jem.eval.chains_per_class".into(),
            c.eval.chains_per_class as i128,
            0,
            10_000,
        ),
        (
            "jem.eval.sample_steps".into(),
            c.eval.sample_steps as i128,
            0,
            1_000_000,
        ),
        (
            "jem.eval.max_test".into(),
            c.eval.max_test.map_or(1, |m| m as i128),
            1,
            i128::MAX,
        ),
    ];
    match &c.model {
        config::ModelConfig::Mlp { width, depth, .. } => {
            sizes.push(("jem.model.mlp.width".into(), (*width).into(), 1, 1 << 16));
            sizes.push(("jem.model.mlp.depth".into(), *depth as i128, 1, 1000));
        }
        config::ModelConfig::Cnn(cc) => {
            sizes.push(("jem.model.cnn.size".into(), cc.size.into(), 1, 4096));
            for (i, (ch, _)) in cc.convs.iter().enumerate() {
                sizes.push((format!("jem.model.cnn.convs.{i}"), (*ch).into(), 1, 1 << 14));
            }
            for (i, w) in cc.fc.iter().enumerate() {
                sizes.push((format!("jem.model.cnn.fc.{i}"), (*w).into(), 1, 1 << 16));
            }
        }
        config::ModelConfig::Wrn(w) => {
            sizes.push(("jem.model.wrn.depth".into(), w.depth as i128, 10, 1000));
            sizes.push(("jem.model.wrn.widen".into(), w.widen.into(), 1, 64));
        }
    }
    let refs: Vec<(&str, i128, i128, i128)> = sizes
        .iter()
        .map(|(p, v, lo, hi)| (p.as_str(), *v, *lo, *hi))
        .collect();
    tree.require_ranges(&refs)?;
    Ok(())
}

fn save(
    ctx: &RunContext,
    m: &Classifier,
    opt: &Optimizer,
    buffer: Option<&ReplayBuffer>,
    step: u64,
) -> Result<()> {
    let mut ck = Checkpoint::new();
    m.save(&mut ck);
    opt.save(&mut ck, "optim");
    if let Some(b) = buffer {
        ck.put("buffer", &b.data);
    }
    ck.set("step", step);
    ctx.checkpoints().save(step, &ck)?;
    Ok(())
}

/// JEM's Adam over the classifier, with a dynamic loss scale under `amp: f16`.
fn optimizer(c: &Config, model: &Classifier) -> Optimizer {
    c.amp.optimizer(Optimizer::for_vars(
        Rule::adam(),
        &model.vs,
        c.optim.weight_decay,
    ))
}

/// Trains and evaluates one run (one arm, one seed).
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let h = ctx.header().clone();
    let seed = h.seed;
    let dev = ctx.device();
    let splits = data::load_splits(&h.data)?;
    let classes = splits.train.classes;
    // Inputs in [−1, 1], as the official code.
    let train_x = &splits.train.x * 2.0 - 1.0;
    let train_y = splits.train.y.shallow_clone();
    let mut test_x = &splits.test.x * 2.0 - 1.0;
    let mut test_y = splits.test.y.shallow_clone();
    let mut test_index = splits.test_index;
    if let Some(m) = c.eval.max_test {
        let m = (m as i64).min(test_x.size()[0]);
        test_x = test_x.narrow(0, 0, m);
        test_y = test_y.narrow(0, 0, m);
        test_index.truncate(m as usize);
    }
    if c.optim.batch > splits.train.len() {
        return Err(Error::Data(format!(
            "batch {} is larger than the training set ({} examples)",
            c.optim.batch,
            splits.train.len()
        )));
    }
    let shape: Vec<i64> = train_x.size()[1..].to_vec();
    let mut model = Classifier::new(&c.model, &shape, classes as i64, dev, seed);
    let mut opt = optimizer(&c, &model);
    let (w_px, w_xy, full) = c.arm_budget();
    // Evaluating given weights trains nothing.
    let total = if c.from.is_some() {
        0
    } else {
        ctx.iterations(full)
    };
    let schedule = Schedule::MultiStep {
        milestones: c
            .optim
            .decay_at
            .iter()
            .map(|f| (f * total as f64).round() as u64)
            .collect(),
        gamma: c.optim.gamma,
    };
    let mut buffer = (w_px > 0.0 || w_xy > 0.0)
        .then(|| ReplayBuffer::new(c.buffer.size, &shape, classes, seed ^ 0xb0ff));
    let mut step = 0u64;
    // The newest checkpoint whose every tensor fits this run's model, optimizer and buffer.
    let fits = |ck: &Checkpoint| -> Result<()> {
        model.check(ck)?;
        opt.check(ck, "optim")?;
        if let Some(b) = buffer.as_ref() {
            ck.tensor_like("buffer", &b.data)?;
        }
        ck.get::<u64>("step").map(|_| ())
    };
    if let Some(f) = &c.from {
        load_weights(ctx, f, &model, buffer.as_mut())?;
    } else if let Some((_, ck)) = ctx.resume_point(fits)? {
        model.load(&ck)?;
        opt.load(&ck, "optim")?;
        if let Some(b) = buffer.as_mut() {
            b.data = ck.tensor_like("buffer", &b.data)?.copy();
        }
        step = ck.get("step")?;
    }
    // Data-parallel ranks split each batch evenly (see train_step).
    let par = ctx.parallel();
    par.even(c.optim.batch as i64)?;
    let mut steps = Steps::begin(ctx, total, step, &[&model.vs])?;
    let aug = Augment {
        noise: c.noise_sigma,
        ..c.augment
    };
    // Two independent loaders, both dropping the last partial batch: labelled and unlabelled.
    let mut lab = Loader::new(&train_x, &train_y, c.optim.batch, seed, true, aug, step);
    let mut dat = Loader::new(
        &train_x,
        &train_y,
        c.optim.batch,
        seed ^ 0xda7a,
        true,
        aug,
        step,
    );
    let per_epoch = lab.per_epoch();
    let mut eval_data = EvalData::new(&test_x, &test_y, c.noise_sigma);
    eval_data.index = test_index;
    for (name, spec) in &c.eval.ood_datasets {
        eval_data.add_dataset(name, spec, c.noise_sigma)?;
    }
    let (mut sum_ce, mut sum_fd, mut sum_fq, mut n_log) = (0.0, 0.0, 0.0, 0u64);
    // All randomness of a step derives from (seed, step): a resumed run draws the same.
    while steps.start_next() {
        let step = steps.step();
        let lr = schedule.lr(c.optim.lr, step, c.optim.warmup);
        let b = lab.next_batch();
        let xd = buffer.is_some().then(|| dat.next_batch().x);
        let mut rng = reprise_core::seed::step_rng(seed, step);
        // Data-parallel ranks draw the SGLD noise of the global batch (even shares) and take
        // their rows, so that the ranks together draw what one process would.
        let mut noise = |x: &Tensor| {
            par.draw_rows(x, x.size()[0] * par.world() as i64, sampler::gaussian)
                .expect("the rows of a batch the ranks split")
        };
        let st = train_step(
            &model,
            &mut opt,
            buffer.as_mut(),
            &c,
            &StepBatch {
                weights: (w_px, w_xy),
                labelled: (&b.x, &b.y),
                data: xd.as_ref(),
                lr,
            },
            (&mut rng, &mut noise),
            &par,
        )
        .map_err(|e| e.at(step))?;
        let (lv, fd, fq) = (st.loss, st.f_data, st.f_q);
        sum_ce += st.ce;
        sum_fd += fd;
        sum_fq += fq;
        n_log += 1;
        steps.end_step(&format!(
            "ce {:.3} f_d {} f_q {}",
            st.ce,
            reprise_core::progress::term(fd, 2),
            reprise_core::progress::term(fq, 2)
        ));
        let step = steps.step();
        let eval_now = step.is_multiple_of(c.eval.every) || step == total;
        if step.is_multiple_of(100) || eval_now {
            let k = n_log.max(1) as f64;
            let mut vals = vec![
                ("loss", lv),
                ("ce", sum_ce / k),
                ("f_data", sum_fd / k),
                ("f_q", sum_fq / k),
                ("lr", lr),
            ];
            (sum_ce, sum_fd, sum_fq, n_log) = (0.0, 0.0, 0.0, 0);
            // Rank 0 evaluates and logs; the other ranks wait for it at the next step.
            if eval_now && par.is_main() {
                let m = eval::classify(&model, &eval_data, c.eval.ece_bins);
                let (_, _, rows) = eval::ood_auroc(&model, &eval_data);
                let px_mean = procedural_px_mean(&rows);
                vals.extend([
                    ("test_acc", m.acc),
                    ("test_nll", m.nll),
                    ("test_ece", m.ece),
                    ("conf_minus_acc", m.conf_minus_acc),
                    ("auroc_px_mean", px_mean),
                ]);
            }
            ctx.log_metrics(step, step as f64 / per_epoch as f64, &vals)?;
        }
        if step.is_multiple_of(c.checkpoint_every) || step == total {
            save(ctx, &model, &opt, buffer.as_ref(), step)?;
        }
        steps.stop_if_interrupted(ctx, |s| save(ctx, &model, &opt, buffer.as_ref(), s))?;
    }
    let step = steps.step();
    // Training time only (evaluation excluded), as the PyTorch twin in bench/pytorch measures it.
    let step_ms = steps.finish();
    if !par.is_main() {
        // Rank 0 evaluates and writes the run's results.
        return Ok(());
    }
    let summary = final_eval(
        ctx,
        &c,
        &model,
        buffer.as_ref(),
        (&eval_data, &train_x),
        (step, step_ms),
    )?;
    ctx.write_summary(&summary)?;
    let md = report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

/// Loads the weights (and the replay buffer, when the file has one and the run keeps a buffer)
/// of `jem.from`, and writes the weights evaluated to `model.safetensors` in the run folder.
fn load_weights(
    ctx: &RunContext,
    f: &std::path::Path,
    model: &Classifier,
    buffer: Option<&mut ReplayBuffer>,
) -> Result<()> {
    let named = reprise_core::nn::read_weights(
        f,
        "an official JEM checkpoint converts with scripts/convert_jem_ckpt.py",
    )?;
    let from = f.display().to_string();
    reprise_core::nn::load_named(&model.vs, &named, &|_| true, &from)?;
    if let (Some(b), Some((_, t))) = (buffer, named.iter().find(|(k, _)| k == "replay_buffer")) {
        let want = &b.data.size()[1..];
        if t.dim() != b.data.dim() || &t.size()[1..] != want || t.size()[0] == 0 {
            return Err(Error::msg(format!(
                "{from}: replay_buffer has shape {:?}, the run's samples are {want:?}",
                t.size()
            )));
        }
        b.data = t.to_kind(tch::Kind::Float).copy();
    }
    model
        .vs
        .save(ctx.dir().join("model.safetensors"))
        .map_err(|e| Error::msg(format!("cannot write model.safetensors: {e}")))?;
    eprintln!("evaluating {from} (no training)");
    tracing::info!("evaluating {from} (no training)");
    Ok(())
}

/// Mean log p(x) AUROC over the four procedural OOD sets (the P3 criterion; user datasets are
/// reported beside it, not averaged in).
fn procedural_px_mean(rows: &[(String, [f64; 3])]) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| claims::OOD_SETS.contains(&r.0.as_str()))
        .map(|r| r.1[0])
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// What one training iteration measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The total loss L.
    pub loss: f64,
    /// The cross-entropy term.
    pub ce: f64,
    /// Mean LSE f on the data batch (NaN without the p(x) term).
    pub f_data: f64,
    /// Mean LSE f on the SGLD samples (NaN without the p(x) term).
    pub f_q: f64,
}

/// What one training iteration trains on.
#[derive(Clone, Copy)]
pub struct StepBatch<'a> {
    /// The weights of the log p(x) and log p(x|y) terms (the arm's).
    pub weights: (f64, f64),
    /// The labelled batch (images, labels) of the whole step: every rank's rows.
    pub labelled: (&'a Tensor, &'a Tensor),
    /// The images whose log p(x) is maximised (with a log p(x) term).
    pub data: Option<&'a Tensor>,
    /// The learning rate of this step.
    pub lr: f64,
}

/// One JEM iteration: cross-entropy on the labelled batch `lab` and, with a buffer and
/// `w_px > 0`, the p(x) term on the unlabelled batch `x_data` against SGLD samples drawn from
/// the buffer (which is updated); then one Adam step at `lr`. The divergence guards
/// (|L|, and the mean energies) stop it before the update, with the reason. The SGLD noise
/// comes from `noise` ([`sampler::gaussian`] in training).
///
/// Data-parallel (`par` of several ranks): `lab` and `x_data` are the global batch; this rank
/// computes on its rows, draws the replay-buffer slots of the whole batch (the same on every
/// rank), runs SGLD on its rows, gathers the samples of all ranks so that every rank's buffer
/// stays the one a single process would hold, and averages the gradients before the step. The
/// values returned (and guarded) are the means over the ranks.
pub fn train_step(
    model: &Classifier,
    opt: &mut Optimizer,
    buffer: Option<&mut ReplayBuffer>,
    c: &Config,
    batch: &StepBatch,
    (rng, noise): (&mut Rng, &mut dyn FnMut(&Tensor) -> Tensor),
    par: &Parallel,
) -> std::result::Result<StepStats, StepError> {
    let StepBatch {
        weights: (w_px, w_xy),
        labelled: lab,
        data: x_data,
        lr,
    } = *batch;
    let dev = model.vs.device();
    let rows = |t: &Tensor| par.shard(t);
    let gather = |t: &Tensor, n: usize| par.gather(t, n as i64);
    // The forwards whose outputs enter the loss, under autocast with `amp: bf16 | f16` (their
    // logits back in float32 for the losses); the SGLD chains below call the model directly.
    let fwd = |x: &Tensor| c.amp.forward(dev, || model.forward_t(x, true));
    let y_l = rows(lab.1)?.to_device(dev);
    let logits_l = fwd(&rows(lab.0)?.to_device(dev));
    let l_ce = logits_l.cross_entropy_for_logits(&y_l);
    let mut loss = &l_ce * c.ce_weight;
    let (mut fd, mut fq) = (f64::NAN, f64::NAN);
    let mut buffer = buffer;
    if let (Some(buf), true) = (buffer.as_deref_mut(), w_xy > 0.0) {
        // The p(x|y) term: class-conditional samples for the labels of the labelled batch.
        let ys = Vec::<i64>::try_from(&lab.1.to_device(Device::Cpu)).map_err(Error::from)?;
        let (slots, x0) = buf.draw(ys.len(), Some(&ys), c.buffer.reinit, rng);
        let f = |x: &Tensor| model.forward_t(x, false);
        let xq = sgld_with(
            &f,
            &rows(&x0)?.to_device(dev),
            Some(&y_l),
            &c.sgld,
            c.sgld.steps,
            noise,
        );
        buf.write(&slots, &gather(&xq, slots.len())?);
        let fq_y = sampler::score(&fwd(&xq), Some(&y_l)).mean(Kind::Float);
        let fl_y = sampler::score(&logits_l, Some(&y_l)).mean(Kind::Float);
        loss += (fq_y - fl_y) * w_xy;
    }
    if let (Some(buf), Some(xd), true) = (buffer, x_data, w_px > 0.0) {
        let n = xd.size()[0] as usize;
        let classes = model.classes() as usize;
        let ys: Option<Vec<i64>> = c
            .sgld
            .class_cond
            .then(|| (0..n).map(|_| rng.below(classes) as i64).collect());
        let (slots, x0) = buf.draw(n, ys.as_deref(), c.buffer.reinit, rng);
        let yq = match ys {
            Some(v) => Some(rows(&Tensor::from_slice(&v))?.to_device(dev)),
            None => None,
        };
        let f = |x: &Tensor| model.forward_t(x, false);
        let xq = sgld_with(
            &f,
            &rows(&x0)?.to_device(dev),
            yq.as_ref(),
            &c.sgld,
            c.sgld.steps,
            noise,
        );
        buf.write(&slots, &gather(&xq, slots.len())?);
        let lse_d = fwd(&rows(xd)?.to_device(dev))
            .logsumexp([1].as_slice(), false)
            .mean(Kind::Float);
        let lse_q = fwd(&xq).logsumexp([1].as_slice(), false).mean(Kind::Float);
        let m = par.mean(&[lse_d.double_value(&[]), lse_q.double_value(&[])])?;
        (fd, fq) = (m[0], m[1]);
        loss += (lse_q - lse_d) * w_px;
        if [fd, fq]
            .iter()
            .any(|e| e.is_nan() || e.abs() > c.guard_energy)
        {
            return Err(StepError::Diverged(format!(
                "mean energy on data {fd:.3e} or samples {fq:.3e} beyond ±{:.0e}; the last good checkpoint is kept \
                 (declared fallbacks: more SGLD steps, then a lower lr)",
                c.guard_energy
            )));
        }
    }
    let m = par.mean(&[loss.double_value(&[]), l_ce.double_value(&[])])?;
    let (lv, ce) = (m[0], m[1]);
    if lv.is_nan() || lv.abs() > c.guard_loss {
        return Err(StepError::Diverged(format!(
            "|L| = {lv:.3e} > {:.0e}; the last good checkpoint is kept",
            c.guard_loss
        )));
    }
    opt.zero_grad();
    // With `amp: f16` the loss is scaled (and the step unscales, or skips an overflow).
    opt.scale_loss(&loss)
        .f_backward()
        .map_err(|e| StepError::Diverged(format!("the backward pass failed: {e}")))?;
    par.average_var_grads(&model.vs)?;
    opt.step(lr);
    Ok(StepStats {
        loss: lv,
        ce,
        f_data: fd,
        f_q: fq,
    })
}

/// The final evaluation of a run trained `step` iterations at `step_ms` each: calibration,
/// OOD detection, samples and their realism against `train_x`, PGD; the figures.
fn final_eval(
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
    // The test predictions, kept so a sweep can pool them (the folds of a cross-validation).
    let logits = eval::test_logits(model, d);
    Predictions::new(d.index.clone(), &logits, &d.y)?
        .save(&ctx.dir().join(reprise_core::predictions::FILE))?;
    let m = reprise_core::metrics::calibration(&logits, &d.y, c.eval.ece_bins);
    report::reliability_figure(
        &figs.join("reliability.png"),
        &[(c.arm.name().to_string(), m.bins.clone())],
    )?;
    let (inn, per_set, rows) = eval::ood_auroc(model, d);
    let mut s = Summary {
        arm: c.arm.name().to_string(),
        iterations: step,
        step_ms,
        classes,
        shape: shape.to_vec(),
        acc: m.acc,
        nll: m.nll,
        ece: m.ece,
        conf_minus_acc: m.conf_minus_acc,
        reliability: m.bins,
        auroc_px_mean: procedural_px_mean(&rows),
        realism_share: None,
        self_agreement: None,
        fid_samples: None,
        fid_buffer: None,
        scores: summary::Scores {
            auroc: rows.into_iter().collect(),
            pgd: Vec::new(),
        },
        smoke: false,
    };
    report::score_histogram(
        &figs.join("hist_px.png"),
        "log p(x) = LSE f(x)",
        &inn.px,
        &per_set,
        |sc| &sc.px,
    )?;
    report::score_histogram(
        &figs.join("hist_pxgrad.png"),
        "−‖∇ₓ log p(x)‖",
        &inn.pxgrad,
        &per_set,
        |sc| &sc.pxgrad,
    )?;
    let inception = match &c.eval.fid_inception {
        Some(p) => {
            let net = reprise_core::inception::FidInception::new(model.vs.device());
            net.load(p)?;
            Some(net)
        }
        None => None,
    };
    // Images in [−1, 1] to pytorch-fid's [0, 1]; the FID against the test images.
    let fid_to_test = |net: &reprise_core::inception::FidInception, x: &Tensor| {
        let to01 = |t: &Tensor| ((t + 1.0) / 2.0).clamp(0.0, 1.0);
        reprise_core::inception::fid(net, &to01(x), &to01(&d.clean), 50)
    };
    if c.arm != Arm::BaseLong && c.eval.chains_per_class > 0 {
        let (samples, ys) = eval::conditional_samples(
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
        let share = eval::realism_share(&samples, &train_x.to_device(Device::Cpu), &d.clean);
        s.realism_share = Some(share);
        let self_agree = tch::no_grad(|| {
            reprise_core::metrics::accuracy(
                &model.logits(&samples, 100).to_device(Device::Cpu),
                &ys,
            )
        });
        s.self_agreement = Some(self_agree);
        if let Some(net) = &inception {
            s.fid_samples = Some(fid_to_test(net, &samples));
        }
    }
    if let (Some(net), Some(b)) = (&inception, buffer) {
        s.fid_buffer = Some(fid_to_test(net, &b.data));
    }
    if let Some(b) = buffer {
        // Buffer samples binned by predicted class, as the paper's "conditional" grids.
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
            &figs.join("buffer_by_class.png"),
            &Tensor::cat(&rows, 0).clamp(-1.0, 1.0),
            10,
            3,
            -1.0,
            1.0,
            &reprise_core::plot::GridLabels {
                columns: vec![],
                rows: (0..rows.len()).map(|k| format!("pred {k}")).collect(),
            },
        )?;
    }
    if let Some(p) = &c.eval.pgd {
        for (norm, eps, acc) in eval::pgd_accuracy(model, d, p) {
            let n = match norm {
                reprise_core::attack::Norm::Linf => "linf",
                reprise_core::attack::Norm::L2 => "l2",
            };
            s.scores.pgd.push((n.to_string(), eps, acc));
        }
    }
    Ok(s)
}
