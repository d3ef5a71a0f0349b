//! The `jem:` section of a spec.

use reprise_core::attack::Norm;
use reprise_core::models::{CnnConfig, WrnConfig};
use reprise_core::nn::Activation;
use reprise_core::spec::{SpecError, SpecTree};
use serde::{Deserialize, Serialize};

/// The classifier whose logits define the energy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelConfig {
    /// A multi-layer perceptron (the small-scale `digits-mlp`: width 256, depth 2).
    Mlp {
        /// Hidden width.
        width: i64,
        /// Hidden layers.
        depth: usize,
        /// Activation.
        #[serde(default = "lrelu")]
        act: Activation,
    },
    /// A small CNN (the small-scale `mnist-cnn`).
    Cnn(CnnConfig),
    /// JEM's Wide-ResNet (WRN-28-10 at paper scale).
    Wrn(WrnConfig),
}

fn lrelu() -> Activation {
    Activation::LeakyRelu(0.2)
}

/// Which arm of the experiment a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// The controlled baseline: the same model and schedule with w_px = 0.
    Base,
    /// JEM: w_px = `p_x_weight`.
    Jem,
    /// The baseline trained for `long_iterations` (the converged, usually over-confident one).
    BaseLong,
}

impl Arm {
    /// The name used in specs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Base => "base",
            Arm::Jem => "jem",
            Arm::BaseLong => "base-long",
        }
    }
}

/// The SGLD sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgldConfig {
    /// Steps K per draw.
    #[serde(default = "twenty")]
    pub steps: usize,
    /// Step size α on the score gradient.
    #[serde(default = "one")]
    pub step_size: f64,
    /// Standard deviation σ_s of the added noise (not √(2α): JEM's convention).
    #[serde(default = "centi")]
    pub noise: f64,
    /// Clamp samples to [−1, 1] after each step (off in JEM; JEM++ style).
    #[serde(default)]
    pub clamp: bool,
    /// Clip each element of the gradient step α·∇ to ±this before adding the noise (off in JEM).
    #[serde(default)]
    pub max_step: Option<f64>,
    /// Draw the p(x) samples class-conditionally (on f(x)[y] with random y, class blocks of the buffer).
    #[serde(default)]
    pub class_cond: bool,
}

fn twenty() -> usize {
    20
}
fn one() -> f64 {
    1.0
}
fn centi() -> f64 {
    0.01
}

/// The replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Slots (a multiple of the number of classes).
    pub size: usize,
    /// Probability that a drawn row restarts from U(−1, 1).
    #[serde(default = "reinit")]
    pub reinit: f64,
}

fn reinit() -> f64 {
    0.05
}

/// Optimisation (Adam, linear warm-up from 0, step decay at fractions of the iterations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Learning rate.
    pub lr: f64,
    /// Warm-up iterations (lr·t/warmup while t < warmup).
    #[serde(default)]
    pub warmup: u64,
    /// The rate is multiplied by `gamma` at these fractions of the arm's iterations.
    #[serde(default)]
    pub decay_at: Vec<f64>,
    /// Decay factor.
    #[serde(default = "gamma")]
    pub gamma: f64,
    /// Batch size of each of x_data, x_lab and x_q.
    pub batch: usize,
    /// Adam's weight decay.
    #[serde(default)]
    pub weight_decay: f64,
}

fn gamma() -> f64 {
    0.3
}

/// The robustness evaluation: accuracy under PGD (20 steps of 2.5ε/20, in [0, 1] pixel units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdEval {
    /// Test images attacked.
    pub images: usize,
    /// PGD steps.
    #[serde(default = "twenty")]
    pub steps: usize,
    /// ε values for L∞.
    #[serde(default)]
    pub linf: Vec<f64>,
    /// ε values for L2.
    #[serde(default)]
    pub l2: Vec<f64>,
}

impl PgdEval {
    /// Every (norm, ε) pair.
    pub fn grid(&self) -> Vec<(Norm, f64)> {
        self.linf
            .iter()
            .map(|&e| (Norm::Linf, e))
            .chain(self.l2.iter().map(|&e| (Norm::L2, e)))
            .collect()
    }
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
    /// Use at most this many test images (smoke runs).
    #[serde(default)]
    pub max_test: Option<usize>,
    /// Class-conditional chains per class for the sample grid and the judge.
    #[serde(default = "ten")]
    pub chains_per_class: usize,
    /// SGLD steps of those chains (α and σ_s as in training).
    #[serde(default = "five_hundred")]
    pub sample_steps: usize,
    /// Accuracy under PGD, if wanted.
    #[serde(default)]
    pub pgd: Option<PgdEval>,
    /// Further OOD sets from datasets a user points to (same image shape as the test set), by name.
    #[serde(default)]
    pub ood_datasets: std::collections::BTreeMap<String, reprise_core::spec::DataSpec>,
    /// Paper scale: pytorch-fid's Inception-v3 weights (safetensors, converted by
    /// `scripts/convert_fid_inception.py`); when given, the FID of the replay buffer's samples
    /// and of the class-conditional samples against the test images is reported.
    #[serde(default)]
    pub fid_inception: Option<std::path::PathBuf>,
}

fn ten() -> usize {
    10
}
fn five_hundred() -> usize {
    500
}

/// Which of the paper's claims an experiment gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Claim {
    /// Accuracy within 3 points of the baseline.
    P1,
    /// Lower ECE than the baseline.
    P2,
    /// Better OOD detection with log p(x).
    P3,
    /// Recognisable, realistic class-conditional samples.
    P4,
}

pub use reprise_core::amp::Amp;

/// The `jem:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The classifier.
    pub model: ModelConfig,
    /// Evaluate these weights instead of training: a safetensors file with the model's names
    /// (an official JEM checkpoint converts with `scripts/convert_jem_ckpt.py`), whose
    /// `replay_buffer`, when there, replaces the run's buffer.
    #[serde(default)]
    pub from: Option<std::path::PathBuf>,
    /// This run's arm.
    pub arm: Arm,
    /// Iterations of the `base` and `jem` arms.
    pub iterations: u64,
    /// Iterations of the `base-long` arm.
    #[serde(default)]
    pub long_iterations: Option<u64>,
    /// w_px of the `jem` arm.
    #[serde(default = "one")]
    pub p_x_weight: f64,
    /// w_ce.
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// w_xy of the optional p(x|y) term: mean f(x_q|y)[y] − mean f(x_l)[y_l], with x_q|y
    /// class-conditional SGLD samples from the label's block of the buffer (0: off, as JEM).
    #[serde(default)]
    pub p_xy_weight: f64,
    /// σ of the Gaussian noise on train and test inputs (in the model's [−1, 1] input units).
    #[serde(default)]
    pub noise_sigma: f64,
    /// Mixed precision of the training step: `bf16` runs the forwards of the loss under
    /// autocast (matrix products and convolutions in bfloat16 on float32 master weights, the
    /// losses and log-sum-exps in float32); the SGLD chains, whose input gradients drive the
    /// samples, stay in float32. `f16` does the same in float16 with a dynamic loss scale.
    /// `none` (the default) is plain float32. The official code trains in float32.
    #[serde(default)]
    pub amp: Amp,
    /// Training augmentation (CIFAR: reflect-pad 4, random crop, flip); its `noise` is ignored in
    /// favour of `noise_sigma`.
    #[serde(default)]
    pub augment: reprise_core::data::augment::Augment,
    /// The sampler.
    #[serde(default = "default_sgld")]
    pub sgld: SgldConfig,
    /// The replay buffer.
    pub buffer: BufferConfig,
    /// Optimisation.
    pub optim: OptimConfig,
    /// Evaluation.
    pub eval: EvalConfig,
    /// Checkpoint every this many iterations.
    #[serde(default = "ckpt")]
    pub checkpoint_every: u64,
    /// Stop when |L| exceeds this.
    #[serde(default = "guard_loss")]
    pub guard_loss: f64,
    /// Stop when the mean energy on data or samples exceeds this in magnitude.
    #[serde(default = "guard_energy")]
    pub guard_energy: f64,
    /// The claims this experiment gates (the others are reported, marked not gating).
    #[serde(default)]
    pub gates: Vec<Claim>,
}

fn default_sgld() -> SgldConfig {
    SgldConfig {
        steps: 20,
        step_size: 1.0,
        noise: 0.01,
        clamp: false,
        max_step: None,
        class_cond: false,
    }
}
fn ckpt() -> u64 {
    1000
}
fn guard_loss() -> f64 {
    1e8
}
fn guard_energy() -> f64 {
    1e4
}

impl Config {
    /// (w_px, w_xy, iterations) of this run's arm: the baselines have no generative term.
    pub(crate) fn arm_budget(&self) -> (f64, f64, u64) {
        match self.arm {
            Arm::Base => (0.0, 0.0, self.iterations),
            Arm::Jem => (self.p_x_weight, self.p_xy_weight, self.iterations),
            Arm::BaseLong => (0.0, 0.0, self.long_iterations.unwrap_or(self.iterations)),
        }
    }
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
    if let ModelConfig::Wrn(w) = &c.model {
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
        ModelConfig::Mlp { width, depth, .. } => {
            sizes.push(("jem.model.mlp.width".into(), (*width).into(), 1, 1 << 16));
            sizes.push(("jem.model.mlp.depth".into(), *depth as i128, 1, 1000));
        }
        ModelConfig::Cnn(cc) => {
            sizes.push(("jem.model.cnn.size".into(), cc.size.into(), 1, 4096));
            for (i, (ch, _)) in cc.convs.iter().enumerate() {
                sizes.push((format!("jem.model.cnn.convs.{i}"), (*ch).into(), 1, 1 << 14));
            }
            for (i, w) in cc.fc.iter().enumerate() {
                sizes.push((format!("jem.model.cnn.fc.{i}"), (*w).into(), 1, 1 << 16));
            }
        }
        ModelConfig::Wrn(w) => {
            sizes.push(("jem.model.wrn.depth".into(), w.depth as i128, 10, 1000));
            sizes.push(("jem.model.wrn.widen".into(), w.widen.into(), 1, 64));
        }
    }
    tree.require_ranges(&sizes)?;
    Ok(())
}
