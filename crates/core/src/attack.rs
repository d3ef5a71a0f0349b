//! Adversarial attacks with the semantics of the robustness library: PGD under L∞ and L2
//! (step rules, projection, random start, use-best, targeted) and FGSM with random start.
//!
//! Inputs are in `[0, 1]` and clamped after every step; ε and step sizes are in those units
//! (normalisation belongs inside the model). The model is passed as a closure that must run it
//! in eval mode. Gradients are taken on the inputs only (`Tensor::run_backward` on `x`), so no
//! parameter gradient accumulates.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// The threat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// ‖δ‖∞ ≤ ε.
    Linf,
    /// ‖δ‖₂ ≤ ε per example.
    L2,
}

/// A PGD attack.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pgd {
    /// Threat model.
    pub norm: Norm,
    /// Budget.
    pub eps: f64,
    /// Step size α.
    pub step: f64,
    /// Number of steps.
    pub steps: usize,
    /// Start from a random point of the ε-ball (L∞: uniform; L2: on the sphere).
    #[serde(default)]
    pub random_start: bool,
    /// Return each example's iterate with the highest loss (lowest when targeted), the clean
    /// start included.
    #[serde(default = "yes")]
    pub use_best: bool,
    /// Move towards `y` instead of away from it.
    #[serde(default)]
    pub targeted: bool,
}

fn yes() -> bool {
    true
}

fn per_example_norm(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    let l = t.dim() - 1;
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, l));
    t.reshape([n, -1])
        .norm_scalaropt_dim(2, [1].as_slice(), false)
        .reshape(shape.as_slice())
}

/// Per-example cross-entropy losses of `f(x)` and their input gradient (of the mean, times `sign`).
pub fn input_grad(
    f: &dyn Fn(&Tensor) -> Tensor,
    x: &Tensor,
    y: &Tensor,
    sign: f64,
) -> (Tensor, Tensor) {
    let xg = x.detach().set_requires_grad(true);
    let losses = f(&xg).cross_entropy_loss::<Tensor>(y, None, Reduction::None, -100, 0.0);
    let loss = losses.mean(Kind::Float) * sign;
    let g = Tensor::run_backward(&[loss], &[&xg], false, false);
    (
        losses.detach(),
        g.into_iter().next().expect("one input, one gradient"),
    )
}

impl Pgd {
    /// The robust-evaluation attack of the released models: `steps` steps of 2.5ε/steps.
    pub fn eval(norm: Norm, eps: f64, steps: usize) -> Pgd {
        Pgd {
            norm,
            eps,
            step: 2.5 * eps / steps as f64,
            steps,
            random_start: false,
            use_best: true,
            targeted: false,
        }
    }

    fn project(&self, x0: &Tensor, x: &Tensor) -> Tensor {
        let d = x - x0;
        let d = match self.norm {
            Norm::Linf => d.clamp(-self.eps, self.eps),
            // renorm(p=2, dim=0, maxnorm=ε): shrink only, by ε / (‖δ‖ + 1e-7).
            Norm::L2 => d.renorm(2.0, 0, self.eps),
        };
        (x0 + d).clamp(0.0, 1.0)
    }

    fn step_from(&self, x: &Tensor, g: &Tensor) -> Tensor {
        match self.norm {
            Norm::Linf => x + g.sign() * self.step,
            Norm::L2 => x + g / (per_example_norm(g) + 1e-10) * self.step,
        }
    }

    /// FGSM with a random start as a one-step L∞ attack: δ ~ U(−ε, ε), one signed step of
    /// `step`, projected ([`fgsm_rs`]).
    pub fn fgsm_rs(eps: f64, step: f64) -> Pgd {
        Pgd {
            norm: Norm::Linf,
            eps,
            step,
            steps: 1,
            random_start: true,
            use_best: false,
            targeted: false,
        }
    }

    /// A random start in the ε-ball around `x`, clamped to `[0, 1]` (LibTorch's generator).
    pub fn random_perturb(&self, x: &Tensor) -> Tensor {
        self.random_perturb_from(x, &self.draw(x))
    }

    /// The random numbers a start takes: uniform on [0, 1) (L∞) or standard normal (L2),
    /// shaped like `x`, from LibTorch's generator.
    pub fn draw(&self, x: &Tensor) -> Tensor {
        match self.norm {
            Norm::Linf => x.rand_like(),
            Norm::L2 => x.randn_like(),
        }
    }

    /// The random start built from `r` ([`Pgd::draw`]'s numbers), as the robustness library's
    /// `LinfStep.random_perturb` (x + 2(r − ½)ε) and `L2Step.random_perturb`
    /// (x + ε r/(‖r‖ + 1e-10)) do, clamped to `[0, 1]`.
    pub fn random_perturb_from(&self, x: &Tensor, r: &Tensor) -> Tensor {
        match self.norm {
            Norm::Linf => (x + (r - 0.5) * (2.0 * self.eps)).clamp(0.0, 1.0),
            Norm::L2 => (x + r / (per_example_norm(r) + 1e-10) * self.eps).clamp(0.0, 1.0),
        }
    }

    /// Attacks `f` (run in eval mode by the caller's closure) at `(x, y)`; returns `x_adv`.
    pub fn run(&self, f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, y: &Tensor) -> Tensor {
        self.run_with(f, x, y, &|x: &Tensor| self.draw(x))
    }

    /// [`Pgd::run`] with the random start's numbers from `draw` (given the clean batch).
    pub fn run_with(
        &self,
        f: &dyn Fn(&Tensor) -> Tensor,
        x: &Tensor,
        y: &Tensor,
        draw: &dyn Fn(&Tensor) -> Tensor,
    ) -> Tensor {
        let x0 = x.detach();
        let m = if self.targeted { -1.0 } else { 1.0 };
        let mut xa = if self.random_start {
            tch::no_grad(|| self.random_perturb_from(&x0, &draw(&x0)))
        } else {
            x0.shallow_clone()
        };
        let mut best: Option<(Tensor, Tensor)> = None;
        let track = |best: &mut Option<(Tensor, Tensor)>, losses: &Tensor, xa: &Tensor| {
            tch::no_grad(|| match best {
                None => *best = Some((losses.copy(), xa.copy())),
                Some((bl, bx)) => {
                    let replace = (&*bl * m).lt_tensor(&(losses * m));
                    let mask = replace.view(
                        [-1].iter()
                            .copied()
                            .chain(std::iter::repeat_n(1, xa.dim() - 1))
                            .collect::<Vec<i64>>()
                            .as_slice(),
                    );
                    *bx = bx.where_self(&mask.logical_not(), xa);
                    *bl = bl.where_self(&replace.logical_not(), losses);
                }
            })
        };
        for _ in 0..self.steps {
            let (losses, g) = input_grad(f, &xa, y, m);
            if self.use_best {
                track(&mut best, &losses, &xa);
            }
            xa = tch::no_grad(|| self.project(&x0, &self.step_from(&xa, &g)));
        }
        if !self.use_best {
            return xa;
        }
        let losses = tch::no_grad(|| {
            f(&xa).cross_entropy_loss::<Tensor>(y, None, Reduction::None, -100, 0.0)
        });
        track(&mut best, &losses, &xa);
        best.map(|(_, bx)| bx).unwrap_or(xa)
    }
}

/// FGSM with a random start (Wong et al.): δ ~ U(−ε, ε), one signed step of `step`, projected.
pub fn fgsm_rs(
    f: &dyn Fn(&Tensor) -> Tensor,
    x: &Tensor,
    y: &Tensor,
    eps: f64,
    step: f64,
) -> Tensor {
    Pgd::fgsm_rs(eps, step).run(f, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::Device;

    /// A linear two-class model on 2×2 single-channel images.
    fn linear_model() -> (nn::VarStore, nn::Linear, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let l = crate::nn::linear(vs.root() / "l", 4, 2);
        let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, -0.5, 1.0, 0.0, 3.0]).view([2, 4]);
        tch::no_grad(|| {
            l.ws.shallow_clone().copy_(&w);
            let _ = l.bs.as_ref().unwrap().shallow_clone().zero_();
        });
        let d = w.get(1) - w.get(0); // ∇ₓ CE for label 0 points along w₁ − w₀
        (vs, l, d)
    }

    #[test]
    fn linear_model_attack_matches_the_closed_form() {
        let (vs, l, d) = linear_model();
        let f = |x: &Tensor| l.forward(&x.flatten(1, -1));
        let x = Tensor::full([1, 1, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64]);
        for norm in [Norm::Linf, Norm::L2] {
            let pgd = Pgd {
                norm,
                eps: 0.1,
                step: 0.04,
                steps: 5,
                random_start: false,
                use_best: true,
                targeted: false,
            };
            let xa = pgd.run(&f, &x, &y).view([-1]);
            let want = match norm {
                Norm::Linf => 0.5 + d.sign() * 0.1,
                Norm::L2 => 0.5 + &d / d.norm() * 0.1,
            };
            assert!(
                xa.allclose(&want, 1e-5, 1e-6, false),
                "{norm:?}: {xa} vs {want}"
            );
        }
        // Only the input got a gradient: the model's parameters have none.
        for v in vs.trainable_variables() {
            assert!(
                !v.grad().defined() || v.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0
            );
        }
    }

    #[test]
    fn projection_keeps_the_budget_and_the_box() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = crate::nn::Mlp::new(&vs.root(), 16, 8, 1, 3, crate::nn::Activation::Relu);
        let f = |x: &Tensor| net.forward(x);
        let x = Tensor::rand([20, 1, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(3, [20], (Kind::Int64, Device::Cpu));
        for (norm, eps) in [(Norm::Linf, 0.05), (Norm::L2, 0.5)] {
            for random_start in [false, true] {
                let pgd = Pgd {
                    norm,
                    eps,
                    step: eps / 2.0,
                    steps: 7,
                    random_start,
                    use_best: false,
                    targeted: false,
                };
                let xa = pgd.run(&f, &x, &y);
                let d = (&xa - &x).view([20, -1]);
                let n = match norm {
                    Norm::Linf => d.abs().amax([1].as_slice(), false),
                    Norm::L2 => d.norm_scalaropt_dim(2, [1].as_slice(), false),
                };
                assert!(
                    n.max().double_value(&[]) <= eps * (1.0 + 1e-5),
                    "{norm:?} {random_start}"
                );
                assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
                // The attack raises the loss.
                let loss = |t: &Tensor| f(t).cross_entropy_for_logits(&y).double_value(&[]);
                assert!(loss(&xa) > loss(&x), "{norm:?}");
            }
        }
        let xf = fgsm_rs(&f, &x, &y, 0.03, 0.0375);
        assert!((&xf - &x).abs().max().double_value(&[]) <= 0.03 + 1e-6);
    }

    #[test]
    fn use_best_keeps_the_clean_point_when_steps_only_hurt() {
        let (_vs, l, _d) = linear_model();
        let f = |x: &Tensor| l.forward(&x.flatten(1, -1));
        let x = Tensor::full([1, 1, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64]);
        // A targeted attack towards the label it already has lowers the loss; an untargeted one
        // with use_best but a step pointing the wrong way (targeted flag) still returns the
        // lowest-loss iterate, never a worse one.
        let pgd = Pgd {
            norm: Norm::Linf,
            eps: 0.1,
            step: 0.05,
            steps: 3,
            random_start: false,
            use_best: true,
            targeted: true,
        };
        let xa = pgd.run(&f, &x, &y);
        let loss = |t: &Tensor| f(t).cross_entropy_for_logits(&y).double_value(&[]);
        assert!(loss(&xa) < loss(&x));
        let eval = Pgd::eval(Norm::L2, 0.5, 20);
        assert!((eval.step - 2.5 * 0.5 / 20.0).abs() < 1e-12 && !eval.random_start);
    }
}
