//! Batches prepared ahead of the step that takes them, as a `DataLoader` with
//! `prefetch_factor` does: a thread makes the batches of the coming steps, at most `depth`
//! ahead, while the training step runs. Each batch is a function of its step only (the order of
//! an epoch from the seed, the augmentation from the step's generator), so what the thread
//! makes is what the loop would have made itself, and a resumed run starts it at its step.

use crate::error::{Error, Result};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

/// The batches of steps `start..end`, made by `make(step)` on a thread of their own.
pub struct Prefetch<T> {
    rx: Option<Receiver<(u64, Result<T>)>>,
    worker: Option<JoinHandle<()>>,
    next: u64,
}

impl<T> std::fmt::Debug for Prefetch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefetch(next step {})", self.next)
    }
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts making the batches of steps `start..end`, holding at most `depth` made ahead
    /// (at least 1). The first error `make` returns is handed to the step that asks for that
    /// batch, and the thread stops there.
    pub fn new(
        start: u64,
        end: u64,
        depth: usize,
        mut make: impl FnMut(u64) -> Result<T> + Send + 'static,
    ) -> Prefetch<T> {
        let (tx, rx) = sync_channel(depth.max(1) - 1);
        let worker = std::thread::spawn(move || {
            for step in start..end {
                let b = make(step);
                let failed = b.is_err();
                if tx.send((step, b)).is_err() || failed {
                    return;
                }
            }
        });
        Prefetch {
            rx: Some(rx),
            worker: Some(worker),
            next: start,
        }
    }

    /// The batch of `step`, the step after the last one taken.
    pub fn take(&mut self, step: u64) -> Result<T> {
        if step != self.next {
            return Err(Error::msg(format!(
                "the prefetched batches are for step {}, not {step}",
                self.next
            )));
        }
        let got = self.rx.as_ref().and_then(|r| r.recv().ok());
        match got {
            Some((s, b)) if s == step => {
                self.next += 1;
                b
            }
            Some((s, _)) => Err(Error::msg(format!(
                "the batch loader made step {s}'s batch when {step}'s was due"
            ))),
            None => {
                // The thread has ended: past the last step, or it panicked.
                let why = match self.worker.take().map(JoinHandle::join) {
                    Some(Err(p)) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "it panicked".into()),
                    _ => "it has made its last batch".into(),
                };
                Err(Error::msg(format!(
                    "the batch loader has no batch for step {step}: {why}"
                )))
            }
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channel ends the thread at its next send (after the batch it is making).
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn batches_come_in_step_order_at_most_depth_ahead() {
        let made = Arc::new(AtomicU64::new(0));
        let m = Arc::clone(&made);
        let mut p = Prefetch::new(5, 9, 2, move |s| {
            m.fetch_add(1, Ordering::SeqCst);
            Ok(s * 10)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        // One batch in the channel, one waiting to be sent: at most depth ahead of the taker.
        assert!(made.load(Ordering::SeqCst) <= 3, "{made:?}");
        assert_eq!(p.take(5).unwrap(), 50);
        assert!(p.take(7).is_err(), "a step skipped is an error");
        assert_eq!(p.take(6).unwrap(), 60);
        assert_eq!(p.take(7).unwrap(), 70);
        assert_eq!(p.take(8).unwrap(), 80);
        let e = p.take(9).unwrap_err().to_string();
        assert!(e.contains("last batch"), "{e}");
    }

    #[test]
    fn an_error_reaches_the_step_that_asks_and_dropping_early_stops_the_thread() {
        let mut p = Prefetch::new(0, 10, 3, |s| {
            if s == 2 {
                Err(Error::Data("image 7 is not a JPEG".into()))
            } else {
                Ok(s)
            }
        });
        assert_eq!(p.take(0).unwrap(), 0);
        assert_eq!(p.take(1).unwrap(), 1);
        assert!(p.take(2).unwrap_err().to_string().contains("not a JPEG"));
        let q = Prefetch::new(0, u64::MAX, 2, Ok);
        drop(q);
    }
}
