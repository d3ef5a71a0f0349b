//! What the runs of one sweep share: helper networks (a perceptual net, the judges of an
//! evaluation) trained once, by the first run that needs one, and read by the others. A cache
//! folder sits in the sweep folder beside the runs, or in the run folder when the run is alone
//! ([`RunContext::sweep_cache`]); each file in it is named by what it holds and a hash of the
//! recipe that made it ([`file`]), so a changed recipe never reads a stale file. Runs of a sweep
//! that run at the same time train a file once between them ([`once`]).

use crate::checkpoint::{write_atomic, Checkpoint};
use crate::error::{Error, Result};
use crate::run::RunContext;
use std::path::{Path, PathBuf};
use tch::nn;

impl RunContext {
    /// The cache folder `name` of this run: `<sweep>/.<name>` when the run folder is a run of a
    /// sweep folder (one holding `sweep.json`), shared by the sweep's runs; else
    /// `<run>/<name>`. Created when first written to.
    pub fn sweep_cache(&self, name: &str) -> PathBuf {
        cache_dir(self.dir(), name)
    }
}

/// [`RunContext::sweep_cache`] of the run folder `run`.
pub fn cache_dir(run: &Path, name: &str) -> PathBuf {
    match run.parent() {
        Some(sweep) if sweep.join("sweep.json").is_file() => sweep.join(format!(".{name}")),
        _ => run.join(name),
    }
}

/// FNV-1a (64 bits) of a text: a short, stable name for what the text describes.
pub fn fnv1a(text: &str) -> u64 {
    let mut h = Digest::new();
    h.bytes(text.as_bytes());
    h.value()
}

/// FNV-1a (64 bits) fed piece by piece: texts, and tensors by their kind, shape and values — a
/// fingerprint of the weights a result was computed from.
#[derive(Debug, Clone, Copy)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

impl Digest {
    /// The digest of nothing (FNV-1a's offset basis).
    pub fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    /// Adds bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Adds a tensor: its kind, its shape and its values' bytes (copied to the host).
    pub fn tensor(&mut self, t: &tch::Tensor) -> Result<()> {
        self.bytes(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
        let host = t.detach().to_device(tch::Device::Cpu).contiguous();
        let n = host.numel() * host.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; n];
        host.f_copy_data_u8(&mut buf, host.numel())?;
        self.bytes(&buf);
        Ok(())
    }

    /// Adds every variable of `vs`, name and tensor, in the order of the names.
    pub fn vars(&mut self, vs: &nn::VarStore) -> Result<()> {
        for (name, t) in crate::nn::vars_by_name(vs) {
            self.bytes(name.as_bytes());
            self.tensor(&t)?;
        }
        Ok(())
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// A cached file: `<dir>/<kind>-<hash of recipe>.safetensors`, the hash [`fnv1a`] of the
/// recipe's text (any text that changes whenever what the file holds would).
pub fn file(dir: &Path, kind: &str, recipe: &str) -> PathBuf {
    dir.join(format!("{kind}-{:016x}.safetensors", fnv1a(recipe)))
}

/// Runs `produce` (which writes `file`) unless another process is producing it already: the
/// process holding the kernel's lock on `<file>.lock` (`flock`, released when the holder ends,
/// however it ends) produces; the others wait for the lock, and find the file there (then read
/// it) or produce it themselves. What the lock file holds (the holder's pid, for the messages)
/// is never trusted: an empty one, or one naming a live process that is not a runner, is no
/// lock. A wait is said on stderr, naming the lock, and ends with an error after
/// `REPRISE_LOCK_WAIT_SECS` (default 3 hours). `true` when this call produced the file.
pub fn once(file: &Path, produce: impl FnOnce() -> Result<()>) -> Result<bool> {
    once_waiting(file, lock_wait_secs()?, produce)
}

/// [`once`], waiting at most `wait_secs` for another process's lock.
fn once_waiting(file: &Path, wait_secs: f64, produce: impl FnOnce() -> Result<()>) -> Result<bool> {
    use std::io::Write as _;
    let lock = file.with_extension("lock");
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Io(d.to_path_buf(), e))?;
    }
    let mut f = crate::checkpoint::open_lock_file(&lock)?;
    let limit = std::time::Duration::from_secs_f64(wait_secs);
    let started = std::time::Instant::now();
    let mut said = None::<std::time::Instant>;
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = crate::checkpoint::read_bounded(&lock, 64)
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("pid {holder}")
                };
                if started.elapsed() >= limit {
                    return Err(Error::msg(format!(
                        "{} is still locked by {who} after {:.0} s (REPRISE_LOCK_WAIT_SECS): it is producing {}; stop it, or wait longer",
                        lock.display(),
                        limit.as_secs_f64(),
                        file.display()
                    )));
                }
                if said.is_none_or(|t| t.elapsed().as_secs() >= 300) {
                    crate::note!(
                        "waiting for {} ({who} is producing {})",
                        lock.display(),
                        file.display()
                    );
                    said = Some(std::time::Instant::now());
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io(lock, e)),
        }
    }
    if file.is_file() {
        // Produced by the holder this call waited for.
        return Ok(false);
    }
    let _ = f.set_len(0);
    let _ = write!(f, "{}", std::process::id());
    let r = produce();
    // Removed while still held: a process waiting on it then finds the file and reads it.
    let _ = std::fs::remove_file(&lock);
    drop(f);
    r.map(|()| true)
}

/// The longest [`once`] waits for another process's lock: `REPRISE_LOCK_WAIT_SECS`, a finite
/// number of seconds ≥ 0, or 3 hours.
fn lock_wait_secs() -> Result<f64> {
    match std::env::var("REPRISE_LOCK_WAIT_SECS") {
        Err(_) => Ok(3.0 * 3600.0),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(s),
            _ => Err(Error::msg(format!(
                "REPRISE_LOCK_WAIT_SECS={v}: expected a number of seconds from 0 to 1e9"
            ))),
        },
    }
}

/// Loads the variables of `vs` from the cached `file`; `false` (and `vs` untouched) when the
/// file is missing, corrupt, or lacks a variable of `vs` or has it in another shape.
pub fn load_vars(vs: &nn::VarStore, file: &Path) -> bool {
    let Ok(ck) = Checkpoint::load(file) else {
        return false;
    };
    let vars = vs.variables();
    if !vars
        .iter()
        .all(|(k, v)| ck.tensor(k).is_ok_and(|t| t.size() == v.size()))
    {
        tracing::warn!("{} does not fit; training again", file.display());
        return false;
    }
    tch::no_grad(|| {
        for (k, mut v) in vars {
            v.copy_(ck.tensor(&k).expect("checked"));
        }
    });
    true
}

/// Saves the variables of `vs` to the cache `file`, atomically.
pub fn store_vars(vs: &nn::VarStore, file: &Path) -> Result<()> {
    let mut ck = Checkpoint::new();
    for (k, v) in vs.variables() {
        ck.put(k, &v);
    }
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Io(d.to_path_buf(), e))?;
    }
    write_atomic(file, &ck.to_bytes()?)
}

/// Loads `vs` from the cache `file`, or runs `train` (which trains `vs`; once across
/// processes, see [`once`]) and stores it there.
pub fn vars(vs: &nn::VarStore, file: &Path, train: impl FnOnce()) -> Result<()> {
    if load_vars(vs, file) {
        return Ok(());
    }
    let trained = once(file, || {
        train();
        store_vars(vs, file)
    })?;
    if !trained && !load_vars(vs, file) {
        return Err(Error::msg(format!(
            "{} was trained by another run but cannot be loaded",
            file.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn net(width: i64) -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var("w", &[width, 3], nn::Init::Uniform { lo: -1.0, up: 1.0 });
        (vs, w)
    }

    #[test]
    fn a_cache_is_the_sweeps_when_the_run_is_in_one_else_the_runs() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("seed=0");
        std::fs::create_dir_all(&run).unwrap();
        assert_eq!(cache_dir(&run, "nets"), run.join("nets"));
        std::fs::write(d.path().join("sweep.json"), "{}").unwrap();
        assert_eq!(cache_dir(&run, "nets"), d.path().join(".nets"));
    }

    #[test]
    fn a_tensor_digest_sees_values_shapes_and_kinds() {
        let digest = |t: &tch::Tensor| {
            let mut d = Digest::new();
            d.tensor(t).unwrap();
            d.value()
        };
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        assert_eq!(digest(&t), digest(&t.copy()));
        assert_ne!(digest(&t), digest(&t.view([2, 2])));
        assert_ne!(digest(&t), digest(&t.to_kind(tch::Kind::Double)));
        let u = t.copy();
        let _ = u.get(3).fill_(4.000_001);
        assert_ne!(digest(&t), digest(&u));
        // A non-contiguous view digests as its values.
        let m = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        assert_eq!(digest(&m.tr()), digest(&m.tr().contiguous()));
    }

    #[test]
    fn fnv1a_gives_the_published_test_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
        // Fed in pieces, the same.
        let mut d = Digest::new();
        d.bytes(b"foo");
        d.bytes(b"bar");
        assert_eq!(d.value(), fnv1a("foobar"));
    }

    #[test]
    fn files_are_named_by_recipe_and_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path(), "digit", "a");
        assert_ne!(f, file(d.path(), "digit", "b"));
        assert_ne!(f, file(d.path(), "judge", "a"));
        let (a, wa) = net(4);
        assert!(!load_vars(&a, &f));
        store_vars(&a, &f).unwrap();
        let (b, wb) = net(4);
        assert!(!wb.equal(&wa));
        assert!(load_vars(&b, &f));
        assert!(wb.equal(&wa));
        // Another shape does not load, and is left as it was.
        let (c, wc) = net(5);
        let before = wc.copy();
        assert!(!load_vars(&c, &f));
        assert!(wc.equal(&before));
    }

    #[test]
    fn concurrent_users_train_a_file_once() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path(), "judge", "recipe");
        let trained = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Tensor> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let (vs, w) = net(4);
                        vars(&vs, &f, || {
                            trained.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            tch::no_grad(|| {
                                let _ = w.shallow_clone().fill_(7.0);
                            });
                        })
                        .unwrap();
                        w.copy()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(trained.load(std::sync::atomic::Ordering::SeqCst), 1);
        let sevens = Tensor::full([4, 3], 7.0, (Kind::Float, Device::Cpu));
        for w in results {
            assert!(w.equal(&sevens));
        }
        assert!(!f.with_extension("lock").exists());
    }

    #[test]
    fn a_lock_file_nobody_holds_is_no_lock_whatever_it_says() {
        // A dead pid (above the kernel's pid_max limit of 2^22), an empty file, and a live
        // process that is not a runner (PID 1): none holds the lock, so none is waited for.
        for held in ["4194305", "", "1"] {
            let d = tempfile::tempdir().unwrap();
            let f = file(d.path(), "judge", "r");
            std::fs::write(f.with_extension("lock"), held).unwrap();
            let t = std::time::Instant::now();
            assert!(once(&f, || std::fs::write(&f, b"x")
                .map_err(|e| Error::Io(f.clone(), e)))
            .unwrap());
            assert!(
                t.elapsed().as_secs_f64() < 1.0,
                "{held:?}: {:?}",
                t.elapsed()
            );
            assert!(f.is_file() && !f.with_extension("lock").exists());
        }
    }

    #[test]
    fn a_wait_for_a_held_lock_is_bounded_and_names_it() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path(), "judge", "r");
        let lock = f.with_extension("lock");
        let held = std::fs::File::create(&lock).unwrap();
        held.lock().unwrap();
        std::fs::write(&lock, "4242").unwrap();
        let r = once_waiting(&f, 0.5, || Ok(()));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("judge-") && e.contains("pid 4242"), "{e}");
        assert!(!f.exists());
    }
}
