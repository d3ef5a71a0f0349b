//! The summary of one run (`summary.json`) and the source's evaluation (`source.json`): the
//! structs the run writes and the reports read, so a misspelt metric is a compile error.

use crate::config::Arm;
use crate::transfer::{Mode, Outcome};
use reprise_core::run::nan_if_null;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The source's evaluation on its holdout (`source.json`, and part of the summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMetrics {
    /// Clean accuracy (%).
    #[serde(deserialize_with = "nan_if_null")]
    pub src_clean: f64,
    /// Accuracy (%) under PGD at each evaluation point (`l2-0.5`, `linf-0.0078…`).
    pub src_robust: BTreeMap<String, f64>,
    /// Milliseconds per training step of the source (NaN when it was loaded, not trained).
    #[serde(deserialize_with = "nan_if_null")]
    pub source_step_ms: f64,
}

/// What one run measured: its source, and every transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The source's arm.
    pub arm: Arm,
    /// Its kind (`std`, `l2`, `linf`, `noise`), for tables.
    pub kind: String,
    /// Its ε (0 for `std`).
    pub eps: f64,
    /// The run's seed, the source's.
    pub source_seed: u64,
    /// The source's evaluation (absent when a loaded source is only transferred).
    #[serde(flatten)]
    pub source: Option<SourceMetrics>,
    /// The mean test accuracy (%) over transfer seeds, per mode and target.
    #[serde(flatten)]
    pub means: Means,
    /// Every transfer.
    pub transfers: Vec<Outcome>,
    /// A `--smoke` run (written by the run context, beside `wall_seconds`).
    #[serde(default, skip_serializing)]
    pub smoke: bool,
}

impl Summary {
    /// The source's clean accuracy (%), NaN when it was not evaluated.
    pub fn src_clean(&self) -> f64 {
        self.source.as_ref().map_or(f64::NAN, |s| s.src_clean)
    }

    /// The source's accuracy (%) under PGD at an evaluation point, when it was evaluated there.
    pub fn src_robust(&self, point: &str) -> Option<f64> {
        self.source.as_ref()?.src_robust.get(point).copied()
    }
}

/// Mean transfer accuracies keyed `{mode}_{target}` (`fixed_mnist-rot`, `full_cifar10`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Means(pub BTreeMap<String, f64>);

impl<'de> Deserialize<'de> for Means {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Means, D::Error> {
        let rest = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(Means(
            rest.into_iter()
                .filter(|(k, _)| {
                    [Mode::Fixed, Mode::Full]
                        .iter()
                        .any(|m| k.strip_prefix(m.name()).is_some_and(|r| r.starts_with('_')))
                })
                .map(|(k, v)| (k, v.as_f64().unwrap_or(f64::NAN)))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_core::attack::Norm;

    fn summary(source: Option<SourceMetrics>) -> Summary {
        Summary {
            arm: Arm::Adv(Norm::Linf, 4.0 / 255.0),
            kind: "linf".into(),
            eps: 4.0 / 255.0,
            source_seed: 3,
            source,
            means: Means([("fixed_digits".to_string(), 81.5)].into()),
            transfers: vec![Outcome {
                target: "digits".into(),
                mode: Mode::Fixed,
                seed: 0,
                acc: 81.5,
                mpc_acc: 80.0,
                lr: 0.1,
                train: 100,
                test: 50,
                secs: 1.0,
            }],
            smoke: false,
        }
    }

    #[test]
    fn a_summary_reads_back_as_written_with_or_without_its_source() {
        let src = SourceMetrics {
            src_clean: 97.0,
            src_robust: [("linf-0.01568627450980392".to_string(), 60.0)].into(),
            source_step_ms: f64::NAN,
        };
        let s = summary(Some(src));
        let mut v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["arm"], "linf-0.01568627450980392");
        assert_eq!(v["source_step_ms"], Value::Null);
        assert_eq!(v["fixed_digits"], 81.5);
        v["smoke"] = true.into();
        v["wall_seconds"] = 2.0.into();
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back.arm, s.arm);
        assert!(back.smoke);
        assert_eq!(back.means, s.means);
        assert_eq!(back.src_robust("linf-0.01568627450980392"), Some(60.0));
        assert!(back.source.unwrap().source_step_ms.is_nan());
        // A transfer-only run has no source keys.
        let s = summary(None);
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("src_clean").is_none());
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        assert!(back.src_clean().is_nan());
    }

    #[test]
    fn a_bad_arm_is_an_error_naming_it() {
        let mut v = serde_json::to_value(summary(None)).unwrap();
        v["arm"] = "l3-0.5".into();
        let e = serde_json::from_value::<Summary>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("l3-0.5"), "{e}");
    }
}
