//! The `deepthin:` section of a spec: the architecture, the teacher's training, and the arms,
//! each a declarative list of named stages.

use reprise_core::data::augment::Augment;
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
    pub fn is_conv(self) -> bool {
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
