//! `runner`: the command line of reprise. It parses specs, dispatches them to the paper crates
//! and reports; it holds no method of its own.

mod cli;
mod experiments;
mod slots;
mod sweep;

use anyhow::{bail, Context, Result};
use clap::Parser;
use reprise_core::run::Paper;
use std::process::ExitCode;

/// Every paper crate the runner knows.
pub fn papers() -> Vec<Paper> {
    vec![
        jem::paper(),
        robust_transfer::paper(),
        deepthin::paper(),
        tsit::paper(),
    ]
}

/// The paper a spec names, or an error listing the known ones.
pub fn paper(name: &str) -> Result<Paper> {
    let all = papers();
    match all.iter().find(|p| p.name == name) {
        Some(p) => Ok(*p),
        None => {
            let known: Vec<&str> = all.iter().map(|p| p.name).collect();
            bail!("unknown paper `{name}` (known: {})", known.join(", "))
        }
    }
}

fn main() -> ExitCode {
    // Tensor memory freed by one step is kept for the next (no page faults per step).
    reprise_core::memory::keep_freed_memory();
    reprise_core::logging::init();
    let flag = reprise_core::run::interrupt_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal ends the process at once; the first asks the run to checkpoint and stop.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Interrupted>().is_some()
                || matches!(
                    e.downcast_ref(),
                    Some(reprise_core::Error::Interrupted { .. })
                )
            {
                eprintln!("{e}");
                return ExitCode::from(130);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A run or sweep stopped by SIGINT/SIGTERM after writing its checkpoints; the message says how
/// to resume. The process exits with 130.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Sets the intra-op thread count, rejecting nonsense.
pub fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(i32::try_from(n).context("--threads is too large")?);
    }
    Ok(())
}
