//! `jem`: "Your Classifier is Secretly an Energy Based Model and You Should Treat it Like One"
//! (Grathwohl et al., ICLR 2020, arXiv 1912.03263).
//!
//! This crate holds the classifier the JEM objective is built on and its training driver.
//! What runs today is the p(y|x) arm (`p_x_weight: 0`, the paper's cross-entropy baseline):
//! a classifier trained with cross-entropy, evaluated on accuracy, NLL and calibration. The
//! p(x) term (SGLD with a replay buffer) is not implemented yet; a spec that asks for it is
//! rejected with a clear message rather than silently trained as the baseline.

use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::augment::{Augment, Batch, Loader};
use reprise_core::data::{self, Dataset};
use reprise_core::metrics;
use reprise_core::nn::{Activation, Mlp};
use reprise_core::optim::{Optimizer, Rule, Schedule};
use reprise_core::report::{aggregate_table, markdown_table};
use reprise_core::run::{Paper, RunContext, RunSummary};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use tch::nn::{Module, VarStore};

/// The classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden width.
    pub width: i64,
    /// Hidden layers.
    pub depth: usize,
    /// Activation.
    #[serde(default = "default_act")]
    pub act: Activation,
}

fn default_act() -> Activation {
    Activation::LeakyRelu(0.2)
}

/// Optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Update rule (Adam by default, as the official code).
    #[serde(default = "Rule::adam")]
    pub rule: Rule,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear warm-up from 0, in iterations.
    #[serde(default)]
    pub warmup: u64,
    /// Schedule after warm-up.
    #[serde(default = "constant")]
    pub schedule: Schedule,
    /// Training iterations.
    pub iterations: u64,
    /// Batch size.
    pub batch: usize,
}

fn constant() -> Schedule {
    Schedule::Constant
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many iterations (and at the end).
    pub every: u64,
    /// ECE bins.
    #[serde(default = "twenty")]
    pub ece_bins: usize,
}

fn twenty() -> usize {
    20
}

/// The `jem:` section of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Classifier.
    pub model: ModelConfig,
    /// Optimisation.
    pub optim: OptimConfig,
    /// Weight of the generative term log p(x); 0 trains the cross-entropy baseline.
    #[serde(default)]
    pub p_x_weight: f64,
    /// Standard deviation of the Gaussian noise added to train and test inputs (in [0,1] units).
    #[serde(default)]
    pub noise_sigma: f64,
    /// Evaluation.
    pub eval: EvalConfig,
    /// Checkpoint every this many iterations.
    #[serde(default = "ckpt_every")]
    pub checkpoint_every: u64,
}

fn ckpt_every() -> u64 {
    500
}

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "jem",
        title: "Your Classifier is Secretly an Energy Based Model (arXiv 1912.03263)",
        validate,
        run,
        report: report_run,
        report_sweep,
    }
}

fn check(tree: &SpecTree, path: &str, ok: bool, msg: &str) -> Result<(), SpecError> {
    if ok {
        Ok(())
    } else {
        Err(tree.locate_error(SpecError {
            file: None,
            line: None,
            path: path.into(),
            from_override: None,
            message: msg.into(),
        }))
    }
}

/// Checks the `jem:` section: types, and values a run could not use.
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    let c: Config = tree.typed("jem")?;
    let h = tree.header()?;
    check(
        tree,
        "jem.optim.lr",
        c.optim.lr > 0.0 && c.optim.lr.is_finite(),
        "must be a positive number",
    )?;
    check(
        tree,
        "jem.optim.iterations",
        c.optim.iterations > 0,
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
    check(
        tree,
        "jem.model.width",
        c.model.width > 0,
        "must be at least 1",
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
        "jem.noise_sigma",
        c.noise_sigma >= 0.0,
        "must not be negative",
    )?;
    check(
        tree,
        "jem.p_x_weight",
        c.p_x_weight == 0.0,
        "the p(x) term (SGLD sampling with a replay buffer) is not implemented in this build; \
         only the cross-entropy arm (p_x_weight: 0) runs",
    )?;
    check(
        tree,
        "data.split",
        h.data.split.is_some(),
        "jem needs train/test split sizes",
    )?;
    if let Some(s) = h.data.split {
        check(
            tree,
            "jem.optim.batch",
            c.optim.batch <= s.train,
            "is larger than the training split",
        )?;
        check(tree, "data.split.test", s.test > 0, "must be at least 1")?;
    }
    check(
        tree,
        "data.dataset",
        ["digits", "mnist-5k"].contains(&h.data.dataset.as_str()),
        "jem reads `digits` or `mnist-5k`",
    )?;
    Ok(())
}

struct Model {
    vs: VarStore,
    net: Mlp,
}

fn build(c: &Config, inp: i64, classes: i64, device: tch::Device, seed: u64) -> Model {
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(device);
    let net = Mlp::new(
        &vs.root(),
        inp,
        c.model.width,
        c.model.depth,
        classes,
        c.model.act,
    );
    Model { vs, net }
}

fn evaluate(m: &Model, ds: &Dataset, c: &Config, seed: u64) -> (f64, f64, f64, Vec<metrics::Bin>) {
    tch::no_grad(|| {
        let x = if c.noise_sigma > 0.0 {
            // Fixed evaluation noise, the same at every evaluation.
            tch::manual_seed(seed as i64 ^ 0x5eed);
            &ds.x + ds.x.randn_like() * c.noise_sigma
        } else {
            ds.x.shallow_clone()
        };
        let logits = m.net.forward(&x);
        let (e, bins) = metrics::ece(&logits, &ds.y, c.eval.ece_bins);
        (
            metrics::accuracy(&logits, &ds.y),
            metrics::nll(&logits, &ds.y),
            e,
            bins,
        )
    })
}

fn save(ctx: &RunContext, m: &Model, opt: &Optimizer, step: u64) -> Result<()> {
    let mut ck = Checkpoint::new();
    for (k, v) in m.vs.variables() {
        ck.put(format!("model.{k}"), &v);
    }
    opt.save(&mut ck, "optim");
    ck.set("step", step);
    ctx.checkpoints().save(step, &ck)?;
    Ok(())
}

fn restore(m: &mut Model, opt: &mut Optimizer, ck: &Checkpoint) -> Result<u64> {
    tch::no_grad(|| -> Result<()> {
        for (k, mut v) in m.vs.variables() {
            let t = ck.tensor(&format!("model.{k}"))?;
            v.f_copy_(t)?;
        }
        Ok(())
    })?;
    opt.load(ck, "optim")?;
    ck.get("step")
}

/// Trains and evaluates one run.
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let h = ctx.header().clone();
    let split = h
        .data
        .split
        .ok_or_else(|| Error::msg("data.split is required"))?;
    let all = data::load(&h.data)?;
    let parts = data::split(&all, split, h.seed, h.data.stratified)?;
    let device = ctx.device();
    let train = parts.train.to(device);
    let test = parts.test.to(device);
    let inp = train.x.size()[1..].iter().product::<i64>();
    let mut model = build(&c, inp, all.classes as i64, device, h.seed);
    let mut opt = Optimizer::for_vars(c.optim.rule, &model.vs, c.optim.weight_decay);
    let total = ctx.iterations(c.optim.iterations);
    let mut step = 0u64;
    if let Some((s, ck)) = ctx.checkpoints().latest() {
        step = restore(&mut model, &mut opt, &ck)?;
        tracing::info!("resuming from step {s}");
        eprintln!("resuming from step {step}");
    }
    ctx.begin(step)?;
    let aug = Augment {
        noise: c.noise_sigma,
        ..Augment::default()
    };
    let mut loader = Loader::new(&train.x, &train.y, c.optim.batch, h.seed, false, aug, step);
    let per_epoch = loader.per_epoch();
    let mut progress = ctx.progress(total, step);
    while step < total {
        // The batch (order and noise) is a function of (seed, step): a resumed run sees the same.
        let Batch { x, y, .. } = loader.next_batch();
        let lr = c.optim.schedule.lr(c.optim.lr, step, c.optim.warmup);
        opt.zero_grad();
        let loss = model.net.forward(&x).cross_entropy_for_logits(&y);
        loss.backward();
        opt.step(lr);
        step += 1;
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            return Err(Error::Diverged {
                step,
                why: format!("loss is {l}"),
            });
        }
        progress.set(step, &format!("loss {l:.4}"));
        if step.is_multiple_of(c.eval.every) || step == total {
            let (acc, nll, ece, _) = evaluate(&model, &test, &c, h.seed);
            ctx.log_metrics(
                step,
                step as f64 / per_epoch as f64,
                &[
                    ("train_loss", l),
                    ("lr", lr),
                    ("test_acc", acc),
                    ("test_nll", nll),
                    ("test_ece", ece),
                ],
            )?;
        }
        if step.is_multiple_of(c.checkpoint_every) || step == total {
            save(ctx, &model, &opt, step)?;
        }
        if ctx.interrupted() && step < total {
            save(ctx, &model, &opt, step)?;
            return Err(Error::Interrupted {
                step,
                dir: ctx.dir().to_path_buf(),
            });
        }
    }
    progress.finish();
    let (acc, nll, ece, bins) = evaluate(&model, &test, &c, h.seed);
    let mean_conf: f64 = bins
        .iter()
        .map(|b| b.confidence * b.count as f64)
        .sum::<f64>()
        / test.len() as f64;
    ctx.write_summary(&json!({
        "test_acc": acc,
        "test_nll": nll,
        "test_ece": ece,
        "confidence_minus_accuracy": mean_conf - acc,
        "iterations": step,
        "reliability": bins,
    }))?;
    let pts: Vec<(f64, f64)> = bins
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.confidence, b.accuracy))
        .collect();
    reprise_core::plot::line_plot(
        &ctx.figures().join("reliability.png"),
        "Reliability diagram (test set)",
        "mean confidence in bin",
        "accuracy in bin",
        &[
            reprise_core::plot::Series {
                name: "classifier".into(),
                points: pts,
                std: None,
            },
            reprise_core::plot::Series {
                name: "perfect calibration".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                std: None,
            },
        ],
    )?;
    let md = report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

/// The report of one run, from its `summary.json` and spec.
pub fn report_run(dir: &Path) -> Result<String> {
    let spec = SpecTree::load(&dir.join("spec.yaml"))?;
    let h = spec.header()?;
    let s = reprise_core::run::read_summary(dir).ok_or_else(|| {
        Error::msg(format!(
            "{} has no summary.json (the run has not finished)",
            dir.display()
        ))
    })?;
    let f = |k: &str| s.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut md = format!(
        "# {}\n\n{}\n\nClassifier trained with cross-entropy only (the p(y|x) arm of JEM).\n\n",
        h.name, h.description
    );
    md += &markdown_table(
        &["metric", "value"],
        &[
            vec!["test accuracy".into(), format!("{:.4}", f("test_acc"))],
            vec!["test NLL".into(), format!("{:.4}", f("test_nll"))],
            vec!["test ECE".into(), format!("{:.4}", f("test_ece"))],
            vec![
                "confidence − accuracy".into(),
                format!("{:+.4}", f("confidence_minus_accuracy")),
            ],
            vec!["wall time (s)".into(), format!("{:.1}", f("wall_seconds"))],
        ],
    );
    if let Some(bins) = s.get("reliability").and_then(|b| b.as_array()) {
        md += "\n## Reliability table\n\n";
        let rows: Vec<Vec<String>> = bins
            .iter()
            .filter(|b| b["count"].as_u64().unwrap_or(0) > 0)
            .map(|b| {
                vec![
                    format!(
                        "({:.2}, {:.2}]",
                        b["lo"].as_f64().unwrap_or(0.0),
                        b["hi"].as_f64().unwrap_or(0.0)
                    ),
                    b["count"].to_string(),
                    format!("{:.3}", b["confidence"].as_f64().unwrap_or(0.0)),
                    format!("{:.3}", b["accuracy"].as_f64().unwrap_or(0.0)),
                ]
            })
            .collect();
        md += &markdown_table(
            &["confidence bin", "n", "mean confidence", "accuracy"],
            &rows,
        );
    }
    Ok(md)
}

/// The report of a sweep: every summary metric, mean ± std over seeds per sweep point.
pub fn report_sweep(dir: &Path, runs: &[RunSummary]) -> Result<String> {
    let spec = SpecTree::load(&dir.join("sweep.yaml"))?;
    let h = spec.header()?;
    Ok(format!(
        "# {}\n\n{}\n\n{} finished run(s); mean ± std over seeds.\n\n{}",
        h.name,
        h.description,
        runs.len(),
        aggregate_table(runs)
    ))
}
