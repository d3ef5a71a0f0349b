//! One JEM training iteration: the cross-entropy, the log p(x) term against SGLD samples drawn
//! from the replay buffer (the official code's `train_wrn_ebm.py`), the guards, the update.

use crate::config::Config;
use crate::model::Classifier;
use crate::sampler::{self, sgld_with, ReplayBuffer};
use reprise_core::data::Rng;
use reprise_core::error::StepError;
use reprise_core::optim::Optimizer;
use reprise_core::parallel::Parallel;
use reprise_core::Error;
use tch::{Device, Kind, Tensor};

/// What one training iteration measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The total loss L.
    pub loss: f64,
    /// The cross-entropy term.
    pub ce: f64,
    /// Mean LSE f on the data batch (NaN without the p(x) term).
    pub f_data: f64,
    /// Mean LSE f on the SGLD samples (NaN without the p(x) term).
    pub f_q: f64,
}

/// What one training iteration trains on.
#[derive(Clone, Copy)]
pub struct StepBatch<'a> {
    /// The weights of the log p(x) and log p(x|y) terms (the arm's).
    pub weights: (f64, f64),
    /// The labelled batch (images, labels) of the whole step: every rank's rows.
    pub labelled: (&'a Tensor, &'a Tensor),
    /// The images whose log p(x) is maximised (with a log p(x) term).
    pub data: Option<&'a Tensor>,
    /// The learning rate of this step.
    pub lr: f64,
}

/// One JEM iteration: cross-entropy on the labelled batch `lab` and, with a buffer and
/// `w_px > 0`, the p(x) term on the unlabelled batch `x_data` against SGLD samples drawn from
/// the buffer (which is updated); then one Adam step at `lr`. The divergence guards
/// (|L|, and the mean energies) stop it before the update, with the reason. The SGLD noise
/// comes from `noise` ([`sampler::gaussian`] in training).
///
/// Data-parallel (`par` of several ranks): `lab` and `x_data` are the global batch; this rank
/// computes on its rows, draws the replay-buffer slots of the whole batch (the same on every
/// rank), runs SGLD on its rows, gathers the samples of all ranks so that every rank's buffer
/// stays the one a single process would hold; `opt`, made [`Optimizer::data_parallel`],
/// averages the gradients before its step. The values returned (and guarded) are the means over
/// the ranks.
pub fn train_step(
    model: &Classifier,
    opt: &mut Optimizer,
    buffer: Option<&mut ReplayBuffer>,
    c: &Config,
    batch: &StepBatch,
    (rng, noise): (&mut Rng, &mut dyn FnMut(&Tensor) -> Tensor),
    par: &Parallel,
) -> std::result::Result<StepStats, StepError> {
    let StepBatch {
        weights: (w_px, w_xy),
        labelled: lab,
        data: x_data,
        lr,
    } = *batch;
    let dev = model.vs.device();
    let rows = |t: &Tensor| par.shard(t);
    let gather = |t: &Tensor, n: usize| par.gather(t, n as i64);
    // The forwards whose outputs enter the loss, under autocast with `amp: bf16 | f16` (their
    // logits back in float32 for the losses); the SGLD chains below call the model directly.
    let fwd = |x: &Tensor| c.amp.forward(dev, || model.forward_t(x, true));
    let y_l = rows(lab.1)?.to_device(dev);
    let logits_l = fwd(&rows(lab.0)?.to_device(dev));
    let l_ce = logits_l.cross_entropy_for_logits(&y_l);
    let mut loss = &l_ce * c.ce_weight;
    let (mut fd, mut fq) = (f64::NAN, f64::NAN);
    let mut buffer = buffer;
    if let (Some(buf), true) = (buffer.as_deref_mut(), w_xy > 0.0) {
        // The p(x|y) term: class-conditional samples for the labels of the labelled batch.
        let ys = Vec::<i64>::try_from(&lab.1.to_device(Device::Cpu)).map_err(Error::from)?;
        let (slots, x0) = buf.draw(ys.len(), Some(&ys), c.buffer.reinit, rng);
        let f = |x: &Tensor| model.forward_t(x, false);
        let xq = sgld_with(
            &f,
            &rows(&x0)?.to_device(dev),
            Some(&y_l),
            &c.sgld,
            c.sgld.steps,
            noise,
        );
        buf.write(&slots, &gather(&xq, slots.len())?);
        let fq_y = sampler::score(&fwd(&xq), Some(&y_l)).mean(Kind::Float);
        let fl_y = sampler::score(&logits_l, Some(&y_l)).mean(Kind::Float);
        loss += (fq_y - fl_y) * w_xy;
    }
    if let (Some(buf), Some(xd), true) = (buffer, x_data, w_px > 0.0) {
        let n = xd.size()[0] as usize;
        let classes = model.classes() as usize;
        let ys: Option<Vec<i64>> = c
            .sgld
            .class_cond
            .then(|| (0..n).map(|_| rng.below(classes) as i64).collect());
        let (slots, x0) = buf.draw(n, ys.as_deref(), c.buffer.reinit, rng);
        let yq = match ys {
            Some(v) => Some(rows(&Tensor::from_slice(&v))?.to_device(dev)),
            None => None,
        };
        let f = |x: &Tensor| model.forward_t(x, false);
        let xq = sgld_with(
            &f,
            &rows(&x0)?.to_device(dev),
            yq.as_ref(),
            &c.sgld,
            c.sgld.steps,
            noise,
        );
        buf.write(&slots, &gather(&xq, slots.len())?);
        let lse_d = fwd(&rows(xd)?.to_device(dev))
            .logsumexp([1].as_slice(), false)
            .mean(Kind::Float);
        let lse_q = fwd(&xq).logsumexp([1].as_slice(), false).mean(Kind::Float);
        let m = par.mean(&[lse_d.double_value(&[]), lse_q.double_value(&[])])?;
        (fd, fq) = (m[0], m[1]);
        loss += (lse_q - lse_d) * w_px;
        if [fd, fq]
            .iter()
            .any(|e| e.is_nan() || e.abs() > c.guard_energy)
        {
            return Err(StepError::Diverged(format!(
                "mean energy on data {fd:.3e} or samples {fq:.3e} beyond ±{:.0e}; the last good checkpoint is kept \
                 (declared fallbacks: more SGLD steps, then a lower lr)",
                c.guard_energy
            )));
        }
    }
    let m = par.mean(&[loss.double_value(&[]), l_ce.double_value(&[])])?;
    let (lv, ce) = (m[0], m[1]);
    if lv.is_nan() || lv.abs() > c.guard_loss {
        return Err(StepError::Diverged(format!(
            "|L| = {lv:.3e} > {:.0e}; the last good checkpoint is kept",
            c.guard_loss
        )));
    }
    opt.zero_grad();
    // With `amp: f16` the loss is scaled (and the step unscales, or skips an overflow).
    opt.backward(&loss)
        .map_err(|e| StepError::Diverged(e.to_string()))?;
    opt.step(lr)?;
    Ok(StepStats {
        loss: lv,
        ce,
        f_data: fd,
        f_q: fq,
    })
}
