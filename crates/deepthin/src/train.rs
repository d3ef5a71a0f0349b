//! The stages: end-to-end training (CE or distillation), layerwise imitation (progressive or
//! joint; frozen, soft-frozen or trained lower blocks; the student's prefix or the teacher's as
//! input), FitNets' hint, and the merge.

use crate::config::{
    HintStage, ImitateStage, ImitationSchedule, Input, Loss, Lower, MInit, Optim, Sched, TrainStage,
};
use crate::model::{merge, merge_error, Affine, Glue, Mlp, Net, Widened};
use reprise_core::data::batch_indices;
use reprise_core::optim::{Group, Optimizer, Rule, Schedule};
use reprise_core::parallel::{Parallel, Shard};
use reprise_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// The data a run trains on, with the teacher's outputs cached (the teacher is frozen and the
/// data is not augmented, so they are exact targets).
#[derive(Debug)]
pub struct Data {
    /// Training inputs, N × D.
    pub x: Tensor,
    /// Training labels.
    pub y: Tensor,
    /// Test inputs.
    pub x_test: Tensor,
    /// Test labels.
    pub y_test: Tensor,
    /// The teacher's block outputs on the training inputs.
    pub feats: Vec<Tensor>,
    /// What imitation matches: the teacher's [`Net::feature`] of each block output (the same
    /// tensors as `feats` where the feature is the identity).
    pub targets: Vec<Tensor>,
    /// The teacher's block outputs on the test inputs.
    pub feats_test: Vec<Tensor>,
    /// The imitation targets on the test inputs.
    pub targets_test: Vec<Tensor>,
    /// The teacher's logits on the training inputs.
    pub logits: Tensor,
    /// The data order seed.
    pub seed: u64,
    /// Batch size.
    pub batch: usize,
    /// The ranks training together: each computes on its rows of every batch and the
    /// optimizers average their gradients (one process by default).
    pub par: Arc<Parallel>,
}

impl Data {
    fn n(&self) -> usize {
        self.y.size()[0] as usize
    }

    fn per_epoch(&self) -> u64 {
        self.n().div_ceil(self.batch) as u64
    }

    fn steps(&self, epochs: f64) -> u64 {
        ((epochs * self.per_epoch() as f64).round() as u64).max(1)
    }

    /// The index batches of a stage, epoch by epoch, the same for every arm of a seed: this
    /// rank's rows of each ([`Parallel::shard_batch`]; the whole batch in one process).
    fn batches(&self, steps: u64) -> impl Iterator<Item = Result<Shard<1>>> + '_ {
        let per = self.per_epoch();
        (0..steps).map(move |s| {
            let all = batch_indices(self.n(), self.batch, self.seed, s / per, true, false);
            self.par
                .shard_batch([&Tensor::from_slice(&all[(s % per) as usize])])
        })
    }

    /// Refuses, before any training, a batch size whose epochs end in a batch too small to
    /// split among the ranks.
    pub(crate) fn check_split(&self) -> Result<()> {
        let last = self.n() - (self.per_epoch() as usize - 1) * self.batch;
        self.par
            .rows(last.min(self.batch) as i64)
            .map(|_| ())
            .map_err(|e| {
                Error::Data(format!(
                    "{e} (the last batch of an epoch of {} in batches of {}); choose another \
                 `deepthin.batch`",
                    self.n(),
                    self.batch
                ))
            })
    }

    /// A stage's optimizer over parameter groups, averaging the ranks' gradients before each
    /// step; the parameters first take rank 0's values (as DDP's broadcast at its start does;
    /// every rank builds them from the same seeds, so nothing moves unless a rank computed
    /// otherwise).
    fn optimizer(&self, o: Optim, groups: Vec<(Vec<Tensor>, f64)>) -> Result<Optimizer> {
        let all: Vec<Tensor> = groups
            .iter()
            .flat_map(|(p, _)| p.iter().map(Tensor::shallow_clone))
            .collect();
        if self.par.world() > 1 {
            tch::no_grad(|| self.par.broadcast(&all))?;
        }
        Ok(stage_optimizer(o, groups).data_parallel(self.par.clone()))
    }

    /// The ranks' mean of a step's loss (the loss itself in one process): what is logged and
    /// checked, the same on every rank, so that all stop together on a divergence.
    fn mean_loss(&self, l: f64) -> Result<f64> {
        Ok(self.par.mean(&[l])?[0])
    }
}

/// Logits and labels as `M × C` and `M` (per-position outputs flattened).
fn flat(logits: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let c = *logits.size().last().expect("logits have a class dimension");
    (logits.reshape([-1, c]), y.reshape([-1]))
}

/// Top-1 accuracy (%) of logits (argmax, ties to the lowest class); per position for
/// sequence outputs.
pub fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    let (logits, y) = flat(logits, y);
    100.0
        * logits
            .argmax(1, false)
            .eq_tensor(&y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
}

/// For sequence outputs (`N × L × C` logits, `N × L` labels): the percentage of sequences
/// whose every position is right. `None` for one label per example.
pub(crate) fn sequence_accuracy(logits: &Tensor, y: &Tensor) -> Option<f64> {
    (y.dim() == 2).then(|| {
        100.0
            * logits
                .argmax(-1, false)
                .eq_tensor(y)
                .all_dim(1, false)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
    })
}

/// Test sequence accuracy of a network (see [`sequence_accuracy`]).
pub(crate) fn test_sequence_accuracy(net: &dyn Net, d: &Data) -> Option<f64> {
    tch::no_grad(|| sequence_accuracy(&net.forward(&d.x_test), &d.y_test))
}

/// Test accuracy of a network.
pub(crate) fn test_accuracy(net: &dyn Net, d: &Data) -> f64 {
    tch::no_grad(|| accuracy(&net.forward(&d.x_test), &d.y_test))
}

fn adam(groups: Vec<(Vec<Tensor>, f64)>) -> Optimizer {
    stage_optimizer(Optim::Adam, groups)
}

/// A stage's optimizer over parameter groups `(parameters, learning-rate multiplier)`; empty
/// groups are dropped.
pub(crate) fn stage_optimizer(o: Optim, groups: Vec<(Vec<Tensor>, f64)>) -> Optimizer {
    let (rule, weight_decay) = match o {
        Optim::Adam => (Rule::adam(), 0.0),
        Optim::Sgd {
            momentum,
            weight_decay,
            nesterov,
        } => (
            Rule::Sgd {
                momentum,
                dampening: 0.0,
                nesterov,
            },
            weight_decay,
        ),
    };
    Optimizer::new(
        rule,
        groups
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .enumerate()
            .map(|(g, (params, lr_mult))| Group {
                params: params
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{g}.{i}"), t))
                    .collect(),
                lr_mult,
                weight_decay,
            })
            .collect(),
    )
}

/// A stage's schedule over `steps` steps of `per_epoch` per epoch: the step schedule and the
/// warm-up length in steps.
pub(crate) fn stage_schedule(s: &Sched, steps: u64, per_epoch: u64) -> (Schedule, u64) {
    let at = |e: f64| (e * per_epoch as f64).round() as u64;
    match s {
        Sched::Cosine => (
            Schedule::Cosine {
                total: steps,
                min: 0.0,
            },
            0,
        ),
        Sched::Step {
            milestones,
            gamma,
            warmup_epochs,
        } => (
            Schedule::MultiStep {
                milestones: milestones.iter().map(|&e| at(e)).collect(),
                gamma: *gamma,
            },
            at(*warmup_epochs),
        ),
    }
}

fn check(loss: f64, what: &str, step: u64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged {
            step,
            why: format!("{what} loss {loss}"),
        })
    }
}

/// KL(p_teacher ‖ p_student) at temperature t, times t², averaged over the batch (and the
/// positions of sequence outputs).
pub(crate) fn kd_loss(student: &Tensor, teacher: &Tensor, t: f64) -> Tensor {
    let c = *student
        .size()
        .last()
        .expect("logits have a class dimension");
    // In float32 (a no-op on float32 logits; under autocast the logits may be half).
    let ls = (student.to_kind(Kind::Float).reshape([-1, c]) / t).log_softmax(1, Kind::Float);
    let lt = (teacher.to_kind(Kind::Float).reshape([-1, c]) / t).log_softmax(1, Kind::Float);
    (lt.exp() * (&lt - ls))
        .sum_dim_intlist([1].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
        * (t * t)
}

/// An error of a stage's step, naming the stage and the step.
fn at_step(what: &str, step: u64) -> impl Fn(Error) -> Error + '_ {
    move |e| Error::msg(format!("{what}, step {step}: {e}"))
}

/// The loss of an end-to-end step on a batch: `target` holds the labels (CE) or the teacher's
/// logits (distillation).
fn train_loss(net: &dyn Net, x: &Tensor, target: &Tensor, loss: Loss) -> Tensor {
    let z = net.forward(x);
    match loss {
        Loss::Ce => {
            let (z, y) = flat(&z, target);
            z.cross_entropy_for_logits(&y)
        }
        Loss::Kd { temperature } => kd_loss(&z, target, temperature),
    }
}

/// The loss of block `i` (0-based) of S̄ on its input `inp` against the teacher's block
/// feature `target`: the MSE.
fn imitation_loss(w: &Widened<'_>, i: usize, inp: &Tensor, target: &Tensor) -> Tensor {
    mse(&w.thin.feature(&w.block(i, inp)), target)
}

/// One optimizer step on a batch's `loss`: back-propagates `weigh(loss)` (a data-parallel
/// rank's share, [`Shard::weigh`]) and steps at rate `lr`. Returns the loss.
fn descend(
    opt: &mut Optimizer,
    loss: Tensor,
    weigh: impl FnOnce(Tensor) -> Tensor,
    lr: f64,
) -> Result<f64> {
    opt.zero_grad();
    opt.backward(&weigh(loss.shallow_clone()))?;
    opt.step(lr)?;
    Ok(loss.double_value(&[]))
}

/// One end-to-end step on a batch: `target` holds the labels (CE) or the teacher's logits
/// (distillation). Returns the loss.
pub fn train_step(
    net: &dyn Net,
    opt: &mut Optimizer,
    x: &Tensor,
    target: &Tensor,
    loss: Loss,
    lr: f64,
) -> Result<f64> {
    descend(opt, train_loss(net, x, target, loss), |l| l, lr)
}

/// One imitation step of block `i` (0-based) of S̄ on its input `inp` against the teacher's
/// block feature `target`. Returns the MSE.
pub fn imitation_step(
    w: &Widened<'_>,
    i: usize,
    opt: &mut Optimizer,
    inp: &Tensor,
    target: &Tensor,
    lr: f64,
) -> Result<f64> {
    descend(opt, imitation_loss(w, i, inp, target), |l| l, lr)
}

/// Adam (PyTorch's defaults, no weight decay) over the parameters of block `i` of S̄: the thin
/// block and its two adjacent maps.
pub fn block_optimizer(w: &Widened<'_>, i: usize) -> Optimizer {
    adam(vec![(w.block_params(i), 1.0)])
}

/// Adam over every parameter of a network.
pub fn optimizer(net: &dyn Net) -> Optimizer {
    adam(vec![(net.params(), 1.0)])
}

/// Trains every parameter of `net` with a loss; returns the last epoch's mean loss.
pub fn train(net: &dyn Net, d: &Data, s: &TrainStage) -> Result<f64> {
    let steps = d.steps(s.epochs);
    let mut opt = d.optimizer(s.optimizer, vec![(net.params(), 1.0)])?;
    let (sched, warm) = stage_schedule(&s.lr_schedule, steps, d.per_epoch());
    let (mut sum, mut k) = (0.0, 0);
    for (step, batch) in d.batches(steps).enumerate() {
        let step = step as u64;
        let l = batch
            .and_then(|b| {
                let [idx] = &b.rows;
                let target = match s.loss {
                    Loss::Ce => d.y.index_select(0, idx),
                    Loss::Kd { .. } => d.logits.index_select(0, idx),
                };
                let loss = train_loss(net, &d.x.index_select(0, idx), &target, s.loss);
                descend(&mut opt, loss, |l| b.weigh(l), sched.lr(s.lr, step, warm))
            })
            .and_then(|l| d.mean_loss(l))
            .map_err(at_step("training", step))?;
        check(l, "training", step)?;
        if step + d.per_epoch() >= steps {
            sum += l;
            k += 1;
        }
    }
    Ok(sum / k.max(1) as f64)
}

/// Per-block imitation diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockFit {
    /// Block (1-based).
    pub block: usize,
    /// MSE / mean per-feature variance of the teacher's output, training set.
    #[serde(deserialize_with = "reprise_core::run::nan_if_null")]
    pub nmse_train: f64,
    /// The same on the test set.
    #[serde(deserialize_with = "reprise_core::run::nan_if_null")]
    pub nmse_test: f64,
}

fn mse(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).square().mean(Kind::Float)
}

/// Mean per-feature variance.
fn feature_var(f: &Tensor) -> f64 {
    f.var_dim([0].as_slice(), true, false)
        .mean(Kind::Float)
        .double_value(&[])
}

/// The normalised imitation error of every block of S̄ (each block fed by the student's own
/// prefix, or the teacher's with `Input::Teacher`).
pub(crate) fn block_fits(w: &Widened<'_>, d: &Data, input: Input) -> Vec<BlockFit> {
    tch::no_grad(|| {
        let fits = |x: &Tensor, feats: &[Tensor], targets: &[Tensor]| -> Vec<f64> {
            let mut u = x.shallow_clone();
            (0..feats.len())
                .map(|i| {
                    let inp = match (input, i) {
                        (Input::Teacher, i) if i > 0 => feats[i - 1].shallow_clone(),
                        _ => u.shallow_clone(),
                    };
                    u = w.block(i, &inp);
                    mse(&w.thin.feature(&u), &targets[i]).double_value(&[])
                        / feature_var(&targets[i]).max(1e-12)
                })
                .collect()
        };
        let tr = fits(&d.x, &d.feats, &d.targets);
        let te = fits(&d.x_test, &d.feats_test, &d.targets_test);
        tr.iter()
            .zip(te)
            .enumerate()
            .map(|(i, (a, b))| BlockFit {
                block: i + 1,
                nmse_train: *a,
                nmse_test: b,
            })
            .collect()
    })
}

/// Builds the pairs for an imitation stage.
pub(crate) fn init_glue(thin: &Mlp, d: &Data, m_init: MInit, wide: i64, seed: u64) -> Glue {
    let w = thin.width();
    match m_init {
        MInit::Pca => Glue::pca(&d.feats, w),
        MInit::Random => {
            tch::manual_seed(seed.wrapping_mul(31).wrapping_add(7) as i64);
            Glue::random(thin.depth(), w, wide, d.x.device())
        }
    }
}

/// Layerwise imitation of the teacher's blocks, through `glue` where the family has pairs.
pub fn imitate(
    thin: &dyn Net,
    glue: Option<&Glue>,
    d: &Data,
    s: &ImitateStage,
) -> Result<Vec<BlockFit>> {
    let n = thin.depth();
    let w = Widened { thin, glue };
    let own = |i: usize| w.block_params(i);
    match s.schedule {
        ImitationSchedule::Joint => {
            let steps = d.steps(s.epochs);
            let all: Vec<Tensor> = (0..n).flat_map(own).collect();
            let mut opt = d.optimizer(s.optimizer, vec![(all, 1.0)])?;
            let (sched, warm) = stage_schedule(&s.lr_schedule, steps, d.per_epoch());
            for (step, batch) in d.batches(steps).enumerate() {
                let step = step as u64;
                let l = batch
                    .and_then(|b| {
                        let [idx] = &b.rows;
                        let x = d.x.index_select(0, idx);
                        let mut u = x.shallow_clone();
                        let mut loss = Tensor::zeros([], (Kind::Float, x.device()));
                        for i in 0..n {
                            let target = d.targets[i].index_select(0, idx);
                            let inp = match (s.input, i) {
                                (Input::Teacher, i) if i > 0 => d.feats[i - 1].index_select(0, idx),
                                _ => u,
                            };
                            u = w.block(i, &inp);
                            loss += mse(&thin.feature(&u), &target);
                        }
                        descend(&mut opt, loss, |l| b.weigh(l), sched.lr(s.lr, step, warm))
                    })
                    .and_then(|l| d.mean_loss(l))
                    .map_err(at_step("joint imitation", step))?;
                check(l, "imitation", step)?;
            }
        }
        ImitationSchedule::Progressive => {
            let steps = d.steps(s.epochs);
            // With frozen lower blocks, the input of block i is fixed: computed once.
            let mut cached: Option<Tensor> = None;
            for i in 0..n {
                let lower: Vec<Tensor> = (0..i).flat_map(own).collect();
                let (lower, mult) = match s.lower_blocks {
                    Lower::Frozen => (vec![], 0.0),
                    Lower::LrMult(r) => (lower, r),
                    Lower::Full => (lower, 1.0),
                };
                let frozen = lower.is_empty();
                let mut opt = d.optimizer(s.optimizer, vec![(own(i), 1.0), (lower, mult)])?;
                let (sched, warm) = stage_schedule(&s.lr_schedule, steps, d.per_epoch());
                if frozen && s.input == Input::StudentPrefix {
                    cached = Some(match (i, &cached) {
                        (0, _) => d.x.shallow_clone(),
                        (_, Some(prev)) => tch::no_grad(|| w.block(i - 1, prev)),
                        (_, None) => unreachable!("set at block 0"),
                    });
                }
                let what = format!("imitation of block {}", i + 1);
                for (step, batch) in d.batches(steps).enumerate() {
                    let step = step as u64;
                    let l = batch
                        .and_then(|b| {
                            let [idx] = &b.rows;
                            let inp = match (s.input, i) {
                                (_, 0) => d.x.index_select(0, idx),
                                (Input::Teacher, _) => d.feats[i - 1].index_select(0, idx),
                                (Input::StudentPrefix, _) if frozen => {
                                    cached.as_ref().expect("cached").index_select(0, idx)
                                }
                                (Input::StudentPrefix, _) => {
                                    let mut u = d.x.index_select(0, idx);
                                    for j in 0..i {
                                        u = w.block(j, &u);
                                    }
                                    u
                                }
                            };
                            let target = d.targets[i].index_select(0, idx);
                            let loss = imitation_loss(&w, i, &inp, &target);
                            descend(&mut opt, loss, |l| b.weigh(l), sched.lr(s.lr, step, warm))
                        })
                        .and_then(|l| d.mean_loss(l))
                        .map_err(at_step(&what, step))?;
                    check(l, &what, step)?;
                }
                if !frozen {
                    cached = None;
                }
            }
        }
    }
    Ok(block_fits(&w, d, s.input))
}

/// FitNets' hint: blocks 1..=`s.block` and a random linear regressor (w → W) trained to match
/// the teacher's block output (MSE).
pub fn hint(thin: &dyn Net, d: &Data, s: &HintStage, seed: u64) -> Result<f64> {
    let k = s.block;
    let wide = *d.feats[k - 1].size().last().expect("a feature dimension");
    tch::manual_seed(seed.wrapping_mul(131).wrapping_add(3) as i64);
    let reg = Affine::torch_default(thin.width(), wide, d.x.device());
    let mut params: Vec<Tensor> = (0..k).flat_map(|i| thin.block_params(i)).collect();
    params.extend(reg.params());
    let steps = d.steps(s.epochs);
    let mut opt = d.optimizer(s.optimizer, vec![(params, 1.0)])?;
    let (sched, warm) = stage_schedule(&s.lr_schedule, steps, d.per_epoch());
    let mut last = f64::NAN;
    for (step, batch) in d.batches(steps).enumerate() {
        let step = step as u64;
        last = batch
            .and_then(|b| {
                let [idx] = &b.rows;
                let mut h = d.x.index_select(0, idx);
                for j in 0..k {
                    h = thin.block(j, &h);
                }
                let loss = mse(
                    &thin.feature(&reg.apply(&h)),
                    &d.targets[k - 1].index_select(0, idx),
                );
                descend(&mut opt, loss, |l| b.weigh(l), sched.lr(s.lr, step, warm))
            })
            .and_then(|l| d.mean_loss(l))
            .map_err(at_step("hint", step))?;
        check(last, "hint", step)?;
    }
    Ok(last / tch::no_grad(|| feature_var(&d.targets[k - 1])).max(1e-12))
}

/// The merge, with its check on the test inputs: returns the merged network and the relative
/// merge error.
pub(crate) fn merge_checked(thin: &Mlp, glue: &Glue, wide_head: &Affine, d: &Data) -> (Mlp, f64) {
    let merged = merge(thin, glue, wide_head);
    let err = merge_error(
        &Widened {
            thin,
            glue: Some(glue),
        },
        wide_head,
        &merged,
        &d.x_test,
    );
    (merged, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kd_loss_is_zero_for_equal_logits_and_positive_otherwise() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 5.0]).view([2, 3]);
        assert!(kd_loss(&a, &a, 4.0).double_value(&[]).abs() < 1e-6);
        let b = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 5.0, 0.0, 0.0]).view([2, 3]);
        assert!(kd_loss(&a, &b, 1.0).double_value(&[]) > 0.1);
    }

    #[test]
    fn imitation_fits_a_shared_stream_teacher_block_by_block() {
        use crate::stream::Residual;
        let dev = tch::Device::Cpu;
        let teacher = Residual::new(12, 8, 64, 3, 4, dev, 1);
        let thin = Residual::new(12, 8, 6, 3, 4, dev, 2);
        tch::manual_seed(5);
        let x = Tensor::randn([512, 12], (Kind::Float, dev));
        let x_test = Tensor::randn([128, 12], (Kind::Float, dev));
        let (feats, feats_test, logits) = tch::no_grad(|| {
            (
                teacher.forward_blocks(&x),
                teacher.forward_blocks(&x_test),
                teacher.forward(&x),
            )
        });
        let d = Data {
            y: logits.argmax(1, false),
            y_test: Tensor::zeros([128], (Kind::Int64, dev)),
            x,
            x_test,
            targets: feats.iter().map(Tensor::shallow_clone).collect(),
            targets_test: feats_test.iter().map(Tensor::shallow_clone).collect(),
            feats,
            feats_test,
            logits,
            seed: 0,
            batch: 64,
            par: Arc::new(Parallel::single()),
        };
        let input = Input::StudentPrefix;
        let before = block_fits(
            &Widened {
                thin: &thin,
                glue: None,
            },
            &d,
            input,
        );
        let stage = ImitateStage {
            epochs: 30.0,
            lr: 1e-2,
            optimizer: Optim::Adam,
            lr_schedule: Sched::Cosine,
            m_init: MInit::Pca,
            input,
            lower_blocks: Lower::Frozen,
            schedule: ImitationSchedule::Progressive,
        };
        let after = imitate(&thin, None, &d, &stage).unwrap();
        for (b, a) in before.iter().zip(&after) {
            assert!(
                a.nmse_train < 0.5 * b.nmse_train && a.nmse_test < 0.5 * b.nmse_test,
                "block {}: {b:?} -> {a:?}",
                a.block
            );
        }
    }

    #[test]
    fn an_autograd_error_in_a_step_is_an_error_not_a_panic() {
        let net = Mlp::new(4, 3, 2, 2, tch::Device::Cpu, 0);
        let mut opt = optimizer(&net);
        for t in net.params() {
            let _ = t.set_requires_grad(false);
        }
        let x = Tensor::rand([5, 4], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::zeros([5], (Kind::Int64, tch::Device::Cpu));
        let e = train_step(&net, &mut opt, &x, &y, Loss::Ce, 1e-3).unwrap_err();
        assert!(e.to_string().contains("backward pass failed"), "{e}");
    }
}
