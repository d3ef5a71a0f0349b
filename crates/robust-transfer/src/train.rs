//! Source training (standard, PGD adversarial, or the Gaussian-noise control) and robust
//! evaluation.

use crate::config::{Arm, AttackConfig, EvalConfig};
use crate::data::Images;
use crate::model::Net;
use reprise_core::amp::Amp;
use reprise_core::attack::{Norm, Pgd};
use reprise_core::optim::Optimizer;
use reprise_core::parallel::Parallel;
use reprise_core::Result;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// The training inputs of one step for `arm` at radius `eps` (the ramped ε): the clean batch,
/// its PGD (or FGSM) examples built with the model in eval mode, or the batch plus noise of L2
/// norm exactly `eps` per example, clamped to `[0, 1]`.
pub fn training_inputs(
    net: &Net,
    arm: Arm,
    eps: f64,
    a: &AttackConfig,
    x: &Tensor,
    y: &Tensor,
) -> Tensor {
    training_inputs_of_rows(net, arm, eps, a, (x, y), (&Parallel::single(), x.size()[0]))
}

/// [`training_inputs`] of this rank's rows `x` of a data-parallel batch of `n`: the random
/// starts are this rank's rows of those drawn for the whole batch ([`Parallel::draw_rows`]);
/// the attack itself is per example.
pub fn training_inputs_of_rows(
    net: &Net,
    arm: Arm,
    eps: f64,
    a: &AttackConfig,
    (x, y): (&Tensor, &Tensor),
    (par, n): (&Parallel, i64),
) -> Tensor {
    let draw = |pgd: &Pgd, x0: &Tensor| {
        par.draw_rows(x0, n, |t: &Tensor| pgd.draw(t))
            .expect("the rows of a batch split among the ranks")
    };
    let attack = |pgd: Pgd| {
        let f = |z: &Tensor| net.forward_t(z, false);
        pgd.run_with(&f, x, y, &|x0: &Tensor| draw(&pgd, x0))
    };
    match arm {
        Arm::Std => x.shallow_clone(),
        Arm::Adv(_, _) if a.fgsm => attack(Pgd::fgsm_rs(eps, a.step_ratio * eps)),
        Arm::Adv(norm, _) => attack(Pgd {
            norm,
            eps,
            step: a.step_ratio * eps,
            steps: a.steps,
            random_start: a.random_start,
            use_best: a.use_best,
            targeted: false,
        }),
        Arm::Noise(_) => tch::no_grad(|| {
            let pgd = Pgd {
                norm: Norm::L2,
                eps,
                step: 0.0,
                steps: 0,
                random_start: true,
                use_best: false,
                targeted: false,
            };
            pgd.random_perturb_from(x, &draw(&pgd, x))
        }),
    }
}

/// SGD with momentum (no dampening, not Nesterov) over `params`, weight decay on them only,
/// as the robustness library (`train.py`, `make_optimizer_and_schedule`) and the transfer code
/// build it.
pub fn sgd(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64) -> Optimizer {
    Optimizer::new(
        reprise_core::optim::Rule::Sgd {
            momentum,
            dampening: 0.0,
            nesterov: false,
        },
        vec![reprise_core::optim::Group {
            params,
            lr_mult: 1.0,
            weight_decay,
        }],
    )
}

/// One training step on the inputs `training_inputs` builds; returns the loss.
///
/// Data-parallel (`par` of several ranks): `(x, y)` is the global batch; this rank attacks and
/// trains on its rows, `opt` (made [`Optimizer::data_parallel`]) averages the gradients over
/// the ranks before its step, and the loss returned is the ranks' mean. BatchNorm statistics
/// stay per rank, as under DDP.
pub fn train_step(
    net: &Net,
    opt: &mut Optimizer,
    (arm, eps, a): (Arm, f64, &AttackConfig),
    (x, y): (&Tensor, &Tensor),
    (lr, amp): (f64, Amp),
    par: &Parallel,
) -> Result<f64> {
    let shard = par.shard_batch([x, y])?;
    train_step_rows(net, opt, (arm, eps, a), &shard, (lr, amp), par)
}

/// [`train_step`] on this rank's rows of the global batch, loaded as its share
/// ([`Parallel::local_shard`]); the whole batch in one process.
pub fn train_step_rows(
    net: &Net,
    opt: &mut Optimizer,
    (arm, eps, a): (Arm, f64, &AttackConfig),
    shard: &reprise_core::parallel::Shard<2>,
    (lr, amp): (f64, Amp),
    par: &Parallel,
) -> Result<f64> {
    let [x, y] = &shard.rows;
    let xin = training_inputs_of_rows(net, arm, eps, a, (x, y), (par, shard.n));
    let dev = net.vs.device();
    // An epoch's last, smaller batch may not split evenly among the ranks (`weigh`).
    let loss = shard.weigh(
        amp.forward(dev, || net.forward_t(&xin, true))
            .cross_entropy_for_logits(y),
    );
    opt.zero_grad();
    // Scaled under `amp: f16` (the step unscales, or skips an overflow).
    opt.backward(&loss)?;
    opt.step(lr)?;
    Ok(par.mean(&[loss.double_value(&[])])?[0])
}

/// Accuracy (%) of `net` in eval mode on `ds`, clean or under `attack`; predictions are argmax
/// with the first maximal label winning.
pub fn accuracy(net: &Net, ds: &Images, attack: Option<&Pgd>, batch: usize) -> Result<f64> {
    let n = ds.len() as i64;
    let dev = net.vs.device();
    let mut correct = 0i64;
    let mut i = 0;
    while i < n {
        let m = (batch as i64).min(n - i);
        let (x, y) = ds.batch(&(i..i + m).collect::<Vec<i64>>())?;
        let (x, y) = (x.to_device(dev), y.to_device(dev));
        let x = match attack {
            Some(p) => p.run(&|z: &Tensor| net.forward_t(z, false), &x, &y),
            None => x,
        };
        correct += tch::no_grad(|| {
            net.forward_t(&x, false)
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[])
        });
        i += m;
    }
    Ok(100.0 * correct as f64 / n.max(1) as f64)
}

/// The (norm, ε) points at which the source is attacked: the whole grid for `std`; the arm's
/// own ε and its norm's reference ε for an adversarial arm; the L2 reference for the noise
/// control.
pub(crate) fn eval_points(arm: Arm, e: &EvalConfig) -> Vec<(Norm, f64)> {
    let mut v: Vec<(Norm, f64)> = match arm {
        Arm::Std => e
            .grid_l2
            .iter()
            .map(|&x| (Norm::L2, x))
            .chain(e.grid_linf.iter().map(|&x| (Norm::Linf, x)))
            .collect(),
        Arm::Adv(norm, eps) => {
            let r = match norm {
                Norm::L2 => e.ref_l2,
                Norm::Linf => e.ref_linf,
            };
            std::iter::once((norm, eps))
                .chain(r.map(|r| (norm, r)))
                .collect()
        }
        Arm::Noise(eps) => std::iter::once((Norm::L2, eps))
            .chain(e.ref_l2.map(|r| (Norm::L2, r)))
            .collect(),
    };
    if let Some(r) = e.ref_l2.filter(|_| arm == Arm::Std) {
        v.push((Norm::L2, r));
    }
    if let Some(r) = e.ref_linf.filter(|_| arm == Arm::Std) {
        v.push((Norm::Linf, r));
    }
    v.sort_by(|a, b| {
        (a.0 as u8, a.1)
            .partial_cmp(&(b.0 as u8, b.1))
            .expect("finite")
    });
    v.dedup();
    v
}

/// The key of a robust accuracy in summaries: `l2-1` or `linf-0.1`.
pub(crate) fn point_key(norm: Norm, eps: f64) -> String {
    match norm {
        Norm::L2 => format!("l2-{eps}"),
        Norm::Linf => format!("linf-{eps}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InitKind, ModelConfig, NormSpec};
    use tch::Device;

    fn net() -> Net {
        Net::new(
            &ModelConfig::SmallCnn { width: 1 },
            &NormSpec {
                mean: vec![0.1307],
                std: vec![0.3081],
            },
            5,
            InitKind::HeNormal,
            Device::Cpu,
            0,
        )
    }

    fn attack() -> AttackConfig {
        AttackConfig {
            steps: 3,
            step_ratio: 2.0 / 3.0,
            random_start: false,
            use_best: true,
            fgsm: false,
        }
    }

    #[test]
    fn an_autograd_error_in_a_step_is_an_error_not_a_panic() {
        let n = net();
        let mut opt = Optimizer::for_vars(reprise_core::optim::Rule::adam(), &n.vs, 0.0);
        for (_, t) in n.params(true) {
            let _ = t.set_requires_grad(false);
        }
        let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1]);
        let e = train_step(
            &n,
            &mut opt,
            (Arm::Std, 0.0, &attack()),
            (&x, &y),
            (0.1, Amp::None),
            &Parallel::single(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("backward pass failed"), "{e}");
    }

    #[test]
    fn arms_perturb_within_their_budget() {
        let n = net();
        tch::manual_seed(0);
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 2]);
        let norms = |z: &Tensor| {
            let d = (z - &x).reshape([8, -1]);
            (
                d.norm_scalaropt_dim(2, [1].as_slice(), false),
                d.abs().max().double_value(&[]),
            )
        };
        assert!(training_inputs(&n, Arm::Std, 0.0, &attack(), &x, &y).equal(&x));
        let (l2, _) = norms(&training_inputs(
            &n,
            Arm::Adv(Norm::L2, 1.0),
            1.0,
            &attack(),
            &x,
            &y,
        ));
        assert!(l2.max().double_value(&[]) <= 1.0 + 1e-4);
        assert!(l2.max().double_value(&[]) > 0.1, "the attack moves");
        let (_, linf) = norms(&training_inputs(
            &n,
            Arm::Adv(Norm::Linf, 0.1),
            0.1,
            &attack(),
            &x,
            &y,
        ));
        assert!(linf <= 0.1 + 1e-6 && linf > 0.05, "{linf}");
        // Noise: exactly ε before clamping; interior inputs keep nearly all of it.
        let mid = Tensor::full([8, 1, 28, 28], 0.5, (Kind::Float, Device::Cpu));
        let z = training_inputs(&n, Arm::Noise(0.5), 0.5, &attack(), &mid, &y);
        let d = (z - &mid)
            .reshape([8, -1])
            .norm_scalaropt_dim(2, [1].as_slice(), false);
        assert!((d - 0.5).abs().max().double_value(&[]) < 1e-3);
        // No parameter gradient is left by the attack.
        for (_, p) in n.vs.variables() {
            assert!(
                !p.grad().defined() || p.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0
            );
        }
    }

    #[test]
    fn adversarial_accuracy_is_at_most_clean_accuracy() {
        let n = net();
        let ds = Images::Memory(reprise_core::data::Dataset {
            x: Tensor::rand([40, 1, 28, 28], (Kind::Float, Device::Cpu)),
            y: Tensor::zeros([40], (Kind::Int64, Device::Cpu)),
            classes: 5,
        });
        let clean = accuracy(&n, &ds, None, 16).unwrap();
        let adv = accuracy(&n, &ds, Some(&Pgd::eval(Norm::L2, 2.0, 10)), 16).unwrap();
        assert!(adv <= clean, "{adv} > {clean}");
    }

    #[test]
    fn std_is_attacked_on_the_grid_and_arms_at_their_own_and_the_reference_eps() {
        let e = EvalConfig {
            pgd_steps: 10,
            grid_l2: vec![0.5, 1.0],
            grid_linf: vec![0.1],
            ref_l2: Some(1.0),
            ref_linf: Some(0.1),
            batch: 10,
            source: true,
        };
        assert_eq!(eval_points(Arm::Std, &e).len(), 3);
        assert_eq!(
            eval_points(Arm::Adv(Norm::L2, 0.25), &e),
            vec![(Norm::L2, 0.25), (Norm::L2, 1.0)]
        );
        assert_eq!(
            eval_points(Arm::Adv(Norm::Linf, 0.1), &e),
            vec![(Norm::Linf, 0.1)]
        );
        assert_eq!(point_key(Norm::Linf, 0.1), "linf-0.1");
    }
}
