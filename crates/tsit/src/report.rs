//! Reports: one run's metrics, and a sweep's arms over seeds with the small-scale claims
//! (docs/tsit.md: A1–A3 for style transfer, S1–S3 for semantic synthesis, the scenes-AST checks), computed
//! on the final checkpoint and, beside it, on the mean of the last two evaluations.

use crate::claims::{claims_at, group, reference, At};
use crate::summary::{Evaluation, Judged, Metric, Reference, Scores, Summary};
use reprise_core::report::{
    fmt_mean_std, markdown_table, mean_std, ClaimRow, Claims, Outcome, Verdict,
};
use reprise_core::run::{finished_run, RunSummary};
use reprise_core::Result;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn metric_rows(j: &Judged) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for m in Metric::ALL {
        let v = j.last.get(m);
        if !v.is_finite() {
            continue;
        }
        let mut row = vec![m.name().to_string(), format!("{v:.4}")];
        row.push(format!("{:.4}", j.last2.get(m)));
        for r in Reference::ALL {
            let v = j.references.get(r).map_or(f64::NAN, |s| s.get(m));
            row.push(if v.is_finite() {
                format!("{v:.4}")
            } else {
                "—".into()
            });
        }
        rows.push(row);
    }
    rows
}

/// One run's report.
pub fn report_run(dir: &Path) -> Result<String> {
    let (h, s) = finished_run::<Summary>(dir)?;
    let mut md = format!("# {} — seed {}\n\n{}\n\n", h.name, h.seed, h.description);
    let task = serde_json::to_value(s.task).map_err(|e| reprise_core::Error::msg(e.to_string()))?;
    let _ = writeln!(
        md,
        "Task `{}`, arm `{}`, {} iterations at batch {} ({:.1} ms per iteration); G {} parameters, D {}.\n",
        task.as_str().unwrap_or("?"),
        s.arm.name(),
        s.iterations,
        s.batch,
        s.step_ms,
        s.params_g,
        s.params_d
    );
    let j = match &s.evaluation {
        Evaluation::Folder(f) => {
            let _ = writeln!(
                md,
                "{} test outputs in `test_outputs/`: {}.",
                f.test_outputs, f.evaluation
            );
            md += "\n![grid](figures/grid.png)\n\nColumns: content (or label map) | style | output | target.\n";
            return Ok(md);
        }
        Evaluation::Judged(j) => j,
    };
    md += &markdown_table(
        &[
            "metric",
            "final",
            "mean of last two evals",
            "identity",
            "pixAdaIN",
            "oracle / real",
        ],
        &metric_rows(j),
    );
    let _ = writeln!(md, "\nFIDp floor (two real sets): {:.4}.", j.fidp_floor);
    if let Some(d) = j.bn1_cancel_max_diff.filter(|d| d.is_finite()) {
        let d0 = j
            .bn1_cancel_max_diff_eps0
            .filter(|v| v.is_finite())
            .map_or(String::new(), |v| format!("; {v:.1e} with BN ε = 1e-12"));
        let _ = writeln!(
            md,
            "\nbn1-cancel diagnostic (B = 1, train-mode BN; FAdaIN off at learned-skip blocks): max |Δ| = {d:.2e} with the model's BN ε = 1e-5 ({}){d0}.",
            if d < 1e-4 { "below 1e-4" } else { "above 1e-4" }
        );
    }
    if let Some(a) = &j.alpha_sweep {
        md += "\n## α sweep at test (trained with α = 1)\n\n";
        let rows: Vec<Vec<String>> = a
            .iter()
            .map(|e| {
                let m = &e.metrics;
                vec![
                    format!("{}", e.alpha),
                    format!("{:.4}", m.get(Metric::StyleErr)),
                    format!("{:.4}", m.get(Metric::ContentAcc)),
                    format!("{:.4}", m.get(Metric::Fidp)),
                ]
            })
            .collect();
        md += &markdown_table(&["α", "StyleErr", "content acc", "FIDp"], &rows);
    }
    md += "\n## Evaluations during training\n\n";
    let rows: Vec<Vec<String>> = j
        .evals
        .iter()
        .map(|e| {
            let m = &e.metrics;
            vec![
                e.step.to_string(),
                format!("{:.4}", m.kept()),
                format!("{:.4}", m.get(Metric::Fidp)),
                format!("{:.4}", m.get(Metric::StyleErr)),
                format!("{:.4}", m.get(Metric::L1)),
            ]
        })
        .collect();
    md += &markdown_table(
        &["step", "content acc / mIoU", "FIDp", "StyleErr", "L1"],
        &rows,
    );
    md += "\n![grid](figures/grid.png)\n\nColumns: content (or label map) | style | output | target.\n";
    Ok(md)
}

/// A sweep's report: every arm over seeds, the claims on the final checkpoint (the verdict)
/// and on the mean of the last two evaluations; writes `claims.json`.
pub fn report_sweep(dir: &Path, runs: &[RunSummary]) -> Result<String> {
    let arms = group(runs)?;
    let name = runs
        .first()
        .and_then(|r| r.spec.header().ok())
        .map(|h| h.name)
        .unwrap_or_default();
    let mut md = format!("# {name}: sweep report\n\n");
    let smoke = runs.iter().any(RunSummary::smoke);
    if smoke {
        md += reprise_core::report::SMOKE_BANNER;
    }
    let expected = reprise_core::run::expected_runs(dir);
    if expected.len() > runs.len() {
        let _ = writeln!(
            md,
            "**{} of {} runs finished**; the claims below use the finished ones.\n",
            runs.len(),
            expected.len()
        );
    }
    let ast = arms.contains_key("full");
    use Metric::*;
    let cols: &[Metric] = if ast {
        &[ContentAcc, StyleErr, HistDist, Fidp, L1, Psnr, SegMiou]
    } else {
        &[SegMiou, SegAcc, Fidp, L1, Psnr]
    };
    let mut header = vec!["arm", "seeds"];
    header.extend(cols.iter().map(|m| m.name()));
    header.push("ms / iter");
    let mut rows = Vec::new();
    for (arm, v) in &arms {
        let mut r = vec![arm.clone(), v.by_seed.len().to_string()];
        for &m in cols {
            let x = v.vals(At::Final, m);
            r.push(if x.iter().all(|a| a.is_nan()) {
                "—".into()
            } else {
                fmt_mean_std(&x, 4)
            });
        }
        let ms: Vec<f64> = v.by_seed.values().map(|s| s.step_ms).collect();
        r.push(format!("{:.0}", mean_std(&ms).0));
        rows.push(r);
    }
    for r in Reference::ALL {
        if cols.iter().all(|&m| reference(&arms, r, m).is_nan()) {
            continue;
        }
        let mut row = vec![format!("*{}* (reference)", r.name()), "—".into()];
        for &m in cols {
            let v = reference(&arms, r, m);
            row.push(if v.is_nan() {
                "—".into()
            } else {
                format!("{v:.4}")
            });
        }
        row.push("—".into());
        rows.push(row);
    }
    md += "## Final checkpoint, mean ± std over seeds\n\n";
    md += &markdown_table(&header, &rows);
    let (verdict, claims) = claims_at(&arms, At::Final);
    let (verdict2, claims2) = claims_at(&arms, At::Last2);
    let table = |c: &[ClaimRow]| reprise_core::report::claims_table(c, false);
    let v = verdict
        .clone()
        .unwrap_or_else(|| Verdict::new(Outcome::Incomplete, "an arm is missing"));
    // A smoke run's numbers mean nothing: its claims are listed without verdicts (at the top).
    if !smoke {
        md += "\n## Claims on the final checkpoint: the verdict\n\n";
        md += &table(&claims);
        let _ = writeln!(md, "\n**Verdict:** {}.\n", v.bold());
        md += "## The same claims on the mean of the last two evaluations, for comparison\n\n";
        md += &table(&claims2);
        let _ = writeln!(
            md,
            "\nOn that basis: {}.\n",
            verdict2.map_or_else(|| Outcome::Incomplete.word().to_string(), |v| v.sentence())
        );
    }
    // The α sweep at test, averaged over the full arm's seeds (trained with α = 1).
    if let Some(full) = arms.get("full") {
        let mut by_alpha: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for s in full.by_seed.values() {
            let Some(j) = s.judged() else {
                continue;
            };
            // Content kept: the digit classifier's accuracy, or the segmenter's mIoU (scenes).
            let point = |m: &Scores| (m.get(StyleErr), m.kept(), m.get(Fidp));
            for e in j.alpha_sweep.iter().flatten() {
                by_alpha
                    .entry(format!("{}", e.alpha))
                    .or_default()
                    .push(point(&e.metrics));
            }
            by_alpha
                .entry("1 (trained)".into())
                .or_default()
                .push(point(&j.last));
        }
        if by_alpha.len() > 1 {
            md +=
                "\n## FAdaIN α at test (the full arm, trained with α = 1; the paper's Sec. 3)\n\n";
            let rows: Vec<Vec<String>> = by_alpha
                .iter()
                .map(|(a, v)| {
                    let col = |f: fn(&(f64, f64, f64)) -> f64| {
                        fmt_mean_std(&v.iter().map(f).collect::<Vec<_>>(), 4)
                    };
                    vec![a.clone(), col(|x| x.0), col(|x| x.1), col(|x| x.2)]
                })
                .collect();
            md += &markdown_table(
                &[
                    "α",
                    "StyleErr",
                    "content acc (digits) / seg mIoU (scenes)",
                    "FIDp",
                ],
                &rows,
            );
        }
    }
    md += "\n## Image grids (first seed of each arm; each grid's columns are labelled)\n\n";
    let mut shown = std::collections::BTreeSet::new();
    for r in runs {
        let arm = r.parse::<Summary>()?.arm.name();
        if r.dir.join("figures/grid.png").is_file() && shown.insert(arm) {
            let _ = writeln!(
                md,
                "**{arm}** (`{}`)\n\n![{arm}]({}/figures/grid.png)\n",
                r.name, r.name
            );
        }
    }
    let claims = Claims::new(&v, claims);
    let claims = if smoke { claims.withheld() } else { claims };
    claims.write(dir)?;
    Ok(claims.open_report(&md))
}
