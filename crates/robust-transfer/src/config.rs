//! The `robust-transfer:` section of a spec.

use reprise_core::attack::Norm;
use reprise_core::data::augment::Augment;
use reprise_core::spec::{DataSpec, SpecError, SpecTree};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// One run: a source model (trained here, or loaded with `source.from`), its robust
/// evaluation, then transfer to every target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network.
    pub model: ModelConfig,
    /// The source's input normalisation, the model's first layer (inputs stay in `[0, 1]`).
    pub normalize: NormSpec,
    /// Source training.
    pub source: SourceConfig,
    /// Robust evaluation of the source.
    pub eval: EvalConfig,
    /// Transfer (none: the run only trains and evaluates the source).
    #[serde(default)]
    pub transfer: TransferConfig,
}

/// The network family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// The small-scale CNN: three 3×3 convolutions (16w, 32w s2, 64w s2 channels), ReLU, global
    /// average pooling, a linear head.
    SmallCnn {
        /// Width multiplier w.
        width: i64,
    },
    /// A torchvision ResNet (parameter names as torchvision's).
    Resnet {
        /// Which one.
        arch: ResnetArch,
        /// Channels of the stem and first stage (torchvision: 64; the later stages double
        /// it); smaller for tests at reduced width.
        #[serde(default)]
        base: Option<i64>,
        /// Blocks per stage (default the architecture's own, `[2, 2, 2, 2]` for ResNet-18).
        #[serde(default)]
        blocks: Option<[usize; 4]>,
    },
}

/// The ResNets the paper uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResnetArch {
    /// ResNet-18.
    Resnet18,
    /// ResNet-50.
    Resnet50,
    /// Wide ResNet-50-2.
    WideResnet50_2,
}

/// Per-channel mean and std.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormSpec {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations.
    pub std: Vec<f64>,
}

/// What the source is trained on: clean inputs, PGD examples, or random noise of a fixed norm.
/// In JSON it is its name (`l2-0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arm {
    /// ε = 0: standard training.
    Std,
    /// PGD adversarial training at radius ε under the norm.
    Adv(Norm, f64),
    /// The control: each step adds fresh noise of L2 norm exactly ε (uniform direction).
    Noise(f64),
}

impl Arm {
    /// Parses `std`, `l2-<ε>`, `linf-<ε>` or `noise-<ε>`; ε may be a fraction such as `4/255`.
    pub fn parse(s: &str) -> Result<Arm, String> {
        let bad = || {
            format!("`{s}` is not an arm (std, l2-<eps>, linf-<eps>, noise-<eps>; eps like 0.5 or 4/255)")
        };
        if s == "std" {
            return Ok(Arm::Std);
        }
        let (kind, eps) = s.split_once('-').ok_or_else(bad)?;
        let eps = match eps.split_once('/') {
            Some((a, b)) => {
                let (a, b): (f64, f64) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                a / b
            }
            None => eps.parse().map_err(|_| bad())?,
        };
        if !(eps.is_finite() && eps > 0.0) {
            return Err(format!("`{s}`: eps must be a positive number"));
        }
        match kind {
            "l2" => Ok(Arm::Adv(Norm::L2, eps)),
            "linf" => Ok(Arm::Adv(Norm::Linf, eps)),
            "noise" => Ok(Arm::Noise(eps)),
            _ => Err(bad()),
        }
    }

    /// `std`, `l2`, `linf` or `noise`.
    pub fn kind(&self) -> &'static str {
        match self {
            Arm::Std => "std",
            Arm::Adv(Norm::L2, _) => "l2",
            Arm::Adv(Norm::Linf, _) => "linf",
            Arm::Noise(_) => "noise",
        }
    }

    /// The radius (0 for `std`).
    pub fn eps(&self) -> f64 {
        match self {
            Arm::Std => 0.0,
            Arm::Adv(_, e) | Arm::Noise(e) => *e,
        }
    }
}

impl TryFrom<String> for Arm {
    type Error = String;
    fn try_from(s: String) -> Result<Arm, String> {
        Arm::parse(&s)
    }
}

impl From<Arm> for String {
    fn from(a: Arm) -> String {
        a.to_string()
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arm::Std => write!(f, "std"),
            a => write!(f, "{}-{}", a.kind(), a.eps()),
        }
    }
}

/// Source training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Load the source instead of training it: a run folder (its `source.safetensors`) or a
    /// safetensors file with this model's parameter names (torchvision's for ResNets; a
    /// `normalizer.*` or `fc.*` in the file is ignored).
    #[serde(default)]
    pub from: Option<PathBuf>,
    /// Keep only these labels of the header's dataset (relabelled 0, 1, ... in this order)
    /// before it is split.
    #[serde(default)]
    pub classes: Option<Vec<i64>>,
    /// The arm (see [`Arm::parse`]).
    pub arm: String,
    /// Epochs.
    pub epochs: u64,
    /// Batch size.
    pub batch: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs at which the rate is multiplied by `gamma`.
    #[serde(default)]
    pub decay_epochs: Vec<u64>,
    /// Decay factor.
    #[serde(default = "tenth")]
    pub gamma: f64,
    /// Augmentation of the training batches (before the attack).
    #[serde(default)]
    pub augment: Augment,
    /// The training attack.
    pub attack: AttackConfig,
    /// Mixed precision of a source training step (`none`, `bf16`, or `f16` with a dynamic loss
    /// scale): autocast around the training forward and its loss; the attack's forwards and
    /// input gradients stay in float32 (a PGD step's sign or normalised direction is where
    /// precision matters). The robustness library trains in float32.
    #[serde(default)]
    pub amp: reprise_core::amp::Amp,
    /// Grow ε linearly from 0 over this many epochs (0: the full ε from the start).
    #[serde(default)]
    pub eps_ramp_epochs: u64,
    /// Initialisation of the small CNN's convolutions.
    #[serde(default)]
    pub init: InitKind,
    /// Save a checkpoint every this many epochs (and at the end, and on interruption).
    #[serde(default = "one")]
    pub checkpoint_every: u64,
}

/// Convolution initialisation of the small CNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InitKind {
    /// Kaiming-normal with fan-in and ReLU gain, zero bias.
    #[default]
    HeNormal,
    /// PyTorch's default (Kaiming-uniform a = √5, bias U(±1/√fan_in)).
    Torch,
}

fn tenth() -> f64 {
    0.1
}
fn one() -> u64 {
    1
}

/// The attack used in training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// PGD steps.
    pub steps: usize,
    /// Step size as a multiple of ε (2/3 in the paper's recipe).
    pub step_ratio: f64,
    /// Random start.
    #[serde(default)]
    pub random_start: bool,
    /// Keep each example's highest-loss iterate (the robustness library's default).
    #[serde(default = "yes")]
    pub use_best: bool,
    /// FGSM with a random start (one step of `step_ratio`·ε) instead of PGD; L∞ only.
    #[serde(default)]
    pub fgsm: bool,
}

fn yes() -> bool {
    true
}

/// Robust evaluation on the source's held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// PGD steps (step 2.5ε/steps, no random start).
    pub pgd_steps: usize,
    /// The L2 radii at which the standard model is attacked.
    #[serde(default)]
    pub grid_l2: Vec<f64>,
    /// The L∞ radii at which the standard model is attacked.
    #[serde(default)]
    pub grid_linf: Vec<f64>,
    /// The reference L2 radius at which every L2 arm is also attacked.
    #[serde(default)]
    pub ref_l2: Option<f64>,
    /// The reference L∞ radius at which every L∞ arm is also attacked.
    #[serde(default)]
    pub ref_linf: Option<f64>,
    /// Evaluation batch size.
    #[serde(default = "eval_batch")]
    pub batch: usize,
    /// Evaluate the source on the header's data (off: a transfer-only run from `source.from`
    /// loads no source data; its head size is read from the file).
    #[serde(default = "yes")]
    pub source: bool,
}

fn eval_batch() -> usize {
    250
}

/// Transfer to the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Target tasks.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Fixed-feature transfer (absent: not run).
    #[serde(default)]
    pub fixed: Option<FixedConfig>,
    /// Full-network transfer (absent: not run).
    #[serde(default)]
    pub full: Option<FullConfig>,
}

/// A target task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Name in reports.
    pub name: String,
    /// Its data.
    pub data: DataSpec,
    /// Keep only these labels (relabelled 0, 1, ... in this order).
    #[serde(default)]
    pub classes: Option<Vec<i64>>,
    /// Draw this many training examples per class with the transfer seed and test on the
    /// rest; absent: the dataset's own train and test split (`data.split` sizes).
    #[serde(default)]
    pub per_class: Option<usize>,
    /// Transforms applied to every input batch, in order (before any augmentation).
    #[serde(default)]
    pub transform: Vec<Transform>,
    /// Transforms of the evaluation inputs (validation and test) in place of `transform`;
    /// absent: `transform`. The official transfer code tests CIFAR as Resize(256) →
    /// CenterCrop(224) (`src/utils/constants.py`, `TEST_TRANSFORMS`) while it trains on
    /// RandomResizedCrop(224) of the 32² image.
    #[serde(default)]
    pub test_transform: Option<Vec<Transform>>,
    /// Also report mean per-class accuracy.
    #[serde(default)]
    pub mean_per_class: bool,
    /// The target's normaliser (absent: the source's).
    #[serde(default)]
    pub normalize: Option<NormSpec>,
    /// For the granularity check: the target whose best ε this one's should not be below
    /// (a coarser or lower-resolution version of it).
    #[serde(default)]
    pub granularity_of: Option<String>,
}

/// An input transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Area (average) downsampling to this side.
    Area(i64),
    /// Bilinear resize to this side (align_corners = false).
    Bilinear(i64),
    /// Zero padding of this many pixels on each side.
    Pad(i64),
    /// Gray to RGB by repeating the channel.
    Rgb,
    /// The centre square of this side (torchvision's `CenterCrop`: the offset rounds
    /// half-way cases, `round((H − side) / 2)`).
    CenterCrop(i64),
}

impl Target {
    /// The transforms of evaluation inputs: `test_transform`, or else `transform`.
    pub(crate) fn eval_transform(&self) -> &[Transform] {
        self.test_transform.as_deref().unwrap_or(&self.transform)
    }
}

/// Fixed-feature transfer: only a new head is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedConfig {
    /// Transfer seeds (each draws its own training examples and head).
    pub seeds: Vec<u64>,
    /// How the head is fitted.
    pub solver: Solver,
}

/// How a fixed-feature head is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Solver {
    /// Multinomial logistic regression on features extracted once in eval mode: full batch,
    /// Adam, zero init, loss CE + (wd/2)‖W‖² (bias not decayed).
    Logistic {
        /// Adam iterations.
        iterations: u64,
        /// Adam learning rate.
        lr: f64,
        /// L2 penalty on the weights.
        weight_decay: f64,
    },
    /// The official code's loop: SGD on the head with the frozen backbone run every step.
    Sgd(SgdConfig),
}

/// Full-network transfer: every parameter is fine-tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    /// Transfer seeds.
    pub seeds: Vec<u64>,
    /// The optimisation.
    pub sgd: SgdConfig,
}

/// SGD fine-tuning of a head or of the whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Steps (the same on every target); or give `epochs`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Epochs of the target's training set; or give `steps`.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Batch size.
    pub batch: usize,
    /// Learning rates; with more than one, each is trained on the training set less a
    /// validation part and the one with the best validation accuracy is kept.
    pub lr: Vec<f64>,
    /// Fraction of the training set held out to choose the learning rate.
    #[serde(default = "tenth")]
    pub val_fraction: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay (trainable parameters only).
    pub weight_decay: f64,
    /// Fractions of the steps at which the rate is multiplied by `gamma`.
    #[serde(default)]
    pub decay_at: Vec<f64>,
    /// Decay factor.
    #[serde(default = "tenth")]
    pub gamma: f64,
    /// BatchNorm mode of the frozen backbone in fixed-feature training (`train`: batch
    /// statistics, running statistics updated, as the official code does).
    #[serde(default)]
    pub bn_mode: BnMode,
    /// Augmentation of the training batches (after the target's transforms).
    #[serde(default)]
    pub augment: Augment,
    /// With an `lr` grid: after the rate is chosen on the validation part, train it again on
    /// the whole training set and test that network (default); `false` tests the network
    /// trained without the validation part.
    #[serde(default = "yes")]
    pub retrain: bool,
}

/// BatchNorm mode of a frozen backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BnMode {
    /// Batch statistics; running statistics keep adapting to the target.
    #[default]
    Train,
    /// Running statistics, frozen.
    Eval,
}

/// The section's name in specs.
pub(crate) const SECTION: &str = "robust-transfer";

/// Checks the `robust-transfer:` section: types, and values a run could not use.
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    let c: Config = tree.typed(SECTION)?;
    let at = |k: &str| format!("{SECTION}.{k}");
    let arm = Arm::parse(&c.source.arm);
    tree.require(
        &at("source.arm"),
        arm.is_ok(),
        arm.as_ref().err().map_or("", String::as_str),
    )?;
    if let Ok(Arm::Adv(norm, _)) = arm {
        tree.require(
            &at("source.attack.fgsm"),
            !c.source.attack.fgsm || norm == reprise_core::attack::Norm::Linf,
            "FGSM is an L∞ attack; use PGD for an L2 arm",
        )?;
    }
    let n = c.normalize.mean.len();
    tree.require(
        &at("normalize"),
        n > 0 && c.normalize.std.len() == n && c.normalize.std.iter().all(|s| *s > 0.0),
        "needs as many positive stds as means (one per input channel)",
    )?;
    if let ModelConfig::SmallCnn { width } = c.model {
        tree.require(
            &at("model.small_cnn.width"),
            width > 0,
            "must be at least 1",
        )?;
    }
    let pos = |v: f64| v > 0.0 && v.is_finite();
    tree.require(
        &at("source.lr"),
        pos(c.source.lr),
        "must be a positive number",
    )?;
    tree.require(
        &at("source.batch"),
        c.source.batch > 0,
        "must be at least 1",
    )?;
    tree.require(
        &at("source.epochs"),
        c.source.epochs > 0 || c.source.from.is_some(),
        "must be at least 1",
    )?;
    tree.require(
        &at("source.attack.steps"),
        c.source.attack.steps > 0,
        "must be at least 1",
    )?;
    tree.require(
        &at("source.attack.step_ratio"),
        pos(c.source.attack.step_ratio),
        "must be a positive number",
    )?;
    let aug = c.source.augment.problem();
    tree.require(&at("source.augment"), aug.is_none(), aug.unwrap_or(""))?;
    tree.require(
        &at("source.checkpoint_every"),
        c.source.checkpoint_every > 0,
        "must be at least 1",
    )?;
    tree.require(
        &at("eval.pgd_steps"),
        c.eval.pgd_steps > 0,
        "must be at least 1",
    )?;
    tree.require(
        &at("eval.source"),
        c.eval.source || c.source.from.is_some(),
        "a source trained here is always evaluated; `eval.source: false` needs `source.from`",
    )?;
    tree.require(&at("eval.batch"), c.eval.batch > 0, "must be at least 1")?;
    let grids = c.eval.grid_l2.iter().chain(&c.eval.grid_linf);
    tree.require(
        &at("eval"),
        grids.clone().all(|e| pos(*e)),
        "grid radii must be positive",
    )?;
    let mut names = std::collections::BTreeSet::new();
    for (i, t) in c.transfer.targets.iter().enumerate() {
        let p = at(&format!("transfer.targets.{i}"));
        tree.require(
            &p,
            names.insert(t.name.clone()),
            &format!("target name `{}` is used twice", t.name),
        )?;
        tree.require(
            &format!("{p}.per_class"),
            t.per_class != Some(0),
            "must be at least 1",
        )?;
        if let Some(cl) = &t.classes {
            tree.require(
                &format!("{p}.classes"),
                cl.len() >= 2,
                "needs at least two classes",
            )?;
        }
        for (key, ts) in [
            ("transform", Some(&t.transform)),
            ("test_transform", t.test_transform.as_ref()),
        ] {
            for tr in ts.into_iter().flatten() {
                let ok = match tr {
                    Transform::Area(s) | Transform::Bilinear(s) | Transform::CenterCrop(s) => {
                        *s > 0
                    }
                    Transform::Pad(p) => *p >= 0,
                    Transform::Rgb => true,
                };
                tree.require(&format!("{p}.{key}"), ok, "sizes must be positive")?;
            }
        }
    }
    let sgd_ok = |s: &SgdConfig| -> Option<&'static str> {
        if s.lr.is_empty() || !s.lr.iter().all(|l| pos(*l)) {
            Some("lr must be a non-empty list of positive rates")
        } else if s.batch == 0 {
            Some("batch must be at least 1")
        } else if s.steps.is_none() == s.epochs.is_none() {
            Some("give exactly one of `steps` and `epochs`")
        } else if !(0.0..1.0).contains(&s.val_fraction) || (s.lr.len() > 1 && s.val_fraction == 0.0)
        {
            Some("val_fraction must be in (0, 1) when lr is a grid")
        } else if let Some(e) = s.augment.problem() {
            Some(e)
        } else {
            None
        }
    };
    if let Some(f) = &c.transfer.fixed {
        tree.require(
            &at("transfer.fixed.seeds"),
            !f.seeds.is_empty(),
            "needs at least one seed",
        )?;
        match &f.solver {
            Solver::Sgd(s) => {
                let e = sgd_ok(s);
                tree.require(
                    &at("transfer.fixed.solver.sgd"),
                    e.is_none(),
                    e.unwrap_or(""),
                )?;
            }
            Solver::Logistic { iterations, lr, .. } => {
                tree.require(
                    &at("transfer.fixed.solver.logistic"),
                    *iterations > 0 && pos(*lr),
                    "iterations and lr must be positive",
                )?;
            }
        }
    }
    if let Some(f) = &c.transfer.full {
        tree.require(
            &at("transfer.full.seeds"),
            !f.seeds.is_empty(),
            "needs at least one seed",
        )?;
        let e = sgd_ok(&f.sgd);
        tree.require(&at("transfer.full.sgd"), e.is_none(), e.unwrap_or(""))?;
    }
    // Sizes that decide what a run allocates, and counts that decide how long it runs (after the checks with more specific messages).
    let width = match c.model {
        ModelConfig::SmallCnn { width } => width,
        ModelConfig::Resnet { .. } => 1,
    };
    let s = &c.source;
    let mut sizes: Vec<(String, i128, i128, i128)> = vec![
        (at("model.small_cnn.width"), width.into(), 1, 4096),
        (at("source.epochs"), s.epochs.into(), 0, 100_000),
        (at("source.batch"), s.batch as i128, 1, 1 << 16),
        (at("source.attack.steps"), s.attack.steps as i128, 0, 10_000),
        (
            at("source.checkpoint_every"),
            s.checkpoint_every.into(),
            1,
            i128::MAX,
        ),
        (at("eval.pgd_steps"), c.eval.pgd_steps as i128, 0, 10_000),
        (at("eval.batch"), c.eval.batch as i128, 1, 1 << 16),
    ];
    if let ModelConfig::Resnet { base, blocks, .. } = c.model {
        if let Some(b) = base {
            sizes.push((at("model.resnet.base"), b.into(), 1, 1024));
        }
        for (i, n) in blocks.iter().flatten().enumerate() {
            sizes.push((at(&format!("model.resnet.blocks.{i}")), *n as i128, 1, 64));
        }
    }
    for (i, t) in c.transfer.targets.iter().enumerate() {
        if let Some(k) = t.per_class {
            sizes.push((
                at(&format!("transfer.targets.{i}.per_class")),
                k as i128,
                1,
                10_000_000,
            ));
        }
    }
    if let Some(f) = &c.transfer.full {
        sizes.push((
            at("transfer.full.sgd.batch"),
            f.sgd.batch as i128,
            1,
            1 << 16,
        ));
        if let Some(n) = f.sgd.steps {
            sizes.push((at("transfer.full.sgd.steps"), n.into(), 1, 1 << 32));
        }
    }
    tree.require_ranges(&sizes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse_and_print() {
        assert_eq!(Arm::parse("std").unwrap(), Arm::Std);
        assert_eq!(Arm::parse("l2-0.5").unwrap(), Arm::Adv(Norm::L2, 0.5));
        assert_eq!(
            Arm::parse("linf-4/255").unwrap(),
            Arm::Adv(Norm::Linf, 4.0 / 255.0)
        );
        assert_eq!(Arm::parse("noise-3").unwrap(), Arm::Noise(3.0));
        assert_eq!(Arm::parse("l2-0.25").unwrap().to_string(), "l2-0.25");
        for bad in [
            "",
            "l2",
            "l2-",
            "l2-x",
            "l3-1",
            "l2-0",
            "linf--1",
            "noise-1/0",
            "l2-nan",
        ] {
            assert!(Arm::parse(bad).is_err(), "{bad}");
        }
    }
}
