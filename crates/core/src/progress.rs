//! Progress of long loops: an `indicatif` bar with rate and ETA when stderr is a terminal,
//! plain periodic lines otherwise (CI logs, files, `--jobs` children).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Shows how far a loop of `total` steps has come.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    start_step: u64,
    started: Instant,
    last_line: Instant,
    every: Duration,
    silent: bool,
}

/// Formats seconds as `1h02m`, `4m05s` or `12s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A loss term for a progress line: `—` where the arm does not compute it (NaN), which a
/// printed `NaN` would make read as a divergence.
pub fn term(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "—".to_string()
    } else {
        format!("{v:.decimals$}")
    }
}

impl Progress {
    /// A display for `total` steps, of which `done` are already done (a resumed run).
    pub fn new(label: &str, total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b.set_position(done);
            b
        });
        let every = std::env::var("REPRISE_PROGRESS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        if bar.is_none() {
            // Said before the first step, which on a large model can take minutes.
            let from = if done > 0 {
                format!(", continuing after step {done}")
            } else {
                String::new()
            };
            crate::note!("[{label}] {total} steps{from}: started");
        }
        Progress {
            bar,
            label: label.to_string(),
            total,
            start_step: done,
            started: Instant::now(),
            last_line: Instant::now(),
            every,
            silent: false,
        }
    }

    /// A display that shows nothing (a data-parallel rank other than 0).
    pub fn silent(total: u64, done: u64) -> Self {
        Progress {
            bar: None,
            label: String::new(),
            total,
            start_step: done,
            started: Instant::now(),
            last_line: Instant::now(),
            every: Duration::MAX,
            silent: true,
        }
    }

    /// Marks `step` as done, with a short message (e.g. the current loss).
    pub fn set(&mut self, step: u64, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(msg.to_string());
            return;
        }
        if self.silent {
            return;
        }
        if self.last_line.elapsed() >= self.every || step == self.total {
            self.last_line = Instant::now();
            let el = self.started.elapsed().as_secs_f64();
            let done = step.saturating_sub(self.start_step) as f64;
            let rate = if el > 0.0 { done / el } else { 0.0 };
            let eta = if rate > 0.0 {
                (self.total.saturating_sub(step)) as f64 / rate
            } else {
                0.0
            };
            crate::note!(
                "[{}] step {step}/{} ({:.0}%) {rate:.2} it/s, elapsed {}, eta {} {msg}",
                self.label,
                self.total,
                100.0 * step as f64 / self.total.max(1) as f64,
                human_duration(el),
                human_duration(eta),
            );
        }
    }

    /// Ends the display.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5.4), "5s");
        assert_eq!(human_duration(245.0), "4m05s");
        assert_eq!(human_duration(3720.0), "1h02m");
    }

    #[test]
    fn terms_an_arm_does_not_compute_show_a_dash() {
        assert_eq!(term(f64::NAN, 2), "—");
        assert_eq!(term(1.23456, 2), "1.23");
        assert_eq!(term(f64::INFINITY, 1), "inf");
    }
}
