//! Store heartbeats: a rank that is alive but frozen (stopped, hung in the kernel, or on a host
//! that can no longer be reached) stops the others within a bounded time, where a collective
//! would wait for it until its own timeout (30 minutes by default).
//!
//! Each rank adds to a counter of its own in the group's rendezvous store every beat, through a
//! connection of its own, and reads the others'. A rank whose counter has not moved for the
//! silence period, or a store that has not answered for that long (rank 0, which serves it, is
//! frozen or gone), is reported once to the caller's handler. A rank that ends its part of the
//! run says so first ([`Heartbeat::leave`]), so that the ranks still working (rank 0
//! evaluating alone) do not take its silence for a failure.

use crate::{call, ffi, message, DistError, Launch, Result, ERR_LEN};
use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connection of its own to a group's TCPStore (served by rank 0): its operations never wait
/// behind those of the group's connection.
pub struct StoreClient {
    ptr: *mut c_void,
}

// A TCPStore client serialises its operations under its own mutex; the handle may move between
// threads.
#[allow(unsafe_code)]
unsafe impl Send for StoreClient {}
#[allow(unsafe_code)]
unsafe impl Sync for StoreClient {}

impl StoreClient {
    /// Connects to the store of `launch` (`MASTER_ADDR:MASTER_PORT`), waiting at most
    /// `timeout` for it; later operations wait at most as long for an answer.
    pub fn connect(launch: &Launch, timeout: Duration) -> Result<StoreClient> {
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| DistError("MASTER_ADDR holds a NUL byte".into()))?;
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        let mut buf = vec![0u8; ERR_LEN];
        #[allow(unsafe_code)]
        // SAFETY: `host` outlives the call; the shim writes at most ERR_LEN bytes into `buf`.
        let ptr = unsafe {
            ffi::reprise_store_connect(
                host.as_ptr(),
                c_int::from(launch.master_port),
                ms,
                buf.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if ptr.is_null() {
            return Err(DistError(format!(
                "cannot connect to the store at {}:{}: {}",
                launch.master_addr,
                launch.master_port,
                message(&buf)
            )));
        }
        Ok(StoreClient { ptr })
    }

    /// Adds `delta` to the counter `key` (made at 0 if missing) and returns its new value;
    /// `delta` 0 reads it.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = CString::new(key).map_err(|_| DistError("a store key holds a NUL".into()))?;
        let mut out = 0i64;
        let p = self.ptr;
        #[allow(unsafe_code)]
        // SAFETY: the store, the key and `out` are live for the call.
        call(|e, n| unsafe { ffi::reprise_store_add(p, key.as_ptr(), delta, &mut out, e, n) })?;
        Ok(out)
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` came from `reprise_store_connect` and is freed once, here.
        unsafe {
            ffi::reprise_store_free(self.ptr)
        }
    }
}

/// Added to a rank's counter when it leaves: a counter at least this large is a rank that ended
/// its part of the run, not a frozen one.
const LEFT: i64 = 1 << 40;

/// The key of rank `r`'s counter.
fn key(r: usize) -> String {
    format!("reprise/heartbeat/{r}")
}

/// What the beating thread has seen, read by the watching thread.
struct Seen {
    /// When the store last answered a whole round.
    answered: Instant,
    /// The store's last error, if its last round failed.
    error: Option<String>,
    /// Each rank's counter and when it last moved (this rank's own included, unused).
    counters: Vec<(i64, Instant)>,
}

/// A running heartbeat ([`Heartbeat::start`]); dropping it stops it without leaving.
pub struct Heartbeat {
    store: Arc<StoreClient>,
    rank: usize,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts beating for rank `launch.rank` and watching the others: when a rank's counter has
    /// not moved for `silence`, or the store has not answered for that long, `on_silent` is
    /// called once with a sentence that names it (it may end the process). The beat comes every
    /// `silence / 10` (between 50 ms and 5 s).
    pub fn start(
        launch: &Launch,
        silence: Duration,
        on_silent: impl FnOnce(String) + Send + 'static,
    ) -> Result<Heartbeat> {
        let store = Arc::new(StoreClient::connect(launch, silence)?);
        let (rank, world) = (launch.rank, launch.world);
        let every = (silence / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let now = Instant::now();
        let seen = Arc::new(Mutex::new(Seen {
            answered: now,
            error: None,
            counters: vec![(-1, now); world],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let round = (|| -> Result<Vec<i64>> {
                            store.add(&key(rank), 1)?;
                            (0..world).map(|r| store.add(&key(r), 0)).collect()
                        })();
                        let now = Instant::now();
                        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                        match round {
                            Ok(values) => {
                                s.answered = now;
                                s.error = None;
                                for (c, v) in s.counters.iter_mut().zip(values) {
                                    if c.0 != v {
                                        *c = (v, now);
                                    }
                                }
                            }
                            Err(e) => {
                                // The connection is broken (its server gone) or an answer
                                // took the whole silence: the watcher reports it in time;
                                // trying again would only repeat c10d's warning.
                                s.error = Some(e.0);
                                return;
                            }
                        }
                        drop(s);
                        std::thread::sleep(every);
                    }
                })
                .map_err(|e| DistError(format!("cannot start the heartbeat thread: {e}")))?
        };
        let watch = {
            let (seen, stop) = (seen.clone(), stop.clone());
            let (host, port) = (launch.master_addr.clone(), launch.master_port);
            std::thread::Builder::new()
                .name("heartbeat-watch".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(every);
                        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
                        let quiet = s.answered.elapsed();
                        let why = if quiet >= silence {
                            Some(format!(
                                "the group's store at {host}:{port} (served by rank 0) has not \
                                 answered for {quiet:.0?}{}: rank 0 is frozen or gone, or its host \
                                 cannot be reached",
                                s.error
                                    .as_ref()
                                    .map(|e| format!(" ({e})"))
                                    .unwrap_or_default()
                            ))
                        } else {
                            s.counters
                                .iter()
                                .enumerate()
                                .find(|&(r, &(v, at))| {
                                    r != rank && v < LEFT && at.elapsed() >= silence
                                })
                                .map(|(r, &(_, at))| {
                                    format!(
                                        "rank {r} of {world} has not beaten for {:.0?}: it is \
                                         frozen (stopped, or hung in the kernel) or its host \
                                         cannot be reached",
                                        at.elapsed()
                                    )
                                })
                        };
                        drop(s);
                        if let Some(why) = why {
                            if !stop.load(Ordering::SeqCst) {
                                on_silent(why);
                            }
                            return;
                        }
                    }
                })
                .map_err(|e| DistError(format!("cannot start the heartbeat thread: {e}")))?
        };
        Ok(Heartbeat {
            store,
            rank,
            stop,
            threads: vec![beat, watch],
        })
    }

    /// Ends this rank's part of the run: stops beating and watching, and tells the others that
    /// its silence from now on is not a failure.
    pub fn leave(mut self) {
        self.halt();
        // Best effort: a store already gone (rank 0 ended) has no one left to tell.
        let _ = self.store.add(&key(self.rank), LEFT);
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.halt();
    }
}
