//! `runner`: the command line of reprise. It parses specs, dispatches them to the paper crates
//! and reports; it holds no method of its own.

/// `println!` that returns the write's error (a reader that went away, as `runner list | head`
/// does) instead of panicking; `main` ends quietly on a broken pipe.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
    }};
}

/// `print!` in the manner of [`say!`].
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)
    }};
}

mod cli;
mod compare;
mod ddp;
mod experiments;
mod export;
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
    // The first SIGINT or SIGTERM asks a running loop (training, a sweep waiting for its
    // workers) to checkpoint and stop after its step; a second one, or any while no such loop
    // runs (loading data, say), ends the process at once.
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if flag.load(std::sync::atomic::Ordering::SeqCst)
                    || !reprise_core::run::stop_is_checked()
                {
                    std::process::exit(130);
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                reprise_core::note!(
                    "stopping after this step, with a checkpoint (a second signal stops at once)"
                );
            }
        });
    }
    // A file-size limit (`ulimit -f`) then fails the write with EFBIG, which names the file,
    // instead of killing the process without a word.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                // The reader of our output has gone (`runner list | head`): nothing to say.
                return ExitCode::SUCCESS;
            }
            if e.downcast_ref::<Interrupted>().is_some()
                || matches!(
                    e.downcast_ref(),
                    Some(reprise_core::Error::Interrupted { .. })
                )
            {
                reprise_core::note!("{e}");
                return ExitCode::from(130);
            }
            reprise_core::note!("error: {e:#}");
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
