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
        let mut f = fs::File::create(&tmp).map_err(fail)?;
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

    /// Serializes to safetensors bytes with a sha256 of the data in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut datas = Vec::with_capacity(self.tensors.len());
        let mut hasher = Sha256::new();
        for (name, t) in &self.tensors {
            let bytes = tensor_bytes(t);
            hasher.update(name.as_bytes());
            hasher.update(&bytes);
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            datas.push((name.clone(), dtype(t.kind())?, shape, bytes));
        }
        let mut meta: std::collections::HashMap<String, String> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert("sha256".into(), hex(&hasher.finalize()));
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

    /// Loads and verifies; a truncated or corrupted file is an error naming it.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = fs::read(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
        let bad = |why: String| Error::Corrupt(path.to_path_buf(), why);
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let want = meta
            .remove("sha256")
            .ok_or_else(|| bad("no sha256 in its metadata".into()))?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut hasher = Sha256::new();
        let mut tensors = BTreeMap::new();
        for name in names {
            let v = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
            hasher.update(name.as_bytes());
            hasher.update(v.data());
            let k = kind(v.dtype()).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has unsupported dtype {:?}",
                    v.dtype()
                ))
            })?;
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            let t =
                Tensor::f_from_data_size(v.data(), &shape, k).map_err(|e| bad(e.to_string()))?;
            tensors.insert(name, t);
        }
        if hex(&hasher.finalize()) != want {
            return Err(bad("checksum mismatch: the data is corrupted".into()));
        }
        Ok(Checkpoint { tensors, meta })
    }
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
}

impl CheckpointDir {
    /// A checkpoint folder keeping the last `keep` step checkpoints (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        CheckpointDir {
            dir: dir.into(),
            keep: keep.max(1),
        }
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
        fs::create_dir_all(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        let path = self.step_path(step);
        ck.save(&path)?;
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
        fs::create_dir_all(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        ck.save(&self.dir.join("best.safetensors"))
    }

    /// The newest step checkpoint that loads and verifies; a bad one is skipped with a warning
    /// naming it, and the previous good one is used.
    pub fn latest(&self) -> Option<(u64, Checkpoint)> {
        for (step, path) in self.steps().into_iter().rev() {
            match Checkpoint::load(&path) {
                Ok(ck) => return Some((step, ck)),
                Err(e) => tracing::warn!("skipping checkpoint: {e}; trying the previous one"),
            }
        }
        None
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
