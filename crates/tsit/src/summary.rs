//! The summary of one run (`summary.json`): the struct the run writes and the reports read, so
//! a misspelt metric is a compile error rather than a NaN in a table.

use crate::config::{Arm, Task};
use crate::eval::Metrics;
use reprise_core::run::{nan_if_null, some_nan_if_null};
use serde::{Deserialize, Serialize};

/// A metric of a set of outputs, in the order of the reports' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The digit classifier's accuracy on the outputs (digits).
    ContentAcc,
    /// The segmenter's mean IoU against the content's label map (scenes).
    SegMiou,
    /// The segmenter's pixel accuracy (scenes).
    SegAcc,
    /// The Fréchet distance of the judge's features to the oracle outputs'.
    Fidp,
    /// The distance of the outputs' per-channel statistics to the oracle's.
    StyleErr,
    /// The distance of the outputs' colour histograms to the oracle's.
    HistDist,
    /// Mean absolute difference to the oracle outputs.
    L1,
    /// PSNR against the oracle outputs.
    Psnr,
}

impl Metric {
    /// Every metric, in table order.
    pub(crate) const ALL: [Metric; 8] = [
        Metric::ContentAcc,
        Metric::SegMiou,
        Metric::SegAcc,
        Metric::Fidp,
        Metric::StyleErr,
        Metric::HistDist,
        Metric::L1,
        Metric::Psnr,
    ];

    /// Its key in the summary and in `metrics.jsonl` (after `eval_`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::ContentAcc => "content_acc",
            Metric::SegMiou => "seg_miou",
            Metric::SegAcc => "seg_acc",
            Metric::Fidp => "fidp",
            Metric::StyleErr => "style_err",
            Metric::HistDist => "hist_dist",
            Metric::L1 => "l1",
            Metric::Psnr => "psnr",
        }
    }
}

/// The metrics of one set of outputs; a metric the task does not measure is absent, one that
/// came out NaN is `Some(NaN)` (`null` in the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// See [`Metric::ContentAcc`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub content_acc: Option<f64>,
    /// See [`Metric::SegMiou`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub seg_miou: Option<f64>,
    /// See [`Metric::SegAcc`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub seg_acc: Option<f64>,
    /// See [`Metric::Fidp`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub fidp: Option<f64>,
    /// See [`Metric::StyleErr`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub style_err: Option<f64>,
    /// See [`Metric::HistDist`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub hist_dist: Option<f64>,
    /// See [`Metric::L1`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub l1: Option<f64>,
    /// See [`Metric::Psnr`].
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub psnr: Option<f64>,
}

impl Scores {
    /// The evaluator's metrics (keyed by [`Metric::name`]).
    pub(crate) fn from_metrics(m: &Metrics) -> Scores {
        let mut s = Scores::default();
        for metric in Metric::ALL {
            *s.slot(metric) = m.get(metric.name()).copied();
        }
        debug_assert!(
            m.keys().all(|k| Metric::ALL.iter().any(|x| x.name() == k)),
            "a metric without a field: {m:?}"
        );
        s
    }

    fn slot(&mut self, m: Metric) -> &mut Option<f64> {
        match m {
            Metric::ContentAcc => &mut self.content_acc,
            Metric::SegMiou => &mut self.seg_miou,
            Metric::SegAcc => &mut self.seg_acc,
            Metric::Fidp => &mut self.fidp,
            Metric::StyleErr => &mut self.style_err,
            Metric::HistDist => &mut self.hist_dist,
            Metric::L1 => &mut self.l1,
            Metric::Psnr => &mut self.psnr,
        }
    }

    /// A metric's value; NaN when it was not measured or came out NaN.
    pub fn get(&self, m: Metric) -> f64 {
        let v = match m {
            Metric::ContentAcc => self.content_acc,
            Metric::SegMiou => self.seg_miou,
            Metric::SegAcc => self.seg_acc,
            Metric::Fidp => self.fidp,
            Metric::StyleErr => self.style_err,
            Metric::HistDist => self.hist_dist,
            Metric::L1 => self.l1,
            Metric::Psnr => self.psnr,
        };
        v.unwrap_or(f64::NAN)
    }

    /// How much of the content an output kept: the digit classifier's accuracy, or the
    /// segmenter's mIoU where there is no classifier (scenes).
    pub fn kept(&self) -> f64 {
        if self.get(Metric::ContentAcc).is_nan() {
            self.get(Metric::SegMiou)
        } else {
            self.get(Metric::ContentAcc)
        }
    }
}

/// An evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// The training step.
    pub step: u64,
    /// What it measured.
    pub metrics: Scores,
}

/// The test-time α of FAdaIN and what the outputs measured with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlphaPoint {
    /// α.
    pub alpha: f64,
    /// What it measured.
    pub metrics: Scores,
}

/// The references every arm is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct References {
    /// The oracle outputs (the real renders).
    pub oracle: Scores,
    /// The content images themselves (style transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Scores>,
    /// The content with the style's per-channel statistics (style transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixadain: Option<Scores>,
}

impl References {
    /// A reference by its name in the tables (`identity`, `pixadain`, `oracle`).
    pub fn get(&self, name: Reference) -> Option<&Scores> {
        match name {
            Reference::Oracle => Some(&self.oracle),
            Reference::Identity => self.identity.as_ref(),
            Reference::Pixadain => self.pixadain.as_ref(),
        }
    }
}

/// One of the references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The content images.
    Identity,
    /// The content with the style's statistics.
    Pixadain,
    /// The real renders.
    Oracle,
}

impl Reference {
    /// The references in table order.
    pub(crate) const ALL: [Reference; 3] =
        [Reference::Identity, Reference::Pixadain, Reference::Oracle];

    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Identity => "identity",
            Reference::Pixadain => "pixadain",
            Reference::Oracle => "oracle",
        }
    }
}

/// What the helper nets that judge the outputs measured of themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// The digit classifier's accuracy on styled test renders (digits).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub classifier_acc_styled: Option<f64>,
    /// Seconds the judges took to train or load.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub judges_secs: Option<f64>,
}

/// The evaluation of a small task by the judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// How the generator's BatchNorm normalises at test.
    pub pfn: String,
    /// The FIDp of two real sets: the distance no generator can beat.
    #[serde(deserialize_with = "nan_if_null")]
    pub fidp_floor: f64,
    /// Every evaluation during training.
    pub evals: Vec<EvalPoint>,
    /// The final checkpoint's outputs.
    #[serde(rename = "final")]
    pub last: Scores,
    /// The mean of the last two evaluations.
    pub last2: Scores,
    /// The references.
    pub references: References,
    /// The test-time α sweep of FAdaIN (the full arm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_sweep: Option<Vec<AlphaPoint>>,
    /// The batch-1 port check: max |Δ| with the model's BN ε.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub bn1_cancel_max_diff: Option<f64>,
    /// The same with BN ε = 1e-12.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub bn1_cancel_max_diff_eps0: Option<f64>,
    /// The judges' own measurements.
    #[serde(flatten)]
    pub judges: JudgeInfo,
}

/// The evaluation of a folder task: test outputs written for external tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Folder {
    /// Test outputs written to `test_outputs/`.
    pub test_outputs: usize,
    /// Their FID against the test images (with `eval.fid_inception`).
    pub fid: Option<f64>,
    /// What was measured and how.
    pub evaluation: String,
}

/// How a run was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Evaluation {
    /// A small task, by the judges.
    Judged(Box<Judged>),
    /// A folder task, by external tools.
    Folder(Folder),
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The task.
    pub task: Task,
    /// The arm.
    pub arm: Arm,
    /// Training iterations.
    pub iterations: u64,
    /// The global batch.
    pub batch: i64,
    /// Milliseconds per iteration (evaluation excluded).
    #[serde(deserialize_with = "nan_if_null")]
    pub step_ms: f64,
    /// G's parameters.
    pub params_g: i64,
    /// D's parameters.
    pub params_d: i64,
    /// Milliseconds per iteration spent drawing batches.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_ms: Option<f64>,
    /// The evaluation.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// A `--smoke` run (written by the run context, beside `wall_seconds`).
    #[serde(default, skip_serializing)]
    pub smoke: bool,
}

impl Summary {
    /// The judges' evaluation, for a small task.
    pub fn judged(&self) -> Option<&Judged> {
        match &self.evaluation {
            Evaluation::Judged(j) => Some(j),
            Evaluation::Folder(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(f: f64) -> Scores {
        Scores {
            content_acc: Some(f),
            fidp: Some(f64::NAN),
            ..Scores::default()
        }
    }

    fn judged() -> Summary {
        Summary {
            task: Task::DigitsAst,
            arm: Arm::Full,
            iterations: 10,
            batch: 4,
            step_ms: 3.0,
            params_g: 100,
            params_d: 50,
            data_ms: Some(0.5),
            evaluation: Evaluation::Judged(Box::new(Judged {
                pfn: "batch norm".into(),
                fidp_floor: 0.1,
                evals: vec![EvalPoint {
                    step: 5,
                    metrics: scores(0.5),
                }],
                last: scores(0.9),
                last2: scores(0.7),
                references: References {
                    oracle: scores(1.0),
                    identity: Some(scores(0.2)),
                    pixadain: None,
                },
                alpha_sweep: Some(vec![AlphaPoint {
                    alpha: 0.5,
                    metrics: scores(0.8),
                }]),
                bn1_cancel_max_diff: None,
                bn1_cancel_max_diff_eps0: None,
                judges: JudgeInfo {
                    classifier_acc_styled: Some(0.99),
                    judges_secs: Some(2.0),
                },
            })),
            smoke: false,
        }
    }

    fn text(s: &Summary) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn both_kinds_of_summary_read_back_as_written() {
        let s = judged();
        let mut v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["final"]["content_acc"], 0.9);
        assert_eq!(v["final"]["fidp"], serde_json::Value::Null);
        assert!(v["final"].get("seg_miou").is_none());
        assert_eq!(v["classifier_acc_styled"], 0.99);
        assert_eq!(v["arm"], "full");
        v["smoke"] = true.into();
        v["wall_seconds"] = 1.0.into();
        let back: Summary = serde_json::from_value(v).unwrap();
        assert!(back.smoke);
        assert_eq!(text(&back), text(&s));
        let j = back.judged().unwrap();
        assert!(j.last.get(Metric::Fidp).is_nan() && j.last.get(Metric::SegMiou).is_nan());
        assert_eq!(j.last.kept(), 0.9);
        let folder = Summary {
            evaluation: Evaluation::Folder(Folder {
                test_outputs: 8,
                fid: None,
                evaluation: "external".into(),
            }),
            task: Task::CityscapesSis,
            arm: Arm::TsitSis,
            ..s
        };
        let v = serde_json::to_value(&folder).unwrap();
        assert_eq!(v["fid"], serde_json::Value::Null);
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(text(&back), text(&folder));
        assert!(back.judged().is_none());
    }

    #[test]
    fn scores_from_the_evaluators_map_keep_every_metric() {
        let m: Metrics = [
            ("fidp".to_string(), 1.5),
            ("seg_miou".to_string(), f64::NAN),
        ]
        .into();
        let s = Scores::from_metrics(&m);
        assert_eq!(s.fidp, Some(1.5));
        assert!(s.seg_miou.unwrap().is_nan() && s.content_acc.is_none());
        assert!(s.kept().is_nan());
        for m in Metric::ALL {
            let one: Metrics = [(m.name().to_string(), 2.0)].into();
            assert_eq!(Scores::from_metrics(&one).get(m), 2.0, "{m:?}");
        }
    }
}
