//! Model families more than one paper uses: ResNet (torchvision layout and parameter names),
//! Wide-ResNet (the pre-activation block of JEM's code) and a small CNN.

use crate::nn::{batch_norm2d, conv2d, linear, Activation, InstanceNorm};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, Module, ModuleT};
use tch::Tensor;

/// ResNet block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 with expansion 4 (ResNet-50/101/152, WRN-50-2).
    Bottleneck,
}

/// ResNet stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 7×7 stride-2 convolution and 3×3 stride-2 max-pool (224-pixel inputs).
    Imagenet,
    /// One 3×3 stride-1 convolution, no pooling (32-pixel inputs).
    Cifar,
}

/// A ResNet as torchvision builds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Block type.
    pub block: Block,
    /// Blocks per stage (`[3, 4, 6, 3]` for ResNet-50).
    pub layers: Vec<usize>,
    /// Stem.
    pub stem: Stem,
    /// Channels of the stem and of the first stage's planes (64 in torchvision).
    #[serde(default = "sixty_four")]
    pub base: i64,
    /// Multiplier of the bottleneck's inner width (2 for WRN-50-2; the deep-thin teacher widens it).
    #[serde(default = "one")]
    pub width_factor: i64,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: i64,
    /// Classes of the `fc` head.
    pub classes: i64,
}

fn sixty_four() -> i64 {
    64
}
fn one() -> i64 {
    1
}
fn three() -> i64 {
    3
}

impl ResNetConfig {
    /// torchvision's ResNet-18.
    pub fn resnet18(classes: i64) -> Self {
        Self::new(Block::Basic, vec![2, 2, 2, 2], classes)
    }

    /// torchvision's ResNet-50.
    pub fn resnet50(classes: i64) -> Self {
        Self::new(Block::Bottleneck, vec![3, 4, 6, 3], classes)
    }

    fn new(block: Block, layers: Vec<usize>, classes: i64) -> Self {
        ResNetConfig {
            block,
            layers,
            stem: Stem::Imagenet,
            base: 64,
            width_factor: 1,
            in_channels: 3,
            classes,
        }
    }

    /// Width of the feature vector before `fc`.
    pub fn feature_dim(&self) -> i64 {
        let last = self.base << (self.layers.len().saturating_sub(1));
        match self.block {
            Block::Basic => last,
            Block::Bottleneck => last * 4,
        }
    }
}

/// torchvision's conv init: Kaiming-normal with fan-out and ReLU gain, no bias.
fn tv_conv(p: nn::Path<'_>, inp: i64, out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let std = (2.0 / (out * k * k) as f64).sqrt();
    nn::conv2d(
        p,
        inp,
        out,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct ResBlock {
    convs: Vec<nn::Conv2D>,
    bns: Vec<nn::BatchNorm>,
    down: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl ResBlock {
    fn new(
        p: nn::Path<'_>,
        block: Block,
        inp: i64,
        planes: i64,
        stride: i64,
        width_factor: i64,
    ) -> (ResBlock, i64) {
        let (convs, bns, out) = match block {
            Block::Basic => (
                vec![
                    tv_conv(&p / "conv1", inp, planes, 3, stride, 1),
                    tv_conv(&p / "conv2", planes, planes, 3, 1, 1),
                ],
                vec![
                    batch_norm2d(&p / "bn1", planes),
                    batch_norm2d(&p / "bn2", planes),
                ],
                planes,
            ),
            Block::Bottleneck => {
                let w = planes * width_factor;
                (
                    vec![
                        tv_conv(&p / "conv1", inp, w, 1, 1, 0),
                        tv_conv(&p / "conv2", w, w, 3, stride, 1),
                        tv_conv(&p / "conv3", w, planes * 4, 1, 1, 0),
                    ],
                    vec![
                        batch_norm2d(&p / "bn1", w),
                        batch_norm2d(&p / "bn2", w),
                        batch_norm2d(&p / "bn3", planes * 4),
                    ],
                    planes * 4,
                )
            }
        };
        let down = (stride != 1 || inp != out).then(|| {
            (
                tv_conv(&p / "downsample" / 0, inp, out, 1, stride, 0),
                batch_norm2d(&p / "downsample" / 1, out),
            )
        });
        (ResBlock { convs, bns, down }, out)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().zip(&self.bns).enumerate() {
            h = h.apply(c).apply_t(b, train);
            if i < last {
                h = h.relu();
            }
        }
        let skip = match &self.down {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (h + skip).relu()
    }
}

/// A ResNet with torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
/// `layerN.i.downsample.0/1`, `fc`), so weights exported from PyTorch load by name.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    stem: Stem,
    stages: Vec<Vec<ResBlock>>,
    /// The classification head.
    pub fc: nn::Linear,
}

impl ResNet {
    /// Builds the network under `p`.
    pub fn new(p: &nn::Path<'_>, c: &ResNetConfig) -> ResNet {
        let (conv1, bn1) = match c.stem {
            Stem::Imagenet => (
                tv_conv(p / "conv1", c.in_channels, c.base, 7, 2, 3),
                batch_norm2d(p / "bn1", c.base),
            ),
            Stem::Cifar => (
                tv_conv(p / "conv1", c.in_channels, c.base, 3, 1, 1),
                batch_norm2d(p / "bn1", c.base),
            ),
        };
        let mut inp = c.base;
        let mut stages = Vec::new();
        for (si, &n) in c.layers.iter().enumerate() {
            let planes = c.base << si;
            let mut blocks = Vec::new();
            for bi in 0..n {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                let (b, out) = ResBlock::new(
                    p / format!("layer{}", si + 1) / bi,
                    c.block,
                    inp,
                    planes,
                    stride,
                    c.width_factor,
                );
                blocks.push(b);
                inp = out;
            }
            stages.push(blocks);
        }
        let fc = linear(p / "fc", inp, c.classes);
        ResNet {
            conv1,
            bn1,
            stem: c.stem,
            stages,
            fc,
        }
    }

    /// Number of stages (`layer1`, `layer2`, ...).
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    /// The stem: `conv1`, `bn1`, ReLU, and the ImageNet stem's max-pool.
    pub fn stem_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if self.stem == Stem::Imagenet {
            h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            h
        }
    }

    /// Stage `i` (0-based: `layer{i+1}`) on the previous stage's output.
    pub fn stage_t(&self, i: usize, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for b in &self.stages[i] {
            h = b.forward_t(&h, train);
        }
        h
    }

    /// The globally average-pooled features before `fc`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem_t(x, train);
        for i in 0..self.stages.len() {
            h = self.stage_t(i, &h, train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.features_t(x, train).apply(&self.fc)
    }
}

/// Normalisation inside a Wide-ResNet block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WrnNorm {
    /// Identity (JEM's default).
    #[default]
    None,
    /// BatchNorm.
    Batch,
    /// InstanceNorm (affine).
    Instance,
}

/// A Wide-ResNet with JEM's block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrnConfig {
    /// Depth (28 for WRN-28-10); (depth − 4) must be a multiple of 6.
    pub depth: usize,
    /// Widen factor (10 for WRN-28-10).
    pub widen: i64,
    /// Normalisation.
    #[serde(default)]
    pub norm: WrnNorm,
    /// Dropout between the block's convolutions.
    #[serde(default)]
    pub dropout: f64,
    /// Activation.
    #[serde(default = "lrelu")]
    pub act: Activation,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: i64,
    /// Classes.
    pub classes: i64,
    /// PyTorch's `momentum` of the batch norms' running statistics (0.1, PyTorch's default;
    /// the official JEM network builds its batch norms with 0.9, `wideresnet.py`, `get_norm`).
    #[serde(default = "bn_momentum")]
    pub bn_momentum: f64,
}

fn bn_momentum() -> f64 {
    0.1
}

fn lrelu() -> Activation {
    Activation::LeakyRelu(0.2)
}

#[derive(Debug)]
enum Norm {
    None,
    Batch(nn::BatchNorm),
    Instance(InstanceNorm),
}

impl Norm {
    fn new(p: nn::Path<'_>, kind: WrnNorm, c: i64, momentum: f64) -> Norm {
        match kind {
            WrnNorm::None => Norm::None,
            WrnNorm::Batch => Norm::Batch(nn::batch_norm2d(
                p,
                c,
                nn::BatchNormConfig {
                    momentum,
                    ws_init: nn::Init::Const(1.0),
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            )),
            WrnNorm::Instance => Norm::Instance(InstanceNorm::new(p, c, true)),
        }
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Norm::None => x.shallow_clone(),
            Norm::Batch(b) => x.apply_t(b, train),
            Norm::Instance(i) => i.forward(x),
        }
    }
}

fn conv_b(p: nn::Path<'_>, inp: i64, out: i64, k: i64, stride: i64) -> nn::Conv2D {
    conv2d(
        p,
        inp,
        out,
        k,
        nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: true,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct WideBasic {
    bn1: Norm,
    conv1: nn::Conv2D,
    bn2: Norm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
    dropout: f64,
    act: Activation,
}

impl WideBasic {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self
            .act
            .apply(&self.bn1.forward_t(x, train))
            .apply(&self.conv1)
            .dropout(self.dropout, train);
        let h = self
            .act
            .apply(&self.bn2.forward_t(&h, train))
            .apply(&self.conv2);
        let s = match &self.shortcut {
            Some(c) => x.apply(c),
            None => x.shallow_clone(),
        };
        h + s
    }
}

/// JEM's Wide-ResNet: pre-activation blocks with the stride on the second convolution, biases
/// on every convolution, a 1×1 shortcut when the shape changes, PyTorch-default init; head
/// `act(norm(·))` → 8×8 average pool → `class_output`. The unused `energy_output` is kept so
/// checkpoints keep the official shape.
#[derive(Debug)]
pub struct Wrn {
    conv1: nn::Conv2D,
    blocks: Vec<WideBasic>,
    bn: Norm,
    act: Activation,
    /// The classifier head.
    pub class_output: nn::Linear,
    /// The unused energy head of the official code.
    pub energy_output: nn::Linear,
    feature_dim: i64,
}

impl Wrn {
    /// Builds the network under `p`; panics if `(depth − 4) % 6 != 0` (validate configs first).
    pub fn new(p: &nn::Path<'_>, c: &WrnConfig) -> Wrn {
        assert!(
            c.depth >= 10 && (c.depth - 4).is_multiple_of(6),
            "WRN depth must be 6n + 4"
        );
        let n = (c.depth - 4) / 6;
        let widths = [16, 16 * c.widen, 32 * c.widen, 64 * c.widen];
        let conv1 = conv_b(p / "conv1", c.in_channels, widths[0], 3, 1);
        let mut inp = widths[0];
        let mut blocks = Vec::new();
        for (si, &w) in widths[1..].iter().enumerate() {
            for bi in 0..n {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                let q = p / format!("layer{}", si + 1) / bi;
                blocks.push(WideBasic {
                    bn1: Norm::new(&q / "bn1", c.norm, inp, c.bn_momentum),
                    conv1: conv_b(&q / "conv1", inp, w, 3, 1),
                    bn2: Norm::new(&q / "bn2", c.norm, w, c.bn_momentum),
                    conv2: conv_b(&q / "conv2", w, w, 3, stride),
                    shortcut: (stride != 1 || inp != w)
                        .then(|| conv_b(&q / "shortcut" / 0, inp, w, 1, stride)),
                    dropout: c.dropout,
                    act: c.act,
                });
                inp = w;
            }
        }
        Wrn {
            conv1,
            blocks,
            bn: Norm::new(p / "bn1", c.norm, inp, c.bn_momentum),
            act: c.act,
            class_output: linear(p / "class_output", inp, c.classes),
            energy_output: linear(p / "energy_output", inp, 1),
            feature_dim: inp,
        }
    }

    /// The stem convolution.
    pub fn stem(&self, x: &Tensor) -> Tensor {
        x.apply(&self.conv1)
    }

    /// Stage `i` of the three (0-based: `layer{i+1}`) on the previous stage's output.
    pub fn stage_t(&self, i: usize, x: &Tensor, train: bool) -> Tensor {
        let n = self.blocks.len() / 3;
        let mut h = x.shallow_clone();
        for b in &self.blocks[i * n..(i + 1) * n] {
            h = b.forward_t(&h, train);
        }
        h
    }

    /// The head's pooling on the last stage's output: `act(norm(·))`, 8×8 average pool.
    pub fn pool_t(&self, h: &Tensor, train: bool) -> Tensor {
        let h = self.act.apply(&self.bn.forward_t(h, train));
        let k = h.size()[2].min(8);
        h.avg_pool2d([k, k], [k, k], [0, 0], false, true, None)
            .flatten(1, -1)
    }

    /// The pooled features.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem(x);
        for i in 0..3 {
            h = self.stage_t(i, &h, train);
        }
        self.pool_t(&h, train)
    }

    /// Width of the features.
    pub fn feature_dim(&self) -> i64 {
        self.feature_dim
    }
}

impl ModuleT for Wrn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.features_t(x, train).apply(&self.class_output)
    }
}

/// A small CNN: 3×3 convolutions (padding 1, bias) with the given channels and strides, an
/// activation after each, then hidden fully connected layers and the logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Input side (square).
    pub size: i64,
    /// `(channels, stride)` of each convolution.
    pub convs: Vec<(i64, i64)>,
    /// Widths of the hidden fully connected layers.
    pub fc: Vec<i64>,
    /// Classes.
    pub classes: i64,
    /// Activation.
    #[serde(default = "lrelu")]
    pub act: Activation,
}

impl CnnConfig {
    /// JEM's small-scale `mnist-cnn`: conv 1→16 s1, 16→32 s2, 32→32 s2, fc 64, fc 10, LeakyReLU 0.2.
    pub fn mnist_cnn() -> Self {
        CnnConfig {
            in_channels: 1,
            size: 28,
            convs: vec![(16, 1), (32, 2), (32, 2)],
            fc: vec![64],
            classes: 10,
            act: lrelu(),
        }
    }
}

/// The network of a [`CnnConfig`].
#[derive(Debug)]
pub struct Cnn {
    convs: Vec<nn::Conv2D>,
    fcs: Vec<nn::Linear>,
    act: Activation,
}

impl Cnn {
    /// Builds it under `p` (`convs.i`, `fcs.i`), PyTorch-default init.
    pub fn new(p: &nn::Path<'_>, c: &CnnConfig) -> Cnn {
        let mut inp = c.in_channels;
        let mut side = c.size;
        let mut convs = Vec::new();
        for (i, &(ch, stride)) in c.convs.iter().enumerate() {
            convs.push(conv_b(p / "convs" / i, inp, ch, 3, stride));
            inp = ch;
            side = (side - 1) / stride + 1;
        }
        let mut d = inp * side * side;
        let mut fcs = Vec::new();
        for (i, &w) in c.fc.iter().chain(std::iter::once(&c.classes)).enumerate() {
            fcs.push(linear(p / "fcs" / i, d, w));
            d = w;
        }
        Cnn {
            convs,
            fcs,
            act: c.act,
        }
    }
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = self.act.apply(&h.apply(c));
        }
        let mut h = h.flatten(1, -1);
        let last = self.fcs.len() - 1;
        for (i, f) in self.fcs.iter().enumerate() {
            h = h.apply(f);
            if i < last {
                h = self.act.apply(&h);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn resnet50_and_18_match_torchvision_sizes_and_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = ResNet::new(&vs.root(), &ResNetConfig::resnet50(1000));
        // torchvision.models.resnet50(): 25,557,032 parameters.
        assert_eq!(count(&vs), 25_557_032);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for n in [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.downsample.0.weight",
            "layer4.2.conv3.weight",
            "fc.bias",
        ] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let r = ResNet::new(&vs.root(), &ResNetConfig::resnet18(10));
        // torchvision.models.resnet18(num_classes=10): 11,181,642 parameters.
        assert_eq!(count(&vs), 11_181_642);
        let y = r.forward_t(
            &Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![2, 10]);
    }

    #[test]
    fn wide_bottleneck_and_cifar_stem() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut c = ResNetConfig::resnet50(1000);
        c.width_factor = 2;
        let _ = ResNet::new(&vs.root(), &c);
        // torchvision.models.wide_resnet50_2(): 68,883,240 parameters.
        assert_eq!(count(&vs), 68_883_240);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut c = ResNetConfig::resnet18(10);
        c.stem = Stem::Cifar;
        let r = ResNet::new(&vs.root(), &c);
        let f = r.features_t(
            &Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)),
            true,
        );
        assert_eq!(f.size(), vec![1, c.feature_dim()]);
    }

    #[test]
    fn wrn_28_10_has_the_official_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = Wrn::new(
            &vs.root(),
            &WrnConfig {
                depth: 28,
                widen: 10,
                norm: WrnNorm::None,
                dropout: 0.0,
                act: lrelu(),
                in_channels: 3,
                classes: 10,
                bn_momentum: 0.1,
            },
        );
        // The backbone counted by hand from the block layout (biases on every conv, no norm),
        // plus the heads class_output (6,410) and energy_output (641).
        let backbone: i64 = {
            let conv = |i: i64, o: i64, k: i64| i * o * k * k + o;
            let mut s = conv(3, 16, 3);
            let widths = [16, 160, 320, 640];
            let mut inp = 16;
            for &w in &widths[1..] {
                for b in 0..4 {
                    s += conv(inp, w, 3) + conv(w, w, 3);
                    if b == 0 {
                        s += conv(inp, w, 1);
                    }
                    inp = w;
                }
            }
            s
        };
        assert_eq!(count(&vs), backbone + 6410 + 641);
        assert_eq!(w.feature_dim(), 640);
        let y = w.forward_t(
            &Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![1, 10]);
    }

    #[test]
    fn mnist_cnn_has_the_spec_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Cnn::new(&vs.root(), &CnnConfig::mnist_cnn());
        // conv 1→16: 160, 16→32: 4640, 32→32: 9248, fc 1568→64: 100416, 64→10: 650.
        assert_eq!(count(&vs), 160 + 4640 + 9248 + 100_416 + 650);
        let y = m.forward(&Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), vec![3, 10]);
    }
}
