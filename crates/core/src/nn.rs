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

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(s) => x.maximum(&(x * s)),
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
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![-0.2, 2.0]);
    }
}
