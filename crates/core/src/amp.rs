//! Mixed precision of a training step, as a spec chooses it (`amp: none | bf16 | f16`): the
//! forwards whose outputs enter the loss run under ATen's autocast (matrix products and
//! convolutions in the half type, on float32 master weights and optimizer state), their outputs
//! come back in float32 for the losses, and with `f16` the loss is scaled dynamically
//! ([`crate::optim::LossScaler`]). Input-gradient loops (SGLD chains, PGD attacks) are the
//! caller's to keep in float32.

use crate::optim::{LossScaler, Optimizer};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Mixed precision of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// float32 throughout.
    #[default]
    None,
    /// bfloat16 autocast around the loss's forwards.
    Bf16,
    /// float16 autocast around the loss's forwards, with a dynamic loss scale (GradScaler's
    /// defaults) that skips a step whose gradients overflow.
    F16,
}

impl Amp {
    /// The precision of the matrix products and convolutions: `float32`, `bf16` or `f16`.
    pub fn precision(self) -> &'static str {
        match self {
            Amp::None => "float32",
            Amp::Bf16 => "bf16",
            Amp::F16 => "f16",
        }
    }

    /// `forward()` under this autocast on `dev`, its output in float32 (unchanged with `none`).
    pub fn forward(self, dev: Device, forward: impl FnOnce() -> Tensor) -> Tensor {
        match self.try_forward(dev, || Ok::<_, std::convert::Infallible>(forward())) {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }

    /// [`Amp::forward`] of a computation that may fail (a loss that checks its inputs).
    pub fn try_forward<E>(
        self,
        dev: Device,
        forward: impl FnOnce() -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let half = match self {
            Amp::None => return forward(),
            Amp::Bf16 => dist::Half::Bf16,
            Amp::F16 => dist::Half::F16,
        };
        Ok(dist::autocast(dev, half, forward)?.to_kind(Kind::Float))
    }

    /// `f()` under this autocast on `dev` (`none`: as it is), its outputs left in the types
    /// autocast gave them: for forwards with several outputs, which the caller brings back to
    /// float32 before its losses.
    pub fn run<T>(self, dev: Device, f: impl FnOnce() -> T) -> T {
        match self {
            Amp::None => f(),
            Amp::Bf16 => dist::autocast(dev, dist::Half::Bf16, f),
            Amp::F16 => dist::autocast(dev, dist::Half::F16, f),
        }
    }

    /// `opt`, with the loss scale `f16` needs.
    pub fn optimizer(self, opt: Optimizer) -> Optimizer {
        match self {
            Amp::F16 => opt.with_loss_scaler(LossScaler::default()),
            _ => opt,
        }
    }
}
