//! Transfer of a source backbone to a target: fixed-feature (a logistic-regression head on
//! features extracted once, or SGD on the head with the frozen backbone run every step) and
//! full-network fine-tuning.

use crate::config::Config;
use crate::config::{
    BnMode, InitKind, ModelConfig, NormSpec, SgdConfig, Solver, Target, Transform,
};
use crate::data;
use crate::data::transform;
use crate::model::Net;
use reprise_core::data::{batch_indices, labels_vec, Dataset, Rng};
use reprise_core::optim::{Group, Optimizer, Rule, Schedule};
use reprise_core::parallel::Parallel;
use reprise_core::plan::Journal;
use reprise_core::run::RunContext;
use reprise_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::nn::{Module, ModuleT};
use tch::{Kind, Tensor};

/// Transfer mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only a new head is trained.
    Fixed,
    /// Every parameter is fine-tuned.
    Full,
}

impl Mode {
    /// `fixed` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Full => "full",
        }
    }
}

/// The outcome of one transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Target name.
    pub target: String,
    /// Mode.
    pub mode: Mode,
    /// Transfer seed.
    pub seed: u64,
    /// Top-1 accuracy (%) on the target's test set.
    pub acc: f64,
    /// Mean per-class accuracy (%).
    pub mpc_acc: f64,
    /// The learning rate used (chosen on validation when there was a grid).
    pub lr: f64,
    /// Training examples.
    pub train: usize,
    /// Test examples.
    pub test: usize,
    /// Seconds.
    pub secs: f64,
}

/// Top-1 and mean per-class accuracy (%) of predictions; argmax ties go to the first label.
pub fn accuracies(logits: &Tensor, y: &Tensor, classes: usize) -> (f64, f64) {
    let pred = labels_vec(&logits.argmax(1, false));
    let y = labels_vec(y);
    let mut hit = vec![0usize; classes];
    let mut count = vec![0usize; classes];
    for (p, t) in pred.iter().zip(&y) {
        count[*t as usize] += 1;
        if p == t {
            hit[*t as usize] += 1;
        }
    }
    let n: usize = count.iter().sum();
    let top1 = 100.0 * hit.iter().sum::<usize>() as f64 / n.max(1) as f64;
    let present: Vec<f64> = (0..classes)
        .filter(|&c| count[c] > 0)
        .map(|c| hit[c] as f64 / count[c] as f64)
        .collect();
    let mpc = 100.0 * present.iter().sum::<f64>() / present.len().max(1) as f64;
    (top1, mpc)
}

/// Runs `f` over `ds` in batches of transformed inputs (eval mode, no gradients) and
/// concatenates its outputs.
fn batched(
    ds: &Dataset,
    ts: &[Transform],
    batch: usize,
    dev: tch::Device,
    f: &dyn Fn(&Tensor) -> Tensor,
) -> Tensor {
    let n = ds.len() as i64;
    let mut out = Vec::new();
    let mut i = 0;
    tch::no_grad(|| {
        while i < n {
            let m = (batch as i64).min(n - i);
            out.push(f(&transform(&ds.x.narrow(0, i, m).to_device(dev), ts)));
            i += m;
        }
    });
    Tensor::cat(&out, 0)
}

/// Fixed-feature transfer with a logistic-regression head (see [`Solver::Logistic`]).
pub(crate) fn fixed_logistic(
    src: &Net,
    t: &Target,
    (train, test): (&Dataset, &Dataset),
    (iterations, lr, wd): (u64, f64, f64),
    batch: usize,
) -> Result<(f64, f64)> {
    let dev = src.vs.device();
    let ftr = batched(train, &t.transform, batch, dev, &|x| {
        src.features_t(x, false)
    });
    let fte = batched(test, t.eval_transform(), batch, dev, &|x| {
        src.features_t(x, false)
    });
    let c = train.classes as i64;
    let d = ftr.size()[1];
    let w = Tensor::zeros([c, d], (Kind::Float, dev)).set_requires_grad(true);
    let b = Tensor::zeros([c], (Kind::Float, dev)).set_requires_grad(true);
    let ytr = train.y.to_device(dev);
    let mut opt = Optimizer::new(
        Rule::adam(),
        vec![Group {
            params: vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            lr_mult: 1.0,
            weight_decay: 0.0,
        }],
    );
    for _ in 0..iterations {
        let logits = ftr.matmul(&w.tr()) + &b;
        let loss = logits.cross_entropy_for_logits(&ytr) + w.square().sum(Kind::Float) * (wd / 2.0);
        opt.zero_grad();
        opt.backward(&loss)?;
        opt.step(lr)?;
    }
    let logits = tch::no_grad(|| fte.matmul(&w.tr()) + &b);
    Ok(accuracies(&logits, &test.y, test.classes))
}

/// How a fine-tuning loop runs: `stop` is polled every step (the ranks agree on it), and the
/// ranks of `par` share each batch (one process: the whole of it).
#[derive(Clone, Copy)]
pub struct Control<'a> {
    /// Whether to stop now.
    pub stop: &'a dyn Fn() -> bool,
    /// The ranks training together.
    pub par: &'a Arc<Parallel>,
}

/// One SGD fine-tuning: of what target, which parameters (`mode`), by which recipe, run how.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    /// The target task.
    pub target: &'a Target,
    /// Every parameter (`Mode::Full`) or the head alone (`Mode::Fixed`).
    pub mode: Mode,
    /// The recipe.
    pub sgd: &'a SgdConfig,
    /// The stop and the ranks.
    pub ctl: Control<'a>,
}

/// What a fine-tuning run needs to know about the networks.
#[derive(Debug, Clone, Copy)]
pub struct Arch<'a> {
    /// The family.
    pub model: &'a ModelConfig,
    /// The target's normaliser.
    pub norm: &'a NormSpec,
}

/// SGD fine-tuning of a copy of `src` with a new head: every parameter (`Mode::Full`) or the
/// head only, with the frozen backbone in `sgd.bn_mode` (`Mode::Fixed`). Returns the trained
/// network. `stop` is polled every step.
pub(crate) fn finetune(
    src: &Net,
    arch: Arch<'_>,
    fit: Fit<'_>,
    train: &Dataset,
    lr: f64,
    seed: u64,
) -> Result<Net> {
    let dev = src.vs.device();
    let mut net = Net::new(
        arch.model,
        arch.norm,
        train.classes as i64,
        InitKind::Torch,
        dev,
        seed,
    );
    net.copy_backbone(src)?;
    train_net(net, fit, train, lr, seed)
}

/// The SGD loop of `finetune` on a network already holding the source's backbone and a
/// fresh head: freezes the backbone for `Mode::Fixed`, then trains for `sgd`'s steps at `lr`
/// (batches and augmentation seeded by `seed`).
pub fn train_net(net: Net, fit: Fit<'_>, train: &Dataset, lr: f64, seed: u64) -> Result<Net> {
    let Fit {
        target: t,
        mode,
        sgd,
        ctl,
    } = fit;
    let dev = net.vs.device();
    let full = mode == Mode::Full;
    if !full {
        for (name, mut v) in net.vs.variables() {
            if Net::is_backbone(&name) {
                let _ = v.requires_grad_(false);
            }
        }
    }
    let mut opt = crate::train::sgd(net.params(full), sgd.momentum, sgd.weight_decay)
        .data_parallel(Arc::clone(ctl.par));
    let n = train.len();
    let per_epoch = n.div_ceil(sgd.batch) as u64;
    let steps = match (sgd.steps, sgd.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => (e * per_epoch as f64).round().max(1.0) as u64,
        (None, None) => return Err(Error::msg("fine-tuning needs `steps` or `epochs`")),
    };
    let schedule = Schedule::MultiStep {
        milestones: sgd
            .decay_at
            .iter()
            .map(|f| (f * steps as f64).round() as u64)
            .collect(),
        gamma: sgd.gamma,
    };
    let bn_train = sgd.bn_mode == BnMode::Train;
    let mut batches = Vec::new();
    let par = ctl.par;
    for step in 0..steps {
        if (ctl.stop)() {
            return Err(Error::msg("stopped"));
        }
        let epoch = step / per_epoch;
        if step % per_epoch == 0 {
            batches = batch_indices(n, sgd.batch, seed, epoch, true, false);
        }
        // This rank's rows of the batch, transformed and augmented alone (the augmentation
        // draws for the whole batch, so the ranks' rows are the one-process batch).
        let all = &batches[(step % per_epoch) as usize];
        let n = all.len() as i64;
        let (start, len) = par.rows(n)?;
        let idx = Tensor::from_slice(&all[start as usize..(start + len) as usize]);
        let x = transform(&train.x.index_select(0, &idx).to_device(dev), &t.transform);
        let x = if sgd.augment.is_identity() {
            x
        } else {
            sgd.augment.apply_rows(
                &x,
                n,
                start,
                &mut Rng::new(seed ^ step.wrapping_mul(0x9E37_79B9)),
            )
        };
        let y = train.y.index_select(0, &idx).to_device(dev);
        let shard = par.local_shard(n, [x, y])?;
        let [x, y] = &shard.rows;
        let logits = if full {
            net.forward_t(x, true)
        } else {
            let f = tch::no_grad(|| net.features_t(x, bn_train));
            net.head().forward(&f)
        };
        let loss = shard.weigh(logits.cross_entropy_for_logits(y));
        opt.zero_grad();
        opt.backward(&loss)
            .map_err(|e| Error::msg(format!("fine-tuning, step {step}: {e}")))?;
        // DDP's average of the trained parameters' gradients (the head alone when fixed).
        opt.step(schedule.lr(lr, step, 0))?;
    }
    // Rank 0's BatchNorm statistics on every rank (DDP's buffer broadcast), so that the
    // evaluations that choose a rate agree.
    par.broadcast_vars(&net.vs)?;
    Ok(net)
}

/// Accuracies of a fine-tuned network on `test` (eval mode).
pub fn evaluate(net: &Net, t: &Target, test: &Dataset, batch: usize) -> (f64, f64) {
    let logits = batched(test, t.eval_transform(), batch, net.vs.device(), &|x| {
        net.forward_t(x, false)
    });
    accuracies(&logits, &test.y, test.classes)
}

/// One transfer of `src` to target `t` at transfer seed `seed`: fits the head (or the whole
/// network), choosing the learning rate on a validation part of the training set when `sgd.lr`
/// holds more than one (then, with `sgd.retrain`, fitting the chosen rate again on the whole
/// training set), and evaluates on the test set.
pub fn transfer(
    src: &Net,
    arch: Arch<'_>,
    t: &Target,
    (train, test): (&Dataset, &Dataset),
    (mode, seed): (Mode, u64),
    (solver, eval_batch): (&Solver, usize),
    ctl: Control<'_>,
) -> Result<Outcome> {
    let t0 = std::time::Instant::now();
    let outcome = |(acc, mpc_acc): (f64, f64), lr: f64| Outcome {
        target: t.name.clone(),
        mode,
        seed,
        acc,
        mpc_acc,
        lr,
        train: train.len(),
        test: test.len(),
        secs: t0.elapsed().as_secs_f64(),
    };
    let sgd = match solver {
        Solver::Logistic {
            iterations,
            lr,
            weight_decay,
        } => {
            let a = fixed_logistic(
                src,
                t,
                (train, test),
                (*iterations, *lr, *weight_decay),
                eval_batch,
            )?;
            return Ok(outcome(a, *lr));
        }
        Solver::Sgd(s) => s,
    };
    let fit = Fit {
        target: t,
        mode,
        sgd,
        ctl,
    };
    let (net, lr) = fit_sgd(src, arch, fit, train, seed, eval_batch)?;
    Ok(outcome(evaluate(&net, t, test, eval_batch), lr))
}

/// The fine-tuned network [`transfer`] tests, and its learning rate: with one rate, trained
/// on `train`; with a grid, each rate trained on `train` less a validation part (seeded by
/// `seed`), the best on that part kept, and, with `sgd.retrain`, trained again on all of
/// `train`.
pub(crate) fn fit_sgd(
    src: &Net,
    arch: Arch<'_>,
    fit: Fit<'_>,
    train: &Dataset,
    seed: u64,
    eval_batch: usize,
) -> Result<(Net, f64)> {
    let (t, mode, sgd) = (fit.target, fit.mode, fit.sgd);
    let head_seed = seed.wrapping_mul(7919).wrapping_add(0x7e57);
    if sgd.lr.len() == 1 {
        let net = finetune(src, arch, fit, train, sgd.lr[0], head_seed)?;
        return Ok((net, sgd.lr[0]));
    }
    // Choose the rate on a seeded validation part of the training set.
    let n = train.len();
    let nv = ((n as f64 * sgd.val_fraction).round() as usize).clamp(1, n - 1);
    let mut order: Vec<i64> = (0..n as i64).collect();
    Rng::new(seed ^ 0x7a1).shuffle(&mut order);
    let (va, tr) = order.split_at(nv);
    let (val_set, fit_set) = (train.subset(va), train.subset(tr));
    let mut best: Option<(f64, f64, Net)> = None;
    for &lr in &sgd.lr {
        let net = finetune(src, arch, fit, &fit_set, lr, head_seed)?;
        let (v, _) = evaluate(&net, t, &val_set, eval_batch);
        tracing::info!(
            "{} {}: lr {lr}: validation accuracy {v:.2}",
            t.name,
            mode.name()
        );
        if best.as_ref().is_none_or(|b| v > b.0) {
            best = Some((v, lr, net));
        }
    }
    let (_, lr, net) = best.expect("at least one rate");
    if sgd.retrain {
        Ok((finetune(src, arch, fit, train, lr, head_seed)?, lr))
    } else {
        Ok((net, lr))
    }
}

/// Every (target, mode, seed) transfer not yet in `transfers.jsonl`, in a fixed order.
pub(crate) fn transfer_all(ctx: &mut RunContext, c: &Config, src: &Net) -> Result<Vec<Outcome>> {
    let par = ctx.parallel();
    // Full-network fine-tuning shares its batches among the ranks, in float32.
    if let Some(f) = &c.transfer.full {
        ctx.record_share("transfer", f.sgd.batch, reprise_core::amp::Amp::None)?;
    }
    let mut done: Journal<Outcome> = Journal::open(ctx, "transfers.jsonl")?;
    let smoke = ctx.smoke();
    let mut jobs: Vec<(usize, Mode, u64)> = Vec::new();
    for (i, _) in c.transfer.targets.iter().enumerate() {
        if let Some(f) = &c.transfer.fixed {
            jobs.extend(f.seeds.iter().map(|&s| (i, Mode::Fixed, s)));
        }
        if let Some(f) = &c.transfer.full {
            jobs.extend(f.seeds.iter().map(|&s| (i, Mode::Full, s)));
        }
    }
    if smoke {
        // One seed of each (target, mode) in a smoke run.
        let mut seen = std::collections::BTreeSet::new();
        jobs.retain(|(i, m, _)| seen.insert((*i, *m)));
    }
    let mut progress = ctx.progress(jobs.len() as u64, 0);
    let mut pools: Vec<Option<data::TargetPool>> =
        c.transfer.targets.iter().map(|_| None).collect();
    for (n, &(i, mode, seed)) in jobs.iter().enumerate() {
        let t = &c.transfer.targets[i];
        if done
            .records()
            .iter()
            .any(|o| o.target == t.name && o.mode == mode && o.seed == seed)
        {
            progress.set(n as u64 + 1, "done before");
            continue;
        }
        if pools[i].is_none() {
            pools[i] = Some(data::TargetPool::load(t)?);
        }
        let (train, test) = pools[i].as_ref().expect("loaded").draw(seed)?;
        let solver = match mode {
            Mode::Fixed => c
                .transfer
                .fixed
                .as_ref()
                .expect("fixed jobs only when configured")
                .solver
                .clone(),
            Mode::Full => crate::config::Solver::Sgd(
                c.transfer.full.as_ref().expect("configured").sgd.clone(),
            ),
        };
        let mut solver = solver;
        if smoke {
            if let crate::config::Solver::Sgd(s) = &mut solver {
                s.steps = Some(ctx.iterations(s.steps.unwrap_or(u64::MAX)).min(5));
                s.epochs = None;
            }
        }
        let arch = Arch {
            model: &c.model,
            norm: t.normalize.as_ref().unwrap_or(&c.normalize),
        };
        // An interrupt on any rank stops every rank at the same step; a failed agreement (a
        // rank gone) stops too, and is the error.
        let agreed = std::cell::RefCell::new(Ok(false));
        let stop = || {
            let s = par.any(ctx.interrupted());
            let halt = !matches!(s, Ok(false));
            *agreed.borrow_mut() = s;
            halt
        };
        let o = match transfer(
            src,
            arch,
            t,
            (&train, &test),
            (mode, seed),
            (&solver, c.eval.batch),
            Control {
                stop: &stop,
                par: &par,
            },
        ) {
            Ok(o) => o,
            Err(e) => {
                return match agreed.replace(Ok(false)) {
                    Ok(true) => Err(Error::Interrupted {
                        step: n as u64,
                        dir: ctx.dir().to_path_buf(),
                    }),
                    Err(failed) => Err(failed),
                    Ok(false) => Err(e),
                }
            }
        };
        tracing::info!(
            "{} {} seed {seed}: acc {:.2} (mean per class {:.2}), lr {}, {:.1} s",
            t.name,
            mode.name(),
            o.acc,
            o.mpc_acc,
            o.lr,
            o.secs
        );
        progress.set(
            n as u64 + 1,
            &format!("{} {} seed {seed}: {:.1}%", t.name, mode.name(), o.acc),
        );
        done.append(o)?;
        if par.any(ctx.interrupted())? && n + 1 < jobs.len() {
            return Err(Error::Interrupted {
                step: n as u64 + 1,
                dir: ctx.dir().to_path_buf(),
            });
        }
    }
    progress.finish();
    // In job order, finished ones only.
    let mut out = Vec::new();
    for &(i, mode, seed) in &jobs {
        let name = &c.transfer.targets[i].name;
        if let Some(o) = done
            .records()
            .iter()
            .find(|o| &o.target == name && o.mode == mode && o.seed == seed)
        {
            out.push(o.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn toy(n: i64, seed: i64) -> Dataset {
        tch::manual_seed(seed);
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(2);
        // Class 1 is brighter: learnable in a few steps.
        let x = Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.5
            + y.to_kind(Kind::Float).view([n, 1, 1, 1]) * 0.5;
        Dataset { x, y, classes: 2 }
    }

    #[test]
    fn a_chosen_rate_is_retrained_on_the_whole_training_set() {
        let target: Target = serde_json::from_value(serde_json::json!({
            "name": "toy",
            "data": { "dataset": "digits" },
            "test_transform": [{ "bilinear": 10 }, { "center_crop": 8 }],
        }))
        .unwrap();
        let sgd: SgdConfig = serde_json::from_value(serde_json::json!({
            "steps": 6, "batch": 8, "lr": [0.05, 0.0001], "momentum": 0.9, "weight_decay": 0.0,
        }))
        .unwrap();
        assert!(sgd.retrain, "retraining is the default");
        let model = ModelConfig::SmallCnn { width: 1 };
        let norm = NormSpec {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let arch = Arch {
            model: &model,
            norm: &norm,
        };
        let src = Net::new(&model, &norm, 2, InitKind::HeNormal, Device::Cpu, 1);
        let (train, test) = (toy(40, 1), toy(30, 2));
        let one = Arc::new(Parallel::single());
        let no = Control {
            stop: &|| false,
            par: &one,
        };
        let logits = |net: &Net| {
            batched(&test, target.eval_transform(), 30, Device::Cpu, &|x| {
                net.forward_t(x, false)
            })
        };
        let fit = |sgd: &SgdConfig| {
            let how = Fit {
                target: &target,
                mode: Mode::Full,
                sgd,
                ctl: no,
            };
            fit_sgd(&src, arch, how, &train, 3, 30).unwrap()
        };
        let head_seed = 3u64.wrapping_mul(7919).wrapping_add(0x7e57);
        let full = |sgd| Fit {
            target: &target,
            mode: Mode::Full,
            sgd,
            ctl: no,
        };
        let (net, lr) = fit(&sgd);
        let whole = finetune(&src, arch, full(&sgd), &train, lr, head_seed).unwrap();
        assert!(
            logits(&net).equal(&logits(&whole)),
            "the whole training set, at the chosen rate"
        );
        // Without the retrain, the network fitted on the training set less its validation
        // part (4 of 40 examples, seeded) is tested.
        let (part_net, part_lr) = fit(&SgdConfig {
            retrain: false,
            ..sgd.clone()
        });
        assert_eq!(part_lr, lr);
        let mut order: Vec<i64> = (0..40).collect();
        Rng::new(3 ^ 0x7a1).shuffle(&mut order);
        let part = train.subset(&order[4..]);
        let fitted = finetune(&src, arch, full(&sgd), &part, lr, head_seed).unwrap();
        assert!(logits(&part_net).equal(&logits(&fitted)));
        assert!(
            !logits(&net).equal(&logits(&part_net)),
            "two different fits"
        );
        let out = transfer(
            &src,
            arch,
            &target,
            (&train, &test),
            (Mode::Full, 3),
            (&Solver::Sgd(sgd.clone()), 30),
            no,
        )
        .unwrap();
        assert_eq!((out.acc, out.mpc_acc), evaluate(&whole, &target, &test, 30));
    }

    #[test]
    fn mean_per_class_accuracy_weights_classes_equally() {
        // Class 0: 3 of 4 right; class 1: 0 of 1 right.
        let logits =
            Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]).view([5, 2]);
        let y = Tensor::from_slice(&[0i64, 0, 0, 0, 1]);
        let (top1, mpc) = accuracies(&logits, &y, 3);
        assert!((top1 - 60.0).abs() < 1e-9);
        assert!((mpc - 37.5).abs() < 1e-9, "{mpc}");
        // Ties go to the first label.
        let tie = Tensor::from_slice(&[0.5f32, 0.5]).view([1, 2]);
        assert_eq!(accuracies(&tie, &Tensor::from_slice(&[0i64]), 2).0, 100.0);
    }
}
