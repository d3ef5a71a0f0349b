//! The summary of one run (`summary.json`): the one struct the run writes and the reports read,
//! so a misspelt metric is a compile error rather than a NaN in a table.

use reprise_core::metrics::Bin;
use reprise_core::run::nan_if_null;
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The OOD scores, in the order of [`Auroc::scores`]'s arrays.
pub const SCORES: [&str; 3] = ["px", "py", "pxgrad"];

/// What one run measured at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The arm's name (`base`, `jem`, `base-long`).
    pub arm: String,
    /// Training iterations run.
    pub iterations: u64,
    /// Milliseconds per training iteration (evaluation excluded).
    #[serde(deserialize_with = "nan_if_null")]
    pub step_ms: f64,
    /// Classes of the dataset.
    pub classes: usize,
    /// The shape of one image (C, H, W).
    pub shape: Vec<i64>,
    /// Test accuracy in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub acc: f64,
    /// Test negative log-likelihood.
    #[serde(deserialize_with = "nan_if_null")]
    pub nll: f64,
    /// Test expected calibration error in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub ece: f64,
    /// Mean confidence minus accuracy (positive: over-confident).
    #[serde(deserialize_with = "nan_if_null")]
    pub conf_minus_acc: f64,
    /// The reliability diagram's bins.
    pub reliability: Vec<Bin>,
    /// The AUROC of log p(x), averaged over the four procedural OOD sets.
    #[serde(deserialize_with = "nan_if_null")]
    pub auroc_px_mean: f64,
    /// The share of conditional samples nearer a training image than any test image is
    /// (absent when no samples were drawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realism_share: Option<f64>,
    /// The share of conditional samples the run's own model classifies as their target class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_agreement: Option<f64>,
    /// FID of the conditional samples against the test images (with `eval.fid_inception`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_samples: Option<f64>,
    /// FID of the replay buffer against the test images (with `eval.fid_inception`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_buffer: Option<f64>,
    /// The AUROC of each score on each OOD set, and the accuracy under each PGD attack.
    #[serde(flatten)]
    pub scores: Scores,
    /// A `--smoke` run (written by the run context, beside `wall_seconds`).
    #[serde(default, skip_serializing)]
    pub smoke: bool,
}

/// The summary's families of keyed values: `auroc_{score}_{set}` and `pgd_{norm}_{eps}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    /// Per OOD set, the AUROC of log p(x), max p(y|x) and −‖∇ₓ log p(x)‖ (test = positive).
    pub auroc: BTreeMap<String, [f64; 3]>,
    /// Accuracy under PGD, as (norm `linf`/`l2`, ε, accuracy), in the order of their keys.
    pub pgd: Vec<(String, f64, f64)>,
}

impl Summary {
    /// The AUROC of `score` (one of [`SCORES`]) on `set`, NaN when not measured.
    pub fn auroc(&self, score: &str, set: &str) -> f64 {
        let i = SCORES.iter().position(|s| *s == score);
        match (i, self.scores.auroc.get(set)) {
            (Some(i), Some(a)) => a[i],
            _ => f64::NAN,
        }
    }

    /// The realism share, NaN when no samples were drawn.
    pub fn realism(&self) -> f64 {
        self.realism_share.unwrap_or(f64::NAN)
    }
}

impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (set, a) in &self.auroc {
            for (score, v) in SCORES.iter().zip(a) {
                m.serialize_entry(
                    &format!("auroc_{score}_{set}"),
                    &reprise_core::run::json_f64(*v),
                )?;
            }
        }
        for (norm, eps, acc) in &self.pgd {
            m.serialize_entry(&format!("pgd_{norm}_{eps}"), acc)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Scores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scores, D::Error> {
        let rest = BTreeMap::<String, Value>::deserialize(d)?;
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let mut out = Scores::default();
        for (k, v) in &rest {
            if let Some((score, set)) = k.strip_prefix("auroc_").and_then(|r| r.split_once('_')) {
                let Some(i) = SCORES.iter().position(|s| *s == score) else {
                    continue;
                };
                if set != "mean" {
                    out.auroc.entry(set.to_string()).or_insert([f64::NAN; 3])[i] = num(v);
                }
            } else if let Some((norm, eps)) = k.strip_prefix("pgd_").and_then(|r| r.split_once('_'))
            {
                let eps = eps.parse::<f64>().map_err(|_| {
                    serde::de::Error::custom(format!("{k}: the attack's ε is not a number"))
                })?;
                out.pgd.push((norm.to_string(), eps, num(v)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            arm: "jem".into(),
            iterations: 300,
            step_ms: 12.5,
            classes: 10,
            shape: vec![1, 8, 8],
            acc: 0.9,
            nll: 0.31,
            ece: f64::NAN,
            conf_minus_acc: -0.02,
            reliability: vec![Bin {
                lo: 0.0,
                hi: 1.0,
                count: 3,
                confidence: 0.5,
                accuracy: 0.6,
            }],
            auroc_px_mean: 0.7,
            realism_share: Some(0.4),
            self_agreement: None,
            fid_samples: None,
            fid_buffer: None,
            scores: Scores {
                auroc: [
                    ("inverted".to_string(), [0.6, 0.7, 0.8]),
                    ("my_set".to_string(), [0.1, f64::NAN, 0.3]),
                ]
                .into(),
                pgd: vec![("l2".into(), 0.5, 0.25), ("linf".into(), 0.03137, 0.125)],
            },
            smoke: false,
        }
    }

    /// NaN-tolerant equality through the JSON text.
    fn same(a: &Summary, b: &Summary) -> bool {
        serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
    }

    #[test]
    fn a_summary_reads_back_as_written_with_nan_as_null() {
        let s = summary();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["auroc_px_inverted"], 0.6);
        assert_eq!(v["auroc_py_my_set"], Value::Null);
        assert_eq!(v["pgd_linf_0.03137"], 0.125);
        assert_eq!(v["ece"], Value::Null);
        assert!(v.get("smoke").is_none() && v.get("fid_buffer").is_none());
        let back: Summary = serde_json::from_value(v).unwrap();
        assert!(same(&s, &back), "{back:?}");
        assert!(back.ece.is_nan() && back.auroc("py", "my_set").is_nan());
        assert_eq!(back.auroc("pxgrad", "inverted"), 0.8);
        assert!(back.auroc("px", "uniform").is_nan());
    }

    #[test]
    fn the_run_contexts_fields_and_the_mean_are_not_mistaken_for_sets() {
        let mut v = serde_json::to_value(summary()).unwrap();
        v["smoke"] = true.into();
        v["wall_seconds"] = 3.5.into();
        let back: Summary = serde_json::from_value(v).unwrap();
        assert!(back.smoke);
        assert!(!back.scores.auroc.contains_key("mean"));
        assert_eq!(back.scores.auroc.len(), 2);
    }

    #[test]
    fn a_missing_metric_or_a_bad_attack_key_is_an_error() {
        let mut v = serde_json::to_value(summary()).unwrap();
        v.as_object_mut().unwrap().remove("acc");
        let e = serde_json::from_value::<Summary>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("acc"), "{e}");
        let mut v = serde_json::to_value(summary()).unwrap();
        v["pgd_l2_big"] = 0.1.into();
        let e = serde_json::from_value::<Summary>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pgd_l2_big"), "{e}");
    }
}
