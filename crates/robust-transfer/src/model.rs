//! The network: input normaliser, backbone, linear head `fc`. Parameter names are the
//! backbone's own (torchvision's for ResNets) plus `normalizer.mean/std`, so a ResNet exported
//! from PyTorch loads by name.

use crate::config::{InitKind, ModelConfig, NormSpec, ResnetArch};
use reprise_core::models::{ResNet, ResNetConfig};
use reprise_core::nn::{linear, Normalize};
use reprise_core::{Error, Result};
use std::path::Path;
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Tensor};

/// The small-scale CNN: conv(16w) → ReLU → conv s2 (32w) → ReLU → conv s2 (64w) → ReLU → GAP → fc.
#[derive(Debug)]
pub struct SmallCnn {
    convs: Vec<nn::Conv2D>,
    /// The head.
    pub fc: nn::Linear,
}

impl SmallCnn {
    /// Builds it under `p` (`conv1..3`, `fc`) for `inp` input channels.
    pub fn new(p: &nn::Path<'_>, inp: i64, width: i64, classes: i64, init: InitKind) -> SmallCnn {
        let chans = [
            (inp, 16 * width, 1),
            (16 * width, 32 * width, 2),
            (32 * width, 64 * width, 2),
        ];
        let convs = chans
            .iter()
            .enumerate()
            .map(|(i, &(a, b, s))| {
                let cfg = nn::ConvConfig {
                    stride: s,
                    padding: 1,
                    ..Default::default()
                };
                let q = p / format!("conv{}", i + 1);
                match init {
                    InitKind::Torch => reprise_core::nn::conv2d(q, a, b, 3, cfg),
                    InitKind::HeNormal => nn::conv2d(
                        q,
                        a,
                        b,
                        3,
                        nn::ConvConfig {
                            ws_init: nn::Init::Randn {
                                mean: 0.0,
                                stdev: (2.0 / (a * 9) as f64).sqrt(),
                            },
                            bs_init: nn::Init::Const(0.0),
                            ..cfg
                        },
                    ),
                }
            })
            .collect();
        SmallCnn {
            convs,
            fc: linear(p / "fc", 64 * width, classes),
        }
    }

    /// Globally average-pooled features.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for c in &self.convs {
            h = h.apply(c).relu();
        }
        h.mean_dim([2, 3].as_slice(), false, tch::Kind::Float)
    }
}

#[derive(Debug)]
enum Body {
    Small(SmallCnn),
    Res(Box<ResNet>),
}

/// Normaliser, backbone and head in one VarStore.
#[derive(Debug)]
pub struct Net {
    /// The variables (`normalizer.*`, the backbone's, `fc.*`).
    pub vs: nn::VarStore,
    norm: Normalize,
    body: Body,
    /// Width of the features the head reads.
    pub feature_dim: i64,
}

impl Net {
    /// A freshly initialised network with `classes` outputs; LibTorch's generator is seeded
    /// with `seed` first, so the initialisation is reproducible.
    pub fn new(
        model: &ModelConfig,
        norm: &NormSpec,
        classes: i64,
        init: InitKind,
        device: Device,
        seed: u64,
    ) -> Net {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let normalizer = Normalize::new(&(&root / "normalizer"), &norm.mean, &norm.std);
        let inp = norm.mean.len() as i64;
        let (body, feature_dim) = match model {
            ModelConfig::SmallCnn { width } => (
                Body::Small(SmallCnn::new(&root, inp, *width, classes, init)),
                64 * width,
            ),
            ModelConfig::Resnet { arch, base, blocks } => {
                let mut c = match arch {
                    ResnetArch::Resnet18 => ResNetConfig::resnet18(classes),
                    ResnetArch::Resnet50 | ResnetArch::WideResnet50_2 => {
                        ResNetConfig::resnet50(classes)
                    }
                };
                if *arch == ResnetArch::WideResnet50_2 {
                    c.width_factor = 2;
                }
                c.in_channels = inp;
                if let Some(b) = base {
                    c.base = *b;
                }
                if let Some(l) = blocks {
                    c.layers = l.to_vec();
                }
                let d = c.feature_dim();
                (Body::Res(Box::new(ResNet::new(&root, &c))), d)
            }
        };
        Net {
            vs,
            norm: normalizer,
            body,
            feature_dim,
        }
    }

    /// The head's input features.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.norm);
        match &self.body {
            Body::Small(m) => m.features(&h),
            Body::Res(m) => m.features_t(&h, train),
        }
    }

    /// The head.
    pub fn head(&self) -> &nn::Linear {
        match &self.body {
            Body::Small(m) => &m.fc,
            Body::Res(m) => &m.fc,
        }
    }

    /// Whether a variable belongs to the backbone (not the normaliser, not the head).
    pub(crate) fn is_backbone(name: &str) -> bool {
        !(name.starts_with("normalizer.") || name.starts_with("fc."))
    }

    /// Copies every backbone variable (BatchNorm running statistics included) from `other`.
    pub(crate) fn copy_backbone(&mut self, other: &Net) -> Result<()> {
        let theirs = other.vs.variables();
        let named: Vec<(String, Tensor)> = theirs.into_iter().collect();
        self.load_backbone(&named, "the source network")
    }

    /// Copies the backbone variables from named tensors; every backbone variable must be there
    /// with its shape (extra names, the normaliser and the head are ignored).
    pub(crate) fn load_backbone(&mut self, named: &[(String, Tensor)], from: &str) -> Result<()> {
        reprise_core::nn::load_named(&self.vs, named, &Net::is_backbone, from)
    }

    /// Loads the backbone from a safetensors file (see [`Net::load_backbone`]).
    pub(crate) fn load_backbone_file(&mut self, path: &Path) -> Result<()> {
        let named = reprise_core::nn::read_weights(
            path,
            "a robustness-library checkpoint converts with scripts/convert_robustness_ckpt.py",
        )?;
        self.load_backbone(&named, &path.display().to_string())
    }

    /// Writes every variable to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp.safetensors");
        self.vs
            .save(&tmp)
            .map_err(|e| Error::msg(format!("{}: cannot save: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::Io(path.to_path_buf(), e))
    }

    /// The backbone's trainable variables, or all of them.
    pub fn params(&self, backbone: bool) -> Vec<(String, Tensor)> {
        let mut v = reprise_core::nn::vars_by_name(&self.vs);
        v.retain(|(n, t)| t.requires_grad() && (backbone || !Net::is_backbone(n)));
        v
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.features_t(x, train).apply(self.head())
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.features(x).apply(&self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn small() -> ModelConfig {
        ModelConfig::SmallCnn { width: 1 }
    }

    fn mnist_norm() -> NormSpec {
        NormSpec {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }

    #[test]
    fn small_cnn_has_the_specified_shapes_and_he_init() {
        let net = Net::new(
            &small(),
            &mnist_norm(),
            5,
            InitKind::HeNormal,
            Device::Cpu,
            0,
        );
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, false).size(), vec![3, 5]);
        assert_eq!(net.features_t(&x, false).size(), vec![3, 64]);
        let n: i64 = net.params(true).iter().map(|(_, t)| t.numel() as i64).sum();
        // 1·16·9+16 + 16·32·9+32 + 32·64·9+64 + 64·5+5
        assert_eq!(n, 160 + 4640 + 18496 + 325);
        let vars = net.vs.variables();
        let w = &vars["conv3.weight"];
        let std = w.std(true).double_value(&[]);
        assert!((std - (2.0f64 / 288.0).sqrt()).abs() < 0.01, "{std}");
        assert_eq!(
            vars["conv3.bias"].abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn backbones_copy_and_load_by_name_but_heads_do_not() {
        let a = Net::new(
            &small(),
            &mnist_norm(),
            5,
            InitKind::HeNormal,
            Device::Cpu,
            1,
        );
        let mut b = Net::new(
            &small(),
            &mnist_norm(),
            7,
            InitKind::HeNormal,
            Device::Cpu,
            2,
        );
        b.copy_backbone(&a).unwrap();
        let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert!(a.features_t(&x, false).equal(&b.features_t(&x, false)));
        assert_eq!(b.forward_t(&x, false).size(), vec![2, 7]);
        let dir = std::env::temp_dir().join(format!("rt-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.safetensors");
        a.save(&f).unwrap();
        let mut c = Net::new(
            &small(),
            &mnist_norm(),
            3,
            InitKind::HeNormal,
            Device::Cpu,
            3,
        );
        c.load_backbone_file(&f).unwrap();
        assert!(a.features_t(&x, false).equal(&c.features_t(&x, false)));
        let mut wide = Net::new(
            &ModelConfig::SmallCnn { width: 2 },
            &mnist_norm(),
            3,
            InitKind::HeNormal,
            Device::Cpu,
            3,
        );
        let e = wide.load_backbone_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("has shape") && e.contains("the model needs"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
