//! The step loop's bookkeeping, shared by the papers' training loops: resuming after a
//! checkpoint's step, the start of a data-parallel run (rank 0's weights to every rank), the
//! per-step seed, progress and timing, and the interrupt that every rank agrees on. A run made
//! of several phases (deepthin's convolutional stages) runs each on [`Steps::phase`].
//!
//! A loop reads
//!
//! ```ignore
//! let mut steps = Steps::begin(ctx, total, step, &[&model.vs])?;
//! while steps.start_next() {
//!     // one step at `steps.step()`, from (seed, step)
//!     steps.end_step("loss 0.123");
//!     // logging and checkpoint cadence at `steps.step()`
//!     steps.stop_if_interrupted(ctx, |s| save(ctx, s))?;
//! }
//! let ms_per_step = steps.finish();
//! ```

use crate::error::{Error, Result};
use crate::parallel::Parallel;
use crate::progress::Progress;
use crate::run::RunContext;
use std::sync::Arc;
use std::time::Instant;

/// The position of a training loop: the step, the steps it runs to, progress and timing.
pub struct Steps {
    par: Arc<Parallel>,
    progress: Progress,
    seed: u64,
    step: u64,
    first: u64,
    total: u64,
    secs: f64,
    started: Option<Instant>,
    /// The run's step of this loop's step 0 (a phase of a larger plan).
    offset: u64,
    /// Whether each step seeds LibTorch's generator from (run seed, step).
    reseed: bool,
}

impl Steps {
    /// Starts (or, after a checkpoint of step `step`, continues) a loop of `total` steps: says
    /// where it resumes, sets every rank's variables of `vars` to rank 0's (as DDP does at its
    /// start), prepares the metrics log ([`RunContext::begin`]) and shows progress.
    pub fn begin(
        ctx: &mut RunContext,
        total: u64,
        step: u64,
        vars: &[&tch::nn::VarStore],
    ) -> Result<Steps> {
        if step > 0 {
            tracing::info!("resuming from step {step}");
            crate::note!("resuming from step {step}");
        }
        let par = ctx.parallel();
        for vs in vars {
            par.broadcast_vars(vs)?;
        }
        ctx.begin(step)?;
        Ok(Steps {
            reseed: true,
            ..Steps::phase(ctx, total, step, 0)
        })
    }

    /// A loop that is one phase of a run's plan of phases (deepthin's convolutional stages),
    /// run from its step `from` to `total`: its steps are the phase's own, and the run's step of
    /// its step `s` is `offset + s` (what an interrupt reports). The run prepared its metrics
    /// log and its ranks' weights once, before its first phase, so this does neither; nor does
    /// it seed LibTorch's generator per step: a phase draws what it needs from its own
    /// (seed, step) streams.
    pub fn phase(ctx: &RunContext, total: u64, from: u64, offset: u64) -> Steps {
        Steps {
            progress: ctx.progress(total, from),
            par: ctx.parallel(),
            seed: ctx.seed(),
            step: from,
            first: from,
            total,
            secs: 0.0,
            started: None,
            offset,
            reseed: false,
        }
    }

    /// The steps done so far (the index of the step about to run).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The steps the loop runs to.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether this is the last step (after [`Steps::end_step`]: the loop's end).
    pub fn at_end(&self) -> bool {
        self.step == self.total
    }

    /// Whether the steps done are a multiple of `every`, or the loop's end: the cadence of
    /// logging, evaluations and checkpoints (after [`Steps::end_step`]).
    pub fn at_every(&self, every: u64) -> bool {
        self.step.is_multiple_of(every) || self.at_end()
    }

    /// Starts the next step if any is left: its clock, and LibTorch's generator seeded from
    /// (run seed, step), so that a resumed run draws what an uninterrupted one does.
    pub fn start_next(&mut self) -> bool {
        if self.step >= self.total {
            return false;
        }
        self.started = Some(Instant::now());
        if self.reseed {
            crate::seed::seed_torch_for_step(self.seed, self.step);
        }
        true
    }

    /// Ends the step: counts it, adds its time, and shows `msg` with the progress.
    pub fn end_step(&mut self, msg: &str) {
        self.step += 1;
        if let Some(t0) = self.started.take() {
            self.secs += t0.elapsed().as_secs_f64();
        }
        self.progress.set(self.step, msg);
    }

    /// When SIGINT or SIGTERM has reached any rank and steps are left, saves a checkpoint of
    /// this step with `save` (rank 0 writes it) and stops with [`Error::Interrupted`] at the
    /// run's step; every rank stops after the same step.
    pub fn stop_if_interrupted(
        &mut self,
        ctx: &RunContext,
        save: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        if self.par.any(ctx.interrupted())? && self.step < self.total {
            save(self.step)?;
            return Err(Error::Interrupted {
                step: self.offset + self.step,
                dir: ctx.dir().to_path_buf(),
            });
        }
        Ok(())
    }

    /// The steps this process ran (after a resume, those since it).
    pub fn ran(&self) -> u64 {
        self.step - self.first
    }

    /// Ends the loop; the mean milliseconds of the steps this process ran (NaN if none).
    pub fn finish(mut self) -> f64 {
        self.progress.finish();
        let done = self.step - self.first;
        if done > 0 {
            self.secs * 1000.0 / done as f64
        } else {
            f64::NAN
        }
    }
}

/// The running means of a loop's logged values between two log lines: each line carries the
/// mean over the steps since the previous one.
#[derive(Debug, Clone)]
pub struct Averages {
    names: &'static [&'static str],
    sums: Vec<f64>,
    n: u64,
}

impl Averages {
    /// Means of the values `names`, in that order.
    pub fn new(names: &'static [&'static str]) -> Averages {
        Averages {
            names,
            sums: vec![0.0; names.len()],
            n: 0,
        }
    }

    /// Adds one step's values (in the order of the names).
    pub fn add(&mut self, values: &[f64]) {
        debug_assert_eq!(values.len(), self.sums.len());
        for (s, v) in self.sums.iter_mut().zip(values) {
            *s += v;
        }
        self.n += 1;
    }

    /// The means since the last call, by name (sums over at least one step: zeros when none
    /// was added), and a fresh start.
    pub fn take(&mut self) -> Vec<(&'static str, f64)> {
        let k = self.n.max(1) as f64;
        let out = self
            .names
            .iter()
            .zip(&self.sums)
            .map(|(n, s)| (*n, s / k))
            .collect();
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.n = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_means_since_the_last_line() {
        let mut a = Averages::new(&["ce", "f_q"]);
        assert_eq!(a.take(), [("ce", 0.0), ("f_q", 0.0)]);
        a.add(&[1.0, 4.0]);
        a.add(&[2.0, f64::NAN]);
        let m = a.take();
        assert_eq!(m[0], ("ce", 1.5));
        assert!(m[1].1.is_nan());
        a.add(&[3.0, 1.0]);
        assert_eq!(a.take(), [("ce", 3.0), ("f_q", 1.0)]);
    }
}
