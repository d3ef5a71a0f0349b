//! `runner compare A B`: a variant's sweep (or run) beside its parent's, metric by metric.

use anyhow::{bail, Result};
use reprise_core::report::point_of;
use reprise_core::run::{finished_runs, read_summary};
use std::collections::BTreeMap;
use std::path::Path;

/// One metric of one group of runs (the runs of a sweep point, over its seeds).
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// Mean over the runs that report it.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub std: f64,
    /// Runs that report it.
    pub n: usize,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let (mean, std) = reprise_core::report::mean_std(v);
        Some(Stat {
            mean,
            std,
            n: v.len(),
        })
    }
}

/// Whether `b − a` exceeds the seed spread: more than twice the standard error of the
/// difference, sqrt(s_a²/n_a + s_b²/n_b). `None` when either side has a single run (no spread
/// to compare with).
pub fn beyond_spread(a: &Stat, b: &Stat) -> Option<bool> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let se = (a.std.powi(2) / a.n as f64 + b.std.powi(2) / b.n as f64).sqrt();
    Some((b.mean - a.mean).abs() > 2.0 * se)
}

/// The numbers of a summary, by key (nested objects flattened as `a.b`; non-numbers left out).
fn numbers(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numbers(&key, x, out);
            }
        }
        _ => {}
    }
}

/// Keys that describe a run rather than measure it.
const NOT_METRICS: [&str; 4] = ["seed", "source_seed", "smoke", "iterations"];

/// Every metric of every group of a sweep folder (or of one run folder), over the seeds; a
/// group is a sweep point ([`point_of`]: the run's name without its seed, `(all)` for none).
pub fn stats(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, Stat>>> {
    let mut values: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut add = |group: String, summary: &serde_json::Value| {
        let mut nums = BTreeMap::new();
        numbers("", summary, &mut nums);
        let g = values.entry(group).or_default();
        for (k, v) in nums {
            let timing = k.ends_with("_secs") || k.ends_with("wall") || k.contains("time");
            if !NOT_METRICS.contains(&k.as_str()) && !timing {
                g.entry(k).or_default().push(v);
            }
        }
    };
    if dir.join("spec.yaml").is_file() {
        let Some(s) = read_summary(dir) else {
            bail!("{} has not finished (no summary.json)", dir.display());
        };
        add(point_of(""), &s);
    } else if dir.join("sweep.json").is_file() {
        let runs = finished_runs(dir)?;
        if runs.is_empty() {
            bail!("{} has no finished run", dir.display());
        }
        for r in &runs {
            add(point_of(&r.name), &r.summary);
        }
    } else {
        bail!(
            "{} is neither a run folder (spec.yaml) nor a sweep folder (sweep.json)",
            dir.display()
        );
    }
    Ok(values
        .into_iter()
        .map(|(g, m)| {
            let m = m
                .into_iter()
                .filter_map(|(k, v)| Stat::of(&v).map(|s| (k, s)))
                .collect();
            (g, m)
        })
        .collect())
}

fn cell(s: Option<&Stat>) -> String {
    match s {
        None => "—".to_string(),
        Some(s) if s.n > 1 => format!("{:.4} ± {:.4} (n={})", s.mean, s.std, s.n),
        Some(s) => format!("{:.4}", s.mean),
    }
}

/// The comparison table of `b` (the variant) beside `a` (its parent), as markdown.
pub fn table(a: &Path, b: &Path) -> Result<String> {
    let (sa, sb) = (stats(a)?, stats(b)?);
    let mut out = format!(
        "A: {}\nB: {}\nB − A per metric; \"beyond spread\": |B − A| > 2·sqrt(s_A²/n_A + s_B²/n_B) \
         over the seeds (— with a single run on either side).\n\n\
         | run | metric | A | B | B − A | beyond spread |\n|---|---|---|---|---|---|\n",
        a.display(),
        b.display()
    );
    let groups: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
    let empty = BTreeMap::new();
    let mut rows = 0;
    for g in groups {
        let (ma, mb) = (sa.get(g).unwrap_or(&empty), sb.get(g).unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            let (x, y) = (ma.get(k), mb.get(k));
            let (diff, beyond) = match (x, y) {
                (Some(x), Some(y)) => (
                    format!("{:+.4}", y.mean - x.mean),
                    match beyond_spread(x, y) {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "—",
                    },
                ),
                _ => ("—".to_string(), "—"),
            };
            out.push_str(&format!(
                "| {g} | {k} | {} | {} | {diff} | {beyond} |\n",
                cell(x),
                cell(y)
            ));
            rows += 1;
        }
    }
    if rows == 0 {
        bail!(
            "no metric to compare in {} and {}",
            a.display(),
            b.display()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_the_seed_and_spread_decides_beyond() {
        assert_eq!(point_of("arm=jem,seed=3"), "arm=jem");
        assert_eq!(point_of("seed=0"), "(all)");
        assert_eq!(point_of("lr=0.1,width=8,seed=1"), "lr=0.1,width=8");
        let a = Stat::of(&[0.80, 0.82, 0.81]).unwrap();
        assert!((a.mean - 0.81).abs() < 1e-12 && (a.std - 0.01).abs() < 1e-12);
        let near = Stat::of(&[0.81, 0.83, 0.82]).unwrap();
        let far = Stat::of(&[0.90, 0.91, 0.92]).unwrap();
        assert_eq!(beyond_spread(&a, &near), Some(false));
        assert_eq!(beyond_spread(&a, &far), Some(true));
        assert_eq!(beyond_spread(&a, &Stat::of(&[0.9]).unwrap()), None);
    }
}
