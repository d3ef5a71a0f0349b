//! Layers with PyTorch's default initialisation, set explicitly (tch's defaults differ).

use tch::nn::{self, Init, Module};
use tch::Tensor;

/// PyTorch's default `nn.Linear` / `nn.Conv2d` init: weight and bias uniform in ±1/√fan_in
/// (Kaiming-uniform with a = √5 gives exactly this bound for the weight).
pub fn torch_default_init(fan_in: i64) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// A linear layer initialised as PyTorch's `nn.Linear`.
pub fn linear(p: nn::Path<'_>, inp: i64, out: i64) -> nn::Linear {
    let init = torch_default_init(inp);
    nn::linear(
        p,
        inp,
        out,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// A 2-D convolution initialised as PyTorch's `nn.Conv2d`.
pub fn conv2d(p: nn::Path<'_>, inp: i64, out: i64, k: i64, cfg: nn::ConvConfig) -> nn::Conv2D {
    let init = torch_default_init(inp / cfg.groups * k * k);
    nn::conv2d(
        p,
        inp,
        out,
        k,
        nn::ConvConfig {
            ws_init: init,
            bs_init: init,
            ..cfg
        },
    )
}

/// Activation functions by name.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// LeakyReLU with the given negative slope.
    LeakyRelu(f64),
    /// Swish / SiLU.
    Silu,
}

/// LeakyReLU with slope `s` below 0, exactly as PyTorch's `F.leaky_relu` computes it, forward
/// and backward: tch 0.24 binds `leaky_relu` without its slope, but LibTorch's
/// `leaky_relu_backward(grad_output, self, s)` is `self > 0 ? grad_output : grad_output · s`, so
/// with `grad_output = x` and `self = x` detached it is the forward in one kernel, and its
/// derivative with respect to `grad_output` is the same kernel applied to the incoming gradient
/// — PyTorch's own LeakyReLU backward. (The lerp from x to relu(x) it replaces took two kernels
/// forward, about four backward, and differed from PyTorch by an ulp.)
pub fn leaky_relu(x: &Tensor, s: f64) -> Tensor {
    x.detach().leaky_relu_backward(x, s, false)
}

impl Activation {
    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(s) => leaky_relu(x, *s),
            Activation::Silu => x.silu(),
        }
    }
}

/// A multi-layer perceptron on flattened inputs: `hidden` layers of `width`, then `out` logits.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    act: Activation,
}

impl Mlp {
    /// Builds the MLP under `p`; layer `i` is `p / "layers" / i`.
    pub fn new(
        p: &nn::Path<'_>,
        inp: i64,
        width: i64,
        hidden: usize,
        out: i64,
        act: Activation,
    ) -> Mlp {
        let mut layers = Vec::new();
        let mut d = inp;
        for i in 0..hidden {
            layers.push(linear(p / "layers" / i, d, width));
            d = width;
        }
        layers.push(linear(p / "layers" / hidden, d, out));
        Mlp { layers, act }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.flatten(1, -1);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h);
            if i < last {
                h = self.act.apply(&h);
            }
        }
        h
    }
}

/// A BatchNorm2d initialised as PyTorch's (weight 1, bias 0; tch's default weight is uniform).
pub fn batch_norm2d(p: nn::Path<'_>, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

/// InstanceNorm2d: per-sample, per-channel normalisation with biased variance; optionally
/// affine (weight 1, bias 0 at start). Keeps no running statistics.
#[derive(Debug)]
pub struct InstanceNorm {
    ws: Option<Tensor>,
    bs: Option<Tensor>,
    eps: f64,
}

impl InstanceNorm {
    /// An instance norm over `c` channels.
    pub fn new(p: nn::Path<'_>, c: i64, affine: bool) -> InstanceNorm {
        let (ws, bs) = if affine {
            (
                Some(p.var("weight", &[c], Init::Const(1.0))),
                Some(p.var("bias", &[c], Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        InstanceNorm { ws, bs, eps: 1e-5 }
    }
}

impl Module for InstanceNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        instance_norm_with(x, self.ws.as_ref(), self.bs.as_ref(), self.eps)
    }
}

/// InstanceNorm2d without affine parameters (biased variance, eps 1e-5), as a function.
pub fn instance_norm(x: &Tensor) -> Tensor {
    instance_norm_with(x, None, None, 1e-5)
}

fn instance_norm_with(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Tensor {
    x.instance_norm(
        w,
        b,
        None::<&Tensor>,
        None::<&Tensor>,
        true,
        0.1,
        eps,
        false,
    )
}

/// Spectral normalisation of a weight (Miyato et al.), as `torch.nn.utils.spectral_norm`:
/// the weight is divided by σ estimated by power iteration on its `out × rest` matrix, with
/// persistent, non-trainable `u` and `v`; one iteration per training forward, none in eval.
#[derive(Debug)]
pub struct SpectralNorm {
    /// The unnormalised weight (trainable).
    pub weight_orig: Tensor,
    u: Tensor,
    v: Tensor,
    eps: f64,
}

fn normalize(t: &Tensor, eps: f64) -> Tensor {
    t / t.norm().clamp_min(eps)
}

impl SpectralNorm {
    /// Wraps a new weight of `dims` with the given init, registered as `weight_orig`,
    /// `weight_u`, `weight_v` under `p`.
    pub fn new(p: &nn::Path<'_>, dims: &[i64], init: Init) -> SpectralNorm {
        let weight_orig = p.var("weight_orig", dims, init);
        let h = dims[0];
        let w: i64 = dims[1..].iter().product();
        let mut u = p.zeros_no_train("weight_u", &[h]);
        let mut v = p.zeros_no_train("weight_v", &[w]);
        tch::no_grad(|| {
            u.copy_(&normalize(
                &Tensor::randn([h], (tch::Kind::Float, p.device())),
                1e-12,
            ));
            v.copy_(&normalize(
                &Tensor::randn([w], (tch::Kind::Float, p.device())),
                1e-12,
            ));
        });
        SpectralNorm {
            weight_orig,
            u,
            v,
            eps: 1e-12,
        }
    }

    /// The normalised weight; `train` runs one power iteration and updates `u` and `v`.
    pub fn weight(&self, train: bool) -> Tensor {
        let dims = self.weight_orig.size();
        let wm = self.weight_orig.view([dims[0], -1]);
        if train {
            tch::no_grad(|| {
                let v = normalize(&wm.tr().mv(&self.u), self.eps);
                let u = normalize(&wm.mv(&v), self.eps);
                self.v.shallow_clone().copy_(&v);
                self.u.shallow_clone().copy_(&u);
            });
        }
        let sigma = self.u.dot(&wm.mv(&self.v));
        &self.weight_orig / sigma
    }
}

/// Input normalisation as the model's first layer: `(x − mean) / std` per channel, with
/// non-trainable buffers (so attack budgets stay in `[0, 1]` pixel units).
#[derive(Debug)]
pub struct Normalize {
    mean: Tensor,
    std: Tensor,
}

impl Normalize {
    /// A normaliser with per-channel mean and std, registered as `mean` and `std` under `p`.
    pub fn new(p: &nn::Path<'_>, mean: &[f64], std: &[f64]) -> Normalize {
        let c = mean.len() as i64;
        let mut m = p.zeros_no_train("mean", &[c]);
        let mut s = p.zeros_no_train("std", &[c]);
        tch::no_grad(|| {
            m.copy_(
                &Tensor::from_slice(mean)
                    .to_kind(tch::Kind::Float)
                    .to_device(p.device()),
            );
            s.copy_(
                &Tensor::from_slice(std)
                    .to_kind(tch::Kind::Float)
                    .to_device(p.device()),
            );
        });
        Normalize { mean: m, std: s }
    }
}

impl Module for Normalize {
    /// `(clamp(x, 0, 1) − mean) / std`: the robustness library's `InputNormalize`
    /// (`tools/helpers.py`) clamps first, so an input that augmentation pushed out of `[0, 1]`
    /// (PCA lighting does) reaches the network clamped.
    fn forward(&self, x: &Tensor) -> Tensor {
        (x.clamp(0.0, 1.0) - self.mean.view([1, -1, 1, 1])) / self.std.view([1, -1, 1, 1])
    }
}

/// Every variable of `vs` with its name, in the order of the names: the same in every process,
/// which the store's hash map is not (the order of a gradient average, of an optimizer's
/// parameters, of a fingerprint).
pub fn vars_by_name(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Copies named tensors into the variables of `vs` that `keep` selects (BatchNorm running
/// statistics included): every selected variable must be among `named` with its shape; other
/// names are ignored. `from` names the source in errors. Nothing is copied unless all fit.
pub fn load_named(
    vs: &nn::VarStore,
    named: &[(String, Tensor)],
    keep: &dyn Fn(&str) -> bool,
    from: &str,
) -> crate::Result<()> {
    let map: std::collections::HashMap<&str, &Tensor> =
        named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut missing = Vec::new();
    let mut pairs = Vec::new();
    for (name, var) in vs.variables() {
        if !keep(&name) {
            continue;
        }
        match map.get(name.as_str()) {
            Some(t) if t.size() == var.size() => pairs.push((var, *t)),
            Some(t) => {
                return Err(crate::Error::msg(format!(
                    "{from}: `{name}` has shape {:?}, the model needs {:?}",
                    t.size(),
                    var.size()
                )))
            }
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        missing.sort();
        let n = missing.len();
        missing.truncate(5);
        return Err(crate::Error::msg(format!(
            "{from}: {n} tensors missing (e.g. {}); is it the same architecture?",
            missing.join(", ")
        )));
    }
    tch::no_grad(|| {
        for (mut var, t) in pairs {
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    Ok(())
}

/// Reads a safetensors file of named weights; the error names the file and, when it is
/// missing, `hint` (how to make one).
pub fn read_weights(path: &std::path::Path, hint: &str) -> crate::Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(crate::Error::msg(format!(
            "{}: no such file ({hint})",
            path.display()
        )));
    }
    Tensor::read_safetensors(path).map_err(|e| {
        crate::Error::Corrupt(path.to_path_buf(), format!("cannot read safetensors: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_init_is_within_pytorch_bounds() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let l = linear(vs.root() / "l", 100, 50);
        let b = 0.1;
        assert!(l.ws.abs().max().double_value(&[]) <= b);
        // Uniform on ±b has std b/√3; far from tch's default Kaiming init (std √2/√100 ≈ 0.14).
        let std = l.ws.std(true).double_value(&[]);
        assert!((std - b / 3f64.sqrt()).abs() < 0.005, "{std}");
        let bias = l.bs.as_ref().unwrap();
        assert!(
            bias.abs().max().double_value(&[]) <= b && bias.abs().max().double_value(&[]) > 0.0
        );
    }

    #[test]
    fn leaky_relu_is_the_definition_forward_and_backward() {
        let x = Tensor::randn([1000], (tch::Kind::Float, tch::Device::Cpu));
        let _ = x.narrow(0, 0, 1).fill_(0.0);
        let xg = x.detach().set_requires_grad(true);
        let y = leaky_relu(&xg, 0.2);
        let pos = x.gt(0.0);
        let want = x.where_self(&pos, &(&x * 0.2));
        assert!(y.equal(&want), "forward");
        let g = Tensor::randn([1000], (tch::Kind::Float, tch::Device::Cpu));
        let got = Tensor::run_backward(&[(&y * &g).sum(tch::Kind::Float)], &[&xg], false, false);
        let want = g.where_self(&pos, &(&g * 0.2));
        assert!(got[0].equal(&want), "backward");
    }

    #[test]
    fn mlp_shapes_and_leaky_relu() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = Mlp::new(&vs.root(), 64, 32, 2, 10, Activation::LeakyRelu(0.2));
        let y = m.forward(&Tensor::zeros(
            [5, 1, 8, 8],
            (tch::Kind::Float, tch::Device::Cpu),
        ));
        assert_eq!(y.size(), vec![5, 10]);
        assert_eq!(vs.variables().len(), 6);
        let x = Tensor::from_slice(&[-1.0f32, 2.0]);
        let a = Activation::LeakyRelu(0.2).apply(&x);
        let a = Vec::<f32>::try_from(&a).unwrap();
        assert!((a[0] + 0.2).abs() < 1e-7 && a[1] == 2.0, "{a:?}");
        // The gradient is the slope below 0 and 1 above.
        let x = Tensor::from_slice(&[-1.0f32, 2.0]).set_requires_grad(true);
        Activation::LeakyRelu(0.2)
            .apply(&x)
            .sum(tch::Kind::Float)
            .backward();
        let g = Vec::<f32>::try_from(&x.grad()).unwrap();
        assert!(
            (g[0] - 0.2).abs() < 1e-7 && (g[1] - 1.0).abs() < 1e-7,
            "{g:?}"
        );
    }

    #[test]
    fn instance_norm_normalises_each_sample_and_channel() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let n = InstanceNorm::new(vs.root() / "in", 3, true);
        let x = Tensor::randn([2, 3, 5, 5], (tch::Kind::Float, tch::Device::Cpu)) * 3.0 + 1.0;
        let y = n.forward(&x);
        let m = y.mean_dim([2, 3].as_slice(), false, tch::Kind::Float);
        let v = y.var_dim([2, 3].as_slice(), false, false);
        assert!(m.abs().max().double_value(&[]) < 1e-5);
        assert!((v - 1.0).abs().max().double_value(&[]) < 1e-3);
        assert_eq!(vs.trainable_variables().len(), 2);
    }

    #[test]
    fn spectral_norm_converges_to_unit_sigma_and_freezes_in_eval() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let sn = SpectralNorm::new(
            &(vs.root() / "c"),
            &[8, 4, 3, 3],
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        for _ in 0..50 {
            let _ = sn.weight(true);
        }
        let w = sn.weight(false).view([8, -1]);
        let top = w
            .matmul(&w.tr())
            .linalg_eigvalsh("L")
            .max()
            .double_value(&[])
            .sqrt();
        assert!((top - 1.0).abs() < 1e-3, "{top}");
        let u0 = sn.u.copy();
        let _ = sn.weight(false);
        assert!(sn.u.equal(&u0), "eval does not update u");
        // u and v are saved with the model but not trained.
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"c.weight_u".to_string()) && names.contains(&"c.weight_v".to_string())
        );
        assert_eq!(vs.trainable_variables().len(), 1);
    }

    #[test]
    fn named_tensors_load_only_when_every_one_fits() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let a = vs.root().var("a", &[2], nn::Init::Const(0.0));
        let _b = (vs.root() / "head").var("b", &[3], nn::Init::Const(0.0));
        let t = |n: &str, v: &[f32]| (n.to_string(), Tensor::from_slice(v));
        let body = |n: &str| !n.starts_with("head.");
        load_named(&vs, &[t("a", &[1.0, 2.0]), t("extra", &[9.0])], &body, "f").unwrap();
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![1.0, 2.0]);
        let e = load_named(&vs, &[t("a", &[1.0])], &body, "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape"), "{e}");
        let e = load_named(&vs, &[t("a", &[5.0, 5.0])], &|_| true, "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 tensors missing") && e.contains("head.b"),
            "{e}"
        );
        assert_eq!(
            Vec::<f32>::try_from(&a).unwrap(),
            vec![1.0, 2.0],
            "nothing copied"
        );
    }

    #[test]
    fn normalize_is_a_layer_with_buffers() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let n = Normalize::new(&(vs.root() / "norm"), &[0.5, 0.0], &[0.5, 2.0]);
        let x = Tensor::ones([1, 2, 1, 1], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(
            Vec::<f32>::try_from(n.forward(&x).view(-1)).unwrap(),
            vec![1.0, 0.5]
        );
        // Inputs outside [0, 1] are clamped first, as the robustness library's normaliser does.
        assert_eq!(
            Vec::<f32>::try_from(n.forward(&(x * 1.5 - 2.0)).view(-1)).unwrap(),
            vec![-1.0, 0.0]
        );
        assert!(vs.trainable_variables().is_empty());
    }
}
