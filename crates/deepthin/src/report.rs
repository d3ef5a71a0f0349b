//! Reports: one run's arms, and a sweep's table over depths and seeds with the small-scale
//! claims C0–C4 (docs/deepthin.md), computed from the runs' summaries.

use crate::claims::{conv_verdicts, finite, stream_verdicts, PerSeed};
pub use crate::claims::{verdicts, Results, WinRun};
use crate::summary::Summary;
use reprise_core::plot::{panels_plot, Panel, Series};
use reprise_core::report::{fmt_mean_std, markdown_table, mean_std};
use reprise_core::run::RunSummary;
use reprise_core::spec::SpecTree;
use reprise_core::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The report of one run.
pub fn report_run(dir: &Path) -> Result<String> {
    let (h, s) = reprise_core::run::finished_run::<Summary>(dir)?;
    let mut md = format!(
        "# {} — depth {}, seed {}\n\n{}\n\n",
        h.name, s.depth, h.seed, h.description,
    );
    md += &match finite(s.teacher_acc) {
        Some(t) => format!("Teacher test accuracy: {t:.2} %.\n\n"),
        None => "No teacher in this run (no arm needs one).\n\n".into(),
    };
    let mut rows = Vec::new();
    // Top-5 where the runs measure it (the convolutional families).
    let top5 = s.arms.values().any(|x| x.top5.is_some());
    for (name, a) in &s.arms {
        let mut row = vec![name.clone(), format!("{:.2}", a.acc)];
        if top5 {
            row.push(a.top5.map_or("—".into(), |v| format!("{v:.2}")));
        }
        row.extend([
            a.acc_after_merge.map_or("—".into(), |v| format!("{v:.2}")),
            a.merge_error.map_or("—".into(), |v| format!("{v:.1e}")),
            format!("{:.1}", a.secs),
        ]);
        rows.push(row);
    }
    let mut header = vec!["arm", "test accuracy %"];
    if top5 {
        header.push("top-5 %");
    }
    header.extend(["after merge %", "merge error", "seconds"]);
    md += &markdown_table(&header, &rows);
    if let Some(fits) = s.arms.get("win").and_then(|w| w.fits.as_ref()) {
        md += "\nWIN imitation, normalised error (MSE / teacher feature variance) per block:\n\n";
        let rows: Vec<Vec<String>> = fits
            .iter()
            .map(|f| {
                vec![
                    f.block.to_string(),
                    format!("{:.3}", f.nmse_train),
                    format!("{:.3}", f.nmse_test),
                ]
            })
            .collect();
        md += &markdown_table(&["block", "train", "test"], &rows);
    }
    Ok(md)
}

/// A table of arms (rows) by depth (columns): mean ± std over seeds.
fn arm_table(m: &PerSeed, depths: &[usize]) -> String {
    let arms: BTreeSet<String> = m.keys().map(|k| k.0.clone()).collect();
    let mut header = vec!["arm".to_string()];
    header.extend(depths.iter().map(|n| format!("depth {n}")));
    let mut rows = Vec::new();
    for a in &arms {
        let mut row = vec![format!("`{a}`")];
        for &n in depths {
            row.push(m.get(&(a.clone(), n)).map_or("—".into(), |m| {
                let v: Vec<f64> = m.values().copied().collect();
                format!("{} (n={})", fmt_mean_std(&v, 2), v.len())
            }));
        }
        rows.push(row);
    }
    markdown_table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    )
}

/// The sweep report.
pub fn report_sweep(dir: &Path, runs: &[RunSummary]) -> Result<String> {
    let spec = SpecTree::load(&dir.join("sweep.yaml"))?;
    let h = spec.header()?;
    let summaries = runs
        .iter()
        .map(RunSummary::parse::<Summary>)
        .collect::<Result<Vec<_>>>()?;
    let r = Results::collect(&summaries);
    let smoke = runs.iter().any(RunSummary::smoke);
    let mut md = format!("# {}\n\n{}\n\n", h.name, h.description);
    if smoke {
        md += reprise_core::report::SMOKE_BANNER;
    }
    let depths = r.depths();
    md += "## Test accuracy (%), mean ± std over seeds\n\n";
    md += &arm_table(&r.acc, &depths);
    if !r.seq.is_empty() {
        md += "\n## Sequences entirely right (%), mean ± std over seeds\n\n";
        md += &arm_table(&r.seq, &depths);
    }
    if !r.top5.is_empty() {
        md += "\n## Top-5 test accuracy (%), mean ± std over seeds\n\n";
        md += &arm_table(&r.top5, &depths);
    }
    if !r.secs.is_empty() {
        md += "\n## Seconds per arm (each run's process; the teacher is trained once per run and shared)\n\n";
        md += &arm_table(&r.secs, &depths);
    }
    // WIN right after the merge, and its imitation error.
    let after: BTreeMap<usize, Vec<f64>> = r.win.iter().fold(BTreeMap::new(), |mut m, w| {
        m.entry(w.depth)
            .or_insert_with(Vec::new)
            .push(w.acc_after_merge);
        m
    });
    if r.kind != "mlp" {
        let mut v: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for s in &summaries {
            let head = s.arms.get("win-copy-head").and_then(|a| a.acc_after_head);
            if let Some(a) = finite(head) {
                v.entry(s.depth as u64).or_default().push(a);
            }
        }
        if !v.is_empty() {
            let per: Vec<String> = v
                .iter()
                .map(|(n, a)| format!("depth {n}: {} %", fmt_mean_std(a, 2)))
                .collect();
            let _ = writeln!(
                md,
                "\n`win-copy-head` right after imitation, with the teacher's head and before any fine-tuning: {}",
                per.join("; ")
            );
        }
    } else if !after.is_empty() {
        md += "\nWIN right after imitation and merge, before any fine-tuning (arm c6): ";
        md += &after
            .iter()
            .map(|(n, v)| format!("depth {n}: {} %", fmt_mean_std(v, 2)))
            .collect::<Vec<_>>()
            .join("; ");
        md += "\n";
    }
    let mut fits: BTreeMap<u64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let hi = depths.last().copied().unwrap_or(0);
    for s in summaries.iter().filter(|s| s.depth == hi) {
        if let Some(f) = s.arms.get("win").and_then(|w| w.fits.as_ref()) {
            for x in f {
                let e = fits.entry(x.block as u64).or_default();
                e.0.push(x.nmse_train);
                e.1.push(x.nmse_test);
            }
        }
    }
    if !fits.is_empty() {
        let _ = writeln!(md, "\nWIN per-block imitation error at depth {hi} (MSE / teacher feature variance; mean ± std over seeds):\n");
        let rows: Vec<Vec<String>> = fits
            .iter()
            .map(|(b, (tr, te))| vec![b.to_string(), fmt_mean_std(tr, 3), fmt_mean_std(te, 3)])
            .collect();
        md += &markdown_table(&["block", "train", "test"], &rows);
    }
    // Accuracy vs depth.
    // Depths as categories, evenly apart (4, 8, 16 would crowd the first two on a linear axis).
    let ticks: Vec<(f64, String)> = depths
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64, n.to_string()))
        .collect();
    let series: Vec<Series> = ["teacher", "scratch", "kd", "kd-t4", "win"]
        .iter()
        .filter_map(|a| {
            let pts: Vec<(f64, f64, f64)> = depths
                .iter()
                .enumerate()
                .filter_map(|(i, &n)| {
                    let v: Vec<f64> = r.acc.get(&(a.to_string(), n))?.values().copied().collect();
                    let (m, s) = mean_std(&v);
                    Some((i as f64, m, s))
                })
                .collect();
            (pts.len() > 1).then(|| Series {
                name: (*a).to_string(),
                points: pts.iter().map(|p| (p.0, p.1)).collect(),
                std: Some(pts.iter().map(|p| p.2).collect()),
            })
        })
        .collect();
    if !series.is_empty() {
        let figs = dir.join("figures");
        std::fs::create_dir_all(&figs).map_err(|e| Error::Io(figs.clone(), e))?;
        panels_plot(
            &figs.join("acc-vs-depth.png"),
            "Test accuracy vs depth (±1 std)",
            &[Panel {
                title: "",
                x_label: "depth n",
                y_label: "accuracy (%)",
                series: &series,
                x_ticks: Some(&ticks),
            }],
        )?;
        md += "\n![accuracy vs depth](figures/acc-vs-depth.png)\n";
    }
    let conv = r.kind == "resnet" || r.kind == "wrn";
    let (claims_md, claims) = if r.kind == "mlp" {
        verdicts(&r)
    } else if conv {
        conv_verdicts(&r)
    } else {
        stream_verdicts(&r)
    };
    // A smoke run's numbers mean nothing: its claims are listed without verdicts, and the
    // verdict's arithmetic is left out.
    let claims = if smoke {
        claims.withheld()
    } else {
        md += &claims_md;
        claims
    };
    claims.write(dir)?;
    if !conv {
        md += "\nThe paper's claims (ImageNet and SQuAD; numbers unverified, claims verified from the abstracts): ResNet-50 trained with WIN outperforms a normally trained ResNet-101 — not tested here (no ImageNet); BERT-base trained with WIN is comparable with BERT-large on SQuAD — not tested here.\n";
    }
    let _ = writeln!(md, "\nGenerated from {} finished runs.", runs.len());
    Ok(claims.open_report(&md))
}
