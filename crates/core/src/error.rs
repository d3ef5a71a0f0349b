//! The error type of reprise's libraries.

use std::path::PathBuf;

/// Everything that can go wrong in core and in the paper crates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in a spec (file, key path, line).
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// An I/O failure on a file.
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    /// A file whose content is not what it should be (truncated, bad magic, checksum).
    #[error("{path}: {why}", path = .0.display(), why = .1)]
    Corrupt(PathBuf, String),
    /// A dataset problem.
    #[error("data: {0}")]
    Data(String),
    /// Training diverged.
    #[error("training diverged at step {step}: {why}")]
    Diverged {
        /// The step at which the loss went bad.
        step: u64,
        /// What went bad.
        why: String,
    },
    /// The run was interrupted by a signal after writing a checkpoint.
    #[error("interrupted at step {step}; checkpoint written, resume with: runner run --resume {}", .dir.display())]
    Interrupted {
        /// The step checkpointed.
        step: u64,
        /// The run folder.
        dir: PathBuf,
    },
    /// A run has step checkpoints but none it can continue from (each corrupt, of another
    /// run, or not fitting its model as the spec now describes it).
    #[error("{dir}: none of its {n} checkpoint(s) can be continued from: {why}; move them aside to start the run over", dir = .dir.display())]
    Unresumable {
        /// The checkpoint folder.
        dir: PathBuf,
        /// How many step checkpoints there are.
        n: usize,
        /// Why the newest one was refused.
        why: String,
    },
    /// A LibTorch error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Anything else, as a message.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// An error from a message.
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caught panic says: an [`Error`] it carries (`std::panic::panic_any`, as a forward
/// without an error path raises a failed collective), its message, or `None` for any other
/// payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<Error>()
        .map(ToString::to_string)
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
}

/// Why a training step did not complete: its loss or energies went bad (the run diverged), or
/// something else failed (a collective whose peer rank stopped, a LibTorch error).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A divergence guard tripped, with what went bad.
    #[error("{0}")]
    Diverged(String),
    /// Any other failure.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl StepError {
    /// The run's error for this failure at `step` (a failure's message says the step).
    pub fn at(self, step: u64) -> Error {
        match self {
            StepError::Diverged(why) => Error::Diverged { step, why },
            StepError::Failed(e) => Error::msg(format!("step {step}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_says_its_error_or_message() {
        let said = |f: fn()| panic_message(std::panic::catch_unwind(f).unwrap_err().as_ref());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e = said(|| std::panic::panic_any(Error::msg("a rank is gone")));
        let s = said(|| panic!("formatted {}", 1));
        let t = said(|| panic!("plain"));
        let other = said(|| std::panic::panic_any(7u8));
        std::panic::set_hook(hook);
        assert_eq!(e.as_deref(), Some("a rank is gone"));
        assert_eq!(s.as_deref(), Some("formatted 1"));
        assert_eq!(t.as_deref(), Some("plain"));
        assert_eq!(other, None);
    }
}
