//! The Inception-v3 network of pytorch-fid (`pytorch_fid/inception.py`: `InceptionV3` with the
//! FID blocks of `fid_inception_v3`), whose pool features the papers' FID is computed on:
//! bilinear resize to 299², scale to [−1, 1], torchvision's Inception-v3 stem and blocks with
//! the FID variants (average pools that do not count padding in `Mixed_5b`–`Mixed_7b`, a max
//! pool in `Mixed_7c`), global average pool → 2048 features. Parameter names are torchvision's
//! (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …), so the weights file
//! pytorch-fid downloads (`pt_inception-2015-12-05-6726825d.pth`), converted to safetensors,
//! loads by name ([`FidInception::load`]).

use crate::error::Result;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// A torchvision `BasicConv2d`: convolution without bias, batch norm (ε 0.001), ReLU.
#[derive(Debug)]
struct BasicConv {
    w: Tensor,
    bn: nn::BatchNorm,
    stride: i64,
    pad: [i64; 2],
}

impl BasicConv {
    fn new(
        p: nn::Path<'_>,
        cin: i64,
        cout: i64,
        k: [i64; 2],
        stride: i64,
        pad: [i64; 2],
    ) -> BasicConv {
        let w = (&p / "conv").var("weight", &[cout, cin, k[0], k[1]], nn::Init::Const(0.0));
        let bn = nn::batch_norm2d(
            &p / "bn",
            cout,
            nn::BatchNormConfig {
                eps: 0.001,
                ..Default::default()
            },
        );
        BasicConv { w, bn, stride, pad }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.w, None::<&Tensor>, [self.stride], self.pad, [1], 1)
            .apply_t(&self.bn, false)
            .relu()
    }
}

fn sq(k: i64) -> [i64; 2] {
    [k, k]
}

/// A 3×3, stride-1, padding-1 average pool that does not count the padding (the FID blocks').
fn avg3(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// One Inception block, as the FID network has it.
#[derive(Debug)]
enum Block {
    /// InceptionA (`Mixed_5b`–`5d`).
    A([BasicConv; 7]),
    /// InceptionB (`Mixed_6a`).
    B([BasicConv; 4]),
    /// InceptionC (`Mixed_6b`–`6e`).
    C([BasicConv; 10]),
    /// InceptionD (`Mixed_7a`).
    D([BasicConv; 6]),
    /// InceptionE (`Mixed_7b` with an average pool, `Mixed_7c` with a max pool).
    E([BasicConv; 9], bool),
}

impl Block {
    fn a(p: nn::Path<'_>, cin: i64, pool: i64) -> Block {
        let c = |n: &str, i, o, k, pad| BasicConv::new(&p / n, i, o, sq(k), 1, sq(pad));
        Block::A([
            c("branch1x1", cin, 64, 1, 0),
            c("branch5x5_1", cin, 48, 1, 0),
            c("branch5x5_2", 48, 64, 5, 2),
            c("branch3x3dbl_1", cin, 64, 1, 0),
            c("branch3x3dbl_2", 64, 96, 3, 1),
            c("branch3x3dbl_3", 96, 96, 3, 1),
            c("branch_pool", cin, pool, 1, 0),
        ])
    }

    fn b(p: nn::Path<'_>, cin: i64) -> Block {
        let c = |n: &str, i, o, k, s, pad| BasicConv::new(&p / n, i, o, sq(k), s, sq(pad));
        Block::B([
            c("branch3x3", cin, 384, 3, 2, 0),
            c("branch3x3dbl_1", cin, 64, 1, 1, 0),
            c("branch3x3dbl_2", 64, 96, 3, 1, 1),
            c("branch3x3dbl_3", 96, 96, 3, 2, 0),
        ])
    }

    fn c(p: nn::Path<'_>, cin: i64, c7: i64) -> Block {
        let c = |n: &str, i, o, k: [i64; 2], pad: [i64; 2]| BasicConv::new(&p / n, i, o, k, 1, pad);
        let (r, col, one, zero) = ([1, 7], [7, 1], [1, 1], [0, 0]);
        Block::C([
            c("branch1x1", cin, 192, one, zero),
            c("branch7x7_1", cin, c7, one, zero),
            c("branch7x7_2", c7, c7, r, [0, 3]),
            c("branch7x7_3", c7, 192, col, [3, 0]),
            c("branch7x7dbl_1", cin, c7, one, zero),
            c("branch7x7dbl_2", c7, c7, col, [3, 0]),
            c("branch7x7dbl_3", c7, c7, r, [0, 3]),
            c("branch7x7dbl_4", c7, c7, col, [3, 0]),
            c("branch7x7dbl_5", c7, 192, r, [0, 3]),
            c("branch_pool", cin, 192, one, zero),
        ])
    }

    fn d(p: nn::Path<'_>, cin: i64) -> Block {
        let c =
            |n: &str, i, o, k: [i64; 2], s, pad: [i64; 2]| BasicConv::new(&p / n, i, o, k, s, pad);
        Block::D([
            c("branch3x3_1", cin, 192, [1, 1], 1, [0, 0]),
            c("branch3x3_2", 192, 320, [3, 3], 2, [0, 0]),
            c("branch7x7x3_1", cin, 192, [1, 1], 1, [0, 0]),
            c("branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
            c("branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
            c("branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]),
        ])
    }

    fn e(p: nn::Path<'_>, cin: i64, max_pool: bool) -> Block {
        let c = |n: &str, i, o, k: [i64; 2], pad: [i64; 2]| BasicConv::new(&p / n, i, o, k, 1, pad);
        Block::E(
            [
                c("branch1x1", cin, 320, [1, 1], [0, 0]),
                c("branch3x3_1", cin, 384, [1, 1], [0, 0]),
                c("branch3x3_2a", 384, 384, [1, 3], [0, 1]),
                c("branch3x3_2b", 384, 384, [3, 1], [1, 0]),
                c("branch3x3dbl_1", cin, 448, [1, 1], [0, 0]),
                c("branch3x3dbl_2", 448, 384, [3, 3], [1, 1]),
                c("branch3x3dbl_3a", 384, 384, [1, 3], [0, 1]),
                c("branch3x3dbl_3b", 384, 384, [3, 1], [1, 0]),
                c("branch_pool", cin, 192, [1, 1], [0, 0]),
            ],
            max_pool,
        )
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Block::A(c) => {
                let b5 = c[2].forward(&c[1].forward(x));
                let b3 = c[5].forward(&c[4].forward(&c[3].forward(x)));
                Tensor::cat(&[c[0].forward(x), b5, b3, c[6].forward(&avg3(x))], 1)
            }
            Block::B(c) => {
                let b3 = c[0].forward(x);
                let bd = c[3].forward(&c[2].forward(&c[1].forward(x)));
                Tensor::cat(
                    &[b3, bd, x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)],
                    1,
                )
            }
            Block::C(c) => {
                let b7 = c[3].forward(&c[2].forward(&c[1].forward(x)));
                let mut bd = c[4].forward(x);
                for k in &c[5..9] {
                    bd = k.forward(&bd);
                }
                Tensor::cat(&[c[0].forward(x), b7, bd, c[9].forward(&avg3(x))], 1)
            }
            Block::D(c) => {
                let b3 = c[1].forward(&c[0].forward(x));
                let b7 = c[5].forward(&c[4].forward(&c[3].forward(&c[2].forward(x))));
                Tensor::cat(
                    &[b3, b7, x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)],
                    1,
                )
            }
            Block::E(c, max_pool) => {
                let h = c[1].forward(x);
                let b3 = Tensor::cat(&[c[2].forward(&h), c[3].forward(&h)], 1);
                let d = c[5].forward(&c[4].forward(x));
                let bd = Tensor::cat(&[c[6].forward(&d), c[7].forward(&d)], 1);
                let pooled = if *max_pool {
                    x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
                } else {
                    avg3(x)
                };
                Tensor::cat(&[c[0].forward(x), b3, bd, c[8].forward(&pooled)], 1)
            }
        }
    }
}

/// pytorch-fid's FID Inception-v3 up to its 2048 pool features.
#[derive(Debug)]
pub struct FidInception {
    /// Its variables, named as torchvision's.
    pub vs: nn::VarStore,
    stem: Vec<BasicConv>,
    blocks: Vec<Block>,
}

impl FidInception {
    /// The network with zero weights (load them with [`FidInception::load`]).
    pub fn new(device: Device) -> FidInception {
        let vs = nn::VarStore::new(device);
        let r = vs.root();
        let c = |n: &str, i, o, k, s, pad| BasicConv::new(&r / n, i, o, sq(k), s, sq(pad));
        let stem = vec![
            c("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
            c("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            c("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            c("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            c("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ];
        let blocks = vec![
            Block::a(&r / "Mixed_5b", 192, 32),
            Block::a(&r / "Mixed_5c", 256, 64),
            Block::a(&r / "Mixed_5d", 288, 64),
            Block::b(&r / "Mixed_6a", 288),
            Block::c(&r / "Mixed_6b", 768, 128),
            Block::c(&r / "Mixed_6c", 768, 160),
            Block::c(&r / "Mixed_6d", 768, 160),
            Block::c(&r / "Mixed_6e", 768, 192),
            Block::d(&r / "Mixed_7a", 768),
            Block::e(&r / "Mixed_7b", 1280, false),
            Block::e(&r / "Mixed_7c", 2048, true),
        ];
        FidInception { vs, stem, blocks }
    }

    /// Loads the weights from a safetensors file with torchvision's names (pytorch-fid's
    /// `pt_inception-2015-12-05-6726825d.pth` converted; its `fc` and any extra names are
    /// ignored).
    pub fn load(&self, path: &std::path::Path) -> Result<()> {
        let named = crate::nn::read_weights(
            path,
            "convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with scripts/convert_fid_inception.py",
        )?;
        crate::nn::load_named(&self.vs, &named, &|_| true, &path.display().to_string())
    }

    /// The pool features (N × 2048) of images `N×3×H×W` in [0, 1], in eval mode without
    /// gradients.
    pub fn features(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut h = x
                .to_device(self.vs.device())
                .to_kind(Kind::Float)
                .upsample_bilinear2d([299, 299], false, None, None)
                * 2.0
                - 1.0;
            for (i, c) in self.stem.iter().enumerate() {
                h = c.forward(&h);
                if i == 2 || i == 4 {
                    h = h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
                }
            }
            for b in &self.blocks {
                h = b.forward(&h);
            }
            h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
        })
    }

    /// The pool features of `x` in batches of `batch`, on the CPU.
    pub fn features_batched(&self, x: &Tensor, batch: i64) -> Tensor {
        let n = x.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(batch.max(1) as usize)
            .map(|i| {
                self.features(&x.narrow(0, i, batch.min(n - i)))
                    .to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&parts, 0)
    }
}

/// The FID of two image sets `N×3×H×W` in [0, 1] on `net`'s pool features.
pub fn fid(net: &FidInception, a: &Tensor, b: &Tensor, batch: i64) -> f64 {
    let fa = net.features_batched(a, batch).to_kind(Kind::Double);
    let fb = net.features_batched(b, batch).to_kind(Kind::Double);
    crate::metrics::frechet_distance(&fa, &fb)
}

impl ModuleT for FidInception {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        self.features(x)
    }
}
