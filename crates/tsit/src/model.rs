//! TSIT's networks (the paper's Sec. 3; official models/networks/generator.py, stream.py,
//! architecture.py, normalization.py): the content and style streams, FADE and FAdaIN, the decoder,
//! the VAE encoder, the multi-scale PatchGAN discriminator, and the pix2pixHD-style baseline.
//!
//! Each network lives in its own `VarStore`; weights are plain leaf tensors initialised as the
//! official code does (xavier_normal with gain 0.02, bias 0; or N(0, 0.02) for the baseline).
//! Spectral norm is `reprise_core::nn::SpectralNorm` (persistent `u`, `v`; the init goes to
//! `weight_orig`).

use crate::config::{InitKind, ModelConfig, P2phdConfig};
use reprise_core::nn::SpectralNorm;
use reprise_core::parallel::Parallel;
use std::sync::Arc;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// How a forward pass treats the batch norms and the spectral norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Batch statistics (and running-statistics updates) in the FADE norms; else running stats.
    pub bn_train: bool,
    /// One power iteration per spectral-normed weight.
    pub sn_update: bool,
    /// Batch statistics over every rank's rows in a data-parallel run (the official code's
    /// `SynchronizedBatchNorm2d` in FADE): set in the training step, which every rank runs;
    /// evaluation, on rank 0 alone, keeps its own rows' statistics.
    pub sync_bn: bool,
}

impl Mode {
    /// Training: batch statistics and power iterations.
    pub const TRAIN: Mode = Mode {
        bn_train: true,
        sn_update: true,
        sync_bn: true,
    };
    /// Evaluation with batch statistics in the FADE norms when `train_bn` (no power iteration).
    pub fn test(train_bn: bool) -> Mode {
        Mode {
            bn_train: train_bn,
            sn_update: false,
            sync_bn: false,
        }
    }
}

/// The initialisation of a weight `dims` (out, in, k, k) or (out, in).
pub(crate) fn weight_init(kind: InitKind, dims: &[i64]) -> Init {
    let rf: i64 = dims[2..].iter().product();
    let (fan_in, fan_out) = (dims[1] * rf, dims[0] * rf);
    let stdev = match kind {
        InitKind::Xavier => 0.02 * (2.0 / (fan_in + fan_out) as f64).sqrt(),
        InitKind::Normal => 0.02,
    };
    Init::Randn { mean: 0.0, stdev }
}

/// `LeakyReLU(0.2)` ([`reprise_core::nn::leaky_relu`]).
pub fn lrelu(x: &Tensor) -> Tensor {
    reprise_core::nn::leaky_relu(x, 0.2)
}

/// Nearest-neighbour ×½ (PyTorch's `interpolate(scale_factor=0.5)`: plain decimation).
pub(crate) fn down_nearest(x: &Tensor) -> Tensor {
    x.slice(2, 0, None, 2).slice(3, 0, None, 2)
}

/// Nearest-neighbour ×2.
pub(crate) fn up_nearest(x: &Tensor) -> Tensor {
    let s = x.size();
    x.upsample_nearest2d([s[2] * 2, s[3] * 2], None, None)
}

/// Nearest-neighbour resize to `h × w` when the input is a multiple of it (decimation).
pub(crate) fn resize_nearest(x: &Tensor, h: i64, w: i64) -> Tensor {
    let s = x.size();
    x.slice(2, 0, None, s[2] / h).slice(3, 0, None, s[3] / w)
}

/// Instance norm without affine parameters (biased variance, eps 1e-5): core's
/// [`reprise_core::nn::instance_norm`].
pub use reprise_core::nn::instance_norm;

/// A convolution, optionally spectral-normed, with optional bias.
#[derive(Debug)]
pub struct Conv {
    sn: Option<SpectralNorm>,
    w: Option<Tensor>,
    b: Option<Tensor>,
    stride: i64,
    pad: i64,
}

impl Conv {
    /// A `k × k` convolution `inp → out` with `stride`, `pad`; spectral norm with `sn`, a zero
    /// bias with `bias`.
    pub fn new(
        p: nn::Path<'_>,
        (inp, out): (i64, i64),
        (k, stride, pad): (i64, i64, i64),
        sn: bool,
        bias: bool,
        init: InitKind,
    ) -> Conv {
        let dims = [out, inp, k, k];
        let wi = weight_init(init, &dims);
        let (sn, w) = if sn {
            (Some(SpectralNorm::new(&p, &dims, wi)), None)
        } else {
            (None, Some(p.var("weight", &dims, wi)))
        };
        let b = bias.then(|| p.var("bias", &[out], Init::Const(0.0)));
        Conv {
            sn,
            w,
            b,
            stride,
            pad,
        }
    }

    /// The weight used by a forward pass.
    pub fn weight(&self, mode: Mode) -> Tensor {
        match (&self.sn, &self.w) {
            (Some(sn), _) => sn.weight(mode.sn_update),
            (None, Some(w)) => w.shallow_clone(),
            _ => unreachable!("a conv has a weight"),
        }
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        x.conv2d(
            &self.weight(mode),
            self.b.as_ref(),
            [self.stride],
            [self.pad],
            [1],
            1,
        )
    }
}

/// The streams' post-activation residual block (instance norm, spectral norm on every conv).
#[derive(Debug)]
pub struct StreamBlock {
    conv_0: Conv,
    conv_1: Conv,
    conv_s: Option<Conv>,
}

impl StreamBlock {
    fn new(p: nn::Path<'_>, fin: i64, fout: i64, init: InitKind) -> StreamBlock {
        StreamBlock {
            conv_0: Conv::new(&p / "conv_0", (fin, fin), (3, 1, 1), true, true, init),
            conv_1: Conv::new(&p / "conv_1", (fin, fout), (3, 1, 1), true, true, init),
            conv_s: (fin != fout)
                .then(|| Conv::new(&p / "conv_s", (fin, fout), (1, 1, 0), true, false, init)),
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let skip = match &self.conv_s {
            Some(c) => lrelu(&instance_norm(&c.forward(x, mode))),
            None => x.shallow_clone(),
        };
        let dx = lrelu(&instance_norm(&self.conv_0.forward(x, mode)));
        let dx = lrelu(&instance_norm(&self.conv_1.forward(&dx, mode)));
        skip + dx
    }
}

/// A content or style stream: `L` levels, level `i` at `S / 2^i` with `C_i` channels.
#[derive(Debug)]
pub struct Stream {
    blocks: Vec<StreamBlock>,
}

impl Stream {
    /// A stream over `inp` input channels and the level widths `ch`.
    pub fn new(p: nn::Path<'_>, inp: i64, ch: &[i64], init: InitKind) -> Stream {
        let mut blocks = Vec::new();
        for (i, &c) in ch.iter().enumerate() {
            let fin = if i == 0 { inp } else { ch[i - 1] };
            blocks.push(StreamBlock::new(&p / format!("res_{i}"), fin, c, init));
        }
        Stream { blocks }
    }

    /// The feature pyramid, level 0 first.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Tensor> {
        let mut out: Vec<Tensor> = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let inp = if i == 0 {
                x.shallow_clone()
            } else {
                down_nearest(&out[i - 1])
            };
            out.push(b.forward(&inp, mode));
        }
        out
    }
}

/// Per-sample, per-channel mean and σ = sqrt(unbiased variance + 1e-5) over H×W.
pub fn mean_std(x: &Tensor) -> (Tensor, Tensor) {
    let (var, mean) = x.var_mean_dim([2, 3].as_slice(), true, true);
    (mean, (var + 1e-5).sqrt())
}

/// FAdaIN(x, s; α) = α·AdaIN(x, s) + (1 − α)·x, AdaIN(x, s) = σ_s·(x − μ_x)/σ_x + μ_s.
pub fn fadain(x: &Tensor, s: &Tensor, alpha: f64) -> Tensor {
    let (mx, sx) = mean_std(x);
    let (ms, ss) = mean_std(s);
    let ada = (x - mx) * (ss / sx) + ms;
    if alpha == 1.0 {
        ada
    } else {
        ada * alpha + x * (1.0 - alpha)
    }
}

/// The decoder's pre-activation residual block modulated by FADE.
///
/// Its three FADE layers (`norm_0`, `norm_1`, `norm_s`) each predict γ and β from the same
/// content feature with a 3×3 conv `fin → fin` (no spectral norm); the 4 (identity skip) or 6
/// (learned skip) convolutions are held as one weight of `k·fin` output channels, so one
/// convolution computes them all (the same arithmetic as separate convs, one larger GEMM).
#[derive(Debug)]
pub struct FadeBlock {
    fin: i64,
    conv_0: Conv,
    conv_1: Conv,
    conv_s: Option<Conv>,
    gb_w: Tensor,
    gb_b: Tensor,
    rm: Vec<Tensor>,
    rv: Vec<Tensor>,
    /// The parameter-free BN's ε (1e-5; the batch-1 diagnostic also measures with ≈ 0).
    pub eps: f64,
    /// The ranks whose rows the BN's training statistics span (one process by default).
    sync: Arc<Parallel>,
}

impl FadeBlock {
    fn new(p: nn::Path<'_>, fin: i64, fout: i64, init: InitKind) -> FadeBlock {
        let learned = fin != fout;
        let k = if learned { 6 } else { 4 };
        let norms = if learned { 3 } else { 2 };
        let mut rm = Vec::new();
        let mut rv = Vec::new();
        for n in 0..norms {
            let q = &p / format!("norm_{n}");
            rm.push(q.zeros_no_train("running_mean", &[fin]));
            rv.push(q.ones_no_train("running_var", &[fin]));
        }
        FadeBlock {
            fin,
            conv_0: Conv::new(&p / "conv_0", (fin, fin), (3, 1, 1), true, true, init),
            conv_1: Conv::new(&p / "conv_1", (fin, fout), (3, 1, 1), true, true, init),
            conv_s: learned
                .then(|| Conv::new(&p / "conv_s", (fin, fout), (1, 1, 0), true, false, init)),
            // Initialised as k separate convs fin → fin.
            gb_w: (&p / "gamma_beta").var(
                "weight",
                &[k * fin, fin, 3, 3],
                weight_init(init, &[fin, fin, 3, 3]),
            ),
            gb_b: (&p / "gamma_beta").var("bias", &[k * fin], Init::Const(0.0)),
            rm,
            rv,
            eps: 1e-5,
            sync: Arc::new(Parallel::single()),
        }
    }

    fn pfn(&self, x: &Tensor, n: usize, mode: Mode) -> Tensor {
        let running = Some((&self.rm[n], &self.rv[n]));
        if mode.sync_bn && mode.bn_train && self.sync.world() > 1 {
            // A collective that fails (a rank gone) ends this rank's step: the forward has no
            // error path, and the training loop reports the panic as the step's failure.
            return self
                .sync
                .batch_norm(x, running, true, 0.1, self.eps)
                .unwrap_or_else(|e| std::panic::panic_any(e));
        }
        x.batch_norm(
            None::<&Tensor>,
            None::<&Tensor>,
            running.map(|r| r.0),
            running.map(|r| r.1),
            mode.bn_train,
            0.1,
            self.eps,
            false,
        )
    }

    /// FADE(x, f) with γ, β: PFN(x)·(1 + γ) + β.
    fn fade(&self, x: &Tensor, n: usize, gb: &[Tensor], mode: Mode) -> Tensor {
        self.pfn(x, n, mode) * (&gb[2 * n] + 1.0) + &gb[2 * n + 1]
    }

    /// The block on `x` modulated by the content feature `f` (both `fin` channels).
    pub fn forward(&self, x: &Tensor, f: &Tensor, mode: Mode) -> Tensor {
        let gb = f
            .conv2d(&self.gb_w, Some(&self.gb_b), [1], [1], [1], 1)
            .split(self.fin, 1);
        let skip = match &self.conv_s {
            Some(c) => c.forward(&self.fade(x, 2, &gb, mode), mode),
            None => x.shallow_clone(),
        };
        let dx = self
            .conv_0
            .forward(&lrelu(&self.fade(x, 0, &gb, mode)), mode);
        let dx = self
            .conv_1
            .forward(&lrelu(&self.fade(&dx, 1, &gb, mode)), mode);
        skip + dx
    }

    /// Whether the skip is learned (FAdaIN before such a block is cancelled by batch-1 BN).
    pub(crate) fn learned_skip(&self) -> bool {
        self.conv_s.is_some()
    }
}

/// The VAE encoder of semantic synthesis: bilinear resize to `size`, stride-2 3×3 convs
/// (spectral + instance norm, LeakyReLU) down to 4×4, then `fc_mu` and `fc_var`.
#[derive(Debug)]
pub struct VaeEncoder {
    size: i64,
    convs: Vec<Conv>,
    mu_w: Tensor,
    mu_b: Tensor,
    var_w: Tensor,
    var_b: Tensor,
}

impl VaeEncoder {
    fn new(p: nn::Path<'_>, ndf: i64, size: i64, z_dim: i64, init: InitKind) -> VaeEncoder {
        let n = (size / 4).trailing_zeros() as usize;
        let mut convs = Vec::new();
        let mut c = 3;
        for i in 0..n {
            let out = ndf * (1 << i.min(3));
            convs.push(Conv::new(
                &p / format!("layer{}", i + 1),
                (c, out),
                (3, 2, 1),
                true,
                false,
                init,
            ));
            c = out;
        }
        let flat = c * 16;
        let lin = |name: &str| {
            let q = &p / name;
            (
                q.var("weight", &[z_dim, flat], weight_init(init, &[z_dim, flat])),
                q.var("bias", &[z_dim], Init::Const(0.0)),
            )
        };
        let (mu_w, mu_b) = lin("fc_mu");
        let (var_w, var_b) = lin("fc_var");
        VaeEncoder {
            size,
            convs,
            mu_w,
            mu_b,
            var_w,
            var_b,
        }
    }

    /// (μ, log σ²) of an image batch in `[−1, 1]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        let s = x.size();
        let mut h = if s[2] != self.size || s[3] != self.size {
            x.upsample_bilinear2d([self.size, self.size], false, None, None)
        } else {
            x.shallow_clone()
        };
        for c in &self.convs {
            h = lrelu(&instance_norm(&c.forward(&h, mode)));
        }
        let h = h.flatten(1, -1);
        (
            h.linear(&self.mu_w, Some(&self.mu_b)),
            h.linear(&self.var_w, Some(&self.var_b)),
        )
    }
}

/// What starts the decoder at the bottleneck.
#[derive(Debug)]
enum Start {
    /// conv3×3(3 → C_{L−1}) on N(0, 1) noise (style transfer).
    Noise(Conv),
    /// conv3×3(label channels → C_{L−1}) on the nearest-resized label map (SIS without VAE).
    Label(Conv),
    /// Linear(z → C_{L−1}·h·w) on z = μ + σ·ε from the VAE encoder.
    Vae {
        enc: VaeEncoder,
        w: Tensor,
        b: Tensor,
    },
}

/// The inputs of one generator pass.
#[derive(Debug)]
pub struct GenInput<'a> {
    /// The content image or label map (`N×C×S×S`).
    pub content: &'a Tensor,
    /// The style image (style transfer with the style stream), `None` otherwise.
    pub style: Option<&'a Tensor>,
    /// Bottleneck noise `N×3×2×2` (style transfer) or ε `N×z` (VAE); unused otherwise.
    pub noise: Option<&'a Tensor>,
    /// The image the VAE encodes (the ground truth).
    pub real: Option<&'a Tensor>,
}

/// What a generator pass returns.
#[derive(Debug)]
pub struct GenOutput {
    /// The image in `[−1, 1]`.
    pub image: Tensor,
    /// The VAE's KL divergence, summed over the batch and the latent dimensions.
    pub kld: Option<Tensor>,
}

/// A generator: TSIT or the pix2pixHD-style baseline.
pub trait Generator {
    /// One pass.
    fn forward(&self, inp: &GenInput<'_>, mode: Mode) -> GenOutput;
    /// Its variables.
    fn vs(&self) -> &nn::VarStore;
    /// The VAE latent size, if the bottleneck is a VAE latent.
    fn latent_dim(&self) -> Option<i64> {
        None
    }
    /// Sets FAdaIN's α (no effect without a style stream).
    fn set_alpha(&mut self, _alpha: f64) {}
    /// Where FAdaIN applies, by decoder block (the batch-1 diagnostic); `None` without one.
    fn fadain_mask(&mut self) -> Option<(&mut Vec<bool>, Vec<bool>)> {
        None
    }
    /// Synchronises its batch normalisations over the ranks of `par` in training (no effect
    /// on a generator without BatchNorm).
    fn sync_batch_norm(&mut self, _par: &Arc<Parallel>) {}
}

/// TSIT's generator: content stream, optional style stream, and the FADE/FAdaIN decoder.
#[derive(Debug)]
pub struct Tsit {
    /// Its variables.
    pub vs: nn::VarStore,
    content: Stream,
    style: Option<Stream>,
    start: Start,
    /// FADE blocks by level j = 1 .. L−1 (index j − 1).
    pub blocks: Vec<FadeBlock>,
    conv_img: Conv,
    /// FAdaIN weight α.
    pub alpha: f64,
    bottleneck: (i64, i64),
    /// Where FAdaIN is applied, by block index (all `true` normally; the batch-1 diagnostic
    /// turns it off at learned-skip blocks).
    pub fadain_at: Vec<bool>,
    z_dim: i64,
}

/// Stream widths C_i = nf·min(2^i, cap), i = 0 .. L−1.
pub fn widths(nf: i64, cap: i64, levels: usize) -> Vec<i64> {
    (0..levels).map(|i| nf * (1i64 << i).min(cap)).collect()
}

impl Tsit {
    /// TSIT for images `h × w` (`hw`, h a power of two, w a multiple of h) with `in_c` content
    /// channels; a style stream when `style`; the bottleneck (2 × 2w/h) from noise
    /// (`style_transfer`), the label map, or the VAE.
    pub fn new(
        m: &ModelConfig,
        hw: (i64, i64),
        in_c: i64,
        style_transfer: bool,
        style: bool,
        device: tch::Device,
    ) -> Tsit {
        let vs = nn::VarStore::new(device);
        let levels = hw.0.trailing_zeros() as usize;
        let ch = widths(m.nf, m.cap, levels);
        let root = vs.root();
        let content = Stream::new(&root / "content_stream", in_c, &ch, m.init);
        let style_s = style.then(|| Stream::new(&root / "style_stream", 3, &ch, m.init));
        let top = ch[levels - 1];
        let (bh, bw) = (2, 2 * hw.1 / hw.0);
        let bottleneck = (bh, bw);
        let start = if style_transfer {
            Start::Noise(Conv::new(
                &root / "fc",
                (3, top),
                (3, 1, 1),
                false,
                true,
                m.init,
            ))
        } else if m.vae {
            let enc = VaeEncoder::new(&root / "encoder", m.nf, m.vae_size, m.z_dim, m.init);
            let out = top * bh * bw;
            Start::Vae {
                enc,
                w: (&root / "fc").var(
                    "weight",
                    &[out, m.z_dim],
                    weight_init(m.init, &[out, m.z_dim]),
                ),
                b: (&root / "fc").var("bias", &[out], Init::Const(0.0)),
            }
        } else {
            Start::Label(Conv::new(
                &root / "fc",
                (in_c, top),
                (3, 1, 1),
                false,
                true,
                m.init,
            ))
        };
        let blocks: Vec<FadeBlock> = (1..levels)
            .map(|j| FadeBlock::new(&root / format!("block_{j}"), ch[j], ch[j - 1], m.init))
            .collect();
        let conv_img = Conv::new(
            &root / "conv_img",
            (ch[0], 3),
            (3, 1, 1),
            false,
            true,
            m.init,
        );
        let n = blocks.len();
        Tsit {
            vs,
            content,
            style: style_s,
            start,
            blocks,
            conv_img,
            alpha: m.alpha,
            bottleneck,
            fadain_at: vec![true; n],
            z_dim: m.z_dim,
        }
    }
}

impl Generator for Tsit {
    fn forward(&self, inp: &GenInput<'_>, mode: Mode) -> GenOutput {
        let levels = self.blocks.len() + 1;
        let cfeat = self.content.forward(inp.content, mode);
        let sfeat = match (&self.style, inp.style) {
            (Some(s), Some(img)) => Some(s.forward(img, mode)),
            _ => None,
        };
        let (bh, bw) = self.bottleneck;
        let mut kld = None;
        let mut x = match &self.start {
            Start::Noise(c) => c.forward(inp.noise.expect("style transfer needs noise"), mode),
            Start::Label(c) => c.forward(&resize_nearest(inp.content, bh, bw), mode),
            Start::Vae { enc, w, b } => {
                let (mu, logvar) = enc.forward(inp.real.expect("the VAE needs the image"), mode);
                let eps = inp.noise.expect("the VAE needs ε");
                let z = &mu + (&logvar * 0.5).exp() * eps;
                kld = Some(((&logvar + 1.0 - mu.square() - logvar.exp()).sum(Kind::Float)) * -0.5);
                let n = z.size()[0];
                z.linear(w, Some(b)).view([n, -1, bh, bw])
            }
        };
        for j in (1..levels).rev() {
            if j < levels - 1 {
                x = up_nearest(&x);
            }
            if let Some(sf) = &sfeat {
                if self.fadain_at[j - 1] {
                    x = fadain(&x, &sf[j], self.alpha);
                }
            }
            x = self.blocks[j - 1].forward(&x, &cfeat[j], mode);
        }
        let x = up_nearest(&x);
        GenOutput {
            image: self.conv_img.forward(&lrelu(&x), mode).tanh(),
            kld,
        }
    }

    fn vs(&self) -> &nn::VarStore {
        &self.vs
    }

    fn latent_dim(&self) -> Option<i64> {
        matches!(self.start, Start::Vae { .. }).then_some(self.z_dim)
    }

    fn set_alpha(&mut self, alpha: f64) {
        self.alpha = alpha;
    }

    fn fadain_mask(&mut self) -> Option<(&mut Vec<bool>, Vec<bool>)> {
        let learned = self.blocks.iter().map(FadeBlock::learned_skip).collect();
        self.style.as_ref()?;
        Some((&mut self.fadain_at, learned))
    }

    fn sync_batch_norm(&mut self, par: &Arc<Parallel>) {
        for b in &mut self.blocks {
            b.sync = par.clone();
        }
    }
}

/// The pix2pixHD-style generator: reflect-pad 7×7 conv, stride-2 downsampling convs, ResNet
/// blocks, transposed-conv upsampling, 7×7 conv and tanh; instance norm, ReLU. The label map
/// enters at the input only.
#[derive(Debug)]
pub struct P2phd {
    /// Its variables.
    pub vs: nn::VarStore,
    first: Conv,
    downs: Vec<Conv>,
    res: Vec<(Conv, Conv)>,
    ups: Vec<(Tensor, Tensor)>,
    last: Conv,
}

impl P2phd {
    /// The baseline for `in_c` input channels.
    pub fn new(c: &P2phdConfig, in_c: i64, init: InitKind, device: tch::Device) -> P2phd {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let g = c.ngf;
        let first = Conv::new(&root / "first", (in_c, g), (7, 1, 0), false, true, init);
        let mut downs = Vec::new();
        let mut ch = g;
        for i in 0..c.n_down {
            downs.push(Conv::new(
                &root / format!("down_{i}"),
                (ch, ch * 2),
                (3, 2, 1),
                false,
                true,
                init,
            ));
            ch *= 2;
        }
        let res = (0..c.n_blocks)
            .map(|i| {
                let p = &root / format!("res_{i}");
                (
                    Conv::new(&p / "conv_0", (ch, ch), (3, 1, 0), false, true, init),
                    Conv::new(&p / "conv_1", (ch, ch), (3, 1, 0), false, true, init),
                )
            })
            .collect();
        let mut ups = Vec::new();
        for i in 0..c.n_down {
            let dims = [ch, ch / 2, 3, 3];
            // A transposed conv's weight is (in, out, k, k); its fans are those of the
            // equivalent conv out → in.
            let q = &root / format!("up_{i}");
            let w = q.var("weight", &dims, weight_init(init, &[ch / 2, ch, 3, 3]));
            let b = q.var("bias", &[ch / 2], Init::Const(0.0));
            ups.push((w, b));
            ch /= 2;
        }
        let last = Conv::new(&root / "last", (ch, 3), (7, 1, 0), false, true, init);
        P2phd {
            vs,
            first,
            downs,
            res,
            ups,
            last,
        }
    }
}

impl Generator for P2phd {
    fn forward(&self, inp: &GenInput<'_>, mode: Mode) -> GenOutput {
        let mut h = self
            .first
            .forward(&inp.content.reflection_pad2d([3, 3, 3, 3]), mode);
        h = instance_norm(&h).relu();
        for d in &self.downs {
            h = instance_norm(&d.forward(&h, mode)).relu();
        }
        for (a, b) in &self.res {
            let y = instance_norm(&a.forward(&h.reflection_pad2d([1, 1, 1, 1]), mode)).relu();
            let y = instance_norm(&b.forward(&y.reflection_pad2d([1, 1, 1, 1]), mode));
            h = &h + y;
        }
        for (w, b) in &self.ups {
            h = h.conv_transpose2d(w, Some(b), [2], [1], [1], 1, [1]);
            h = instance_norm(&h).relu();
        }
        let img = self
            .last
            .forward(&h.reflection_pad2d([3, 3, 3, 3]), mode)
            .tanh();
        GenOutput {
            image: img,
            kld: None,
        }
    }

    fn vs(&self) -> &nn::VarStore {
        &self.vs
    }
}

/// One PatchGAN (kernel 4, pad 2): conv + LReLU; `n_layers − 1` convs with spectral and
/// instance norm, stride 2 except the fourth conv (`n == 3`), as the official
/// `NLayerDiscriminator` (TSIT `models/networks/discriminator.py`: `stride = 1 if n == 3 else 2`;
/// SPADE's rule, stride 1 on the last of them, differs at `n_layers = 3`); a final stride-1 conv
/// to one channel.
#[derive(Debug)]
struct PatchGan {
    convs: Vec<Conv>,
}

impl PatchGan {
    fn new(p: nn::Path<'_>, in_c: i64, ndf: i64, n_layers: usize, init: InitKind) -> PatchGan {
        let mut convs = vec![Conv::new(
            &p / "model0",
            (in_c, ndf),
            (4, 2, 2),
            false,
            true,
            init,
        )];
        let mut nf = ndf;
        for n in 1..n_layers {
            let prev = nf;
            nf = (nf * 2).min(512);
            let stride = if n == 3 { 1 } else { 2 };
            convs.push(Conv::new(
                &p / format!("model{n}"),
                (prev, nf),
                (4, stride, 2),
                true,
                false,
                init,
            ));
        }
        convs.push(Conv::new(
            &p / format!("model{n_layers}"),
            (nf, 1),
            (4, 1, 2),
            false,
            true,
            init,
        ));
        PatchGan { convs }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Tensor> {
        let last = self.convs.len() - 1;
        let mut out: Vec<Tensor> = Vec::with_capacity(self.convs.len());
        let mut h = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h, mode);
            if i > 0 && i < last {
                h = instance_norm(&h);
            }
            if i < last {
                h = lrelu(&h);
            }
            out.push(h.shallow_clone());
        }
        out
    }
}

/// The multi-scale discriminator: scale k sees the input average-pooled k times
/// (3×3, stride 2, pad 1, padding not counted).
#[derive(Debug)]
pub struct Discriminator {
    /// Its variables.
    pub vs: nn::VarStore,
    scales: Vec<PatchGan>,
}

impl Discriminator {
    /// A discriminator over `in_c` channels (image, or label map and image).
    pub fn new(m: &ModelConfig, in_c: i64, device: tch::Device) -> Discriminator {
        let vs = nn::VarStore::new(device);
        let scales = (0..m.num_d)
            .map(|k| {
                PatchGan::new(
                    vs.root() / format!("discriminator_{k}"),
                    in_c,
                    m.ndf,
                    m.n_layers_d,
                    m.init,
                )
            })
            .collect();
        Discriminator { vs, scales }
    }

    /// Every scale's intermediate outputs; the last of each is its patch logits.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Vec<Tensor>> {
        let mut h = x.shallow_clone();
        let mut out = Vec::with_capacity(self.scales.len());
        for (k, s) in self.scales.iter().enumerate() {
            if k > 0 {
                h = h.avg_pool2d([3, 3], [2, 2], [1, 1], false, false, None);
            }
            out.push(s.forward(&h, mode));
        }
        out
    }
}

/// The number of trainable scalars of a store.
pub(crate) fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use tch::Device;

    fn mini(nf: i64, cap: i64) -> ModelConfig {
        ModelConfig {
            nf,
            cap,
            ndf: nf,
            num_d: 2,
            n_layers_d: 3,
            alpha: 1.0,
            init: InitKind::Xavier,
            vae: false,
            z_dim: 256,
            vae_size: 256,
            p2phd: P2phdConfig::default(),
        }
    }

    #[test]
    fn discriminator_strides_follow_the_official_rule() {
        // Kernel 4, pad 2: a stride-s conv takes S to ⌊S/s⌋ + 1. Official strides 2, 2, 2 (then
        // the stride-1 logit conv) at n_layers_D = 3; 2, 2, 2, 1 (then 1) at 4.
        for (n_layers, sides) in [(3, vec![17, 9, 5, 6]), (4, vec![17, 9, 5, 6, 7])] {
            let m = ModelConfig {
                n_layers_d: n_layers,
                num_d: 1,
                ndf: 4,
                ..mini(4, 8)
            };
            let d = Discriminator::new(&m, 3, Device::Cpu);
            let out = d.forward(
                &Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)),
                Mode::TRAIN,
            );
            let got: Vec<i64> = out[0].iter().map(|t| t.size()[2]).collect();
            assert_eq!(got, sides, "n_layers_D = {n_layers}");
        }
    }

    #[test]
    fn parameter_counts_match_the_cost_model() {
        // The cost model's counts: mini G AST (S = 32, nf 16) 3.26 M, mini G SIS (7-ch) 2.81 M, smoke G
        // (S = 8, nf 8) 0.11 M, mini G AST nf 8 0.82 M; mini D (3-ch) 0.09 M; p2phd-lite ≈ 2.9 M.
        let m = mini(16, 8);
        let m_of = |g: &dyn Generator| param_count(g.vs()) as f64 / 1e6;
        let ast = Tsit::new(&m, (32, 32), 3, true, true, Device::Cpu);
        assert!((m_of(&ast) - 3.26).abs() < 0.005, "{}", m_of(&ast));
        let sis = Tsit::new(&m, (32, 32), 7, false, false, Device::Cpu);
        assert!((m_of(&sis) - 2.81).abs() < 0.005, "{}", m_of(&sis));
        let smoke = Tsit::new(&mini(8, 8), (8, 8), 3, true, true, Device::Cpu);
        assert!((m_of(&smoke) - 0.11).abs() < 0.005, "{}", m_of(&smoke));
        let nf8 = Tsit::new(&mini(8, 8), (32, 32), 3, true, true, Device::Cpu);
        assert!((m_of(&nf8) - 0.82).abs() < 0.005, "{}", m_of(&nf8));
        let d = Discriminator::new(&m, 3, Device::Cpu);
        assert!((param_count(&d.vs) as f64 / 1e6 - 0.09).abs() < 0.005);
        let p = P2phd::new(&P2phdConfig::default(), 7, InitKind::Normal, Device::Cpu);
        assert!((m_of(&p) - 2.9).abs() < 0.1, "{}", m_of(&p));
        // The FADE γ/β convolutions are fin → fin 3×3: k·fin·fin·9 + k·fin per block.
        let b = &ast.blocks[1]; // 64 → 32, learned skip
        assert_eq!(b.gb_w.size(), vec![6 * 64, 64, 3, 3]);
        assert!(b.learned_skip() && !ast.blocks[3].learned_skip());
    }

    #[test]
    fn the_paper_scale_generator_has_the_official_size() {
        // The official G for style transfer at 256² with nf 64, cap 16: 398.1 M parameters (the
        // PyTorch twin in bench/pytorch/ts_step.py, written as the official code, counts
        // 398,093,739); D (3-ch, n_layers 3) 1.33 M.
        let mut m = mini(64, 16);
        m.ndf = 64;
        let g = Tsit::new(&m, (256, 256), 3, true, true, Device::Cpu);
        assert_eq!(param_count(&g.vs), 398_093_739);
        let d = Discriminator::new(&m, 3, Device::Cpu);
        assert!((param_count(&d.vs) as f64 / 1e6 - 1.33).abs() < 0.01);
    }

    #[test]
    fn shapes_of_every_network() {
        let m = mini(8, 8);
        let g = Tsit::new(&m, (32, 32), 3, true, true, Device::Cpu);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let z = Tensor::randn([2, 3, 2, 2], (Kind::Float, Device::Cpu));
        let inp = GenInput {
            content: &x,
            style: Some(&x),
            noise: Some(&z),
            real: None,
        };
        let y = g.forward(&inp, Mode::TRAIN).image;
        assert_eq!(y.size(), vec![2, 3, 32, 32]);
        assert!(y.abs().max().double_value(&[]) <= 1.0);
        let d = Discriminator::new(&m, 3, Device::Cpu);
        let o = d.forward(&y, Mode::TRAIN);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].len(), 4);
        // The official strides at n_layers_D = 3 (2, 2, 2, then 1): 32 → 17 → 9 → 5 → 6.
        assert_eq!(o[0][3].size(), vec![2, 1, 6, 6]);
        assert_eq!(o[1][3].size(), vec![2, 1, 4, 4]);
        let mut mv = mini(8, 8);
        mv.vae = true;
        mv.vae_size = 32;
        mv.z_dim = 16;
        let v = Tsit::new(&mv, (32, 32), 7, false, false, Device::Cpu);
        let lab = Tensor::rand([2, 7, 32, 32], (Kind::Float, Device::Cpu));
        let eps = Tensor::randn([2, 16], (Kind::Float, Device::Cpu));
        let out = v.forward(
            &GenInput {
                content: &lab,
                style: None,
                noise: Some(&eps),
                real: Some(&x),
            },
            Mode::TRAIN,
        );
        assert_eq!(out.image.size(), vec![2, 3, 32, 32]);
        assert!(out.kld.unwrap().double_value(&[]) >= 0.0);
        let p = P2phd::new(&P2phdConfig::default(), 7, InitKind::Normal, Device::Cpu);
        let inp = GenInput {
            content: &lab,
            style: None,
            noise: None,
            real: None,
        };
        let img = p.forward(&inp, Mode::TRAIN).image;
        assert_eq!(img.size(), vec![2, 3, 32, 32]);
        // Backward through every generator (no in-place update of a saved tensor).
        img.sum(Kind::Float).backward();
        out.image.sum(Kind::Float).backward();
        y.sum(Kind::Float).backward();
        for vs in [&p.vs, &v.vs, &g.vs] {
            assert!(vs.trainable_variables().iter().all(|t| t.grad().defined()));
        }
    }

    #[test]
    fn fadain_matches_its_definition() {
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Double, Device::Cpu));
        let s = Tensor::randn([2, 3, 4, 4], (Kind::Double, Device::Cpu)) * 3.0 + 1.0;
        let y = fadain(&x, &s, 1.0);
        // The output has the style's mean and (unbiased + 1e-5) std per sample and channel.
        let (my, sy) = mean_std(&y);
        let (ms, ss) = mean_std(&s);
        assert!(my.allclose(&ms, 1e-9, 1e-9, false));
        assert!(sy.allclose(&ss, 1e-4, 1e-4, false));
        // By hand for one channel: σ uses the unbiased variance (÷ 15) + 1e-5.
        let v = Vec::<f64>::try_from(x.get(0).get(0).flatten(0, -1)).unwrap();
        let m = v.iter().sum::<f64>() / 16.0;
        let sd = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / 15.0 + 1e-5).sqrt();
        let (mx, sx) = mean_std(&x);
        assert!((mx.double_value(&[0, 0, 0, 0]) - m).abs() < 1e-12);
        assert!((sx.double_value(&[0, 0, 0, 0]) - sd).abs() < 1e-12);
        let half = fadain(&x, &s, 0.5);
        assert!(half.allclose(&((&y + &x) * 0.5), 1e-9, 1e-9, false));
    }

    #[test]
    fn nearest_resampling_is_decimation_and_repetition() {
        let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([1, 1, 4, 4]);
        let d = down_nearest(&x);
        assert_eq!(
            Vec::<f32>::try_from(d.flatten(0, -1)).unwrap(),
            vec![0.0, 2.0, 8.0, 10.0]
        );
        // The same as PyTorch's interpolate(scale_factor = 0.5, mode = nearest).
        let i = x.upsample_nearest2d([2, 2], None, None);
        assert!(i.equal(&d));
        let u = up_nearest(&d);
        assert_eq!(u.size(), vec![1, 1, 4, 4]);
        assert_eq!(u.double_value(&[0, 0, 1, 1]), 0.0);
        assert_eq!(u.double_value(&[0, 0, 3, 3]), 10.0);
    }

    #[test]
    fn batch_one_bn_cancels_fadain_at_learned_skip_blocks() {
        // The bn1-cancel diagnostic (the paper's Sec. 3.3 applies FAdaIN before each block): with
        // B = 1 and train-mode BN, FAdaIN before a
        // learned-skip block has no effect; before an identity-skip block it does.
        let m = mini(8, 8);
        let mut g = Tsit::new(&m, (32, 32), 3, true, true, Device::Cpu);
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let s = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let z = Tensor::randn([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let inp = GenInput {
            content: &x,
            style: Some(&s),
            noise: Some(&z),
            real: None,
        };
        for _ in 0..10 {
            let _ = g.forward(&inp, Mode::TRAIN);
        }
        let mode = Mode {
            bn_train: true,
            sn_update: false,
            sync_bn: false,
        };
        let on = g.forward(&inp, mode).image;
        let learned: Vec<bool> = g.blocks.iter().map(|b| b.learned_skip()).collect();
        g.fadain_at = learned.iter().map(|l| !l).collect();
        let off = g.forward(&inp, mode).image;
        let diff = (&on - &off).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        // The cancellation is exact up to BN's ε: BN(a·x + b) = BN(x) needs a²σ² + ε = a²(σ² + ε).
        for b in g.blocks.iter_mut() {
            b.eps = 1e-12;
        }
        g.fadain_at = vec![true; learned.len()];
        let on0 = g.forward(&inp, mode).image;
        g.fadain_at = learned.iter().map(|l| !l).collect();
        let off0 = g.forward(&inp, mode).image;
        let diff0 = (&on0 - &off0).abs().max().double_value(&[]);
        assert!(diff0 < 1e-5 && diff0 <= diff, "{diff0} vs {diff}");
        for b in g.blocks.iter_mut() {
            b.eps = 1e-5;
        }
        g.fadain_at = learned.clone();
        let off_identity = g.forward(&inp, mode).image;
        assert!((&on - &off_identity).abs().max().double_value(&[]) > 1e-3);
    }
}
