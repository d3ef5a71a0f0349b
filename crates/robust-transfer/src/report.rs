//! Reports: one run's (source metrics and transfer accuracies), and a sweep's: `results.csv`,
//! accuracy-vs-ε plots, the best ε per target beside the paper's, and the claims V0 and R1–R4
//! computed from the runs' summaries.

use crate::claims::same_arm;
pub use crate::claims::{collect, verdicts, Results, Row, Source};
use crate::config::{Arm, Config, SECTION};
use crate::summary::Summary;
use crate::transfer::{Mode, Outcome};
use reprise_core::attack::Norm;
use reprise_core::plot::{panels_plot, Panel, Series};
use reprise_core::report::{fmt_mean_std, markdown_table};
use reprise_core::run::RunSummary;
use reprise_core::spec::SpecTree;
use reprise_core::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The paper's ImageNet top-1 (%) of its ResNet-50 source trained at `arm` (the submission's
/// table of the sources' clean accuracy, L2 ε 0–5 and L∞ ε 0–8/255), where it reports one.
pub fn paper_resnet50_top1(arm: Arm) -> Option<f64> {
    const L2: [(f64, f64); 10] = [
        (0.0, 75.80),
        (0.01, 75.68),
        (0.03, 75.76),
        (0.05, 75.59),
        (0.1, 74.78),
        (0.25, 74.14),
        (0.5, 73.16),
        (1.0, 70.43),
        (3.0, 62.83),
        (5.0, 56.13),
    ];
    const LINF: [(f64, f64); 6] = [
        (0.0, 75.60),
        (0.5, 73.73),
        (1.0, 72.05),
        (2.0, 69.10),
        (4.0, 63.86),
        (8.0, 54.53),
    ];
    let near = |t: &[(f64, f64)], e: f64| {
        t.iter()
            .find(|(x, _)| (x - e).abs() <= 1e-6 * x.max(1.0))
            .map(|&(_, a)| a)
    };
    match arm {
        Arm::Std => near(&L2, 0.0),
        Arm::Adv(Norm::L2, e) => near(&L2, e),
        Arm::Adv(Norm::Linf, e) => near(&LINF, e * 255.0),
        Arm::Noise(_) => None,
    }
}

/// Whether the run's source is the paper's: a full-width ResNet-50 on an ImageNet folder.
fn is_paper_imagenet_source(dir: &Path) -> bool {
    let Ok(tree) = SpecTree::load(&dir.join("spec.yaml")) else {
        return false;
    };
    let (Ok(h), Ok(c)) = (tree.header(), tree.typed::<Config>(SECTION)) else {
        return false;
    };
    h.data.dataset == "imagefolder"
        && matches!(
            c.model,
            crate::config::ModelConfig::Resnet {
                arch: crate::config::ResnetArch::Resnet50,
                base: None,
                blocks: None
            }
        )
}

/// The report of one run.
pub fn report_run(dir: &Path) -> Result<String> {
    let (h, s) = reprise_core::run::finished_run::<Summary>(dir)?;
    let mut md = format!(
        "# {} — source `{}`, seed {}\n\n{}\n\n## Source (holdout)\n\n",
        h.name, s.arm, h.seed, h.description
    );
    // The paper's number beside ours, for its own source on ImageNet.
    let paper = paper_resnet50_top1(s.arm).filter(|_| is_paper_imagenet_source(dir));
    if let Some(p) = paper {
        let _ = writeln!(
            md,
            "The paper's ResNet-50 at this ε: {p:.2} % ImageNet top-1 (its table of the sources' clean accuracy; the \
             50 000 validation images, Resize 256 then CenterCrop 224).\n"
        );
    }
    let mut rows = vec![vec![
        "clean accuracy (%)".to_string(),
        format!("{:.2}", s.src_clean()),
    ]];
    if let Some(src) = &s.source {
        for (k, v) in &src.src_robust {
            rows.push(vec![format!("PGD accuracy at {k} (%)"), format!("{v:.2}")]);
        }
    }
    rows.push(vec![
        "training step (ms)".into(),
        format!(
            "{:.1}",
            s.source.as_ref().map_or(f64::NAN, |m| m.source_step_ms)
        ),
    ]);
    md += &markdown_table(&["metric", "value"], &rows);
    let outs = s.transfers;
    if !outs.is_empty() {
        md += "\n## Transfer (test accuracy %, mean ± std over transfer seeds)\n\n";
        let mut groups: BTreeMap<(String, &str), Vec<&Outcome>> = BTreeMap::new();
        for o in &outs {
            groups
                .entry((o.target.clone(), o.mode.name()))
                .or_default()
                .push(o);
        }
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|((t, m), os)| {
                let acc: Vec<f64> = os.iter().map(|o| o.acc).collect();
                let mpc: Vec<f64> = os.iter().map(|o| o.mpc_acc).collect();
                vec![
                    t.clone(),
                    (*m).to_string(),
                    fmt_mean_std(&acc, 2),
                    fmt_mean_std(&mpc, 2),
                    os.len().to_string(),
                    format!("{}/{}", os[0].train, os[0].test),
                ]
            })
            .collect();
        md += &markdown_table(
            &[
                "target",
                "mode",
                "top-1",
                "mean per class",
                "seeds",
                "train/test",
            ],
            &rows,
        );
    }
    Ok(md)
}

/// The paper's ResNet-50 L2 best ε per target (fixed-feature and full-network, submission
/// tables of its section 5), for the report's side-by-side table.
pub(crate) const PAPER_BEST_EPS: &[(&str, f64, f64)] = &[
    ("Aircraft", 1.0, 0.05),
    ("Birdsnap", 0.1, 0.01),
    ("CIFAR-10", 3.0, 3.0),
    ("CIFAR-100", 3.0, 3.0),
    ("Caltech-101", 1.0, 0.03),
    ("Caltech-256", 0.05, 0.05),
    ("Cars", 0.5, 0.0),
    ("DTD", 0.01, 0.0),
    ("Flowers", 0.0, 0.01),
    ("Food", 0.05, 0.0),
    ("Pets", 0.03, 0.01),
    ("SUN397", 0.01, 0.0),
];

fn write_csv(dir: &Path, runs: &[(&RunSummary, Summary)]) -> Result<()> {
    let header = [
        "target",
        "k",
        "mode",
        "arm",
        "norm",
        "eps",
        "source_seed",
        "transfer_seed",
        "acc",
        "mpc_acc",
        "src_clean",
        "src_robust",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (r, s) in runs {
        let arm = s.arm;
        let c: Option<Config> = r.spec.typed(SECTION).ok();
        let own = match arm {
            Arm::Adv(n, e) => s.src_robust(&crate::train::point_key(n, e)),
            Arm::Noise(e) => s.src_robust(&crate::train::point_key(Norm::L2, e)),
            Arm::Std => None,
        };
        let norm = match arm {
            Arm::Adv(Norm::Linf, _) => "linf",
            Arm::Std => "",
            _ => "l2",
        };
        for o in &s.transfers {
            let k = c
                .as_ref()
                .and_then(|c| c.transfer.targets.iter().find(|t| t.name == o.target))
                .and_then(|t| t.per_class)
                .map_or(String::new(), |k| k.to_string());
            rows.push(vec![
                o.target.clone(),
                k,
                o.mode.name().to_string(),
                arm.kind().to_string(),
                norm.to_string(),
                arm.eps().to_string(),
                s.source_seed.to_string(),
                o.seed.to_string(),
                format!("{:.4}", o.acc),
                format!("{:.4}", o.mpc_acc),
                format!("{:.4}", s.src_clean()),
                own.map_or(String::new(), |v| format!("{v:.4}")),
            ]);
        }
    }
    reprise_core::report::write_csv(&dir.join("results.csv"), &header, &rows)
}

/// `log10(1 + ε/0.01)`: a symmetric-log axis that keeps ε = 0 and spreads 0.01 … 5.
fn symlog(eps: f64) -> f64 {
    (1.0 + eps / 0.01).log10()
}

/// Tick positions on a transformed axis and their labels.
type Ticks = Vec<(f64, String)>;

fn plot_target(dir: &Path, res: &Results, t: &str) -> Result<String> {
    // One panel per norm (L2 with the noise control, L∞), ε on a symmetric-log axis
    // (log10(1 + ε/0.01): ε = 0 at the origin) labelled in ε at the sweep's values.
    let mut panels: Vec<(&str, Vec<Series>, Ticks)> = Vec::new();
    for (norm, title) in [(Norm::L2, "L2 sources"), (Norm::Linf, "L∞ sources")] {
        let mut series = Vec::new();
        let mut eps: Vec<f64> = vec![0.0];
        for m in [Mode::Fixed, Mode::Full] {
            let mut lines: Vec<(String, Vec<Arm>)> =
                vec![(format!("{} adversarial", m.name()), res.grid(norm))];
            if norm == Norm::L2 {
                lines.push((format!("{} noise (control)", m.name()), res.controls()));
            }
            lines.retain(|(_, g)| !g.is_empty());
            for (name, grid) in lines {
                let mut pts = Vec::new();
                let mut std = Vec::new();
                for a in std::iter::once(Arm::Std).chain(grid) {
                    if let Some((mu, sd)) = res.mean(t, m, a) {
                        pts.push((symlog(a.eps()), mu));
                        std.push(sd);
                        if !eps.contains(&a.eps()) {
                            eps.push(a.eps());
                        }
                    }
                }
                if pts.len() > 1 {
                    series.push(Series {
                        name,
                        points: pts,
                        std: Some(std),
                    });
                }
            }
        }
        if !series.is_empty() {
            eps.sort_by(f64::total_cmp);
            let ticks = eps.iter().map(|&e| (symlog(e), format!("{e}"))).collect();
            panels.push((title, series, ticks));
        }
    }
    if panels.is_empty() {
        return Ok(String::new());
    }
    let figs = dir.join("figures");
    std::fs::create_dir_all(&figs).map_err(|e| Error::Io(figs.clone(), e))?;
    let file = format!("acc-vs-eps-{}.png", reprise_core::spec::sanitize(t));
    let drawn: Vec<Panel> = panels
        .iter()
        .map(|(title, series, ticks)| Panel {
            title,
            x_label: "source ε (symmetric-log axis)",
            y_label: "accuracy (%)",
            series,
            x_ticks: Some(ticks),
        })
        .collect();
    panels_plot(
        &figs.join(&file),
        &format!("{t}: test accuracy vs source ε (±1 std; ε = 0 is the standard source)"),
        &drawn,
    )?;
    Ok(format!("figures/{file}"))
}

/// The sweep report: sources, per-target tables, plots, best ε beside the paper's, verdicts.
pub fn report_sweep(dir: &Path, runs: &[RunSummary]) -> Result<String> {
    let spec = SpecTree::load(&dir.join("sweep.yaml"))?;
    let h = spec.header()?;
    let cfg: Option<Config> = spec.typed(SECTION).ok();
    let parsed = runs
        .iter()
        .map(|r| Ok((r, r.parse::<Summary>()?)))
        .collect::<Result<Vec<_>>>()?;
    let res = collect(parsed.iter().map(|(_, s)| s));
    write_csv(dir, &parsed)?;
    let smoke = runs.iter().any(RunSummary::smoke);
    let mut md = format!("# {}\n\n{}\n\n", h.name, h.description);
    if smoke {
        md += reprise_core::report::SMOKE_BANNER;
    }
    let expected: Vec<String> = reprise_core::run::expected_runs(dir);
    let finished: BTreeSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let unfinished: Vec<&String> = expected
        .iter()
        .filter(|n| !finished.contains(n.as_str()))
        .collect();
    if !unfinished.is_empty() {
        let _ = writeln!(
            md,
            "> **{} of {} runs have no summary** (unfinished or failed; see their run.log): {}. The verdicts below use the finished runs only.\n",
            unfinished.len(),
            expected.len(),
            unfinished.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
    }
    // Sources.
    md += "## Source models (holdout, mean over source seeds)\n\n";
    let mut arms: Vec<Arm> = vec![Arm::Std];
    arms.extend(res.grid(Norm::L2));
    arms.extend(res.grid(Norm::Linf));
    arms.extend(res.controls());
    for s in &res.sources {
        if !arms.iter().any(|a| same_arm(a, &s.arm)) {
            arms.push(s.arm);
        }
    }
    let refs: Vec<(Norm, f64)> = cfg
        .as_ref()
        .map(|c| {
            c.eval
                .ref_l2
                .map(|r| (Norm::L2, r))
                .into_iter()
                .chain(c.eval.ref_linf.map(|r| (Norm::Linf, r)))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for a in &arms {
        let clean: Vec<f64> = res
            .sources
            .iter()
            .filter(|s| same_arm(&s.arm, a))
            .map(|s| s.clean)
            .collect();
        if clean.is_empty() {
            continue;
        }
        let own = match a {
            Arm::Adv(n, e) => Some(crate::train::point_key(*n, *e)),
            Arm::Noise(e) => Some(crate::train::point_key(Norm::L2, *e)),
            Arm::Std => None,
        };
        let own_cell = own
            .and_then(|k| res.source_robust(*a, &k).map(|v| format!("{v:.2} ({k})")))
            .unwrap_or_else(|| "—".into());
        let mut row = vec![format!("`{a}`"), fmt_mean_std(&clean, 2), own_cell];
        for (n, r) in &refs {
            let k = crate::train::point_key(*n, *r);
            row.push(
                res.source_robust(*a, &k)
                    .map_or("—".into(), |v| format!("{v:.2}")),
            );
        }
        rows.push(row);
    }
    let mut header: Vec<String> = vec!["arm".into(), "clean %".into(), "PGD % at own ε".into()];
    for (n, r) in &refs {
        header.push(format!("PGD % at {}", crate::train::point_key(*n, *r)));
    }
    md += &markdown_table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    );
    let std_grid: Vec<(String, f64)> = res
        .sources
        .iter()
        .filter(|s| s.arm == Arm::Std)
        .flat_map(|s| s.robust.iter().map(|(k, v)| (k.clone(), *v)))
        .collect();
    if !std_grid.is_empty() {
        let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (k, v) in std_grid {
            by.entry(k).or_default().push(v);
        }
        md += "\n`std` under attack over the grid: ";
        md += &by
            .iter()
            .map(|(k, v)| format!("{k}: {}", fmt_mean_std(v, 1)))
            .collect::<Vec<_>>()
            .join("; ");
        md += "\n";
    }
    // Targets.
    md += "\n## Transfer accuracy (%) by target, mode and source arm\n\nMean ± std over (source seed × transfer seed) pairs; Δ = mean paired difference to `std` (✓: every pair positive).\n\n";
    for t in res.targets() {
        let _ = writeln!(md, "### {t}\n");
        let mut rows = Vec::new();
        for a in &arms {
            let mut row = vec![format!("`{a}`")];
            let mut any = false;
            for m in [Mode::Fixed, Mode::Full] {
                match res.mean(&t, m, *a) {
                    Some((mu, sd)) => {
                        any = true;
                        row.push(format!("{mu:.2} ± {sd:.2}"));
                        row.push(match (a, res.delta(&t, m, *a)) {
                            (Arm::Std, _) | (_, None) => "—".into(),
                            (_, Some((d, all))) => {
                                format!("{d:+.2}{}", if all { " ✓" } else { "" })
                            }
                        });
                    }
                    None => row.extend(["—".to_string(), "—".to_string()]),
                }
            }
            if any {
                rows.push(row);
            }
        }
        md += &markdown_table(&["arm", "fixed", "Δ fixed", "full", "Δ full"], &rows);
        let fig = plot_target(dir, &res, &t)?;
        if !fig.is_empty() {
            let _ = writeln!(md, "\n![{t}]({fig})\n");
        }
    }
    // Best ε.
    md += "\n## Best ε per target (ties to the smaller ε)\n\n";
    let mut rows = Vec::new();
    for t in res.targets() {
        let cell = |m: Mode, n: Norm| {
            res.best_eps(&t, m, n)
                .filter(|_| !res.grid(n).is_empty())
                .map_or("—".into(), |(e, a)| format!("{e} ({a:.2})"))
        };
        rows.push(vec![
            t.clone(),
            cell(Mode::Fixed, Norm::L2),
            cell(Mode::Full, Norm::L2),
            cell(Mode::Fixed, Norm::Linf),
            cell(Mode::Full, Norm::Linf),
        ]);
    }
    md += &markdown_table(
        &[
            "target",
            "fixed L2 ε*",
            "full L2 ε*",
            "fixed L∞ ε*",
            "full L∞ ε*",
        ],
        &rows,
    );
    md += "\nThe paper's ResNet-50 best L2 ε (ImageNet source, fixed-feature / full-network; submission tables):\n\n";
    let rows: Vec<Vec<String>> = PAPER_BEST_EPS
        .iter()
        .map(|(n, a, b)| vec![(*n).to_string(), a.to_string(), b.to_string()])
        .collect();
    md += &markdown_table(&["dataset", "fixed ε*", "full ε*"], &rows);
    md += "\nWith every target downsampled to 32×32 the paper's fixed-feature best ε moves to 1–5 (3 for 9 of 12 targets).\n";
    let (claims_md, claims) = verdicts(&res, &refs, cfg.as_ref());
    // A smoke run's numbers mean nothing: its claims are listed without verdicts, and the
    // verdict's arithmetic is left out.
    let claims = if smoke {
        claims.withheld()
    } else {
        md += &claims_md;
        claims
    };
    claims.write(dir)?;
    md += &format!(
        "\nPer-(arm, seed) values: `results.csv` in this folder. Generated from {} finished runs.\n",
        runs.len()
    );
    Ok(claims.open_report(&md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_s_source_accuracy_is_looked_up_by_arm() {
        let top1 = |a: &str| paper_resnet50_top1(Arm::parse(a).unwrap());
        assert_eq!(top1("l2-3"), Some(62.83));
        assert_eq!(top1("std"), Some(75.80));
        assert_eq!(top1("linf-4/255"), Some(63.86));
        assert_eq!(top1("l2-0.01"), Some(75.68));
        assert_eq!(top1("l2-2"), None);
        assert_eq!(top1("noise-3"), None);
    }
}
