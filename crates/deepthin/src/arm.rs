//! One arm on a fresh thin network: its stages in order, each run by the network family and
//! logged, then the arm's test accuracy. A family says how it runs each kind of stage
//! ([`Family`]): the MLP and shared-stream families train in memory (`lib.rs`), the
//! convolutional ones in checkpointed phases (`conv`). A new kind of stage is one arm of
//! [`run_arm`]'s match and one method per family.

use crate::config::{Arm, HintStage, ImitateStage, Loss, Stage, TrainStage};
use crate::summary::{ArmResult, StageLog};
use reprise_core::Result;
use std::time::Instant;

/// How a network family runs each kind of stage on the arm's thin network. Each method fills
/// the stage's log `entry` and the arm's result `out`, and says whether the stage ran in this
/// sitting: `false` when a checkpoint of a later phase shows it done (its entry is then in
/// `out` already, restored from that checkpoint).
pub(crate) trait Family {
    /// End-to-end training with a loss.
    fn train(
        &mut self,
        key: &str,
        t: &TrainStage,
        entry: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool>;
    /// Layerwise imitation of the teacher.
    fn imitate(
        &mut self,
        key: &str,
        m: &ImitateStage,
        entry: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool>;
    /// The merge of the imitation's linear pairs (the MLP family alone).
    fn merge(&mut self, entry: &mut StageLog, out: &mut ArmResult) -> Result<bool>;
    /// FitNets' hint.
    fn hint(
        &mut self,
        key: &str,
        h: &HintStage,
        entry: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool>;
    /// The teacher's head copied into the thin network.
    fn copy_head(&mut self, key: &str, entry: &mut StageLog, out: &mut ArmResult) -> Result<bool>;
    /// The thin network's test accuracy (%, top-1) now.
    fn accuracy(&mut self) -> Result<f64>;
    /// The arm's final measurements into `out`: its test accuracy and what else the family
    /// measures (top-5, sequence accuracy).
    fn finish(&mut self, name: &str, out: &mut ArmResult) -> Result<()>;
}

/// The kind of a stage, as an arm's log names it.
pub(crate) fn stage_kind(s: &Stage) -> String {
    match s {
        Stage::Train(t) => match t.loss {
            Loss::Ce => "ce".to_string(),
            Loss::Kd { temperature } => format!("kd T={temperature}"),
        },
        Stage::Imitate(_) => "imitate".into(),
        Stage::Merge => "merge".into(),
        Stage::Hint(_) => "hint".into(),
        Stage::CopyHead => "copy_head".into(),
    }
}

/// Runs arm `name`'s stages through `family` (stage `i` keyed `<name>/<i>`): each stage that
/// runs is logged with the test accuracy after it; then the arm's final measurements and its
/// seconds in this sitting.
pub(crate) fn run_arm(name: &str, arm: &Arm, family: &mut impl Family) -> Result<ArmResult> {
    let t0 = Instant::now();
    let mut out = ArmResult::default();
    for (i, s) in arm.stages.iter().enumerate() {
        let key = format!("{name}/{i}");
        let mut entry = StageLog {
            stage: i,
            kind: stage_kind(s),
            ..StageLog::default()
        };
        let ran = match s {
            Stage::Train(t) => family.train(&key, t, &mut entry, &mut out)?,
            Stage::Imitate(m) => family.imitate(&key, m, &mut entry, &mut out)?,
            Stage::Merge => family.merge(&mut entry, &mut out)?,
            Stage::Hint(h) => family.hint(&key, h, &mut entry, &mut out)?,
            Stage::CopyHead => family.copy_head(&key, &mut entry, &mut out)?,
        };
        if ran {
            entry.acc = family.accuracy()?;
            out.stages.push(entry);
        }
    }
    family.finish(name, &mut out)?;
    out.secs = t0.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A family that records the stages it is asked to run; copying the head "was done before
    /// the resume" (it did not run in this sitting).
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        acc: f64,
    }

    impl Family for Recorder {
        fn train(
            &mut self,
            key: &str,
            _: &TrainStage,
            e: &mut StageLog,
            _: &mut ArmResult,
        ) -> Result<bool> {
            self.calls.push(format!("train {key}"));
            e.final_loss = Some(0.5);
            self.acc += 10.0;
            Ok(true)
        }
        fn imitate(
            &mut self,
            key: &str,
            _: &ImitateStage,
            _: &mut StageLog,
            _: &mut ArmResult,
        ) -> Result<bool> {
            self.calls.push(format!("imitate {key}"));
            Ok(true)
        }
        fn merge(&mut self, _: &mut StageLog, out: &mut ArmResult) -> Result<bool> {
            self.calls.push("merge".into());
            out.merge_error = Some(1e-6);
            self.acc += 1.0;
            Ok(true)
        }
        fn hint(
            &mut self,
            key: &str,
            _: &HintStage,
            _: &mut StageLog,
            _: &mut ArmResult,
        ) -> Result<bool> {
            self.calls.push(format!("hint {key}"));
            Ok(true)
        }
        fn copy_head(&mut self, key: &str, _: &mut StageLog, _: &mut ArmResult) -> Result<bool> {
            self.calls.push(format!("copy_head {key}"));
            Ok(false)
        }
        fn accuracy(&mut self) -> Result<f64> {
            Ok(self.acc)
        }
        fn finish(&mut self, name: &str, out: &mut ArmResult) -> Result<()> {
            self.calls.push(format!("finish {name}"));
            out.acc = self.acc;
            Ok(())
        }
    }

    #[test]
    fn an_arm_runs_its_stages_in_order_and_logs_those_that_ran() {
        let train = |loss| {
            Stage::Train(TrainStage {
                loss,
                epochs: 1.0,
                lr: 0.1,
                optimizer: Default::default(),
                lr_schedule: Default::default(),
            })
        };
        let arm = Arm {
            stages: vec![
                train(Loss::Ce),
                Stage::CopyHead,
                Stage::Merge,
                train(Loss::Kd { temperature: 4.0 }),
            ],
            depths: vec![],
        };
        let mut r = Recorder::default();
        let out = run_arm("wtn", &arm, &mut r).unwrap();
        assert_eq!(
            r.calls,
            [
                "train wtn/0",
                "copy_head wtn/1",
                "merge",
                "train wtn/3",
                "finish wtn"
            ]
        );
        // The head copy did not run in this sitting: no entry (its entry came with the resume).
        let logged: Vec<(usize, &str, f64)> = out
            .stages
            .iter()
            .map(|e| (e.stage, e.kind.as_str(), e.acc))
            .collect();
        assert_eq!(
            logged,
            [(0, "ce", 10.0), (2, "merge", 11.0), (3, "kd T=4", 21.0)]
        );
        assert_eq!((out.acc, out.merge_error), (21.0, Some(1e-6)));
        assert_eq!(out.stages[0].final_loss, Some(0.5));
    }
}
