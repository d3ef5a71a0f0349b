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

/// Welch's t-test of the difference of the means of `b` and `a` (unequal variances): its t,
/// its degrees of freedom (Welch–Satterthwaite) and its two-sided p-value. `None` when either
/// side has a single run, or neither varies (no spread to test against).
pub fn welch(a: &Stat, b: &Stat) -> Option<(f64, f64, f64)> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let (va, vb) = (a.std.powi(2) / a.n as f64, b.std.powi(2) / b.n as f64);
    let se2 = va + vb;
    if se2 <= 0.0 {
        return None;
    }
    let t = (b.mean - a.mean) / se2.sqrt();
    let df = se2.powi(2) / (va.powi(2) / (a.n - 1) as f64 + vb.powi(2) / (b.n - 1) as f64);
    // P(|T| ≥ |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
    let p = incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    Some((t, df, p.clamp(0.0, 1.0)))
}

/// Holm's step-down adjustment of p-values for multiple comparisons (family-wise error): each
/// adjusted p is at least the one below it in the order of the raw ones.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f / a
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

/// Whether a summary key is a time (a step's milliseconds, a wall time): how fast, not what a
/// run found, and machine-dependent, so not compared.
fn is_timing(k: &str) -> bool {
    let leaf = k.rsplit('.').next().unwrap_or(k);
    leaf.ends_with("_secs")
        || leaf.ends_with("_seconds")
        || leaf.ends_with("_ms")
        || leaf.contains("wall")
        || leaf.contains("time")
}

/// Every metric of every group of a sweep folder (or of one run folder), over the seeds; a
/// group is a sweep point ([`point_of`]: the run's name without its seed, `(all)` for none).
pub fn stats(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, Stat>>> {
    let mut values: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut add = |group: String, summary: &serde_json::Value| {
        let mut nums = BTreeMap::new();
        numbers("", summary, &mut nums);
        let g = values.entry(group).or_default();
        for (k, v) in nums {
            if !NOT_METRICS.contains(&k.as_str()) && !is_timing(&k) {
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

/// The resolved spec of a run or sweep folder, flattened to dotted keys (seeds and the seed left
/// out: they are compared separately).
fn spec_values(dir: &Path) -> BTreeMap<String, String> {
    let file = if dir.join("spec.yaml").is_file() {
        dir.join("spec.yaml")
    } else {
        dir.join("sweep.yaml")
    };
    let mut out = BTreeMap::new();
    if let Ok(t) = reprise_core::spec::SpecTree::load(&file) {
        flatten("", &reprise_core::spec::to_json(t.value()), &mut out);
    }
    out.retain(|k, _| k != "seed" && k != "seeds");
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The seeds the runs of a folder ran with (from their names, `seed=K`; a run folder's own).
fn seeds(dir: &Path) -> std::collections::BTreeSet<u64> {
    let mut out = std::collections::BTreeSet::new();
    if dir.join("spec.yaml").is_file() {
        if let Ok(h) =
            reprise_core::spec::SpecTree::load(&dir.join("spec.yaml")).and_then(|t| t.header())
        {
            out.insert(h.seed);
        }
        return out;
    }
    for r in finished_runs(dir).unwrap_or_default() {
        if let Some(s) = r
            .name
            .split(',')
            .find_map(|p| p.strip_prefix("seed=")?.parse().ok())
        {
            out.insert(s);
        }
    }
    out
}

/// The significance level of the table's verdicts, after Holm's correction over its rows.
const ALPHA: f64 = 0.05;

/// The comparison table of `b` (the variant) beside `a` (its parent), as markdown: what differs
/// between their specs, which seeds they share, then each metric's means, the difference,
/// Welch's p-value and its Holm-adjusted value over the table. Timings, and values the same in
/// every run of both sides (constants such as a class count), are left out.
pub fn table(a: &Path, b: &Path) -> Result<String> {
    let (sa, sb) = (stats(a)?, stats(b)?);
    let mut out = format!("A: {}\nB: {}\n\n", a.display(), b.display());
    // What the two specs differ in.
    let (va, vb) = (spec_values(a), spec_values(b));
    let keys: std::collections::BTreeSet<&String> = va.keys().chain(vb.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| va.get(*k) != vb.get(*k) && *k != "name" && *k != "description")
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(absent)".to_string(), Clone::clone);
            format!("`{k}`: {} → {}", show(va.get(k)), show(vb.get(k)))
        })
        .collect();
    if differ.is_empty() {
        out += "The specs are the same (but for the seeds).\n";
    } else {
        out += &format!("The specs differ in: {}.\n", differ.join("; "));
    }
    let (ka, kb) = (seeds(a), seeds(b));
    let shared = ka.intersection(&kb).count();
    out += &if shared == 0 {
        "The two sides share no seeds: the comparison is between independent runs.\n".to_string()
    } else if ka == kb {
        format!(
            "Both sides ran the same {} seed(s): where the specs differ only in what is compared, the \
             runs are paired by seed (the test below does not use the pairing: it is conservative).\n",
            ka.len()
        )
    } else {
        format!(
            "The sides share {shared} seed(s) of {} and {}.\n",
            ka.len(),
            kb.len()
        )
    };
    out += &format!(
        "\nB − A per metric, with Welch's t-test over the seeds (unequal variances; — with a single run \
         on a side or no spread) and its p-value adjusted by Holm's method over the {} tested rows; \
         \"differs\": adjusted p < {ALPHA}. Timings and constants are left out.\n\n\
         | run | metric | A | B | B − A | p | p (Holm) | differs |\n|---|---|---|---|---|---|---|---|\n",
        "{tested}"
    );
    let groups: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
    let empty = BTreeMap::new();
    let mut rows = Vec::new();
    for g in groups {
        let (ma, mb) = (sa.get(g).unwrap_or(&empty), sb.get(g).unwrap_or(&empty));
        let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            let (x, y) = (ma.get(k), mb.get(k));
            // A constant: the same value in every run of both sides.
            if let (Some(x), Some(y)) = (x, y) {
                if x.std == 0.0 && y.std == 0.0 && x.mean == y.mean {
                    continue;
                }
            }
            let test = match (x, y) {
                (Some(x), Some(y)) => welch(x, y),
                _ => None,
            };
            rows.push((g.clone(), k.clone(), x.cloned(), y.cloned(), test));
        }
    }
    if rows.is_empty() {
        bail!(
            "no metric to compare in {} and {}",
            a.display(),
            b.display()
        );
    }
    let ps: Vec<f64> = rows.iter().filter_map(|r| r.4.map(|(_, _, p)| p)).collect();
    let adjusted = holm(&ps);
    let mut next = adjusted.iter();
    let tested = ps.len();
    for (g, k, x, y, test) in &rows {
        let diff = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.4}", y.mean - x.mean),
            _ => "—".to_string(),
        };
        let (p, adj, differs) = match test {
            Some((_, _, p)) => {
                let adj = *next.next().expect("one adjusted p a test");
                (
                    format!("{p:.3}"),
                    format!("{adj:.3}"),
                    if adj < ALPHA { "yes" } else { "no" },
                )
            }
            None => ("—".into(), "—".into(), "—"),
        };
        out.push_str(&format!(
            "| {g} | {k} | {} | {} | {diff} | {p} | {adj} | {differs} |\n",
            cell(x.as_ref()),
            cell(y.as_ref())
        ));
    }
    Ok(out.replace("{tested}", &tested.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_the_seed() {
        assert_eq!(point_of("arm=jem,seed=3"), "arm=jem");
        assert_eq!(point_of("seed=0"), "(all)");
        assert_eq!(point_of("lr=0.1,width=8,seed=1"), "lr=0.1,width=8");
        let a = Stat::of(&[0.80, 0.82, 0.81]).unwrap();
        assert!((a.mean - 0.81).abs() < 1e-12 && (a.std - 0.01).abs() < 1e-12);
    }

    #[test]
    fn welch_gives_the_published_p_values_and_holm_adjusts_them() {
        // [1, 2, 3, 4] against [2, 3, 4, 5]: t = 1.0954, 6 degrees of freedom, p = 0.3153 (the
        // t distribution's tail, as R's t.test and SciPy's ttest_ind(equal_var=False) give it).
        let (a, b) = (
            Stat::of(&[1.0, 2.0, 3.0, 4.0]).unwrap(),
            Stat::of(&[2.0, 3.0, 4.0, 5.0]).unwrap(),
        );
        let (t, df, p) = welch(&a, &b).unwrap();
        assert!(
            (t - 1.095_445).abs() < 1e-5 && (df - 6.0).abs() < 1e-9,
            "{t} {df}"
        );
        assert!((p - 0.315_27).abs() < 1e-4, "{p}");
        // Unequal variances and sizes: [19.8, 20.4, 19.6, 17.8, 18.5, 18.9, 18.3, 18.9, 19.5,
        // 22.0] against [28.2, 26.6, 20.1, 23.3, 25.2, 22.1, 17.7, 27.6, 20.6, 13.7, 23.2, 17.5,
        // 20.6, 18.0, 23.9, 21.6, 24.3, 20.4, 23.9, 13.3]: t = 2.2255, df = 24.52, p = 0.03548
        // (the tail computed independently, by integrating the t density numerically).
        let a = Stat::of(&[19.8, 20.4, 19.6, 17.8, 18.5, 18.9, 18.3, 18.9, 19.5, 22.0]).unwrap();
        let b = Stat::of(&[
            28.2, 26.6, 20.1, 23.3, 25.2, 22.1, 17.7, 27.6, 20.6, 13.7, 23.2, 17.5, 20.6, 18.0,
            23.9, 21.6, 24.3, 20.4, 23.9, 13.3,
        ])
        .unwrap();
        let (t, df, p) = welch(&a, &b).unwrap();
        assert!(
            (t - 2.225_512).abs() < 1e-5 && (df - 24.524_635).abs() < 1e-5,
            "{t} {df}"
        );
        assert!((p - 0.035_485).abs() < 1e-5, "{p}");
        // Two seeds a side, 2.8 standard errors apart (what "beyond 2 standard errors" called a
        // difference): with 2 degrees of freedom, not significant.
        let (x, y) = (
            Stat::of(&[0.90, 0.91]).unwrap(),
            Stat::of(&[0.92, 0.93]).unwrap(),
        );
        let (_, _, p) = welch(&x, &y).unwrap();
        assert!(p > 0.05, "{p}");
        assert_eq!(welch(&x, &Stat::of(&[0.9]).unwrap()), None);
        assert_eq!(holm(&[0.01, 0.04, 0.03]), vec![0.03, 0.06, 0.06]);
        assert_eq!(holm(&[0.5, 0.001]), vec![0.5, 0.002]);
    }
}
