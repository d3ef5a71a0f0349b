//! The deep plain MLP (thin or wide), the linear pairs M that connect a thin network to a wide
//! teacher's feature spaces, their PCA initialisation, and the exact merge.
//!
//! Parameters are plain leaf tensors, so freezing a block, training it at a learning-rate
//! multiple, and folding matrices into each other are direct.

use tch::{Device, Kind, Tensor};

/// One affine map `h ↦ h Wᵀ + b` (`w`: out × in).
#[derive(Debug)]
pub struct Affine {
    /// Weight, out × in.
    pub w: Tensor,
    /// Bias, out.
    pub b: Tensor,
}

impl Affine {
    /// He-normal weights (std √(2/in)) and a zero bias.
    pub(crate) fn he(inp: i64, out: i64, dev: Device) -> Affine {
        Affine {
            w: (Tensor::randn([out, inp], (Kind::Float, dev)) * (2.0 / inp as f64).sqrt())
                .set_requires_grad(true),
            b: Tensor::zeros([out], (Kind::Float, dev)).set_requires_grad(true),
        }
    }

    /// PyTorch's `nn.Linear` default: weights and bias U(±1/√in).
    pub(crate) fn torch_default(inp: i64, out: i64, dev: Device) -> Affine {
        let k = 1.0 / (inp as f64).sqrt();
        Affine {
            w: (Tensor::rand([out, inp], (Kind::Float, dev)) * (2.0 * k) - k)
                .set_requires_grad(true),
            b: (Tensor::rand([out], (Kind::Float, dev)) * (2.0 * k) - k).set_requires_grad(true),
        }
    }

    /// From given tensors (copied, made trainable leaves).
    pub fn from(w: &Tensor, b: &Tensor) -> Affine {
        Affine {
            w: w.detach().copy().set_requires_grad(true),
            b: b.detach().copy().set_requires_grad(true),
        }
    }

    /// Applies it.
    pub fn apply(&self, h: &Tensor) -> Tensor {
        h.matmul(&self.w.tr()) + &self.b
    }

    /// Its two tensors.
    pub fn params(&self) -> Vec<Tensor> {
        vec![self.w.shallow_clone(), self.b.shallow_clone()]
    }

    /// A copy, detached.
    pub fn copy(&self) -> Affine {
        Affine::from(&self.w, &self.b)
    }
}

/// A network of `depth` blocks and a head, as the stages see it: imitation trains one block at
/// a time against the teacher's block output, end-to-end training every parameter.
pub trait Net {
    /// Number of blocks n.
    fn depth(&self) -> usize;

    /// Block `i` (0-based) on the previous block's output (the network's input for block 0,
    /// which includes any embedding).
    fn block(&self, i: usize, h: &Tensor) -> Tensor;

    /// The head on the last block's output: logits, `N × C` (or `N × L × C` per position).
    fn logits(&self, h: &Tensor) -> Tensor;

    /// Block `i`'s parameters (block 0's include the embedding).
    fn block_params(&self, i: usize) -> Vec<Tensor>;

    /// The head's parameters.
    fn head_params(&self) -> Vec<Tensor>;

    /// Every parameter by name (`head.*` for the head), for saving, loading and copying.
    fn named(&self) -> Vec<(String, Tensor)>;

    /// The width of a block's output (the last dimension).
    fn width(&self) -> i64;

    /// What imitation compares of a block output (the identity unless the family says
    /// otherwise).
    fn feature(&self, h: &Tensor) -> Tensor {
        h.shallow_clone()
    }

    /// Every block's output, in order.
    fn forward_blocks(&self, x: &Tensor) -> Vec<Tensor> {
        let mut out = Vec::with_capacity(self.depth());
        let mut h = x.shallow_clone();
        for i in 0..self.depth() {
            h = self.block(i, &h);
            out.push(h.shallow_clone());
        }
        out
    }

    /// The logits.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for i in 0..self.depth() {
            h = self.block(i, &h);
        }
        self.logits(&h)
    }

    /// Every parameter.
    fn params(&self) -> Vec<Tensor> {
        let mut p: Vec<Tensor> = (0..self.depth())
            .flat_map(|i| self.block_params(i))
            .collect();
        p.extend(self.head_params());
        p
    }
}

/// Copies into each tensor of `dst` that `keep` selects the tensor of the same name in `src`
/// (it must be there, with the same shape); returns how many were copied.
pub(crate) fn copy_tensors(
    dst: Vec<(String, Tensor)>,
    src: Vec<(String, Tensor)>,
    keep: impl Fn(&str) -> bool,
) -> reprise_core::Result<usize> {
    let from: std::collections::BTreeMap<String, Tensor> = src.into_iter().collect();
    let mut n = 0;
    tch::no_grad(|| {
        for (k, mut t) in dst {
            if !keep(&k) {
                continue;
            }
            let s = from
                .get(&k)
                .ok_or_else(|| reprise_core::Error::msg(format!("the source has no `{k}`")))?;
            if s.size() != t.size() {
                return Err(reprise_core::Error::msg(format!(
                    "`{k}`: shape {:?} cannot take {:?}",
                    t.size(),
                    s.size()
                )));
            }
            t.copy_(s);
            n += 1;
        }
        Ok(n)
    })
}

/// Copies `src`'s tensors whose names start with `prefix` into `dst`'s of the same name (their
/// shapes must agree); returns how many were copied.
pub(crate) fn copy_named(
    dst: &dyn Net,
    src: &dyn Net,
    prefix: &str,
) -> reprise_core::Result<usize> {
    copy_tensors(dst.named(), src.named(), |k| k.starts_with(prefix))
}

/// Loads named tensors into a network's (every name must be there with its shape).
pub fn load_named(dst: &dyn Net, tensors: Vec<(String, Tensor)>) -> reprise_core::Result<()> {
    let mut own: std::collections::BTreeMap<String, Tensor> = dst.named().into_iter().collect();
    let expected = own.len();
    let mut seen = 0;
    tch::no_grad(|| {
        for (k, t) in tensors {
            let d = own
                .get_mut(&k)
                .ok_or_else(|| reprise_core::Error::msg(format!("unexpected tensor `{k}`")))?;
            if d.size() != t.size() {
                return Err(reprise_core::Error::msg(format!(
                    "`{k}`: shape {:?}, the file has {:?}",
                    d.size(),
                    t.size()
                )));
            }
            d.copy_(&t);
            seen += 1;
        }
        Ok(())
    })?;
    if seen != expected {
        return Err(reprise_core::Error::msg(format!(
            "{seen} tensors for a network of {expected}"
        )));
    }
    Ok(())
}

/// `n` blocks `h ↦ ReLU(A h + b)` and a linear head.
#[derive(Debug)]
pub struct Mlp {
    /// The blocks' affine maps.
    pub blocks: Vec<Affine>,
    /// The head.
    pub head: Affine,
}

impl Mlp {
    /// He-normal blocks of `width` on `inp` inputs, `depth` of them, and a `classes` head;
    /// LibTorch's generator seeded with `seed` first.
    pub fn new(inp: i64, width: i64, depth: usize, classes: i64, dev: Device, seed: u64) -> Mlp {
        tch::manual_seed(seed as i64);
        let blocks = (0..depth)
            .map(|i| Affine::he(if i == 0 { inp } else { width }, width, dev))
            .collect();
        Mlp {
            blocks,
            head: Affine::he(width, classes, dev),
        }
    }

    /// Number of units of each block that are zero on every row of `x` (dead ReLUs).
    pub(crate) fn dead_units(&self, x: &Tensor) -> Vec<i64> {
        tch::no_grad(|| {
            self.forward_blocks(x)
                .iter()
                .map(|h| {
                    h.gt(0.0)
                        .any_dim(0, false)
                        .logical_not()
                        .sum(Kind::Int64)
                        .int64_value(&[])
                })
                .collect()
        })
    }
}

impl Net for Mlp {
    fn depth(&self) -> usize {
        self.blocks.len()
    }

    fn block(&self, i: usize, h: &Tensor) -> Tensor {
        self.blocks[i].apply(h).relu()
    }

    fn logits(&self, h: &Tensor) -> Tensor {
        self.head.apply(h)
    }

    fn block_params(&self, i: usize) -> Vec<Tensor> {
        self.blocks[i].params()
    }

    fn head_params(&self) -> Vec<Tensor> {
        self.head.params()
    }

    fn named(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            named.push((format!("{i}.w"), b.w.shallow_clone()));
            named.push((format!("{i}.b"), b.b.shallow_clone()));
        }
        named.push(("head.w".into(), self.head.w.shallow_clone()));
        named.push(("head.b".into(), self.head.b.shallow_clone()));
        named
    }

    fn width(&self) -> i64 {
        self.blocks[0].w.size()[0]
    }
}

/// The linear pairs between a thin network of width w and a wide teacher of width W:
/// `up[i]` = M_{i,1} (w → W) after block i, `down[i]` = M_{i,2} (W → w) before block i+1.
#[derive(Debug)]
pub struct Glue {
    /// M_{i,1}, one per block (the last one maps into the teacher's head space).
    pub up: Vec<Affine>,
    /// M_{i,2}, one per block but the last.
    pub down: Vec<Affine>,
}

impl Glue {
    /// Random pairs (a linear layer's default init).
    pub fn random(depth: usize, thin: i64, wide: i64, dev: Device) -> Glue {
        Glue {
            up: (0..depth)
                .map(|_| Affine::torch_default(thin, wide, dev))
                .collect(),
            down: (0..depth.saturating_sub(1))
                .map(|_| Affine::torch_default(wide, thin, dev))
                .collect(),
        }
    }

    /// PCA pairs from the teacher's block outputs `feats[i]` (N × W): G₁ holds the top-w
    /// principal directions as columns, c₁ the mean; G₂ = G₁ᵀ and c₂ = −G₁ᵀc₁, so
    /// M₂(M₁(s)) = s and M₁(M₂(f)) is the projection of f on the principal subspace.
    pub fn pca(feats: &[Tensor], thin: i64) -> Glue {
        let mut up = Vec::new();
        let mut down = Vec::new();
        for (i, f) in feats.iter().enumerate() {
            let (g1, c1) = tch::no_grad(|| {
                let mean = f.mean_dim([0].as_slice(), false, Kind::Float);
                let centred = f - &mean;
                let cov = centred.tr().matmul(&centred) / (f.size()[0] as f64 - 1.0).max(1.0);
                let (_vals, vecs) = cov.linalg_eigh("L");
                // Eigenvalues ascend: the last w columns are the top directions.
                let wide = vecs.size()[1];
                let top = vecs.narrow(1, wide - thin, thin).flip([1]);
                // A deterministic sign: each direction's largest-magnitude entry positive.
                let idx = top.abs().argmax(0, true);
                let sign = top.gather(0, &idx, false).sign();
                (top * sign, mean)
            });
            let g2 = g1.tr();
            let c2 = -g2.matmul(&c1);
            up.push(Affine::from(&g1, &c1));
            if i + 1 < feats.len() {
                down.push(Affine::from(&g2, &c2));
            }
        }
        Glue { up, down }
    }
}

/// The thin network with the pairs inserted: S̄. Without pairs (a shared stream width) it is
/// the thin network itself.
pub struct Widened<'a> {
    /// The thin blocks.
    pub thin: &'a dyn Net,
    /// The pairs, if the family has them.
    pub glue: Option<&'a Glue>,
}

impl Widened<'_> {
    /// S̄_i on the previous widened output `u` (the raw input for the first block): the thin
    /// block i, fed through M_{i−1,2}, mapped up by M_{i,1}.
    pub fn block(&self, i: usize, u: &Tensor) -> Tensor {
        let Some(glue) = self.glue else {
            return self.thin.block(i, u);
        };
        let v = if i == 0 {
            u.shallow_clone()
        } else {
            glue.down[i - 1].apply(u)
        };
        glue.up[i].apply(&self.thin.block(i, &v))
    }

    /// The parameters block i of S̄ trains: the thin block and its two adjacent maps.
    pub fn block_params(&self, i: usize) -> Vec<Tensor> {
        let mut p = self.thin.block_params(i);
        if let Some(glue) = self.glue {
            p.extend(glue.up[i].params());
            if i > 0 {
                p.extend(glue.down[i - 1].params());
            }
        }
        p
    }

    /// Every widened block output S̄₍:i₎(x).
    pub fn forward_blocks(&self, x: &Tensor) -> Vec<Tensor> {
        let mut out = Vec::new();
        let mut u = x.shallow_clone();
        for i in 0..self.thin.depth() {
            u = self.block(i, &u);
            out.push(u.shallow_clone());
        }
        out
    }

    /// Logits through a head on the wide space (the teacher's).
    pub fn forward(&self, x: &Tensor, head: &Affine) -> Tensor {
        let blocks = self.forward_blocks(x);
        head.apply(blocks.last().expect("at least one block"))
    }
}

/// Folds the pairs into the thin blocks and `wide_head` into the thin head:
/// A'_{i+1} = A_{i+1} G_{i,2} G_{i,1}, b'_{i+1} = b_{i+1} + A_{i+1}(G_{i,2} c_{i,1} + c_{i,2}),
/// W'_head = W_head G_{n,1}, b'_head = b_head + W_head c_{n,1}. The result is exactly S's shape.
pub fn merge(thin: &Mlp, glue: &Glue, wide_head: &Affine) -> Mlp {
    tch::no_grad(|| {
        let mut blocks = vec![thin.blocks[0].copy()];
        for i in 1..thin.depth() {
            let a = &thin.blocks[i].w;
            let (g1, c1) = (&glue.up[i - 1].w, &glue.up[i - 1].b);
            let (g2, c2) = (&glue.down[i - 1].w, &glue.down[i - 1].b);
            let w = a.matmul(&g2.matmul(g1));
            let b = &thin.blocks[i].b + a.matmul(&(g2.matmul(c1) + c2));
            blocks.push(Affine::from(&w, &b));
        }
        let last = glue.up.last().expect("at least one block");
        let head = Affine::from(
            &wide_head.w.matmul(&last.w),
            &(&wide_head.b + wide_head.w.matmul(&last.b)),
        );
        Mlp { blocks, head }
    })
}

/// The merge check: max |z_S̄ − z_S| relative to max(1, max |z_S̄|) (the paper's Sec. 3: the
/// merged network computes what the widened one does).
pub fn merge_error(widened: &Widened<'_>, wide_head: &Affine, merged: &dyn Net, x: &Tensor) -> f64 {
    tch::no_grad(|| {
        let a = widened.forward(x, wide_head);
        let b = merged.forward(x);
        let scale = a.abs().max().double_value(&[]).max(1.0);
        (a - b).abs().max().double_value(&[]) / scale
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_is_exact_for_random_and_pca_pairs() {
        let dev = Device::Cpu;
        let thin = Mlp::new(20, 6, 5, 4, dev, 0);
        let teacher = Mlp::new(20, 32, 5, 4, dev, 1);
        let x = Tensor::rand([64, 20], (Kind::Float, dev));
        let feats: Vec<Tensor> = tch::no_grad(|| teacher.forward_blocks(&x));
        for glue in [Glue::random(5, 6, 32, dev), Glue::pca(&feats, 6)] {
            let w = Widened {
                thin: &thin,
                glue: Some(&glue),
            };
            let merged = merge(&thin, &glue, &teacher.head);
            assert_eq!(merged.blocks[3].w.size(), vec![6, 6]);
            assert_eq!(merged.head.w.size(), vec![4, 6]);
            let e = merge_error(&w, &teacher.head, &merged, &x);
            assert!(e < 1e-5, "merge error {e}");
        }
    }

    #[test]
    fn a_wrong_bias_fold_is_caught_by_the_merge_check() {
        let dev = Device::Cpu;
        let thin = Mlp::new(10, 4, 3, 3, dev, 0);
        let teacher = Mlp::new(10, 16, 3, 3, dev, 1);
        let glue = Glue::random(3, 4, 16, dev);
        let x = Tensor::rand([32, 10], (Kind::Float, dev));
        let mut merged = merge(&thin, &glue, &teacher.head);
        // Forgetting A(G₂c₁ + c₂) in block 2 (pitfall 5) must show.
        merged.blocks[1] = tch::no_grad(|| Affine::from(&merged.blocks[1].w, &thin.blocks[1].b));
        let e = merge_error(
            &Widened {
                thin: &thin,
                glue: Some(&glue),
            },
            &teacher.head,
            &merged,
            &x,
        );
        assert!(e > 1e-3, "{e}");
    }

    #[test]
    fn pca_pairs_reconstruct_the_principal_subspace() {
        let dev = Device::Cpu;
        tch::manual_seed(3);
        // Features on a 3-dimensional subspace of a 12-dimensional space, plus a mean.
        let basis = Tensor::randn([3, 12], (Kind::Float, dev));
        let f = Tensor::randn([500, 3], (Kind::Float, dev)).matmul(&basis) + 2.0;
        let glue = Glue::pca(&[f.shallow_clone(), f.shallow_clone()], 3);
        let up = &glue.up[0];
        let down = &glue.down[0];
        let back = tch::no_grad(|| up.apply(&down.apply(&f)));
        let err = (back - &f).abs().max().double_value(&[]);
        assert!(err < 1e-3, "{err}");
        // G₁ has orthonormal columns.
        let gram = up.w.tr().matmul(&up.w);
        let eye = Tensor::eye(3, (Kind::Float, dev));
        assert!((gram - eye).abs().max().double_value(&[]) < 1e-4);
    }
}
