//! The `deepthin:` section of a spec: the architecture, the teacher's training, and the arms,
//! each a declarative list of named stages.

use reprise_core::data::augment::Augment;
use reprise_core::spec::{SpecError, SpecTree};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One run: a wide teacher, then every arm's stages on a fresh thin network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The thin and wide networks.
    pub arch: MlpArch,
    /// The wide teacher's training (stage 1).
    pub teacher: TrainStage,
    /// A trained teacher to load instead of training one: a `teacher.safetensors` written by
    /// an earlier run of the same architecture (or a file with the same tensor names).
    #[serde(default)]
    pub teacher_from: Option<PathBuf>,
    /// Batch size of every stage.
    pub batch: usize,
    /// The image pipeline of the convolutional families (`resnet`, `wrn`).
    #[serde(default)]
    pub images: Option<ImagePipeline>,
    /// Mixed precision of the convolutional families' training steps: `bf16` (or `f16`, with
    /// a dynamic loss scale) autocast around the forwards and losses of every phase — the
    /// networks trained, the frozen teacher's targets, the imitation maps — on float32 master
    /// weights and optimizer state; evaluations and fits stay float32. The paper's code trains
    /// in float32 (the default, `none`).
    #[serde(default)]
    pub amp: reprise_core::amp::Amp,
    /// The arms: a name and its stages, run in order on a fresh thin network.
    pub arms: BTreeMap<String, Arm>,
}

/// The thin network S and its wide teacher B: `kind` names the family, `thin` and `wide` the
/// width each block is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpArch {
    /// The family (default: the plain MLP).
    #[serde(default)]
    pub kind: ArchKind,
    /// Number of blocks n (for `resnet` and `wrn`: the network's depth, 50 or 6n + 4).
    pub depth: usize,
    /// Thin width w: the MLP's layer width, the residual block's hidden width, the encoder
    /// layer's FFN width; for `resnet` the bottleneck's width factor, for `wrn` the widening
    /// factor k.
    pub thin: i64,
    /// Wide width W, the same quantity in the teacher.
    pub wide: i64,
    /// The shared residual-stream width (`residual` and `encoder`).
    #[serde(default)]
    pub stream: Option<i64>,
    /// Attention heads (`encoder`).
    #[serde(default)]
    pub heads: Option<ThinWide>,
    /// Width of one attention head (`encoder`).
    #[serde(default)]
    pub head_dim: Option<ThinWide>,
}

/// A quantity for the thin network and for the wide one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThinWide {
    /// In S.
    pub thin: i64,
    /// In B.
    pub wide: i64,
}

/// The network families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ArchKind {
    /// Architecture A: `n` blocks `ReLU(A h + b)` and a linear head. Block widths differ between
    /// S and B, so imitation goes through linear pairs that are merged afterwards.
    #[default]
    Mlp,
    /// Architecture B: an embedding to a shared stream, `n` residual blocks
    /// `x + V ReLU(U x + a) + c` whose hidden width is widened, a linear head. No pairs.
    Residual,
    /// A pre-LayerNorm Transformer encoder over token sequences with a shared stream width,
    /// whose heads and FFN are widened; per-position logits. No pairs; imitation compares the
    /// non-affine LayerNorm of the stream.
    Encoder,
    /// torchvision's bottleneck ResNet (depth 50, 101 or 152) on images; the teacher widens
    /// the 3×3 bottleneck (`wide` is its width factor, 4 in the paper). Imitation unit: the
    /// four stages, compared directly (their outputs have the same width in S and B).
    Resnet,
    /// The pre-activation Wide-ResNet WRN-depth-k on images (`thin` and `wide` are k).
    /// Imitation unit: the three stages, through a 1×1 widening convolution that the loss
    /// alone uses (nothing to merge).
    Wrn,
}

impl ArchKind {
    /// The name a spec gives it (`mlp`, `residual`, `encoder`, `resnet`, `wrn`).
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::Mlp => "mlp",
            ArchKind::Residual => "residual",
            ArchKind::Encoder => "encoder",
            ArchKind::Resnet => "resnet",
            ArchKind::Wrn => "wrn",
        }
    }

    /// Whether the family is convolutional, trained on streamed augmented image batches with
    /// the teacher's targets computed batch by batch.
    pub(crate) fn is_conv(self) -> bool {
        matches!(self, ArchKind::Resnet | ArchKind::Wrn)
    }
}

/// How a convolutional family's batches are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePipeline {
    /// Per-channel mean subtracted after augmentation (and at test).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f64>,
    /// Training augmentation (identity by default).
    #[serde(default)]
    pub augment: Augment,
    /// Centre-crop test images to this side (none: as loaded). With `data.image_size`
    /// `{ resize: 256, crop: 256 }` and 224 here, the test protocol is ImageNet's standard one.
    #[serde(default)]
    pub eval_crop: Option<i64>,
    /// Test batch size.
    #[serde(default = "eval_batch")]
    pub eval_batch: usize,
    /// Save a checkpoint every this many steps (and at the end of every stage).
    #[serde(default = "checkpoint_steps")]
    pub checkpoint_steps: u64,
    /// Test batches over which the per-stage imitation error is measured.
    #[serde(default = "fit_batches")]
    pub fit_batches: usize,
}

fn eval_batch() -> usize {
    256
}
fn checkpoint_steps() -> u64 {
    1000
}
fn fit_batches() -> usize {
    10
}

/// A stage's update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Optim {
    /// Adam with PyTorch's defaults, no weight decay.
    #[default]
    Adam,
    /// PyTorch's SGD with momentum and L2 weight decay.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Weight decay (added to the gradient).
        #[serde(default)]
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
}

/// A stage's learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sched {
    /// Cosine from the stage's rate to 0 over the stage.
    #[default]
    Cosine,
    /// The rate times `gamma` at each milestone, after a linear warm-up from 0.
    Step {
        /// Epochs (of the stage) at which the rate drops.
        milestones: Vec<f64>,
        /// Factor per milestone.
        gamma: f64,
        /// Linear warm-up from 0, in epochs.
        #[serde(default)]
        warmup_epochs: f64,
    },
}

/// An arm: its stages, and the depths it runs at (all when empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Stages, in order.
    pub stages: Vec<Stage>,
    /// Run only at these depths (empty: at every depth).
    #[serde(default)]
    pub depths: Vec<usize>,
}

impl Arm {
    /// Whether the arm uses the teacher (distillation, imitation, a hint, its head).
    pub fn needs_teacher(&self) -> bool {
        self.stages.iter().any(|s| match s {
            Stage::Train(t) => matches!(t.loss, Loss::Kd { .. }),
            Stage::Imitate(_) | Stage::Hint(_) | Stage::CopyHead => true,
            Stage::Merge => false,
        })
    }
}

/// A stage of an arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage {
    /// End-to-end training of the thin network (every parameter) with a loss.
    Train(TrainStage),
    /// Layerwise imitation of the teacher through linear pairs (narrow learning).
    Imitate(ImitateStage),
    /// Folds the linear pairs into the thin layers and the teacher's head into the thin head.
    Merge,
    /// FitNets: one hint at block `block` through a linear regressor, training blocks 1..=block.
    Hint(HintStage),
    /// Copies the teacher's head into the thin network (architectures with a shared stream
    /// width, where the teacher's head reads the thin stream directly).
    CopyHead,
}

/// Training with a loss for some epochs (by default Adam with a cosine schedule to 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    /// The loss.
    pub loss: Loss,
    /// Epochs.
    pub epochs: f64,
    /// Learning rate (the schedule's base).
    pub lr: f64,
    /// Update rule (default Adam).
    #[serde(default)]
    pub optimizer: Optim,
    /// Learning-rate schedule (default cosine to 0 over the stage).
    #[serde(default)]
    pub lr_schedule: Sched,
}

/// A training loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Cross-entropy on the labels.
    Ce,
    /// KL(p_teacher ‖ p_student) at a temperature, scaled by T².
    Kd {
        /// Temperature.
        temperature: f64,
    },
}

/// Layerwise imitation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImitateStage {
    /// Epochs per block (progressive) or in total (joint).
    pub epochs: f64,
    /// Learning rate (the schedule's base, per block).
    pub lr: f64,
    /// Update rule (default Adam).
    #[serde(default)]
    pub optimizer: Optim,
    /// Learning-rate schedule of each block's imitation (default cosine to 0).
    #[serde(default)]
    pub lr_schedule: Sched,
    /// Initialisation of the linear pairs.
    #[serde(default)]
    pub m_init: MInit,
    /// What feeds block i.
    #[serde(default)]
    pub input: Input,
    /// What happens to the blocks below the one imitating.
    #[serde(default)]
    pub lower_blocks: Lower,
    /// One block at a time, bottom to top, or every block's loss at once.
    #[serde(default)]
    pub schedule: ImitationSchedule,
}

/// Initialisation of the linear pairs M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MInit {
    /// G₁ = the top-w principal directions of the teacher's block output, c₁ its mean,
    /// G₂ = G₁ᵀ, c₂ = −G₁ᵀc₁.
    #[default]
    Pca,
    /// A linear layer's default (Kaiming-uniform, a = √5).
    Random,
}

/// What feeds block i during its imitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// The student's own (imitated) prefix.
    #[default]
    StudentPrefix,
    /// The teacher's prefix output B₍:i−1₎(x).
    Teacher,
}

/// The blocks below the one imitating.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Lower {
    /// Frozen (their output is cached).
    #[default]
    Frozen,
    /// Trained at this multiple of the learning rate.
    LrMult(f64),
    /// Trained at the full learning rate.
    Full,
}

/// Progressive or joint imitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImitationSchedule {
    /// Blocks 1..n in order, each for `epochs`.
    #[default]
    Progressive,
    /// The sum of every block's loss, all at once, for `epochs`.
    Joint,
}

/// FitNets' hint stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintStage {
    /// The hinted block (1-based); blocks 1..=block train to match the teacher's block output
    /// through a linear regressor.
    pub block: usize,
    /// Epochs.
    pub epochs: f64,
    /// Learning rate (the schedule's base).
    pub lr: f64,
    /// Update rule (default Adam).
    #[serde(default)]
    pub optimizer: Optim,
    /// Learning-rate schedule (default cosine to 0).
    #[serde(default)]
    pub lr_schedule: Sched,
}

/// A positive, finite number.
fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

impl Config {
    /// The arms that run at the architecture's depth, by name.
    pub fn arms_here(&self) -> Vec<(&String, &Arm)> {
        self.arms
            .iter()
            .filter(|(_, a)| a.depths.is_empty() || a.depths.contains(&self.arch.depth))
            .collect()
    }

    /// Checks the section (`tree` names the keys in the errors): the architecture, the image
    /// pipeline, the training settings, every arm that runs at this depth, then the sizes.
    pub fn validate(&self, tree: &SpecTree) -> Result<(), SpecError> {
        self.check_arch(tree)?;
        self.check_images(tree)?;
        self.check_training(tree)?;
        for (name, arm) in &self.arms {
            if arm.depths.is_empty() || arm.depths.contains(&self.arch.depth) {
                check_arm(tree, name, arm, &self.arch)?;
            }
        }
        self.check_sizes(tree)
    }

    /// The family, its depth and widths.
    fn check_arch(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let a = &self.arch;
        tree.require("deepthin.arch.depth", a.depth >= 2, "must be at least 2")?;
        tree.require("deepthin.arch.thin", a.thin >= 1, "must be at least 1")?;
        tree.require(
            "deepthin.arch.wide",
            a.wide >= a.thin,
            "must be at least the thin width",
        )?;
        let kind = a.kind;
        let mlp = kind == ArchKind::Mlp;
        let conv = kind.is_conv();
        tree.require(
            "deepthin.arch.stream",
            if mlp || conv {
                a.stream.is_none()
            } else {
                a.stream.is_some_and(|s| s >= 1)
            },
            if mlp {
                "the plain MLP has no shared stream (its widths are thin and wide)"
            } else if conv {
                "a convolutional family's stage widths follow from its depth and width factor"
            } else {
                "the shared stream width is needed (at least 1)"
            },
        )?;
        match kind {
            ArchKind::Resnet => tree.require(
                "deepthin.arch.depth",
                crate::conv::resnet_layers(a.depth).is_some(),
                "a bottleneck ResNet has depth 50, 101 or 152",
            )?,
            ArchKind::Wrn => tree.require(
                "deepthin.arch.depth",
                a.depth >= 10 && (a.depth - 4).is_multiple_of(6),
                "a Wide-ResNet has depth 6n + 4 (at least 10)",
            )?,
            _ => {}
        }
        if conv {
            tree.require(
                "deepthin.arch.wide",
                a.wide <= 64,
                "a width factor above 64 is not a network this machine or a GPU can hold",
            )?;
        }
        let enc = kind == ArchKind::Encoder;
        for (key, v) in [("heads", a.heads), ("head_dim", a.head_dim)] {
            tree.require(
                &format!("deepthin.arch.{key}"),
                if enc {
                    v.is_some_and(|p| p.thin >= 1 && p.wide >= 1)
                } else {
                    v.is_none()
                },
                if enc {
                    "the encoder needs { thin, wide }, both at least 1"
                } else {
                    "only the encoder has attention heads"
                },
            )?;
        }
        Ok(())
    }

    /// The image pipeline: present exactly for the convolutional families, and sound.
    fn check_images(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let (c, conv) = (self, self.arch.kind.is_conv());
        tree.require(
            "deepthin.images",
            conv == c.images.is_some(),
            if conv {
                "a convolutional family needs `images` (normalisation, augmentation, eval crop)"
            } else {
                "`images` is for the convolutional families (resnet, wrn)"
            },
        )?;
        tree.require(
            "deepthin.amp",
            conv || c.amp == reprise_core::amp::Amp::None,
            "mixed precision is for the convolutional families (resnet, wrn); the in-memory ones \
             train in float32",
        )?;
        if let Some(im) = &c.images {
            tree.require(
                "deepthin.images",
                im.mean.len() == 3
                    && im.std.len() == 3
                    && im.std.iter().all(|&s| s > 0.0 && s.is_finite())
                    && im.mean.iter().all(|m| m.is_finite()),
                "mean and std need 3 finite values each, std positive",
            )?;
            tree.require(
                "deepthin.images.eval_crop",
                im.eval_crop.is_none_or(|c| c >= 1),
                "must be at least 1",
            )?;
            tree.require(
                "deepthin.images",
                im.eval_batch >= 1 && im.checkpoint_steps >= 1 && im.fit_batches >= 1,
                "eval_batch, checkpoint_steps and fit_batches must be at least 1",
            )?;
        }
        Ok(())
    }

    /// The dataset the family runs on, the batch, the teacher's training, at least one arm.
    fn check_training(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let (c, enc) = (self, self.arch.kind == ArchKind::Encoder);
        let data: reprise_core::spec::DataSpec = tree.typed("data")?;
        tree.require(
            "data.dataset",
            enc == (data.dataset == crate::SORT_TASK),
            if enc {
                "the encoder runs on the token task `sort12`"
            } else {
                "`sort12` is a token task: it needs `arch.kind: encoder`"
            },
        )?;
        tree.require("deepthin.batch", c.batch >= 1, "must be at least 1")?;
        tree.require(
            "deepthin.arms",
            !c.arms.is_empty(),
            "needs at least one arm",
        )?;
        tree.require(
            "deepthin.teacher",
            positive(c.teacher.epochs) && positive(c.teacher.lr),
            "epochs and lr must be positive",
        )?;
        check_rule(
            tree,
            "deepthin.teacher",
            c.teacher.optimizer,
            &c.teacher.lr_schedule,
        )?;
        Ok(())
    }

    /// Sizes that decide what a run allocates (after the checks with more specific messages).
    fn check_sizes(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let (c, a) = (self, &self.arch);
        tree.require_ranges(&[
            ("deepthin.arch.depth", a.depth as i128, 2, 1000),
            ("deepthin.arch.thin", a.thin.into(), 1, 1 << 16),
            ("deepthin.arch.wide", a.wide.into(), 1, 1 << 16),
            (
                "deepthin.arch.stream",
                a.stream.unwrap_or(1).into(),
                1,
                1 << 16,
            ),
            ("deepthin.batch", c.batch as i128, 1, 1 << 16),
        ])?;
        for (k, tw) in [("heads", a.heads), ("head_dim", a.head_dim)] {
            if let Some(tw) = tw {
                tree.require_ranges(&[
                    (&format!("deepthin.arch.{k}.thin"), tw.thin.into(), 1, 4096),
                    (&format!("deepthin.arch.{k}.wide"), tw.wide.into(), 1, 4096),
                ])?;
            }
        }
        Ok(())
    }
}

/// One arm's stages: each sound for the family, imitations merged where the family has pairs.
fn check_arm(tree: &SpecTree, name: &str, arm: &Arm, a: &MlpArch) -> Result<(), SpecError> {
    let kind = a.kind;
    let (mlp, conv) = (kind == ArchKind::Mlp, kind.is_conv());
    // Where the thin and wide stage widths differ, imitation needs a widening map.
    let widths_differ =
        conv && crate::conv::stage_widths(a, a.thin) != crate::conv::stage_widths(a, a.wide);
    let p = format!("deepthin.arms.{name}");
    tree.require(&p, !arm.stages.is_empty(), "needs at least one stage")?;
    let mut glued = false;
    for (i, s) in arm.stages.iter().enumerate() {
        let sp = format!("{p}.stages.{i}");
        match s {
            Stage::Train(t) => {
                tree.require(
                    &sp,
                    positive(t.epochs) && positive(t.lr),
                    "epochs and lr must be positive",
                )?;
                check_rule(tree, &sp, t.optimizer, &t.lr_schedule)?;
                if let Loss::Kd { temperature } = t.loss {
                    tree.require(
                        &sp,
                        positive(temperature),
                        "the temperature must be positive",
                    )?;
                }
            }
            Stage::Imitate(m) => {
                tree.require(
                    &sp,
                    positive(m.epochs) && positive(m.lr),
                    "epochs and lr must be positive",
                )?;
                tree.require(&sp, !glued, "a second imitation before a merge")?;
                check_rule(tree, &sp, m.optimizer, &m.lr_schedule)?;
                if conv {
                    tree.require(
                        &sp,
                        m.lower_blocks == Lower::Frozen
                            && m.schedule == ImitationSchedule::Progressive,
                        "the convolutional families imitate progressively with frozen lower stages",
                    )?;
                    tree.require(
                        &sp,
                        !widths_differ
                            || (m.m_init == MInit::Random
                                && m.input == Input::StudentPrefix),
                        "thin and wide stage widths differ: the widening maps start random (`m_init: random`) and the input is the student's prefix",
                    )?;
                }
                glued = mlp;
            }
            Stage::Merge => {
                tree.require(
                    &sp,
                    mlp,
                    if conv {
                        "nothing to merge: a convolutional family's widening maps serve the imitation loss only"
                    } else {
                        "nothing to merge: this family shares its stream width, so imitation uses no linear pairs"
                    },
                )?;
                tree.require(&sp, glued, "a merge needs an imitation stage before it")?;
                glued = false;
            }
            Stage::CopyHead => {
                tree.require(
                    &sp,
                    !mlp,
                    "the MLP's teacher head reads the wide space: the merge folds it in, there is no head to copy",
                )?;
                tree.require(
                    &sp,
                    !(kind == ArchKind::Wrn && a.thin != a.wide),
                    "the Wide-ResNet's head reads the last stage, whose width differs between thin and wide",
                )?;
            }
            Stage::Hint(h) => {
                let blocks = if conv {
                    crate::conv::num_stages(kind)
                } else {
                    a.depth
                };
                tree.require(
                    &sp,
                    h.block >= 1 && h.block <= blocks,
                    if conv {
                        "block must be between 1 and the number of stages"
                    } else {
                        "block must be between 1 and the depth"
                    },
                )?;
                tree.require(
                    &sp,
                    positive(h.epochs) && positive(h.lr),
                    "epochs and lr must be positive",
                )?;
                check_rule(tree, &sp, h.optimizer, &h.lr_schedule)?;
            }
        }
    }
    tree.require(
        &p,
        !glued,
        "ends with linear pairs that were never merged: add a `merge` stage",
    )?;
    Ok(())
}

/// Checks a stage's update rule and schedule.
fn check_rule(tree: &SpecTree, at: &str, o: Optim, s: &Sched) -> Result<(), SpecError> {
    if let Optim::Sgd {
        momentum,
        weight_decay,
        ..
    } = o
    {
        tree.require(
            at,
            (0.0..1.0).contains(&momentum) && weight_decay >= 0.0 && weight_decay.is_finite(),
            "SGD needs momentum in [0, 1) and a non-negative weight decay",
        )?;
    }
    if let Sched::Step {
        milestones,
        gamma,
        warmup_epochs,
    } = s
    {
        tree.require(
            at,
            milestones.iter().all(|m| *m >= 0.0 && m.is_finite())
                && milestones.windows(2).all(|w| w[0] <= w[1])
                && *gamma > 0.0
                && gamma.is_finite()
                && *warmup_epochs >= 0.0
                && warmup_epochs.is_finite(),
            "a step schedule needs non-decreasing milestones (epochs), a positive gamma and a non-negative warm-up",
        )?;
    }
    Ok(())
}
