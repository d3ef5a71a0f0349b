//! Optimizers over tch tensors with PyTorch's exact update rules, whose state is saved in
//! checkpoints (tch's built-in optimizers cannot save theirs), and learning-rate schedules.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::parallel::Parallel;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::Tensor;

/// Which update rule, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// Dampening of the momentum.
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
    /// `torch.optim.Adam` (weight decay added to the gradient) or, with `decoupled`,
    /// `torch.optim.AdamW` (weight decay applied to the parameter).
    Adam {
        /// β₁.
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂.
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε.
        #[serde(default = "eps")]
        eps: f64,
        /// AdamW's decoupled weight decay.
        #[serde(default)]
        decoupled: bool,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

impl Rule {
    /// Adam with PyTorch's defaults.
    pub fn adam() -> Rule {
        Rule::Adam {
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            decoupled: false,
        }
    }
}

/// Parameters sharing a learning-rate multiplier and a weight decay.
#[derive(Debug)]
pub struct Group {
    /// Named parameters; a name keys the parameter's state in checkpoints.
    pub params: Vec<(String, Tensor)>,
    /// This group's learning rate is `lr_mult` times the scheduled one.
    pub lr_mult: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

#[derive(Debug, Default)]
struct State {
    step: u64,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

/// An optimizer over groups of parameters.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    groups: Vec<Group>,
    state: Vec<Vec<State>>,
    scaler: Option<LossScaler>,
    ranks: Option<Arc<Parallel>>,
    /// DDP's engine over the parameters, made at the first data-parallel backward.
    reducer: Option<dist::Reducer>,
    /// Whether the gradients of the coming step were averaged during their backward.
    synced: bool,
}

/// A dynamic loss scale for float16 training, as `torch.amp.GradScaler` keeps it: the loss is
/// multiplied by the scale before the backward (so that small float16 gradients do not flush
/// to zero); before the update the gradients are divided by it, and a step whose gradients
/// hold an infinity or a NaN is skipped and the scale halved; after `interval` finite steps in
/// a row it doubles. Defaults: 2¹⁶, ×2, ×½, 2000 (GradScaler's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    /// The current scale.
    pub scale: f64,
    /// The factor after `interval` finite steps.
    pub growth: f64,
    /// The factor after a non-finite step.
    pub backoff: f64,
    /// Finite steps in a row before the scale grows.
    pub interval: u64,
    /// Finite steps in a row so far.
    pub good: u64,
    /// Steps skipped for non-finite gradients, in all.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            growth: 2.0,
            backoff: 0.5,
            interval: 2000,
            good: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// Divides the gradients by the scale; whether they are all finite (the step may go on),
    /// with the scale updated for the next step.
    fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        tch::no_grad(|| {
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(inv);
                finite &= g.isfinite().all().int64_value(&[]) != 0;
            }
        });
        if finite {
            self.good += 1;
            if self.good >= self.interval {
                self.scale *= self.growth;
                self.good = 0;
            }
        } else {
            self.scale *= self.backoff;
            self.good = 0;
            self.skipped += 1;
        }
        finite
    }
}

impl Optimizer {
    /// An optimizer over parameter groups.
    pub fn new(rule: Rule, groups: Vec<Group>) -> Optimizer {
        let state = groups
            .iter()
            .map(|g| g.params.iter().map(|_| State::default()).collect())
            .collect();
        Optimizer {
            rule,
            groups,
            state,
            scaler: None,
            ranks: None,
            reducer: None,
            synced: false,
        }
    }

    /// Trains data-parallel over the ranks of `par`, as PyTorch's DistributedDataParallel
    /// does: every parameter's gradient is replaced by its mean over the ranks, during the
    /// backward of [`Optimizer::backward`] by DDP's own engine (c10d's `Reducer`, the
    /// default [`crate::parallel::GradSync`]), or else at the start of [`Optimizer::step`]
    /// ([`Parallel::average_grads`], in size-capped buckets), taking the parameters in the order
    /// of the groups and of their parameters, which every rank builds alike. A training step
    /// then needs no collective of its own for the gradients; with one process nothing changes.
    pub fn data_parallel(mut self, par: Arc<Parallel>) -> Optimizer {
        self.ranks = Some(par);
        self
    }

    /// Trains with a dynamic loss scale ([`LossScaler`]): the caller back-propagates
    /// [`Optimizer::scale_loss`] of its loss, and [`Optimizer::step`] unscales the gradients
    /// and skips a step whose gradients are not finite. Its state is saved with the optimizer's.
    pub fn with_loss_scaler(mut self, scaler: LossScaler) -> Optimizer {
        self.scaler = Some(scaler);
        self
    }

    /// The loss scaler, if any.
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// `loss` times the current loss scale (the loss itself without a scaler).
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        match &self.scaler {
            Some(s) => loss * s.scale,
            None => loss.shallow_clone(),
        }
    }

    /// The backward pass of a training step's `loss`: scaled by the loss scaler, if any
    /// ([`Optimizer::scale_loss`]); data-parallel, with the gradients averaged over the ranks
    /// while it runs ([`Optimizer::data_parallel`]). An autograd error is an error, not a
    /// panic. Every rank must call it alike; [`Optimizer::step`] follows.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let scaled = self.scale_loss(loss);
        if let Some(par) = self.ranks.as_ref().filter(|p| p.world() > 1) {
            if self.reducer.is_none() {
                self.reducer = par.reducer(&self.params())?;
            }
            if let Some(r) = self.reducer.as_mut() {
                r.prepare(&[&scaled])
                    .map_err(|e| Error::msg(format!("data-parallel: DDP's Reducer: {}", e.0)))?;
                self.synced = true;
            }
        }
        scaled
            .f_backward()
            .map_err(|e| Error::msg(format!("the backward pass failed: {e}")))
    }

    /// Every parameter, in the order of the groups and of their parameters.
    fn params(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, p)| p.shallow_clone()))
            .collect()
    }

    /// One group: every trainable variable of a VarStore, named as in the store.
    pub fn for_vars(rule: Rule, vs: &tch::nn::VarStore, weight_decay: f64) -> Optimizer {
        let mut params = crate::nn::vars_by_name(vs);
        params.retain(|(_, t)| t.requires_grad());
        Optimizer::new(
            rule,
            vec![Group {
                params,
                lr_mult: 1.0,
                weight_decay,
            }],
        )
    }

    /// Clears the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for (_, p) in &mut g.params {
                p.zero_grad();
            }
        }
    }

    /// Applies one update with base learning rate `lr`; parameters without a gradient are skipped.
    /// Data-parallel ([`Optimizer::data_parallel`]), the gradients are first averaged over the
    /// ranks where [`Optimizer::backward`] did not already, which fails only when another rank
    /// has stopped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let synced = std::mem::take(&mut self.synced);
        if let Some(par) = self.ranks.as_ref().filter(|p| p.world() > 1) {
            if !synced {
                par.average_grads(&self.params())?;
            }
        }
        if let Some(sc) = self.scaler.as_mut() {
            let grads: Vec<Tensor> = self
                .groups
                .iter()
                .flat_map(|g| g.params.iter().map(|(_, p)| p.grad()))
                .filter(|g| g.defined())
                .collect();
            if !sc.unscale(&grads) {
                tracing::info!(
                    "loss scale: non-finite gradients, step skipped; scale now {}",
                    sc.scale
                );
                return Ok(());
            }
        }
        let rule = self.rule;
        tch::no_grad(|| {
            for (g, states) in self.groups.iter_mut().zip(&mut self.state) {
                let lr = lr * g.lr_mult;
                let wd = g.weight_decay;
                for ((_, p), st) in g.params.iter_mut().zip(states.iter_mut()) {
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    st.step += 1;
                    match rule {
                        Rule::Sgd {
                            momentum,
                            dampening,
                            nesterov,
                        } => {
                            let mut d = if wd != 0.0 { &grad + &*p * wd } else { grad };
                            if momentum != 0.0 {
                                let buf = match st.m.take() {
                                    None => d.detach().copy(),
                                    Some(mut b) => {
                                        let _ = b
                                            .g_mul_scalar_(momentum)
                                            .g_add_(&(&d * (1.0 - dampening)));
                                        b
                                    }
                                };
                                d = if nesterov {
                                    d + &buf * momentum
                                } else {
                                    buf.shallow_clone()
                                };
                                st.m = Some(buf);
                            }
                            let _ = p.g_add_(&(d * -lr));
                        }
                        Rule::Adam {
                            beta1,
                            beta2,
                            eps,
                            decoupled,
                        } => {
                            let mut grad = grad;
                            if wd != 0.0 {
                                if decoupled {
                                    let _ = p.g_mul_scalar_(1.0 - lr * wd);
                                } else {
                                    grad = &grad + &*p * wd;
                                }
                            }
                            let m = st.m.get_or_insert_with(|| p.zeros_like());
                            let _ = m.lerp_(&grad, 1.0 - beta1);
                            let v = st.v.get_or_insert_with(|| p.zeros_like());
                            let _ = v
                                .g_mul_scalar_(beta2)
                                .addcmul_(&grad, &(&grad * (1.0 - beta2)));
                            let t = st.step as i32;
                            let bc1 = 1.0 - beta1.powi(t);
                            let bc2 = 1.0 - beta2.powi(t);
                            let denom = (v.sqrt() / bc2.sqrt()) + eps;
                            let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Writes the optimizer state into a checkpoint under `prefix`.
    pub fn save(&self, ck: &mut Checkpoint, prefix: &str) {
        if let Some(sc) = &self.scaler {
            ck.set(format!("{prefix}.loss_scale"), sc.scale);
            ck.set(format!("{prefix}.loss_scale_good"), sc.good);
            ck.set(format!("{prefix}.loss_scale_skipped"), sc.skipped);
        }
        for (g, states) in self.groups.iter().zip(&self.state) {
            for ((name, _), st) in g.params.iter().zip(states) {
                ck.set(format!("{prefix}.{name}.step"), st.step);
                if let Some(m) = &st.m {
                    ck.put(format!("{prefix}.{name}.m"), m);
                }
                if let Some(v) = &st.v {
                    ck.put(format!("{prefix}.{name}.v"), v);
                }
            }
        }
    }

    /// Checks, copying nothing, that a checkpoint holds this optimizer's state under `prefix`:
    /// a step count per parameter, and moments (where present) of the parameter's kind and shape.
    pub fn check(&self, ck: &Checkpoint, prefix: &str) -> Result<()> {
        if self.scaler.is_some() {
            ck.get::<f64>(&format!("{prefix}.loss_scale"))?;
            ck.get::<u64>(&format!("{prefix}.loss_scale_good"))?;
        }
        for g in &self.groups {
            for (name, p) in &g.params {
                ck.get::<u64>(&format!("{prefix}.{name}.step"))?;
                for k in ["m", "v"] {
                    let key = format!("{prefix}.{name}.{k}");
                    if ck.tensors.contains_key(&key) {
                        ck.tensor_like(&key, p)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores the state written by [`Optimizer::save`] (all checked before any is copied).
    pub fn load(&mut self, ck: &Checkpoint, prefix: &str) -> Result<()> {
        self.check(ck, prefix)?;
        if let Some(sc) = self.scaler.as_mut() {
            sc.scale = ck.get(&format!("{prefix}.loss_scale"))?;
            sc.good = ck.get(&format!("{prefix}.loss_scale_good"))?;
            sc.skipped = ck.get(&format!("{prefix}.loss_scale_skipped")).unwrap_or(0);
        }
        for (g, states) in self.groups.iter().zip(&mut self.state) {
            for ((name, p), st) in g.params.iter().zip(states.iter_mut()) {
                st.step = ck.get(&format!("{prefix}.{name}.step"))?;
                let load = |k: &str| -> Option<Tensor> {
                    ck.tensors
                        .get(&format!("{prefix}.{name}.{k}"))
                        .map(|t| t.to_device(p.device()).copy())
                };
                st.m = load("m");
                st.v = load("v");
            }
        }
        Ok(())
    }
}

/// A learning-rate schedule: a stateless function of the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Period in steps.
        every: u64,
        /// Factor.
        gamma: f64,
    },
    /// Multiply by `gamma` at each milestone.
    MultiStep {
        /// Steps at which the rate drops.
        milestones: Vec<u64>,
        /// Factor.
        gamma: f64,
    },
    /// Cosine from the base rate to `min` over `total` steps.
    Cosine {
        /// Length.
        total: u64,
        /// Final rate.
        #[serde(default)]
        min: f64,
    },
    /// Linear from the base rate to 0 over `total` steps.
    Linear {
        /// Length.
        total: u64,
    },
}

impl Schedule {
    /// The rate at `step` (0-based) for base rate `base`, after a linear warm-up from 0 over
    /// `warmup` steps: while `step < warmup` the scheduled rate is multiplied by
    /// `step / warmup`, so step 0 runs at rate 0 (as JEM's code does; Adam's moments still move).
    pub fn lr(&self, base: f64, step: u64, warmup: u64) -> f64 {
        let r = match self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((step / (*every).max(1)) as i32),
            Schedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| step >= m).count() as i32)
            }
            Schedule::Cosine { total, min } => {
                let t = (step as f64 / (*total).max(1) as f64).min(1.0);
                min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Linear { total } => {
                base * (1.0 - (step as f64 / (*total).max(1) as f64).min(1.0))
            }
        };
        if step < warmup {
            r * step as f64 / warmup as f64
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_by_hand() {
        let s = Schedule::MultiStep {
            milestones: vec![10, 20],
            gamma: 0.1,
        };
        assert_eq!(s.lr(1.0, 9, 0), 1.0);
        assert!((s.lr(1.0, 10, 0) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 25, 0) - 0.01).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 0, 4), 0.0);
        assert!((s.lr(1.0, 1, 4) - 0.25).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 4, 4), 1.0);
        let c = Schedule::Cosine {
            total: 100,
            min: 0.0,
        };
        assert!((c.lr(2.0, 50, 0) - 1.0).abs() < 1e-12);
        assert!(c.lr(2.0, 100, 0).abs() < 1e-12);
        assert!(
            (Schedule::Step {
                every: 3,
                gamma: 0.5
            }
            .lr(1.0, 7, 0)
                - 0.25)
                .abs()
                < 1e-12
        );
        assert!((Schedule::Linear { total: 4 }.lr(1.0, 1, 0) - 0.75).abs() < 1e-12);
    }

    fn quad_problem(rule: Rule, wd: f64) -> Vec<f32> {
        // Minimise Σ (a ⊙ p − b)² from p0, 5 steps.
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let a = Tensor::from_slice(&[1.0f32, 3.0, -0.5]);
        let b = Tensor::from_slice(&[0.2f32, 1.0, 2.0]);
        let mut opt = Optimizer::new(
            rule,
            vec![Group {
                params: vec![("p".into(), p.shallow_clone())],
                lr_mult: 1.0,
                weight_decay: wd,
            }],
        );
        for _ in 0..5 {
            opt.zero_grad();
            let l = (&a * &p - &b).square().sum(tch::Kind::Float);
            l.backward();
            opt.step(0.1).unwrap();
        }
        Vec::<f32>::try_from(&p.detach()).unwrap()
    }

    #[test]
    fn sgd_momentum_matches_hand_rollout() {
        // Hand roll-out of torch.optim.SGD(lr=0.1, momentum=0.9) on the same problem.
        let a = [1.0f64, 3.0, -0.5];
        let b = [0.2f64, 1.0, 2.0];
        let mut p = [1.0f64, -2.0, 0.5];
        let mut buf = [0.0f64; 3];
        for t in 0..5 {
            for i in 0..3 {
                let g = 2.0 * a[i] * (a[i] * p[i] - b[i]);
                buf[i] = if t == 0 { g } else { 0.9 * buf[i] + g };
                p[i] -= 0.1 * buf[i];
            }
        }
        let got = quad_problem(
            Rule::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            },
            0.0,
        );
        for i in 0..3 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-4, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn adam_matches_hand_rollout() {
        let a = [1.0f64, 3.0, -0.5];
        let b = [0.2f64, 1.0, 2.0];
        let mut p = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=5 {
            for i in 0..3 {
                let g = 2.0 * a[i] * (a[i] * p[i] - b[i]) + 0.01 * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = quad_problem(Rule::adam(), 0.01);
        for i in 0..3 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-5, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            Rule::adam(),
            vec![Group {
                params: vec![("w".into(), p.shallow_clone())],
                lr_mult: 1.0,
                weight_decay: 0.0,
            }],
        );
        opt.zero_grad();
        p.square().sum(tch::Kind::Float).backward();
        opt.step(0.1).unwrap();
        let mut ck = Checkpoint::new();
        opt.save(&mut ck, "opt");
        let q = p.detach().copy().set_requires_grad(true);
        let mut other = Optimizer::new(
            Rule::adam(),
            vec![Group {
                params: vec![("w".into(), q.shallow_clone())],
                lr_mult: 1.0,
                weight_decay: 0.0,
            }],
        );
        other.load(&ck, "opt").unwrap();
        for (o, t) in [(&mut opt, &p), (&mut other, &q)] {
            o.zero_grad();
            t.square().sum(tch::Kind::Float).backward();
            o.step(0.1).unwrap();
        }
        assert_eq!(
            Vec::<f32>::try_from(&p.detach()).unwrap(),
            Vec::<f32>::try_from(&q.detach()).unwrap()
        );
    }
}

#[cfg(test)]
mod loss_scaler_tests {
    use super::*;
    use tch::{Device, Kind};

    fn sgd(p: &Tensor, scaler: LossScaler) -> Optimizer {
        Optimizer::new(
            Rule::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
            },
            vec![Group {
                params: vec![("p".into(), p.shallow_clone())],
                lr_mult: 1.0,
                weight_decay: 0.0,
            }],
        )
        .with_loss_scaler(scaler)
    }

    #[test]
    fn a_non_finite_step_is_skipped_and_the_scale_backs_off_then_grows() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut opt = sgd(
            &p,
            LossScaler {
                scale: 1024.0,
                interval: 2,
                ..LossScaler::default()
            },
        );
        // An overflowing loss: the step is skipped, the weights kept, the scale halved.
        let x = Tensor::from_slice(&[f32::INFINITY, 1.0]);
        opt.zero_grad();
        opt.scale_loss(&(&p * &x).sum(Kind::Float)).backward();
        opt.step(0.1).unwrap();
        assert_eq!(Vec::<f32>::try_from(&p.detach()).unwrap(), [1.0, 2.0]);
        let sc = *opt.loss_scaler().unwrap();
        assert_eq!((sc.scale, sc.good, sc.skipped), (512.0, 0, 1));
        // Finite steps follow the unscaled gradient (x), and after 2 of them the scale doubles.
        let x = Tensor::from_slice(&[0.5f32, -1.0]);
        for _ in 0..2 {
            opt.zero_grad();
            opt.scale_loss(&(&p * &x).sum(Kind::Float)).backward();
            opt.step(0.1).unwrap();
        }
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] - 2.2).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(opt.loss_scaler().unwrap().scale, 1024.0);
        // Its state goes with the optimizer's into a checkpoint and back.
        let mut ck = Checkpoint::new();
        opt.save(&mut ck, "o");
        let mut other = sgd(&p, LossScaler::default());
        other.load(&ck, "o").unwrap();
        let (a, b) = (other.loss_scaler().unwrap(), opt.loss_scaler().unwrap());
        assert_eq!((a.scale, a.good, a.skipped), (b.scale, b.good, b.skipped));
        // A checkpoint without a scale does not fit an optimizer that keeps one.
        let mut plain = Checkpoint::new();
        Optimizer::for_vars(Rule::adam(), &tch::nn::VarStore::new(Device::Cpu), 0.0)
            .save(&mut plain, "o");
        assert!(other.check(&plain, "o").is_err());
    }
}
