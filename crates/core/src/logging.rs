//! `tracing` into the current run's `run.log`; warnings to stderr as well (errors reach the
//! user once, as the command's own error line).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

static LOG_FILE: Mutex<Option<File>> = Mutex::new(None);

/// `eprintln!` that never fails: a line for a stderr whose reader has gone (`runner run … 2>&1 |
/// head -2`) is dropped instead of panicking, so progress and messages can neither fail nor stop
/// a run. Every message the runner and the papers print to stderr goes through it.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(Level::INFO)
        .with_writer(RunLogWriter)
        .try_init();
}

/// Sends the log to `path` (appending) until the next call; `None` stops file logging.
pub fn set_log_file(path: Option<&Path>) -> io::Result<()> {
    let file = match path {
        Some(p) => Some(crate::checkpoint::open_append(p).map_err(|e| match e {
            crate::Error::Io(_, io) => io,
            other => io::Error::other(other.to_string()),
        })?),
        None => None,
    };
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(())
}

struct RunLogWriter;

/// One log event's writer: the run log, and stderr for warnings and errors.
pub struct EventWriter {
    to_stderr: bool,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write_all(buf)?;
        }
        if self.to_stderr {
            // A closed stderr (its reader gone) loses the line, never the run.
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RunLogWriter {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter { to_stderr: false }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            to_stderr: *meta.level() == Level::WARN,
        }
    }
}
