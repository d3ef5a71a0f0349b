//! Reports: one run's, and a sweep's with the paper's numbers beside ours and the claims
//! P1–P4 computed from the runs' summaries.

use crate::claims::{self, BySeed, Evidence, Found};
use crate::config::{Arm, Claim, Config};
use crate::eval::Scores;
use crate::model::Classifier;
use crate::summary::{Summary, SCORES};
use reprise_core::checkpoint::Checkpoint;
use reprise_core::metrics::{Bin, Calibration};
use reprise_core::plot::{line_plot, Series};
use reprise_core::predictions::Predictions;
use reprise_core::report::{fmt_mean_std, markdown_table, mean_std};
use reprise_core::run::RunSummary;
use reprise_core::spec::SpecTree;
use reprise_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

use crate::claims::OOD_SETS;

/// Reliability diagrams, one panel per model: accuracy per confidence bin as bars, the gap to
/// the bin's mean confidence shaded, each bin's count above it.
pub(crate) fn reliability_figure(path: &Path, models: &[(String, Vec<Bin>)]) -> Result<()> {
    reprise_core::plot::reliability_plot(path, "Reliability diagram (test set)", models)
}

/// Which score of a set's [`Scores`] a figure shows.
pub(crate) type Pick = fn(&Scores) -> &Vec<f64>;

/// Histograms (30 bins over the common range) of a score on the test set and each OOD set.
pub(crate) fn score_histogram(
    path: &Path,
    title: &str,
    test: &[f64],
    sets: &[(String, Scores)],
    pick: Pick,
) -> Result<()> {
    let all: Vec<&[f64]> = std::iter::once(test)
        .chain(sets.iter().map(|(_, s)| pick(s).as_slice()))
        .collect();
    let finite = all.iter().flat_map(|v| v.iter()).filter(|x| x.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() || hi <= lo {
        return Ok(());
    }
    let bins = 30;
    let w = (hi - lo) / bins as f64;
    let hist = |v: &[f64]| -> Vec<(f64, f64)> {
        let mut h = vec![0.0; bins];
        for &x in v.iter().filter(|x| x.is_finite()) {
            h[(((x - lo) / w) as usize).min(bins - 1)] += 1.0 / v.len() as f64;
        }
        h.iter()
            .enumerate()
            .map(|(i, &c)| (lo + (i as f64 + 0.5) * w, c))
            .collect()
    };
    let mut series = vec![Series {
        name: "test (in-distribution)".into(),
        points: hist(test),
        std: None,
    }];
    for (name, s) in sets {
        series.push(Series {
            name: name.clone(),
            points: hist(pick(s)),
            std: None,
        });
    }
    line_plot(path, title, "score", "fraction of images", &series)
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// The report of one run.
pub fn report_run(dir: &Path) -> Result<String> {
    let (h, s) = reprise_core::run::finished_run::<Summary>(dir)?;
    let mut md = format!(
        "# {} — arm `{}`, seed {}\n\n{}\n\n",
        h.name, s.arm, h.seed, h.description
    );
    md += &markdown_table(
        &["metric", "value"],
        &[
            vec!["test accuracy (%)".into(), pct(s.acc)],
            vec!["test NLL".into(), format!("{:.4}", s.nll)],
            vec!["test ECE (%)".into(), pct(s.ece)],
            vec![
                "mean confidence − accuracy (points)".into(),
                format!("{:+.2}", 100.0 * s.conf_minus_acc),
            ],
            vec!["iterations".into(), s.iterations.to_string()],
            vec!["ms per iteration".into(), format!("{:.1}", s.step_ms)],
            vec![
                "realism share of conditional samples".into(),
                format!("{:.3}", s.realism()),
            ],
        ],
    );
    md += "\n## OOD detection (AUROC, test = positive)\n\n";
    // The procedural sets, then any user datasets the summary holds.
    let mut sets: Vec<String> = OOD_SETS.iter().map(|s| s.to_string()).collect();
    for set in s.scores.auroc.keys() {
        if !sets.contains(set) {
            sets.push(set.clone());
        }
    }
    let rows: Vec<Vec<String>> = sets
        .iter()
        .map(|set| {
            let mut r = vec![set.to_string()];
            for sc in SCORES {
                r.push(format!("{:.3}", s.auroc(sc, set)));
            }
            r
        })
        .collect();
    md += &markdown_table(&["set", "log p(x)", "max p(y|x)", "−‖∇ₓ log p(x)‖"], &rows);
    let pgd: Vec<Vec<String>> = s
        .scores
        .pgd
        .iter()
        .map(|(norm, eps, acc)| vec![format!("{norm} ε = {eps}"), pct(*acc)])
        .collect();
    if !pgd.is_empty() {
        md += "\n## Accuracy under PGD (%, 20 steps of 2.5ε/20, ε in [0, 1] pixel units)\n\n";
        md += &markdown_table(&["attack", "accuracy"], &pgd);
    }
    md += "\n![reliability](figures/reliability.png)\n![log p(x) histogram](figures/hist_px.png)\n";
    if dir.join("figures/samples.png").exists() {
        md +=
            "\nClass-conditional samples (one row per class):\n\n![samples](figures/samples.png)\n";
    }
    if dir.join("figures/buffer_by_class.png").exists() {
        md += "\nReplay buffer binned by predicted class:\n\n![buffer](figures/buffer_by_class.png)\n";
    }
    Ok(md)
}

struct ArmRuns<'a> {
    by_seed: BTreeMap<u64, &'a RunSummary>,
    summaries: BySeed,
}

impl ArmRuns<'_> {
    fn mean(&self, metric: impl Fn(&Summary) -> f64) -> f64 {
        claims::mean(&self.summaries, metric)
    }
}

/// The judge's agreement: the share of `samples` run's conditional samples that the judge run's
/// final model assigns to their target class.
fn judge_agreement(samples_run: &RunSummary, judge: &RunSummary, classes: usize) -> Result<f64> {
    let ck = Checkpoint::load(&samples_run.dir.join("samples.safetensors"))?;
    let (x, y) = (ck.tensor("samples")?, ck.tensor("labels")?);
    let c: Config = judge.spec.typed("jem")?;
    let shape: Vec<i64> = x.size()[1..].to_vec();
    let mut m = Classifier::new(
        &c.model,
        &shape,
        classes as i64,
        Device::Cpu,
        judge.spec.header()?.seed,
    );
    let (_, jck) = reprise_core::run::final_checkpoint(&judge.dir)?;
    m.load(&jck)?;
    Ok(reprise_core::metrics::accuracy(&m.logits(x, 100), y))
}

/// What a claim says, and the paper's number for it (marked verified against the paper's
/// tables or not).
pub(crate) fn claim_text(c: Claim) -> (&'static str, &'static str) {
    match c {
        Claim::P1 => (
            "accuracy within 3 points of the baseline",
            "CIFAR-10 WRN-28-10: JEM 92.9 % vs baseline 95.8 % (verified)",
        ),
        Claim::P2 => (
            "lower expected calibration error than the baseline",
            "CIFAR-100: ECE 4.87 % vs 22.32 % (verified)",
        ),
        Claim::P3 => (
            "log p(x) detects out-of-distribution inputs better",
            "CIFAR-10 vs SVHN / interp / CIFAR-100 / CelebA AUROC .67 / .65 / .67 / .75 (unverified)",
        ),
        Claim::P4 => (
            "recognisable, realistic class-conditional samples",
            "CIFAR-10: IS 8.76, FID 38.4 (verified)",
        ),
    }
}

/// The report of a sweep over arms and seeds: tables, claims (also written to `claims.json`),
/// figures.
pub fn report_sweep(dir: &Path, runs: &[RunSummary]) -> Result<String> {
    let spec = SpecTree::load(&dir.join("sweep.yaml"))?;
    let h = spec.header()?;
    let gates: Vec<Claim> = spec
        .typed::<Config>("jem")
        .map(|c| c.gates)
        .unwrap_or_default();
    let mut arms: BTreeMap<Arm, ArmRuns> = BTreeMap::new();
    for r in runs {
        let Ok(c) = r.spec.typed::<Config>("jem") else {
            continue;
        };
        let seed = r.spec.header()?.seed;
        let arm = arms.entry(c.arm).or_insert_with(|| ArmRuns {
            by_seed: BTreeMap::new(),
            summaries: BTreeMap::new(),
        });
        arm.by_seed.insert(seed, r);
        arm.summaries.insert(seed, r.parse()?);
    }
    let smoke = runs.iter().any(RunSummary::smoke);
    // Runs the sweep expected that have no summary: diverged (the protocol counts such a seed
    // as failing every criterion) or not finished (yet).
    let expected: Vec<String> = reprise_core::run::expected_runs(dir);
    let finished: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let unfinished: Vec<(String, bool)> = expected
        .iter()
        .filter(|n| !finished.contains(&n.as_str()))
        .map(|n| (n.clone(), reprise_core::run::diverged(&dir.join(n))))
        .collect();
    let gating_arm_failed = unfinished
        .iter()
        .any(|(n, _)| n.contains("arm=jem") || n.contains("arm=base,"));
    let any_diverged = unfinished
        .iter()
        .any(|(n, d)| *d && (n.contains("arm=jem") || n.contains("arm=base,")));
    let bins = spec
        .typed::<Config>("jem")
        .map(|c| c.eval.ece_bins)
        .unwrap_or(20);
    let (cv, pool_notes) = match h.data.cv {
        Some(cv) => {
            let (pooled, notes) = pool_folds(&arms, cv.folds, bins);
            (Some((cv.folds, pooled)), notes)
        }
        None => (None, Vec::new()),
    };
    let mut md = format!("# {}\n\n{}\n\n", h.name, h.description);
    if smoke {
        md += reprise_core::report::SMOKE_BANNER;
    }
    md += &format!(
        "{} finished run(s). Values are mean ± std over seeds.\n\n",
        runs.len()
    );
    let judge = judge_agreements(&arms)?;
    md += &arms_table(&arms, &judge);
    if let Some((folds, pooled)) = &cv {
        md += &pooled_table(*folds, pooled);
        for n in &pool_notes {
            md += &format!("\n**Not pooled:** {n}; claims on this arm use per-seed numbers.\n");
        }
    }
    md += &per_seed_table(&arms, cv.is_some());
    md += &ood_table(&arms);
    // Claims.
    let mut found: Vec<Found> = Vec::new();
    if let (Some(base), Some(jem)) = (arms.get(&Arm::Base), arms.get(&Arm::Jem)) {
        found = claims::claims(&Evidence {
            base: &base.summaries,
            jem: &jem.summaries,
            pooled: cv
                .as_ref()
                .and_then(|(_, p)| Some((p.get(&Arm::Base)?, p.get(&Arm::Jem)?))),
            judge: judge.get(&Arm::Jem).map(|v| mean_std(v).0),
            bins,
        })?;
    }
    if gating_arm_failed {
        claims::missing_runs(&mut found, &unfinished, any_diverged);
    }
    md += &unfinished_section(&unfinished);
    let overall = claims::verdict(&gates, &found);
    let claims_found = reprise_core::report::Claims::new(
        &overall,
        found
            .iter()
            .map(|(c, ok, why)| {
                let (what, paper) = claim_text(*c);
                reprise_core::report::ClaimRow::new(
                    &format!("{c:?}"),
                    what,
                    paper,
                    why.clone(),
                    *ok,
                    gates.contains(c),
                )
            })
            .collect(),
    );
    let claims_found = if smoke {
        claims_found.withheld()
    } else {
        claims_found
    };
    claims_found.write(dir)?;
    md += PAPER_NUMBERS;
    md += "\n## Every summary value by sweep point\n\n";
    md += &reprise_core::report::aggregate_table(runs);
    md += &figures(dir, &arms, cv.as_ref().map(|c| &c.1))?;
    Ok(claims_found.open_report(&md))
}

/// Judge agreement: JEM's samples judged by the same seed's base model; base's by the base
/// model of the next seed.
fn judge_agreements(arms: &BTreeMap<Arm, ArmRuns>) -> Result<BTreeMap<Arm, Vec<f64>>> {
    let mut judge: BTreeMap<Arm, Vec<f64>> = BTreeMap::new();
    if let Some(base) = arms.get(&Arm::Base) {
        let seeds: Vec<u64> = base.by_seed.keys().copied().collect();
        for (arm, runs_of_arm) in arms {
            if *arm == Arm::BaseLong {
                continue;
            }
            for (i, (seed, r)) in runs_of_arm.by_seed.iter().enumerate() {
                let judge_seed = if *arm == Arm::Jem {
                    Some(*seed)
                } else {
                    (seeds.len() > 1).then(|| seeds[(i + 1) % seeds.len()])
                };
                let judge_run = judge_seed.and_then(|s| Some((base.by_seed.get(&s)?, s)));
                if let Some((j, js)) = judge_run {
                    if r.dir.join("samples.safetensors").exists() {
                        let agreement = judge_agreement(r, j, base.summaries[&js].classes)?;
                        judge.entry(*arm).or_default().push(agreement);
                    }
                }
            }
        }
    }
    Ok(judge)
}

/// The table of arms: each metric's mean ± std over seeds, and the judge agreement.
fn arms_table(arms: &BTreeMap<Arm, ArmRuns>, judge: &BTreeMap<Arm, Vec<f64>>) -> String {
    let mut md = String::new();
    type Metric = fn(&Summary) -> f64;
    let metrics: [(Metric, &str, bool); 10] = [
        (|s| s.acc, "accuracy (%)", true),
        (|s| s.nll, "NLL", false),
        (|s| s.ece, "ECE (%)", true),
        (|s| s.conf_minus_acc, "confidence − accuracy (points)", true),
        (|s| s.auroc_px_mean, "AUROC log p(x), mean of 4 sets", false),
        (|s| s.auroc("px", "interp"), "AUROC log p(x), interp", false),
        (
            |s| s.auroc("pxgrad", "uniform"),
            "AUROC −‖∇‖, uniform",
            false,
        ),
        (Summary::realism, "realism share of samples", false),
        (
            |s| s.self_agreement.unwrap_or(f64::NAN),
            "samples classified as target (own model)",
            false,
        ),
        (|s| s.step_ms, "ms per iteration", false),
    ];
    let arm_list: Vec<Arm> = arms.keys().copied().collect();
    let mut header = vec!["metric".to_string()];
    header.extend(arm_list.iter().map(|a| format!("`{}`", a.name())));
    let mut rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|(k, label, percent)| {
            let mut r = vec![label.to_string()];
            for a in &arm_list {
                let v: Vec<f64> = claims::values(&arms[a].summaries, k)
                    .iter()
                    .map(|x| if *percent { 100.0 * x } else { *x })
                    .collect();
                r.push(if v.is_empty() {
                    "–".into()
                } else {
                    fmt_mean_std(&v, 3)
                });
            }
            r
        })
        .collect();
    let mut jrow = vec!["judge agreement (independent base model)".to_string()];
    for a in &arm_list {
        jrow.push(judge.get(a).map_or("–".into(), |v| fmt_mean_std(v, 3)));
    }
    rows.push(jrow);
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    md += "## Arms\n\n";
    md += &markdown_table(&header_refs, &rows);
    md
}

/// The metrics of the pooled out-of-fold predictions of a cross-validation.
fn pooled_table(folds: usize, pooled: &BTreeMap<Arm, (Predictions, Calibration)>) -> String {
    let mut md = String::new();
    md += &format!(
        "\n## Pooled out-of-fold predictions ({folds}-fold cross-validation)\n\n\
         Seed k is trained on the other folds and tested on fold k, so every image is tested once per arm; \
         these metrics are computed on the pooled predictions of all folds.\n\n"
    );
    let rows: Vec<Vec<String>> = pooled
        .iter()
        .map(|(a, (p, m))| {
            vec![
                format!("`{}`", a.name()),
                p.len().to_string(),
                pct(m.acc),
                pct(m.ece),
                format!("{:.4}", m.nll),
                format!("{:+.2}", 100.0 * m.conf_minus_acc),
            ]
        })
        .collect();
    md += &markdown_table(
        &[
            "arm",
            "images",
            "accuracy (%)",
            "ECE (%)",
            "NLL",
            "confidence − accuracy (points)",
        ],
        &rows,
    );
    md
}

/// The gating metrics of each seed (each fold with a cross-validation).
fn per_seed_table(arms: &BTreeMap<Arm, ArmRuns>, cross_validated: bool) -> String {
    let mut md = String::new();
    md += if cross_validated {
        "\n## Per fold (seed k tests fold k)\n\n"
    } else {
        "\n## Per seed\n\n"
    };
    let mut seed_rows = Vec::new();
    for (a, ar) in arms {
        for (seed, s) in &ar.summaries {
            seed_rows.push(vec![
                format!("`{}`", a.name()),
                seed.to_string(),
                pct(s.acc),
                pct(s.ece),
                format!("{:.3}", s.nll),
                format!("{:+.2}", 100.0 * s.conf_minus_acc),
                format!("{:.3}", s.auroc_px_mean),
                format!("{:.3}", s.realism()),
                s.iterations.to_string(),
            ]);
        }
    }
    md += &markdown_table(
        &[
            "arm",
            "seed",
            "acc (%)",
            "ECE (%)",
            "NLL",
            "conf − acc",
            "AUROC px mean",
            "realism",
            "iterations",
        ],
        &seed_rows,
    );
    md
}

/// The AUROC of each score on each OOD set, mean over seeds.
fn ood_table(arms: &BTreeMap<Arm, ArmRuns>) -> String {
    let arm_list: Vec<Arm> = arms.keys().copied().collect();
    let mut md = String::new();
    md += "\n## OOD detection (AUROC, mean over seeds)\n\n";
    let mut ood_rows = Vec::new();
    for a in &arm_list {
        for sc in SCORES {
            let mut r = vec![format!("`{}`", a.name()), sc.to_string()];
            for set in OOD_SETS {
                r.push(format!("{:.3}", arms[a].mean(|s| s.auroc(sc, set))));
            }
            ood_rows.push(r);
        }
    }
    md += &markdown_table(
        &["arm", "score", "uniform", "shuffled", "interp", "inverted"],
        &ood_rows,
    );
    md
}

/// The runs the sweep expected that have no summary, and why.
fn unfinished_section(unfinished: &[(String, bool)]) -> String {
    let mut md = String::new();
    if unfinished.is_empty() {
        return md;
    }
    md += "\n## Runs that did not finish\n\n";
    for (n, d) in unfinished {
        md += &format!(
            "- `{n}`: {}\n",
            if *d {
                "diverged (its diverged.json says where); counted as failing every criterion"
            } else {
                "no summary (failed or still running)"
            }
        );
    }
    md
}

/// The figures: the reliability diagram pooled per arm, and links to each arm's first seed's.
fn figures(
    dir: &Path,
    arms: &BTreeMap<Arm, ArmRuns>,
    cv: Option<&BTreeMap<Arm, (Predictions, Calibration)>>,
) -> Result<String> {
    let mut md = String::new();
    let figs = dir.join("figures");
    std::fs::create_dir_all(&figs).map_err(|e| Error::Io(figs.clone(), e))?;
    let pooled: Vec<(String, Vec<Bin>)> = match cv {
        Some(p) => p
            .iter()
            .map(|(a, (_, m))| (a.name().to_string(), m.bins.clone()))
            .collect(),
        None => arms
            .iter()
            .map(|(a, ar)| (a.name().to_string(), pool_bins(ar.summaries.values())))
            .collect(),
    };
    if !pooled.is_empty() {
        reliability_figure(&figs.join("reliability.png"), &pooled)?;
        md += if cv.is_some() {
            "\n## Figures\n\nReliability diagram of the pooled out-of-fold predictions:\n\n![reliability](figures/reliability.png)\n"
        } else {
            "\n## Figures\n\nReliability diagram, bins pooled over seeds:\n\n![reliability](figures/reliability.png)\n"
        };
    }
    for (a, ar) in arms {
        if let Some(r) = ar.by_seed.values().next() {
            let name = &r.name;
            md += &format!(
                "\n`{}` ({name}): ![log p(x) histogram]({name}/figures/hist_px.png)",
                a.name()
            );
            if r.dir.join("figures/samples.png").exists() {
                md += &format!(" ![samples]({name}/figures/samples.png)");
            }
            if r.dir.join("figures/buffer_by_class.png").exists() {
                md += &format!(" ![buffer]({name}/figures/buffer_by_class.png)");
            }
            md += "\n";
        }
    }
    Ok(md)
}

/// Each arm's runs' test predictions pooled (the `folds` folds of a cross-validation, seed k
/// testing fold k: every image once), with the metrics of the pool; and, for each arm left
/// out, why: a fold not finished, or one whose predictions are missing, are another run's or
/// do not read as predictions (each named). Such an arm's claims are then judged on per-seed
/// numbers, which the report says.
fn pool_folds(arms: &BTreeMap<Arm, ArmRuns>, folds: usize, bins: usize) -> (Pools, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for (a, ar) in arms {
        let absent: Vec<String> = (0..folds as u64)
            .filter(|k| !ar.by_seed.contains_key(k))
            .map(|k| format!("fold {k} (seed={k})"))
            .collect();
        if !absent.is_empty() {
            notes.push(format!(
                "`{}`: {} not finished, so its out-of-fold predictions are not pooled",
                a.name(),
                absent.join(", ")
            ));
            continue;
        }
        let parts: std::result::Result<Vec<_>, _> = ar
            .by_seed
            .values()
            .map(|r| Predictions::of_run(&r.dir))
            .collect();
        let pooled = parts.and_then(|parts| Predictions::pool(&parts));
        match pooled {
            Ok(p) => {
                let m = p.calibration(bins);
                out.insert(*a, (p, m));
            }
            Err(e) => notes.push(format!(
                "`{}`: its out-of-fold predictions are not pooled: {e}",
                a.name()
            )),
        }
    }
    (out, notes)
}

/// Each arm's pooled out-of-fold predictions and their metrics.
type Pools = BTreeMap<Arm, (Predictions, Calibration)>;

fn pool_bins<'a>(summaries: impl Iterator<Item = &'a Summary>) -> Vec<Bin> {
    let mut pooled: Vec<Bin> = Vec::new();
    for s in summaries {
        for (i, b) in s.reliability.iter().enumerate() {
            if pooled.len() <= i {
                pooled.push(Bin {
                    lo: b.lo,
                    hi: b.hi,
                    count: 0,
                    confidence: 0.0,
                    accuracy: 0.0,
                });
            }
            let p = &mut pooled[i];
            p.confidence += b.confidence * b.count as f64;
            p.accuracy += b.accuracy * b.count as f64;
            p.count += b.count;
        }
    }
    for p in &mut pooled {
        if p.count > 0 {
            p.confidence /= p.count as f64;
            p.accuracy /= p.count as f64;
        }
    }
    pooled
}

/// The paper's headline numbers (its Tables 1–3 and Figure 5).
pub(crate) const PAPER_NUMBERS: &str = "
## The paper's numbers (CIFAR, WRN-28-10), for comparison

| claim | paper | status in the spec |
|---|---|---|
| accuracy, CIFAR-10: JEM vs discriminative WRN | 92.9 % vs 95.8 % (−2.9 points) | verified (Table 1) |
| IS / FID of JEM samples, CIFAR-10 | 8.76 / 38.4 | verified (Table 1) |
| ECE, CIFAR-100: baseline vs JEM | 22.32 % vs 4.87 % | verified (figure) |
| OOD AUROC of log p(x), JEM: SVHN / CIFAR10-Interp / CIFAR-100 / CelebA | .67 / .65 / .67 / .75 | unverified |
| OOD AUROC of max p(y\\|x), JEM | .89 / .75 / .87 / .79 | .89, .87, .79 agree with a third-party aggregator; the rest unverified |
| OOD AUROC of −‖∇ₓ log p(x)‖, JEM | .83 / .78 / .82 / .79 | unverified |

Our small-scale runs replace CIFAR with 8×8 digits or a 5000-image MNIST subset, the WRN with an MLP or a small
CNN, and the paper's OOD datasets with procedural sets built from the test images; the claims are tested in that
setting with the criteria fixed in advance (P1–P4).
";
