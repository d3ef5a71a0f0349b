//! The summary of one run (`summary.json`) and the record of each finished arm (`arms.json`):
//! the structs the run writes and the reports read, so a misspelt metric is a compile error.

use crate::config::ArchKind;
use crate::train::BlockFit;
use reprise_core::run::{nan, nan_if_null, some_nan_if_null};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What one stage of an arm did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageLog {
    /// The stage's index in the arm.
    pub stage: usize,
    /// `ce`, `kd T=…`, `imitate`, `merge`, `copy_head` or `hint`.
    pub kind: String,
    /// Test accuracy (%) after the stage.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub acc: f64,
    /// A training stage's last logged loss.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub final_loss: Option<f64>,
    /// A hint stage's last regression loss (the convolutional families).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub final_mse: Option<f64>,
    /// A hint stage's normalised error (the MLP families).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub nmse: Option<f64>,
    /// An imitation stage's per-block fits (the MLP families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits: Option<Vec<BlockFit>>,
    /// A merge's largest output difference from the unmerged network.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub merge_error: Option<f64>,
    /// Tensors copied by `copy_head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<usize>,
}

/// The record of one arm: its final accuracy and what its stages measured on the way. The
/// convolutional families keep it, unfinished, in each phase's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    /// Test (top-1) accuracy (%) at the end.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub acc: f64,
    /// Top-5 accuracy (%) at the end (the convolutional families).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub top5: Option<f64>,
    /// Whole-sequence accuracy (%) at the end (`sort12`).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub seq_acc: Option<f64>,
    /// Seconds the arm took.
    #[serde(default)]
    pub secs: f64,
    /// Each block's imitation fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits: Option<Vec<BlockFit>>,
    /// Accuracy (%) right after imitation (the families without a merge).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub acc_after_imitation: Option<f64>,
    /// The merge's largest output difference.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub merge_error: Option<f64>,
    /// Accuracy (%) right after the merge.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub acc_after_merge: Option<f64>,
    /// Hidden units of the merged network that never fire on the training inputs, per block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_after_merge: Option<Vec<i64>>,
    /// Accuracy (%) right after the teacher's head was copied.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub acc_after_head: Option<f64>,
    /// Every stage that ran, in order.
    #[serde(default)]
    pub stages: Vec<StageLog>,
}

impl Default for StageLog {
    /// A stage not yet measured: its accuracy NaN.
    fn default() -> Self {
        StageLog {
            stage: 0,
            kind: String::new(),
            acc: f64::NAN,
            final_loss: None,
            final_mse: None,
            nmse: None,
            fits: None,
            merge_error: None,
            tensors: None,
        }
    }
}

impl Default for ArmResult {
    /// An arm not yet finished: its accuracy NaN, nothing measured.
    fn default() -> Self {
        ArmResult {
            acc: f64::NAN,
            top5: None,
            seq_acc: None,
            secs: 0.0,
            fits: None,
            acc_after_imitation: None,
            merge_error: None,
            acc_after_merge: None,
            dead_after_merge: None,
            acc_after_head: None,
            stages: Vec::new(),
        }
    }
}

/// What one run (one depth, one seed) measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The family.
    pub kind: ArchKind,
    /// Its depth.
    pub depth: usize,
    /// The run's seed.
    pub seed: u64,
    /// The teacher's test (top-1) accuracy (%), when a teacher was trained or loaded.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub teacher_acc: Option<f64>,
    /// The teacher's top-5 accuracy (%) (the convolutional families).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub teacher_top5: Option<f64>,
    /// The teacher's whole-sequence accuracy (%) (`sort12`).
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub teacher_seq_acc: Option<f64>,
    /// Seconds the teacher took.
    #[serde(
        default,
        deserialize_with = "some_nan_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub teacher_secs: Option<f64>,
    /// The MLP's determinism check: the `win` arm run twice gave the same accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deterministic: Option<bool>,
    /// Every finished arm.
    pub arms: BTreeMap<String, ArmResult>,
    /// Each arm's accuracy again as `acc_{arm}`, for the sweep's table of every value.
    #[serde(flatten)]
    pub accs: ArmAccs,
    /// A `--smoke` run (written by the run context, beside `wall_seconds`).
    #[serde(default, skip_serializing)]
    pub smoke: bool,
}

/// The `acc_{arm}` keys of a summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArmAccs(pub BTreeMap<String, f64>);

impl<'de> Deserialize<'de> for ArmAccs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<ArmAccs, D::Error> {
        let rest = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(ArmAccs(
            rest.into_iter()
                .filter(|(k, _)| k.starts_with("acc_"))
                .map(|(k, v)| (k, v.as_f64().unwrap_or(f64::NAN)))
                .collect(),
        ))
    }
}

impl Summary {
    /// A run's summary: its arms, with `acc_{arm}` derived from them.
    pub fn new(kind: ArchKind, depth: usize, seed: u64, arms: BTreeMap<String, ArmResult>) -> Self {
        let accs = arms
            .iter()
            .map(|(name, a)| (format!("acc_{name}"), a.acc))
            .collect();
        Summary {
            kind,
            depth,
            seed,
            teacher_acc: None,
            teacher_top5: None,
            teacher_seq_acc: None,
            teacher_secs: None,
            deterministic: None,
            arms,
            accs: ArmAccs(accs),
            smoke: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm() -> ArmResult {
        ArmResult {
            acc: 91.5,
            secs: 2.0,
            fits: Some(vec![BlockFit {
                block: 1,
                nmse_train: 0.1,
                nmse_test: f64::NAN,
            }]),
            merge_error: Some(f64::NAN),
            acc_after_merge: Some(90.0),
            dead_after_merge: Some(vec![0, 2]),
            stages: vec![StageLog {
                stage: 0,
                kind: "imitate".into(),
                acc: 80.0,
                final_loss: Some(0.5),
                ..StageLog::default()
            }],
            ..ArmResult::default()
        }
    }

    #[test]
    fn a_summary_reads_back_as_written_nan_and_absence_kept_apart() {
        let mut s = Summary::new(
            ArchKind::Mlp,
            6,
            1,
            [
                ("win".to_string(), arm()),
                ("kd".to_string(), ArmResult::default()),
            ]
            .into(),
        );
        s.teacher_acc = Some(95.0);
        s.deterministic = Some(true);
        let mut v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["acc_win"], 91.5);
        assert_eq!(v["arms"]["win"]["merge_error"], Value::Null);
        assert!(v["arms"]["win"].get("acc_after_head").is_none());
        assert!(v.get("teacher_top5").is_none());
        v["smoke"] = true.into();
        v["wall_seconds"] = 1.5.into();
        let back: Summary = serde_json::from_value(v).unwrap();
        assert!(back.smoke);
        let (a, b) = (&back.arms["win"], &s.arms["win"]);
        assert!(a.merge_error.unwrap().is_nan() && a.fits.as_ref().unwrap()[0].nmse_test.is_nan());
        assert_eq!(a.acc_after_merge, b.acc_after_merge);
        assert_eq!(a.stages, b.stages);
        assert_eq!(a.acc_after_head, None);
        assert_eq!(back.accs.0.len(), 2);
        assert!(back.accs.0["acc_kd"].is_nan());
        assert_eq!(
            reprise_core::plan::sorted_json(&back, true).unwrap(),
            reprise_core::plan::sorted_json(
                &Summary {
                    smoke: false,
                    ..back.clone()
                },
                true
            )
            .unwrap()
        );
    }

    #[test]
    fn an_unfinished_arm_record_reads_with_nan_accuracy() {
        let a: ArmResult = serde_json::from_str(r#"{"stages": [], "fits": []}"#).unwrap();
        assert!(a.acc.is_nan());
        assert_eq!(a.fits, Some(vec![]));
        let e = serde_json::from_str::<Summary>(r#"{"kind": "mlp", "depth": 3}"#).unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
    }
}
