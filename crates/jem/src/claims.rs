//! The claims P1–P4 judged from the runs' summaries: pure functions, no files.

use crate::config::Claim;
use crate::summary::Summary;
use reprise_core::metrics::Calibration;
use reprise_core::predictions::{ece_difference_interval, Predictions};
use reprise_core::report::{mean_std, Outcome, Verdict};
use reprise_core::Result;
use std::collections::BTreeMap;

/// The OOD sets of the claims, in report order.
pub(crate) const OOD_SETS: [&str; 4] = ["uniform", "shuffled", "interp", "inverted"];

/// One arm's summaries, by seed.
pub type BySeed = BTreeMap<u64, Summary>;

/// One arm's test predictions pooled over the folds of a cross-validation, and their metrics.
pub type Pooled = (Predictions, Calibration);

/// A claim, whether it held (`None`: not measured), and the numbers that decided it.
pub type Found = (Claim, Option<bool>, String);

/// The mean over seeds of `metric`, NaN values left out.
pub fn mean(runs: &BySeed, metric: impl Fn(&Summary) -> f64) -> f64 {
    mean_std(&values(runs, metric)).0
}

/// The finite values of `metric` over seeds.
pub fn values(runs: &BySeed, metric: impl Fn(&Summary) -> f64) -> Vec<f64> {
    runs.values()
        .map(metric)
        .filter(|x| x.is_finite())
        .collect()
}

/// What the claims are judged on.
pub struct Evidence<'a> {
    /// The baseline's runs.
    pub base: &'a BySeed,
    /// JEM's runs.
    pub jem: &'a BySeed,
    /// With a cross-validation, the pooled out-of-fold predictions of base and JEM: P1 and P2
    /// are then judged on them.
    pub pooled: Option<(&'a Pooled, &'a Pooled)>,
    /// The mean judge agreement of JEM's samples (an independent base model's verdict).
    pub judge: Option<f64>,
    /// The ECE's bins.
    pub bins: usize,
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// P1–P4 with the criteria fixed before the runs: P1 accuracy within 3 points of the base; P2
/// lower ECE (mean, and in most seeds or folds); P3 mean AUROC of log p(x) at least 0.02 above the
/// base and above 0.5 on every set; P4 judge agreement ≥ 0.30 and realism share ≥ 0.5 and 0.3 above
/// the base's.
pub fn claims(e: &Evidence) -> Result<Vec<Found>> {
    let (b, j) = (e.base, e.jem);
    let mut out = Vec::new();
    let (ab, aj) = match e.pooled {
        Some((pb, pj)) => (pb.1.acc, pj.1.acc),
        None => (mean(b, |s| s.acc), mean(j, |s| s.acc)),
    };
    let of = if e.pooled.is_some() { "pooled, " } else { "" };
    out.push((
        Claim::P1,
        Some(aj >= ab - 0.03),
        format!(
            "{of}jem {} % vs base {} % (needs ≥ base − 3 points)",
            pct(aj),
            pct(ab)
        ),
    ));
    let (eb, ej, nb, nj, gb, gj) = match e.pooled {
        Some((pb, pj)) => (
            pb.1.ece,
            pj.1.ece,
            pb.1.nll,
            pj.1.nll,
            pb.1.conf_minus_acc,
            pj.1.conf_minus_acc,
        ),
        None => (
            mean(b, |s| s.ece),
            mean(j, |s| s.ece),
            mean(b, |s| s.nll),
            mean(j, |s| s.nll),
            mean(b, |s| s.conf_minus_acc),
            mean(j, |s| s.conf_minus_acc),
        ),
    };
    let paired: Vec<bool> = j
        .iter()
        .filter_map(|(seed, sj)| b.get(seed).map(|sb| sj.ece < sb.ece))
        .collect();
    let wins = paired.iter().filter(|&&w| w).count();
    let p2 = ej < eb && wins * 2 > paired.len();
    let (unit, interval) = match e.pooled {
        Some((pb, pj)) => {
            let (lo, hi) = ece_difference_interval(&pj.0, &pb.0, e.bins, 1000, 0, 0.95)?;
            (
                "folds",
                format!(
                    "; pooled ECE jem − base {:+.2} points, bootstrap 95 % interval [{:+.2}, {:+.2}] (1000 resamples of the {} images)",
                    100.0 * (ej - eb),
                    100.0 * lo,
                    100.0 * hi,
                    pj.0.len()
                ),
            )
        }
        None => ("seeds", String::new()),
    };
    out.push((
        Claim::P2,
        Some(p2),
        format!(
            "{of}ECE jem {} % vs base {} %; lower in {wins} of {} {unit}; NLL {nj:.3} vs {nb:.3}; confidence − accuracy {:+.2} vs {:+.2} points (base {}){interval}",
            pct(ej),
            pct(eb),
            paired.len(),
            100.0 * gj,
            100.0 * gb,
            if gb > 0.0 { "over-confident" } else { "under-confident" }
        ),
    ));
    let (ob, oj) = (mean(b, |s| s.auroc_px_mean), mean(j, |s| s.auroc_px_mean));
    let each: Vec<f64> = OOD_SETS
        .iter()
        .map(|set| mean(j, |s| s.auroc("px", set)))
        .collect();
    let p3 = oj >= ob + 0.02 && each.iter().all(|&a| a > 0.5);
    out.push((
        Claim::P3,
        Some(p3),
        format!(
            "mean AUROC log p(x): jem {oj:.3} vs base {ob:.3} (needs +0.02); jem per set {}; interp alone: jem {:.3} vs base {:.3}",
            each.iter().map(|a| format!("{a:.3}")).collect::<Vec<_>>().join(" / "),
            mean(j, |s| s.auroc("px", "interp")),
            mean(b, |s| s.auroc("px", "interp"))
        ),
    ));
    let (rj, rb) = (mean(j, Summary::realism), mean(b, Summary::realism));
    let p4 = e.judge.map(|a| a >= 0.30 && rj >= 0.5 && rj - rb >= 0.3);
    out.push((
        Claim::P4,
        p4,
        format!(
            "judge agreement {} (needs ≥ 0.30); realism share jem {rj:.3} vs base control {rb:.3} (needs ≥ 0.5 and +0.3)",
            e.judge.map_or("–".into(), |a| format!("{a:.3}"))
        ),
    ));
    Ok(out)
}

/// Marks every claim when a gating arm's run is missing: a diverged seed of a gating arm
/// (`diverged`) fails every criterion (the protocol's rule), a run not finished leaves them not
/// measured. `missing` names the runs that did not finish, with whether each diverged.
pub(crate) fn missing_runs(claims: &mut [Found], missing: &[(String, bool)], diverged: bool) {
    let names: Vec<String> = missing
        .iter()
        .map(|(n, d)| format!("{n}{}", if *d { " (diverged)" } else { " (not finished)" }))
        .collect();
    for (_, ok, why) in claims {
        *ok = if diverged { Some(false) } else { None };
        why.push_str(&format!("; runs missing: {}", names.join(", ")));
    }
}

/// The experiment's verdict from its gated claims.
pub fn verdict(gates: &[Claim], claims: &[Found]) -> Verdict {
    let gated: Vec<&Found> = claims
        .iter()
        .filter(|(c, _, _)| gates.contains(c))
        .collect();
    let held: Vec<String> = gated
        .iter()
        .filter(|(_, ok, _)| *ok == Some(true))
        .map(|(c, _, _)| format!("{c:?}"))
        .collect();
    let gate_names = gates
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if gated.is_empty() {
        Verdict::new(Outcome::Reported, "no claim is gated by this experiment")
    } else if held.len() == gated.len() {
        Verdict::new(Outcome::Reproduced, format!("gated claims {gate_names}"))
    } else if !held.is_empty() {
        Verdict::new(
            Outcome::Partially,
            format!("{} held of the gated claims {gate_names}", held.join(", ")),
        )
    } else {
        Verdict::new(Outcome::NotReproduced, format!("gated claims {gate_names}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Scores;

    fn run(acc: f64, ece: f64, px: f64, realism: f64) -> Summary {
        Summary {
            arm: String::new(),
            iterations: 10,
            step_ms: 1.0,
            classes: 10,
            shape: vec![1, 8, 8],
            acc,
            nll: 0.3,
            ece,
            conf_minus_acc: 0.01,
            reliability: vec![],
            auroc_px_mean: px,
            realism_share: Some(realism),
            self_agreement: None,
            fid_samples: None,
            fid_buffer: None,
            scores: Scores {
                auroc: OOD_SETS
                    .iter()
                    .map(|s| (s.to_string(), [px, 0.5, 0.5]))
                    .collect(),
                pgd: vec![],
            },
            smoke: false,
        }
    }

    fn judged(base: &BySeed, jem: &BySeed, judge: Option<f64>) -> Vec<Found> {
        claims(&Evidence {
            base,
            jem,
            pooled: None,
            judge,
            bins: 10,
        })
        .unwrap()
    }

    fn held(f: &[Found]) -> Vec<Option<bool>> {
        f.iter().map(|c| c.1).collect()
    }

    #[test]
    fn each_criterion_decides_its_claim() {
        let base: BySeed = [
            (0, run(0.90, 0.10, 0.60, 0.1)),
            (1, run(0.92, 0.12, 0.60, 0.1)),
        ]
        .into();
        let good: BySeed = [
            (0, run(0.89, 0.05, 0.70, 0.6)),
            (1, run(0.90, 0.15, 0.70, 0.6)),
        ]
        .into();
        // Mean ECE lower, but lower in only 1 of 2 seeds: P2 fails (a majority of seeds is needed).
        assert_eq!(
            held(&judged(&base, &good, Some(0.5))),
            [Some(true), Some(false), Some(true), Some(true)]
        );
        let better: BySeed = [
            (0, run(0.89, 0.05, 0.70, 0.6)),
            (1, run(0.90, 0.06, 0.70, 0.6)),
        ]
        .into();
        assert_eq!(
            held(&judged(&base, &better, Some(0.5))),
            [Some(true), Some(true), Some(true), Some(true)]
        );
        // 3.5 points below the base; log p(x) only 0.01 better; judge below 0.30.
        let worse: BySeed = [
            (0, run(0.87, 0.05, 0.61, 0.6)),
            (1, run(0.87, 0.06, 0.61, 0.6)),
        ]
        .into();
        assert_eq!(
            held(&judged(&base, &worse, Some(0.2))),
            [Some(false), Some(true), Some(false), Some(false)]
        );
        // No samples judged: P4 is not measured.
        assert_eq!(judged(&base, &better, None)[3].1, None);
    }

    #[test]
    fn a_missing_run_fails_or_opens_every_claim_and_the_verdict_follows_the_gates() {
        let base: BySeed = [(0, run(0.9, 0.1, 0.6, 0.1))].into();
        let jem: BySeed = [(0, run(0.9, 0.05, 0.7, 0.6))].into();
        let found = judged(&base, &jem, Some(0.5));
        let v = verdict(&[Claim::P1, Claim::P2], &found);
        assert_eq!(v.outcome, Outcome::Reproduced);
        let mut open = found.clone();
        missing_runs(&mut open, &[("arm=jem,seed=1".into(), false)], false);
        assert!(open
            .iter()
            .all(|c| c.1.is_none() && c.2.contains("(not finished)")));
        let mut failed = found;
        missing_runs(&mut failed, &[("arm=jem,seed=1".into(), true)], true);
        assert!(failed.iter().all(|c| c.1 == Some(false)));
        assert_eq!(
            verdict(&[Claim::P1], &failed).outcome,
            Outcome::NotReproduced
        );
        assert_eq!(verdict(&[], &failed).outcome, Outcome::Reported);
        let mut some = judged(&base, &jem, Some(0.5));
        some[1].1 = Some(false);
        assert_eq!(
            verdict(&[Claim::P1, Claim::P2], &some).outcome,
            Outcome::Partially
        );
    }
}
