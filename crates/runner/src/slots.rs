//! Cores shared by several sweeps at once (`runner run --slots FIFO`): a named pipe holds one
//! byte, a token, per free core, as in make's jobserver. A sweep takes a token before it starts
//! a run and puts it back when the run ends, so sweeps started side by side (the tail of one
//! and the start of the next, in `just reproduce-all`) never run more runs than there are
//! tokens. The pipe's owner fills it and keeps it open; the runner never blocks on it.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The tokens this process holds from a slots pipe; [`Drop`] puts back whatever is still held,
/// on every way out (a finished sweep, an error, an interruption).
pub struct Slots {
    pipe: File,
    path: PathBuf,
    held: usize,
}

impl Slots {
    /// Opens the named pipe at `path` (read and write, non-blocking).
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("--slots {}: cannot read it", path.display()))?;
        if !meta.file_type().is_fifo() {
            bail!(
                "--slots {}: not a named pipe (make one with mkfifo and write one byte per core into it)",
                path.display()
            );
        }
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("--slots {}: cannot open it", path.display()))?;
        Ok(Self {
            pipe,
            path: path.to_path_buf(),
            held: 0,
        })
    }

    /// Takes one token if one is free; never waits.
    pub fn try_take(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        match self.pipe.read(&mut b) {
            Ok(1) => {
                self.held += 1;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Waits for one token, then takes every other free one too, up to `most` in all; returns
    /// how many it holds. Gives up with [`crate::Interrupted`] on SIGINT/SIGTERM.
    pub fn take_for_one_run(&mut self, most: usize) -> Result<usize> {
        let interrupt = reprise_core::run::interrupt_flag();
        let _checked = reprise_core::run::StopChecked::new();
        let mut announced = false;
        while !self.try_take()? {
            if interrupt.load(Ordering::SeqCst) {
                return Err(anyhow::Error::new(crate::Interrupted(
                    "interrupted while waiting for a free core".into(),
                )));
            }
            if !announced {
                reprise_core::note!("waiting for a free core ({})", self.path.display());
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        while self.held < most.max(1) && self.try_take()? {}
        Ok(self.held)
    }

    /// The pipe's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts one token as held that another process took for this one (a worker whose
    /// sweep runner took its token): dropping it then puts the token back.
    pub fn adopt_one(&mut self) {
        self.held += 1;
    }

    /// Puts one held token back.
    pub fn give_back(&mut self) -> Result<()> {
        if self.held > 0 {
            self.pipe
                .write_all(b"+")
                .with_context(|| format!("cannot write {}", self.path.display()))?;
            self.held -= 1;
        }
        Ok(())
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        while self.held > 0 && self.give_back().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, tokens: usize) -> (PathBuf, File) {
        let p = dir.join("slots");
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        // The owner's end: keeps the pipe's contents alive, as the owner of a pool does.
        let mut owner = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        owner.write_all(&vec![b'+'; tokens]).unwrap();
        (p, owner)
    }

    fn count(owner: &mut File) -> usize {
        let mut buf = [0u8; 64];
        match owner.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn tokens_are_taken_until_none_is_left_and_all_come_back_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let (p, mut owner) = fifo(tmp.path(), 2);
        {
            let mut a = Slots::open(&p).unwrap();
            let mut b = Slots::open(&p).unwrap();
            assert!(a.try_take().unwrap());
            assert!(b.try_take().unwrap());
            assert!(!a.try_take().unwrap(), "a third token out of two");
            b.give_back().unwrap();
            assert!(a.try_take().unwrap());
            assert_eq!((a.held, b.held), (2, 0));
        }
        assert_eq!(count(&mut owner), 2, "dropping must put both tokens back");
    }

    #[test]
    fn one_run_takes_every_free_token_up_to_its_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (p, mut owner) = fifo(tmp.path(), 3);
        let mut s = Slots::open(&p).unwrap();
        assert_eq!(s.take_for_one_run(2).unwrap(), 2);
        assert_eq!(count(&mut owner), 1);
        drop(s);
        assert_eq!(count(&mut owner), 2);
    }

    #[test]
    fn a_plain_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("plain");
        std::fs::write(&p, b"++").unwrap();
        let e = Slots::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a named pipe"), "{e}");
    }
}
