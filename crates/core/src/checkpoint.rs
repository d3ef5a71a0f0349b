//! Checkpoints: named tensors and string metadata in one safetensors file, written atomically
//! and verified by a sha256 of the tensor data, in a folder that keeps the last N and the best.

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Named tensors and metadata: everything a run needs to continue exactly.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Tensors by name (weights, optimizer state, buffers).
    pub tensors: BTreeMap<String, Tensor>,
    /// String metadata (step counters, schedule position, ...).
    pub meta: BTreeMap<String, String>,
}

fn dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        k => {
            return Err(Error::msg(format!(
                "cannot checkpoint tensors of kind {k:?}"
            )))
        }
    })
}

fn kind(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The raw bytes of a tensor, on the CPU, contiguous.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.copy_data_u8(&mut buf, t.numel());
    buf
}

/// Removes the file at `path`; one that is already absent is no error.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(path.to_path_buf(), e)),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Any failure (a full disk, a file-size limit) names the file meant and leaves no partial
    // temporary file behind; the file it replaces, if any, is untouched.
    let fail = |e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        Error::Io(path.to_path_buf(), e)
    };
    {
        let mut f = create_fresh(&tmp).map_err(|e| match e {
            Error::Io(_, io) => fail(io),
            other => other,
        })?;
        f.write_all(bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    fs::rename(&tmp, path).map_err(fail)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor (a shallow clone; the data is read when saving).
    pub fn put(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(name.into(), t.shallow_clone());
    }

    /// Adds a metadata value.
    pub fn set(&mut self, name: impl Into<String>, v: impl ToString) {
        self.meta.insert(name.into(), v.to_string());
    }

    /// A tensor by name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::msg(format!("checkpoint has no tensor `{name}`")))
    }

    /// A metadata value parsed, or an error naming it.
    pub fn get<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        self.meta
            .get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::msg(format!("checkpoint has no valid metadata `{name}`")))
    }

    /// Serializes to safetensors bytes with, in the metadata, a sha256 of everything else the
    /// file holds: every metadata entry, and each tensor's name, dtype, shape and data
    /// ([`canonical_digest`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_with(&[])
    }

    /// [`Checkpoint::to_bytes`] with `extra` metadata entries added (covered by the checksum).
    pub fn to_bytes_with(&self, extra: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut all = self.meta.clone();
        for (k, v) in extra {
            all.insert((*k).to_string(), (*v).to_string());
        }
        if all.contains_key(HASH_KEY) || all.contains_key(LEGACY_HASH_KEY) {
            return Err(Error::msg(format!(
                "`{HASH_KEY}` and `{LEGACY_HASH_KEY}` are reserved metadata names"
            )));
        }
        let mut datas = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            datas.push((name.clone(), dtype(t.kind())?, shape, tensor_bytes(t)));
        }
        let digest = canonical_digest(
            &all,
            datas
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())),
        );
        let mut meta: std::collections::HashMap<String, String> = all.into_iter().collect();
        meta.insert(HASH_KEY.into(), digest);
        let views: Vec<(String, TensorView<'_>)> = datas
            .iter()
            .map(|(n, d, s, b)| {
                TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::msg(format!("tensor `{n}`: {e}")))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::msg(e.to_string()))
    }

    /// Saves atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Loads and verifies; a truncated or corrupted file, one bit flipped in its data or its
    /// header included, is an error naming it. Files of earlier versions, whose sha256 covers
    /// only the tensors' names and data, are checked by that older rule.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = read_bounded(path, MAX_CHECKPOINT_BYTES)?;
        Self::from_bytes(&bytes, path)
    }

    /// [`Checkpoint::load`] of bytes already read (`path` names them in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |why: String| Error::Corrupt(path.to_path_buf(), why);
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let (want, legacy) = match (meta.remove(HASH_KEY), meta.remove(LEGACY_HASH_KEY)) {
            (Some(h), None) => (h, false),
            (None, Some(h)) => (h, true),
            (None, None) => return Err(bad("no checksum in its metadata".into())),
            (Some(_), Some(_)) => return Err(bad("two checksums in its metadata".into())),
        };
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut views = Vec::with_capacity(names.len());
        for name in &names {
            let v = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            views.push((name.as_str(), v));
        }
        let got = if legacy {
            let mut hasher = Sha256::new();
            for (name, v) in &views {
                hasher.update(name.as_bytes());
                hasher.update(v.data());
            }
            hex(&hasher.finalize())
        } else {
            canonical_digest(
                &meta,
                views
                    .iter()
                    .map(|(n, v)| (*n, v.dtype(), v.shape(), v.data())),
            )
        };
        if got != want {
            return Err(bad(
                "checksum mismatch: the data or the header is corrupted".into(),
            ));
        }
        let mut tensors = BTreeMap::new();
        for (name, v) in views {
            let k = kind(v.dtype()).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has unsupported dtype {:?}",
                    v.dtype()
                ))
            })?;
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            let t =
                Tensor::f_from_data_size(v.data(), &shape, k).map_err(|e| bad(e.to_string()))?;
            tensors.insert(name.to_string(), t);
        }
        Ok(Checkpoint { tensors, meta })
    }

    /// The tensor `name`, which must have the kind and shape of `like` (the live tensor it is
    /// to be copied into); anything else is a corrupt or foreign checkpoint, said as such.
    pub fn tensor_like(&self, name: &str, like: &Tensor) -> Result<&Tensor> {
        let t = self.tensor(name)?;
        if t.kind() != like.kind() || t.size() != like.size() {
            return Err(Error::msg(format!(
                "checkpoint tensor `{name}` is {:?} {:?}, the run needs {:?} {:?}",
                t.kind(),
                t.size(),
                like.kind(),
                like.size()
            )));
        }
        Ok(t)
    }

    /// Checks that every variable of `vs` is in the checkpoint as `<prefix>.<name>` with its
    /// kind and shape, copying nothing.
    pub fn check_vars(&self, prefix: &str, vs: &tch::nn::VarStore) -> Result<()> {
        for (k, v) in vs.variables() {
            self.tensor_like(&format!("{prefix}.{k}"), &v)?;
        }
        Ok(())
    }

    /// Copies `<prefix>.<name>` into every variable of `vs`, after [`Checkpoint::check_vars`]
    /// found all of them there with the right kind and shape (so a bad file changes nothing).
    pub fn load_vars(&self, prefix: &str, vs: &tch::nn::VarStore) -> Result<()> {
        self.check_vars(prefix, vs)?;
        tch::no_grad(|| -> Result<()> {
            for (k, mut v) in vs.variables() {
                v.f_copy_(self.tensor(&format!("{prefix}.{k}"))?)?;
            }
            Ok(())
        })
    }

    /// Puts every variable of `vs` into the checkpoint as `<prefix>.<name>`.
    pub fn put_vars(&mut self, prefix: &str, vs: &tch::nn::VarStore) {
        for (k, v) in vs.variables() {
            self.put(format!("{prefix}.{k}"), &v);
        }
    }
}

/// The metadata key of the checksum over the whole file.
pub const HASH_KEY: &str = "sha256-all";

/// The metadata key of the checksum of earlier versions (tensor names and data only).
pub const LEGACY_HASH_KEY: &str = "sha256";

/// The largest checkpoint file read (64 GiB).
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 30;

/// The sha256 (hex) of a checkpoint's canonical form: a version tag, then every metadata
/// entry (sorted by key) and every tensor (sorted by name) with its dtype, shape and data, each
/// field length-prefixed so no two different files share a canonical form.
pub fn canonical_digest<'a>(
    meta: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"reprise-checkpoint-2");
    field(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    field(&(sorted.len() as u64).to_le_bytes());
    for (name, d, shape, data) in sorted {
        field(name.as_bytes());
        field(format!("{d:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&x| (x as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(data);
    }
    hex(&h.finalize())
}

/// Reads a whole regular file of at most `max` bytes; anything else (a folder, a FIFO, a
/// device, a larger file) is an error naming it, raised before reading.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let md = f.metadata().map_err(|e| Error::Io(path.to_path_buf(), e))?;
    if md.len() > max {
        return Err(Error::Corrupt(
            path.to_path_buf(),
            format!("{} bytes, more than the {max} read", md.len()),
        ));
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    if buf.len() as u64 > max {
        return Err(Error::Corrupt(
            path.to_path_buf(),
            format!("grew beyond the {max} bytes read"),
        ));
    }
    Ok(buf)
}

/// The largest safetensors header [`read_metadata`] reads (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The metadata of a safetensors file, read from its header alone (the tensors' data is not
/// read, so nothing is verified: for a look at what a checkpoint says it is, never for its
/// contents). An error names the file when it is not a regular file or its header is not one.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |why: String| Error::Corrupt(path.to_path_buf(), why);
    let f = open_regular(path)?;
    let mut r = std::io::BufReader::new(f);
    let mut n = [0u8; 8];
    r.read_exact(&mut n)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!("a header of {n} bytes")));
    }
    let mut head = Vec::with_capacity(n as usize);
    r.take(n)
        .read_to_end(&mut head)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    if head.len() as u64 != n {
        return Err(bad("its header is cut short".into()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&head).map_err(|e| bad(format!("its header: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Opens `path` for reading if it is a regular file, without blocking on a FIFO or a device
/// (the type is checked on the open handle, the open itself non-blocking); anything else is
/// an error naming it.
pub fn open_regular(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    regular(f, path)
}

/// `f` (opened from `path`) if it is a regular file; an error naming `path` otherwise.
fn regular(f: fs::File, path: &Path) -> Result<fs::File> {
    let md = f.metadata().map_err(|e| Error::Io(path.to_path_buf(), e))?;
    if !md.is_file() {
        return Err(Error::Corrupt(
            path.to_path_buf(),
            "not a regular file".into(),
        ));
    }
    Ok(f)
}

/// Creates `path` anew for writing: whatever is there (a stale file, or a link planted to
/// carry the write elsewhere) is removed first, and the file is created exclusively without
/// following links, so the bytes land in a new regular file at `path` itself.
pub fn create_fresh(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    remove_if_present(path)?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// Opens `path` for appending, made if missing; a link at `path` is refused (not followed),
/// and so is anything but a regular file (a FIFO is not waited on).
pub fn open_append(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    regular(f, path)
}

/// Opens (making it if missing) the lock file `path` for reading and writing, its content kept:
/// a link planted there is refused, not followed (its target would be rewritten), and a FIFO is
/// not waited on. The caller takes the kernel's lock on it (`File::try_lock`).
pub fn open_lock_file(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// Appends `bytes` to `path` ([`open_append`]).
pub fn append_to(path: &Path, bytes: &[u8]) -> Result<()> {
    open_append(path)?
        .write_all(bytes)
        .map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// The most bytes a record of a run or sweep folder is read with ([`read_record`]): a JSON or
/// YAML file, a log of metrics.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;

/// A record of a run or sweep folder (`run.json`, `summary.json`, `metrics.jsonl`, …), read as
/// [`read_bounded`] reads: a regular file of at most [`MAX_RECORD_BYTES`], never a FIFO.
pub fn read_record(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, MAX_RECORD_BYTES)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checkpoints of one run: `step-<N>.safetensors`, the last `keep` of them, and `best.safetensors`.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
    keep: usize,
    run: Option<String>,
    about: Vec<(String, String)>,
    discard: bool,
}

/// The metadata key naming the run a checkpoint belongs to.
pub const RUN_KEY: &str = "run";

impl CheckpointDir {
    /// A checkpoint folder keeping the last `keep` step checkpoints (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        CheckpointDir {
            dir: dir.into(),
            keep: keep.max(1),
            run: None,
            about: Vec::new(),
            discard: false,
        }
    }

    /// A folder that writes nothing: [`CheckpointDir::save`] and [`CheckpointDir::save_best`]
    /// do nothing (a data-parallel rank other than 0, whose state rank 0 saves).
    pub fn discarding(mut self) -> Self {
        self.discard = true;
        self
    }

    /// Checkpoints of the run `id`: each one saved is stamped with it, and one stamped with
    /// another run's id is refused on loading (it was copied in from elsewhere).
    pub fn for_run(mut self, id: &str) -> Self {
        self.run = (!id.is_empty()).then(|| id.to_string());
        self
    }

    /// Metadata stamped into every checkpoint saved (covered by its checksum), so that one
    /// copied out of its folder still says what it is: the experiment, the sha256 of the
    /// resolved spec and the commit of the code (see [`crate::run::RunContext`]).
    pub fn described(mut self, about: Vec<(String, String)>) -> Self {
        self.about = about;
        self
    }

    /// The metadata [`CheckpointDir::save`] adds to a checkpoint.
    fn extra(&self) -> Vec<(&str, &str)> {
        self.run
            .iter()
            .map(|r| (RUN_KEY, r.as_str()))
            .chain(self.about.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect()
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn step_path(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:09}.safetensors"))
    }

    /// The step checkpoints on disk, oldest first.
    pub fn steps(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name
                    .strip_prefix("step-")?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()?;
                Some((step, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// Saves the checkpoint of `step` and removes step checkpoints beyond the last `keep`.
    pub fn save(&self, step: u64, ck: &Checkpoint) -> Result<PathBuf> {
        if self.discard {
            return Ok(self.step_path(step));
        }
        fs::create_dir_all(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        let path = self.step_path(step);
        write_atomic(&path, &ck.to_bytes_with(&self.extra())?)?;
        let steps = self.steps();
        if steps.len() > self.keep {
            for (_, p) in &steps[..steps.len() - self.keep] {
                let _ = fs::remove_file(p);
            }
        }
        Ok(path)
    }

    /// Saves `best.safetensors`.
    pub fn save_best(&self, ck: &Checkpoint) -> Result<()> {
        if self.discard {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        write_atomic(
            &self.dir.join("best.safetensors"),
            &ck.to_bytes_with(&self.extra())?,
        )
    }

    /// The newest step checkpoint that loads and verifies; a bad one is skipped with a warning
    /// naming it, and the previous good one is used.
    pub fn latest(&self) -> Option<(u64, Checkpoint)> {
        self.latest_valid(|_| Ok(())).ok().flatten()
    }

    /// The newest step checkpoint that loads, verifies, belongs to this run, records its step
    /// as the file name says, and passes `fits` (which checks, copying nothing, that its
    /// tensors have the kinds and shapes of the run's model, optimizer and buffers). Each one
    /// skipped is said on stderr and in the log, naming the file and the reason; the previous
    /// one is tried. `Ok(None)` when there is no step checkpoint (a new run); an
    /// [`Error::Unresumable`] when there are some and none can be used, so that a run never
    /// silently starts over (after an override that changes a shape, say).
    pub fn latest_valid(
        &self,
        fits: impl Fn(&Checkpoint) -> Result<()>,
    ) -> Result<Option<(u64, Checkpoint)>> {
        let steps = self.steps();
        let mut newest_why = None;
        for (step, path) in steps.iter().rev().cloned() {
            let ok = Checkpoint::load(&path).and_then(|ck| {
                let owner = ck.meta.get(RUN_KEY);
                if let (Some(want), Some(got)) = (&self.run, owner) {
                    if want != got {
                        return Err(Error::msg(format!(
                            "it belongs to run {got}, not to this run ({want})"
                        )));
                    }
                }
                if let Some(s) = ck.meta.get("step") {
                    if s.parse::<u64>().ok() != Some(step) {
                        return Err(Error::msg(format!(
                            "it records step {s}, its file name step {step}"
                        )));
                    }
                }
                fits(&ck)?;
                Ok(ck)
            });
            match ok {
                Ok(ck) => return Ok(Some((step, ck))),
                Err(e) => {
                    newest_why.get_or_insert_with(|| format!("{}: {e}", path.display()));
                    tracing::warn!(
                        "skipping checkpoint {}: {e}; trying the previous one",
                        path.display()
                    );
                    crate::note!(
                        "warning: skipping checkpoint {}: {e}; trying the previous one",
                        path.display()
                    );
                }
            }
        }
        match newest_why {
            None => Ok(None),
            Some(why) => Err(Error::Unresumable {
                dir: self.dir.clone(),
                n: steps.len(),
                why,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut ck = Checkpoint::new();
        ck.put("w", &Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3, 1]));
        ck.put("n", &Tensor::from_slice(&[7i64, 8]));
        ck.set("step", 42);
        ck
    }

    #[test]
    fn round_trip_is_exact() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.safetensors");
        sample().save(&p).unwrap();
        let ck = Checkpoint::load(&p).unwrap();
        assert_eq!(ck.get::<u64>("step").unwrap(), 42);
        assert_eq!(ck.tensor("w").unwrap().size(), vec![3, 1]);
        assert_eq!(
            Vec::<f32>::try_from(ck.tensor("w").unwrap().view(-1)).unwrap(),
            vec![1.5, -2.0, 3.25]
        );
        assert_eq!(
            Vec::<i64>::try_from(ck.tensor("n").unwrap()).unwrap(),
            vec![7, 8]
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_or_flipped_files_are_detected() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.safetensors");
        sample().save(&p).unwrap();
        let bytes = fs::read(&p).unwrap();
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&p, &bytes[..cut]).unwrap();
            let e = Checkpoint::load(&p).unwrap_err();
            assert!(matches!(e, Error::Corrupt(..)), "cut at {cut}: {e}");
            assert!(e.to_string().contains("a.safetensors"));
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        fs::write(&p, &flipped).unwrap();
        let e = Checkpoint::load(&p).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    /// Replaces the first `from` in the file's JSON header by `to` (same length).
    fn edit_header(p: &Path, from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let mut b = fs::read(p).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let head = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
        let at = head
            .find(from)
            .unwrap_or_else(|| panic!("{from} not in {head}"));
        b[8 + at..8 + at + to.len()].copy_from_slice(to.as_bytes());
        fs::write(p, b).unwrap();
    }

    #[test]
    fn the_checksum_covers_the_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.safetensors");
        let mut ck = sample();
        ck.set("step", 950);
        for (from, to) in [
            ("\"950\"", "\"150\""), // a metadata digit
            ("\"F32\"", "\"I32\""), // a tensor's dtype
            ("[3,1]", "[1,3]"),     // a tensor's shape
        ] {
            ck.save(&p).unwrap();
            edit_header(&p, from, to);
            let e = Checkpoint::load(&p).unwrap_err();
            assert!(matches!(e, Error::Corrupt(..)), "{from}: {e}");
            assert!(e.to_string().contains("checksum mismatch"), "{from}: {e}");
        }
        // A file of earlier versions (sha256 of names and data only) still loads.
        let mut h = Sha256::new();
        for (name, t) in &ck.tensors {
            h.update(name.as_bytes());
            h.update(tensor_bytes(t));
        }
        let datas: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = ck
            .tensors
            .iter()
            .map(|(n, t)| {
                let shape = t.size().iter().map(|&x| x as usize).collect();
                (n.clone(), dtype(t.kind()).unwrap(), shape, tensor_bytes(t))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = datas
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let mut meta: std::collections::HashMap<String, String> =
            ck.meta.clone().into_iter().collect();
        meta.insert(LEGACY_HASH_KEY.into(), hex(&h.finalize()));
        fs::write(&p, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        assert_eq!(
            Checkpoint::load(&p).unwrap().get::<u64>("step").unwrap(),
            950
        );
    }

    #[test]
    fn a_checkpoint_that_does_not_fit_or_belongs_to_another_run_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let mine = CheckpointDir::new(d.path().join("ck"), 3).for_run("run-a");
        for s in [10u64, 20] {
            let mut ck = sample();
            ck.set("step", s);
            mine.save(s, &ck).unwrap();
        }
        // Step 30 comes from another run with the same shapes: refused.
        let other = CheckpointDir::new(d.path().join("ck"), 3).for_run("run-b");
        let mut ck = sample();
        ck.set("step", 30);
        other.save(30, &ck).unwrap();
        let (step, _) = mine.latest().unwrap();
        assert_eq!(step, 20);
        // A check that the run's tensors fit: `w` as I32 does not fit, so 20 is skipped too.
        let like_w = Tensor::zeros([3, 1], (Kind::Int, Device::Cpu));
        let fits = |ck: &Checkpoint| ck.tensor_like("w", &like_w).map(|_| ());
        let e = ck.tensor_like("w", &like_w).unwrap_err().to_string();
        assert!(
            e.contains("Float [3, 1]") && e.contains("Int [3, 1]"),
            "{e}"
        );
        let e = mine.latest_valid(fits).unwrap_err().to_string();
        assert!(
            e.contains("none of its 3 checkpoint(s)") && e.contains("step-000000030"),
            "{e}"
        );
        // A file whose recorded step is not its name's is skipped.
        let mut ck = sample();
        ck.set("step", 5);
        mine.save(40, &ck).unwrap();
        assert_eq!(mine.latest().unwrap().0, 20);
    }

    #[test]
    fn keeps_last_n_and_falls_back_to_a_good_one() {
        let d = tempfile::tempdir().unwrap();
        let cd = CheckpointDir::new(d.path().join("ck"), 2);
        for s in [10, 20, 30] {
            let mut ck = sample();
            ck.set("step", s);
            cd.save(s, &ck).unwrap();
        }
        let steps: Vec<u64> = cd.steps().iter().map(|s| s.0).collect();
        assert_eq!(steps, vec![20, 30]);
        // Corrupt the newest: the previous one is used.
        let newest = cd.steps().last().unwrap().1.clone();
        fs::write(&newest, b"garbage").unwrap();
        let (step, ck) = cd.latest().unwrap();
        assert_eq!(step, 20);
        assert_eq!(ck.get::<u64>("step").unwrap(), 20);
    }
}
