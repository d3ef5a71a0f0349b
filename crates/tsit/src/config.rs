//! The `tsit:` section of a spec.

use reprise_core::spec::{SpecError, SpecTree};
use serde::{Deserialize, Serialize};

/// What is translated into what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Arbitrary style transfer on digits: plain content digits, styled digits as style images,
    /// the oracle render of each content digit in the style image's style (docs/tsit.md).
    DigitsAst,
    /// Semantic image synthesis on the procedural scenes: 7-channel label map → render in s₀.
    ScenesSis,
    /// Style transfer between the procedural scenes' style domains A and B.
    ScenesAst,
    /// Paper scale: unpaired style transfer from `trainA/`, `trainB/`, `testA/`, `testB/`
    /// under `data.path` (summer2winter_yosemite's layout).
    FolderAst,
    /// Paper scale: semantic synthesis on Cityscapes' own layout (`leftImg8bit/`, `gtFine/`).
    CityscapesSis,
    /// Paper scale: semantic synthesis on ADE20K's own layout (`ADEChallengeData2016/`).
    Ade20kSis,
}

impl Task {
    /// Whether the task is style transfer (noise bottleneck, unconditional D, content target).
    pub(crate) fn is_ast(self) -> bool {
        matches!(self, Task::DigitsAst | Task::ScenesAst | Task::FolderAst)
    }

    /// Whether the data are a dataset's own folders (paper scale; no in-project evaluation
    /// networks: the test outputs are written as PNG files for external FID / segmenters).
    pub(crate) fn is_folder(self) -> bool {
        matches!(
            self,
            Task::FolderAst | Task::CityscapesSis | Task::Ade20kSis
        )
    }
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// TSIT with both streams: FADE on the content features and FAdaIN with the style features.
    Full,
    /// TSIT without the style stream (no FAdaIN): only the bottleneck noise and D carry style.
    NoFadain,
    /// TSIT for semantic synthesis: the content stream on the label map, no style stream.
    TsitSis,
    /// The pix2pixHD-style generator (label fed at the input), same D, losses and optimizer.
    P2phdLite,
}

impl Arm {
    /// The arm's name as written in specs.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Full => "full",
            Arm::NoFadain => "no-fadain",
            Arm::TsitSis => "tsit-sis",
            Arm::P2phdLite => "p2phd-lite",
        }
    }
}

/// Weight initialisation of G and D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitKind {
    /// xavier_normal with gain 0.02 on every conv/linear weight (SN: on `weight_orig`), bias 0:
    /// the official TSIT init.
    #[default]
    Xavier,
    /// N(0, 0.02) on every conv and transposed-conv weight, bias 0: pix2pixHD's own init.
    Normal,
}

/// The generator and discriminator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Base width nf (official 64); stream level i has nf·min(2^i, cap) channels.
    pub nf: i64,
    /// Width cap (official 16).
    pub cap: i64,
    /// Base width of D (official 64).
    pub ndf: i64,
    /// Scales of the multi-scale D (official 2).
    #[serde(default = "two")]
    pub num_d: usize,
    /// Layers of each PatchGAN (official 3 for style transfer, 4 for semantic synthesis).
    pub n_layers_d: usize,
    /// FAdaIN weight α (official 1).
    #[serde(default = "one")]
    pub alpha: f64,
    /// Initialisation (official xavier(0.02); `normal` is pix2pixHD's).
    #[serde(default)]
    pub init: InitKind,
    /// Semantic synthesis with the VAE encoder (z from E(ground truth)) instead of the
    /// nearest-resized label map at the bottleneck.
    #[serde(default)]
    pub vae: bool,
    /// VAE latent size (official 256).
    #[serde(default = "z_dim")]
    pub z_dim: i64,
    /// The VAE encoder's input size (official: bilinear resize to 256).
    #[serde(default = "vae_size")]
    pub vae_size: i64,
    /// The pix2pixHD-style baseline's shape.
    #[serde(default)]
    pub p2phd: P2phdConfig,
}

/// The pix2pixHD-style generator's shape (pix2pixHD's global generator; small scale: ngf 16, 3 downsamples).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct P2phdConfig {
    /// Base width.
    pub ngf: i64,
    /// Stride-2 downsampling convolutions.
    pub n_down: usize,
    /// Residual blocks at the bottom.
    pub n_blocks: usize,
}

impl Default for P2phdConfig {
    fn default() -> Self {
        P2phdConfig {
            ngf: 16,
            n_down: 3,
            n_blocks: 9,
        }
    }
}

/// Loss weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Discriminator feature matching λ_feat.
    pub lambda_feat: f64,
    /// Perceptual loss λ_vgg.
    pub lambda_vgg: f64,
    /// KL term of the VAE λ_kld (official 0.05).
    #[serde(default = "lambda_kld")]
    pub lambda_kld: f64,
    /// The devices the official trainer splits a batch over for the KL term: each GPU sums the
    /// KL divergence over its share of the batch and the GPUs' losses are averaged
    /// (`models/pix2pix_model.py` under DataParallel, then the trainer's mean), so the term is
    /// λ_kld · Σ_batch / `kld_devices`. The official SIS scripts run batch 16 on 2 GPUs: 2.
    /// Default 1, the sum over the whole batch (one device).
    #[serde(default = "one_device")]
    pub kld_devices: usize,
}

fn one_device() -> usize {
    1
}

/// TTUR Adam.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Generator learning rate (official 1e-4).
    pub lr_g: f64,
    /// Discriminator learning rate (official 4e-4).
    pub lr_d: f64,
    /// Adam β₁ (official 0).
    #[serde(default)]
    pub beta1: f64,
    /// Adam β₂ (official 0.9).
    #[serde(default = "beta2")]
    pub beta2: f64,
    /// Fraction of the iterations after which both rates decay linearly to 0 (official: `niter`
    /// of `niter + niter_decay`); 1 keeps them constant.
    #[serde(default = "one")]
    pub decay_from: f64,
    /// When the decayed rates change: once an epoch, as the official trainer's
    /// `update_learning_rate` does at each epoch's end (default), or every iteration.
    #[serde(default)]
    pub decay_per: DecayPer,
}

/// When a linearly decaying learning rate changes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayPer {
    /// At each epoch's end (official).
    #[default]
    Epoch,
    /// At every iteration.
    Iteration,
}

/// How training batches are drawn.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Epochs of a seeded shuffle, the last partial batch dropped, as the official data
    /// loader (`shuffle=True, drop_last=True`) draws them (default).
    #[default]
    Epochs,
    /// Each example of a batch drawn uniformly with replacement (the small-scale runs).
    Replacement,
}

/// The frozen feature network of the perceptual loss.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PerceptualConfig {
    /// VGG-mini trained in the project as a classifier on the training renders (digits: 10-way;
    /// scenes: class presence), then frozen.
    Trained {
        /// Training epochs.
        epochs: f64,
        /// Initialisation and data-order seed (differs from the evaluation networks' 1234).
        seed: u64,
    },
    /// VGG-mini with random Kaiming-normal weights (the ablation arm).
    Random {
        /// Initialisation seed.
        seed: u64,
    },
    /// ImageNet VGG-19 (relu1_1 .. relu5_1) from a safetensors file with torchvision's names
    /// (`features.0.weight`, ...): the paper's loss network.
    Vgg19 {
        /// The safetensors file.
        path: std::path::PathBuf,
    },
}

/// Evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many iterations (and at the end).
    pub every: u64,
    /// Test pairs / maps evaluated (at most the test set).
    pub n_test: usize,
    /// Epochs of the frozen evaluation networks (digit classifier, segmenter, feature net).
    pub net_epochs: f64,
    /// The digit classifier must reach this accuracy on styled test renders, else it trains on
    /// (up to 3× `net_epochs`) and the run fails if it still does not.
    #[serde(default = "gate")]
    pub classifier_gate: f64,
    /// The α sweep of FAdaIN at test (style-transfer runs of the full arm).
    #[serde(default)]
    pub alphas: Vec<f64>,
    /// Pairs shown in the image grid.
    #[serde(default = "grid")]
    pub grid: usize,
    /// Batch statistics in the FADE norms at test, as the official test script does for MMIS
    /// and photo→art (official data/photo2art_dataset.py and its options); running statistics otherwise (the default).
    #[serde(default)]
    pub train_bn: bool,
    /// Paper scale: pytorch-fid's Inception-v3 weights (safetensors, converted by
    /// `scripts/convert_fid_inception.py`); when given, the FID of the test outputs against
    /// the test images (the target domain's for style transfer) is computed and reported.
    #[serde(default)]
    pub fid_inception: Option<std::path::PathBuf>,
}

/// How a paper-scale dataset's folders are read (official data/*_dataset.py).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// Resize to this height (width by the aspect) then crop randomly to the model's size
    /// (ADE20K: 286); none resizes straight to the model's size.
    #[serde(default)]
    pub load_size: Option<i64>,
    /// Random horizontal flip (p = ½, one draw for the pair).
    #[serde(default = "yes")]
    pub flip: bool,
    /// Label classes of semantic synthesis (Cityscapes 35, ADE20K 150).
    #[serde(default)]
    pub label_nc: i64,
    /// A don't-care class beside them (ADE20K).
    #[serde(default)]
    pub dontcare: bool,
    /// The instance-edge channel (Cityscapes).
    #[serde(default)]
    pub instance_edge: bool,
    /// The style list repeated this many times in training (photo2art: 4; official default 2).
    #[serde(default = "two")]
    pub style_repeat: usize,
    /// The content list repeated this many times in training (day2night: 2).
    #[serde(default = "one_usize")]
    pub content_repeat: usize,
}

/// The `tsit:` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The task.
    pub task: Task,
    /// The arm.
    pub arm: Arm,
    /// Image height S (a power of two).
    pub size: i64,
    /// Width ÷ height (Cityscapes and BDD100K: 2); the bottleneck is 2 × 2·aspect.
    #[serde(default = "one_i64")]
    pub aspect: i64,
    /// How a paper-scale dataset's folders are read.
    #[serde(default)]
    pub folder: Option<FolderConfig>,
    /// Training pairs / maps per class (digits: the first this many of each class in stored
    /// order; the rest is test) or in all (scenes); unused by the paper-scale tasks.
    #[serde(default)]
    pub train: usize,
    /// Test pairs / maps (small-scale tasks).
    #[serde(default)]
    pub test: usize,
    /// G and D.
    pub model: ModelConfig,
    /// Batch size B.
    pub batch: i64,
    /// Training iterations (one G step then one D step each).
    pub iterations: u64,
    /// Evaluate these weights instead of training: the official `latest_net_G/D/E.pth` put
    /// in one safetensors file by `scripts/convert_tsit_ckpt.py` (`G/…`, `D/…`, `E/…`, the
    /// official names; `D/…` optional), mapped to reprise's by `tsit::official`.
    #[serde(default)]
    pub from: Option<std::path::PathBuf>,
    /// How batches are drawn; an epoch is ⌊training items / batch⌋ iterations, for the
    /// sampling and the learning-rate decay alike.
    #[serde(default)]
    pub sampling: Sampling,
    /// Loss weights.
    pub loss: LossConfig,
    /// Optimizers.
    pub optim: OptimConfig,
    /// The perceptual-loss network.
    pub perceptual: PerceptualConfig,
    /// Evaluation.
    pub eval: EvalConfig,
    /// Checkpoint every this many iterations.
    pub checkpoint_every: u64,
    /// Stop with the last good checkpoint if a loss is NaN, infinite or beyond this.
    #[serde(default = "guard")]
    pub guard_loss: f64,
    /// Mixed precision of the training step (`none`, `bf16`, `f16`): the generator's, the
    /// discriminator's and the loss network's forwards under autocast, on float32 master
    /// weights and Adam state, the losses in float32, and with `f16` a dynamic loss scale for
    /// each optimizer. The official code trains in float32 (the default).
    #[serde(default)]
    pub amp: reprise_core::amp::Amp,
}

impl Config {
    /// Stream levels L = log2(S).
    pub fn levels(&self) -> usize {
        self.size.trailing_zeros() as usize
    }
}

fn two() -> usize {
    2
}
fn one_usize() -> usize {
    1
}
fn one_i64() -> i64 {
    1
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn z_dim() -> i64 {
    256
}
fn vae_size() -> i64 {
    256
}
fn lambda_kld() -> f64 {
    0.05
}
fn beta2() -> f64 {
    0.9
}
fn gate() -> f64 {
    0.95
}
fn grid() -> usize {
    8
}
fn guard() -> f64 {
    1e6
}

/// Checks the `tsit:` section.
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    tree.typed::<Config>("tsit")?.validate(tree)
}

impl Config {
    /// Checks this section of `tree` (a run's spec), naming the first field that is wrong.
    pub(crate) fn validate(&self, tree: &SpecTree) -> Result<(), SpecError> {
        self.check_ranges(tree)?;
        self.check_task(tree)?;
        self.check_model(tree)?;
        self.check_training(tree)
    }

    /// Sizes that decide what a run allocates, and counts that decide how long it runs, within bounds.
    fn check_ranges(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let m = &self.model;
        tree.require_ranges(&[
            ("tsit.size", self.size.into(), 8, 4096),
            ("tsit.aspect", self.aspect.into(), 1, 8),
            ("tsit.train", self.train as i128, 0, 10_000_000),
            ("tsit.test", self.test as i128, 0, 10_000_000),
            ("tsit.batch", self.batch.into(), 1, 4096),
            ("tsit.iterations", self.iterations.into(), 1, 1 << 32),
            (
                "tsit.checkpoint_every",
                self.checkpoint_every.into(),
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
            ("tsit.eval.every", self.eval.every.into(), 1, i128::MAX),
            ("tsit.eval.n_test", self.eval.n_test as i128, 1, 10_000_000),
            ("tsit.eval.grid", self.eval.grid as i128, 1, 64),
            (
                "tsit.loss.kld_devices",
                self.loss.kld_devices as i128,
                1,
                1024,
            ),
        ])?;
        tree.require(
            "tsit.loss.kld_devices",
            self.batch % self.loss.kld_devices.max(1) as i64 == 0,
            "must divide tsit.batch (each device takes an equal share of the batch)",
        )?;
        if let Some(f) = &self.folder {
            tree.require_ranges(&[
                (
                    "tsit.folder.load_size",
                    f.load_size.unwrap_or(self.size).into(),
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
        Ok(())
    }

    /// The arm, the image shape and the dataset fit the task.
    fn check_task(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let s = self.size;
        tree.require(
            "tsit.size",
            s >= 8 && (s as u64).is_power_of_two(),
            "must be a power of two, at least 8 (every stream level keeps H ≥ 2)",
        )?;
        let ast = self.task.is_ast();
        tree.require(
            "tsit.arm",
            match self.task {
                Task::DigitsAst | Task::ScenesAst | Task::FolderAst => {
                    matches!(self.arm, Arm::Full | Arm::NoFadain)
                }
                Task::ScenesSis | Task::CityscapesSis | Task::Ade20kSis => {
                    matches!(self.arm, Arm::TsitSis | Arm::P2phdLite)
                }
            },
            if ast {
                "style transfer trains `full` or `no-fadain`"
            } else {
                "semantic synthesis trains `tsit-sis` or `p2phd-lite`"
            },
        )?;
        tree.require(
            "tsit.aspect",
            self.aspect == 1 || self.task.is_folder(),
            "the small-scale tasks are square",
        )?;
        if self.task.is_folder() {
            tree.require(
                "data.path",
                tree.get("data.path").is_some()
                    || tree.get("data.dataset").and_then(|v| v.as_str()) == Some("synthetic"),
                "a paper-scale task reads its dataset's folders from data.path",
            )?;
            let f = self.folder.as_ref();
            tree.require(
                "tsit.folder",
                f.is_some(),
                "a paper-scale task needs this section",
            )?;
            if let (Some(f), false) = (f, self.task.is_ast()) {
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
                !matches!(self.perceptual, PerceptualConfig::Trained { .. }),
                "a paper-scale task takes `vgg19: { path }` (or `random` for a smoke test)",
            )?;
        }
        Ok(())
    }

    /// The generator's and discriminator's shapes.
    fn check_model(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let (m, s, ast) = (&self.model, self.size, self.task.is_ast());
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
        Ok(())
    }

    /// Counts, optimizer, loss weights, α and the helper nets' training.
    fn check_training(&self, tree: &SpecTree) -> Result<(), SpecError> {
        let m = &self.model;
        if !self.task.is_folder() {
            tree.require("tsit.train", self.train >= 1, "must be at least 1")?;
            tree.require("tsit.test", self.test >= 2, "must be at least 2")?;
        }
        let pos = |v: f64| v > 0.0 && v.is_finite();
        let nonneg = |v: f64| v >= 0.0 && v.is_finite();
        tree.require("tsit.optim.lr_g", pos(self.optim.lr_g), "must be positive")?;
        tree.require("tsit.optim.lr_d", pos(self.optim.lr_d), "must be positive")?;
        tree.require(
            "tsit.optim.beta1",
            (0.0..1.0).contains(&self.optim.beta1),
            "must be in [0, 1)",
        )?;
        tree.require(
            "tsit.optim.beta2",
            (0.0..1.0).contains(&self.optim.beta2),
            "must be in [0, 1)",
        )?;
        tree.require(
            "tsit.optim.decay_from",
            (0.0..=1.0).contains(&self.optim.decay_from),
            "must be in [0, 1]",
        )?;
        for (k, v) in [
            ("lambda_feat", self.loss.lambda_feat),
            ("lambda_vgg", self.loss.lambda_vgg),
            ("lambda_kld", self.loss.lambda_kld),
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
            self.eval.alphas.iter().all(|a| (0.0..=1.0).contains(a)),
            "every α must be in [0, 1]",
        )?;
        if let PerceptualConfig::Trained { epochs, .. } = self.perceptual {
            tree.require("tsit.perceptual", pos(epochs), "epochs must be positive")?;
        }
        tree.require(
            "tsit.eval.net_epochs",
            pos(self.eval.net_epochs),
            "must be positive",
        )?;
        if !self.task.is_folder() && self.task != Task::DigitsAst {
            tree.require(
                "tsit.batch",
                self.batch as usize <= self.train,
                "is larger than the training set",
            )?;
        }
        Ok(())
    }
}
