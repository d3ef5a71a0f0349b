//! Report writing: markdown tables, the aggregate of a sweep (mean ± std over seeds), and the
//! machine-readable claims of a sweep (`claims.json`) that the results page collects.

use crate::run::RunSummary;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

/// One claim of a paper as an experiment tested it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// Short name (`P1`, `R1`, `C2`).
    pub claim: String,
    /// What it says.
    pub what: String,
    /// The paper's number or statement, marked verified against the paper or not.
    pub paper: String,
    /// Our small-scale measurement.
    pub ours: String,
    /// `held`, `not held` or `not measured` ([`verdict_word`]).
    pub verdict: String,
    /// Whether the experiment's verdict depends on it.
    pub gating: bool,
}

impl ClaimRow {
    /// A row; `ok` is the verdict (`None`: not measured).
    pub fn new(
        claim: &str,
        what: &str,
        paper: &str,
        ours: String,
        ok: Option<bool>,
        gating: bool,
    ) -> ClaimRow {
        ClaimRow {
            claim: claim.into(),
            what: what.into(),
            paper: paper.into(),
            ours,
            verdict: verdict_word(ok),
            gating,
        }
    }
}

/// What an experiment's claims add up to: the same words in every paper's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every claim the verdict rests on held.
    Reproduced,
    /// Some of them held.
    Partially,
    /// They did not hold.
    NotReproduced,
    /// A precondition failed (e.g. the teacher is no better than the student): the claims
    /// cannot be judged.
    Inconclusive,
    /// A validity check failed (the method did not run as the protocol needs).
    Invalid,
    /// The experiment gates no claim: its claims are reported only.
    Reported,
    /// An arm or run the verdict needs is missing.
    Incomplete,
    /// A smoke run: the numbers mean nothing and no verdict is given.
    Smoke,
}

impl Outcome {
    /// The outcome in words.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Reproduced => "reproduced",
            Outcome::Partially => "partially reproduced",
            Outcome::NotReproduced => "not reproduced",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Invalid => "invalid",
            Outcome::Reported => "reported, not gated",
            Outcome::Incomplete => "incomplete",
            Outcome::Smoke => "smoke run: no verdict",
        }
    }
}

/// An experiment's verdict: its [`Outcome`] and what decided it (the claims that held or
/// failed), rendered `outcome (why)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// What decided it; may be empty.
    pub why: String,
}

impl Verdict {
    /// A verdict with its reason.
    pub fn new(outcome: Outcome, why: impl Into<String>) -> Verdict {
        Verdict {
            outcome,
            why: why.into(),
        }
    }

    /// `outcome (why)`, or the outcome alone.
    pub fn sentence(&self) -> String {
        if self.why.is_empty() {
            self.outcome.word().to_string()
        } else {
            format!("{} ({})", self.outcome.word(), self.why)
        }
    }

    /// [`Verdict::sentence`] with the outcome in bold, for a report's text.
    pub fn bold(&self) -> String {
        if self.why.is_empty() {
            format!("**{}**", self.outcome.word())
        } else {
            format!("**{}** ({})", self.outcome.word(), self.why)
        }
    }
}

/// The claims an experiment's sweep tested, and its overall verdict; written as `claims.json`
/// beside the sweep's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The overall verdict in words ([`Verdict::sentence`]).
    pub verdict: String,
    /// The outcome of that verdict (absent from files written before it was recorded).
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Every claim.
    pub claims: Vec<ClaimRow>,
}

impl Claims {
    /// The claims with their verdict.
    pub fn new(verdict: &Verdict, claims: Vec<ClaimRow>) -> Claims {
        Claims {
            verdict: verdict.sentence(),
            outcome: Some(verdict.outcome),
            claims,
        }
    }
}

impl Claims {
    /// Writes `claims.json` into a sweep folder.
    pub fn write(&self, dir: &Path) -> crate::Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| crate::Error::msg(e.to_string()))?;
        crate::checkpoint::write_atomic(&dir.join("claims.json"), text.as_bytes())
    }
}

/// The banner at the top of a smoke run's report.
pub const SMOKE_BANNER: &str =
    "**Smoke run**: a few iterations to check the plumbing; the numbers \
     mean nothing, and no verdict is given.\n\n";

/// The overall verdict of a smoke run's claims.
pub const SMOKE_VERDICT: &str = "smoke run: no verdict";

impl Claims {
    /// The claims with every verdict withheld (a smoke run: the numbers mean nothing).
    pub fn withheld(mut self) -> Claims {
        self.verdict = SMOKE_VERDICT.to_string();
        self.outcome = Some(Outcome::Smoke);
        for c in &mut self.claims {
            c.verdict = "—".to_string();
        }
        self
    }

    /// Whether the verdicts are withheld.
    pub fn is_withheld(&self) -> bool {
        self.verdict == SMOKE_VERDICT
    }

    /// The section every sweep report opens with: each claim, what the paper reports, what we
    /// measured and the verdict, then the experiment's verdict.
    pub fn markdown(&self) -> String {
        let mut md = String::from("## The paper's claims beside ours\n\n");
        if self.claims.is_empty() {
            md.push_str("No claim could be measured.\n");
        } else {
            md.push_str(&claims_table(&self.claims, true));
        }
        md.push_str(&format!("\n**Verdict:** {}.\n\n", self.verdict));
        md
    }

    /// `md` (a sweep report) with [`Claims::markdown`] put before its first `## ` section, and,
    /// when the verdicts are withheld, the smoke banner at its top (after the title) unless it
    /// has one.
    pub fn open_report(&self, md: &str) -> String {
        let at = md.find("\n## ").map_or(md.len(), |i| i + 1);
        let (head, rest) = md.split_at(at);
        let mut out = head.to_string();
        if self.is_withheld() && !head.contains("**Smoke run**") {
            let title_end = head.find('\n').map_or(head.len(), |i| i + 1);
            out.insert_str(title_end, &format!("\n{SMOKE_BANNER}"));
        }
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(&self.markdown());
        out.push_str(rest);
        out
    }
}

/// The table `claim | what | paper | ours | verdict`, with a `role` column (gate or reported)
/// when `role`.
pub fn claims_table(claims: &[ClaimRow], role: bool) -> String {
    let rows: Vec<Vec<String>> = claims
        .iter()
        .map(|c| {
            let mut r = vec![
                c.claim.clone(),
                c.what.clone(),
                c.paper.clone(),
                c.ours.clone(),
                c.verdict.clone(),
            ];
            if role {
                r.push(if c.gating { "gate" } else { "reported" }.to_string());
            }
            r
        })
        .collect();
    let mut header = vec!["claim", "what", "paper", "ours", "verdict"];
    if role {
        header.push("role");
    }
    markdown_table(&header, &rows)
}

/// A claim's verdict in words: `held`, `not held`, or `not measured`.
pub fn verdict_word(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "held",
        Some(false) => "not held",
        None => "not measured",
    }
    .to_string()
}

/// A markdown table from a header row and rows of cells.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    for _ in header {
        s.push_str("---|");
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Mean and sample standard deviation (n − 1; 0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

/// `m ± s` with `digits` decimals (just `m` for one value).
pub fn fmt_mean_std(xs: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(xs);
    if xs.len() < 2 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
}

/// The sweep point a run belongs to: its name without the `seed=` part.
pub fn point_of(run_name: &str) -> String {
    let kept: Vec<&str> = run_name
        .split(',')
        .filter(|p| !p.starts_with("seed="))
        .collect();
    if kept.is_empty() {
        "(all)".to_string()
    } else {
        kept.join(",")
    }
}

/// Groups runs by sweep point and tabulates every numeric summary value, mean ± std over seeds.
pub fn aggregate_table(runs: &[RunSummary]) -> String {
    let mut points: BTreeMap<String, Vec<&RunSummary>> = BTreeMap::new();
    for r in runs {
        points.entry(point_of(&r.name)).or_default().push(r);
    }
    let mut keys: Vec<String> = Vec::new();
    for r in runs {
        if let Json::Object(m) = &r.summary {
            for (k, v) in m {
                if v.is_number() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut header = vec!["point", "runs"];
    header.extend(keys.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|(p, rs)| {
            let mut row = vec![p.clone(), rs.len().to_string()];
            for k in &keys {
                let xs: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.summary.get(k)?.as_f64())
                    .collect();
                row.push(if xs.is_empty() {
                    "–".into()
                } else {
                    fmt_mean_std(&xs, 4)
                });
            }
            row
        })
        .collect();
    markdown_table(&header, &rows)
}

/// Writes a CSV file atomically through the `csv` crate: a header row, then the rows, each
/// field quoted where it must be (an arm or target name from YAML may hold a comma or a quote).
pub fn write_csv<S: AsRef<str>>(
    path: &std::path::Path,
    header: &[&str],
    rows: &[Vec<S>],
) -> crate::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| crate::Error::msg(format!("{}: {e}", path.display()));
    w.write_record(header).map_err(bad)?;
    for r in rows {
        w.write_record(r.iter().map(AsRef::as_ref)).map_err(bad)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_matches_hand_values() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((s - 1.2909944487358056).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
        assert_eq!(fmt_mean_std(&[1.0, 3.0], 2), "2.00 ± 1.41");
    }

    #[test]
    fn points_drop_the_seed() {
        assert_eq!(point_of("lr=0.1,width=8,seed=2"), "lr=0.1,width=8");
        assert_eq!(point_of("seed=2"), "(all)");
    }

    #[test]
    fn tables_render() {
        let t = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }

    #[test]
    fn csv_fields_with_commas_and_quotes_read_back_as_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.csv");
        let rows = vec![vec!["a,b", "say \"hi\"", "1.5"], vec!["plain", "", "nan"]];
        write_csv(&p, &["name", "note", "v"], &rows).unwrap();
        let mut r = csv::Reader::from_path(&p).unwrap();
        assert_eq!(r.headers().unwrap(), vec!["name", "note", "v"]);
        let back: Vec<Vec<String>> = r
            .records()
            .map(|x| x.unwrap().iter().map(String::from).collect())
            .collect();
        assert_eq!(
            back,
            rows.iter()
                .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        // Plain fields are written bare, as before.
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("\nplain,,nan\n"));
    }

    #[test]
    fn every_report_opens_with_the_claims_and_a_smoke_report_gives_no_verdict() {
        let c = Claims::new(
            &Verdict::new(Outcome::Reproduced, ""),
            vec![ClaimRow::new(
                "P1",
                "accuracy kept",
                "95.8 %",
                "0.93".into(),
                Some(true),
                true,
            )],
        );
        assert_eq!(c.outcome, Some(Outcome::Reproduced));
        let v = Verdict::new(Outcome::Partially, "P1 held");
        assert_eq!(v.sentence(), "partially reproduced (P1 held)");
        assert_eq!(v.bold(), "**partially reproduced** (P1 held)");
        let md = "# x: sweep report\n\nintro\n\n## Table\n\nrows\n";
        let out = c.open_report(md);
        assert!(
            out.starts_with("# x: sweep report\n\nintro\n\n## The paper's claims beside ours\n"),
            "{out}"
        );
        assert!(
            out.contains("| P1 | accuracy kept | 95.8 % | 0.93 | held | gate |"),
            "{out}"
        );
        assert!(
            out.contains("**Verdict:** reproduced.") && out.ends_with("## Table\n\nrows\n"),
            "{out}"
        );
        let smoke = c.clone().withheld();
        let out = smoke.open_report(md);
        assert!(
            out.starts_with("# x: sweep report\n\n**Smoke run**"),
            "{out}"
        );
        assert!(
            out.contains("| P1 | accuracy kept | 95.8 % | 0.93 | — | gate |"),
            "{out}"
        );
        assert!(
            !out.contains("held") && out.contains("**Verdict:** smoke run: no verdict."),
            "{out}"
        );
        // A report without sections gets the claims at its end.
        assert!(c
            .open_report("# t\n")
            .ends_with("**Verdict:** reproduced.\n\n"));
    }
}
