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
pub mod train;

pub use config::{validate, Arm, Config};
pub use train::{train_step, StepBatch, StepStats};

use crate::eval::EvalData;
use crate::model::Classifier;
use crate::sampler::ReplayBuffer;
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::augment::{Augment, Loader};
use reprise_core::data::{self, Rng};
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::optim::{Optimizer, Rule, Schedule};
use reprise_core::parallel::Parallel;
use reprise_core::run::{per_rank, Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::train::{Averages, Steps};
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
            inputs: Some(
                "images in [-1, 1] (x * 2 - 1 of pixels in [0, 1]), no further normalisation",
            ),
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
    let t = reprise_core::timing::time_ms(dev, 2, steps, || {
        let xd = (w_px > 0.0).then_some(&x);
        train_step(
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
        )
        .map(|_| ())
        .map_err(|e| reprise_core::Error::msg(e.to_string()))
    })?;
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
        step_ms: t.median,
        spread_ms: (t.min, t.max),
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

/// A run's data, inputs in [−1, 1] as the official code's: the training set, and the test set
/// (its first `eval.max_test` examples when set) with each example's place in its dataset.
struct RunData {
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    test_index: Vec<i64>,
    classes: usize,
}

/// Loads the run's data ([`RunData`]); an error when a batch is larger than the training set.
fn run_data(c: &Config, d: &reprise_core::spec::DataSpec) -> Result<RunData> {
    let splits = data::load_splits(d)?;
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
    Ok(RunData {
        train_x,
        train_y,
        test_x,
        test_y,
        test_index,
        classes,
    })
}

/// Trains and evaluates one run (one arm, one seed).
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let h = ctx.header().clone();
    let seed = h.seed;
    let dev = ctx.device();
    let RunData {
        train_x,
        train_y,
        test_x,
        test_y,
        test_index,
        classes,
    } = run_data(&c, &h.data)?;
    let shape: Vec<i64> = train_x.size()[1..].to_vec();
    let mut model = Classifier::new(&c.model, &shape, classes as i64, dev, seed);
    // Data-parallel, its step averages the ranks' gradients first (as DDP does).
    let mut opt = optimizer(&c, &model).data_parallel(ctx.parallel());
    ctx.record_share("train", c.optim.batch, c.amp)?;
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
    let mut means = Averages::new(&["ce", "f_data", "f_q"]);
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
        means.add(&[st.ce, fd, fq]);
        steps.end_step(&format!(
            "ce {:.3} f_d {} f_q {}",
            st.ce,
            reprise_core::progress::term(fd, 2),
            reprise_core::progress::term(fq, 2)
        ));
        let step = steps.step();
        let eval_now = steps.at_every(c.eval.every);
        if steps.at_every(100) || eval_now {
            let mut vals = vec![("loss", lv)];
            vals.extend(means.take());
            vals.push(("lr", lr));
            // Rank 0 evaluates and logs; the other ranks wait for it at the next step.
            if eval_now && par.is_main() {
                let m = eval::classify(&model, &eval_data, c.eval.ece_bins);
                let (_, _, rows) = eval::ood_auroc(&model, &eval_data);
                let px_mean = eval::procedural_px_mean(&rows);
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
        if steps.at_every(c.checkpoint_every) {
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
    let summary = eval::final_eval(
        ctx,
        &c,
        &model,
        buffer.as_ref(),
        (&eval_data, &train_x),
        (step, step_ms),
    )?;
    ctx.write_summary(&summary)?;
    // The summary now holds every part the evaluation recorded.
    reprise_core::checkpoint::remove_if_present(&ctx.dir().join(eval::EVAL_PARTS))?;
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
    reprise_core::note!("evaluating {from} (no training)");
    tracing::info!("evaluating {from} (no training)");
    Ok(())
}
