//! The `deepthin:` section of a spec: the architecture, the teacher's training, and the arms,
//! each a declarative list of named stages.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One run: a wide teacher, then every arm's stages on a fresh thin network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The thin and wide networks.
    pub arch: MlpArch,
    /// The wide teacher's training (stage 1).
    pub teacher: TrainStage,
    /// Batch size of every stage.
    pub batch: usize,
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
    /// Number of blocks n.
    pub depth: usize,
    /// Thin width w: the MLP's layer width, the residual block's hidden width, the encoder
    /// layer's FFN width.
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

/// Training with a loss for some epochs, Adam with a cosine schedule to 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    /// The loss.
    pub loss: Loss,
    /// Epochs.
    pub epochs: f64,
    /// Adam learning rate (cosine to 0 over the stage).
    pub lr: f64,
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
    /// Adam learning rate (cosine to 0 per block).
    pub lr: f64,
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
    /// Adam learning rate.
    pub lr: f64,
}
