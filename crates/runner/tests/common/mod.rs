//! Helpers shared by the runner's end-to-end tests: the runner binary in a temporary
//! experiments folder, a tiny real experiment, and checks on run folders and errors.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The runner in `dir`, with the repository's data and `dir`'s experiments folder.
pub fn runner_command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.current_dir(dir)
        .env("REPRISE_DATA", root().join("data"))
        .env("REPRISE_EXPERIMENTS", dir.join("experiments"))
        .args(args);
    c
}

pub fn runner(dir: &Path, args: &[&str]) -> Output {
    runner_command(dir, args)
        .output()
        .expect("the runner starts")
}

/// Starts the runner without waiting for it; `capture` pipes its output (read it with
/// `wait_with_output`), else it is discarded.
pub fn spawn_runner(dir: &Path, args: &[&str], capture: bool) -> std::process::Child {
    let out = || {
        if capture {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    runner_command(dir, args)
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("the runner starts")
}

/// Copies the folder `from` (its files and subfolders) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let (path, dest) = (e.path(), to.join(e.file_name()));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else if path.is_file() {
            fs::copy(&path, &dest).unwrap();
        }
    }
}

/// A run folder's `summary.json`.
pub fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(run.join("summary.json")).unwrap()).unwrap()
}

/// Asserts that two safetensors files hold the same tensors, byte for byte.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut other = b.names();
    other.sort();
    assert!(names.len() > 4, "{names:?}");
    assert_eq!(names, other);
    for n in names {
        assert!(
            a.tensor(n).unwrap().data() == b.tensor(n).unwrap().data(),
            "{n} differs"
        );
    }
}

/// Runs `t/tiny` with `overrides` to the end into `<p>/full` and returns its run folder: the
/// uninterrupted reference of the kill and interrupt tests.
pub fn uninterrupted(p: &Path, overrides: &[&str]) -> PathBuf {
    let mut args = vec!["run", "t/tiny", "--out", "full"];
    args.extend(overrides);
    let o = runner(p, &args);
    assert!(o.status.success(), "{}", text(&o));
    runs_under(&p.join("full/tiny")).remove(0)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tiny real experiment (the digits MLP) in a temporary experiments folder.
pub const TINY: &str = "name: tiny
paper: jem
description: tiny digits JEM
seed: 0
device: cpu
data:
  dataset: digits
  split: { train: 300, test: 100 }
smoke:
  iterations: 3
jem:
  model: { mlp: { width: 16, depth: 1 } }
  arm: jem
  iterations: 60
  noise_sigma: 0.03
  sgld: { steps: 3 }
  buffer: { size: 100 }
  optim: { lr: 0.01, batch: 32 }
  eval: { every: 20, chains_per_class: 1, sample_steps: 5 }
  checkpoint_every: 20
";

pub fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("experiments/t")).unwrap();
    fs::write(d.path().join("experiments/t/tiny.yaml"), TINY).unwrap();
    d
}

pub fn write(d: &Path, name: &str, body: &str) {
    fs::write(d.join("experiments/t").join(name), body).unwrap();
}

pub fn runs_under(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

pub fn assert_clean_error(o: &Output, needle: &str) {
    let t = text(o);
    assert!(!o.status.success(), "expected failure: {t}");
    assert!(t.contains(needle), "expected `{needle}` in: {t}");
    assert!(
        !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
        "a panic: {t}"
    );
}

/// A child process killed (and reaped) when the guard is dropped, a failed assertion included,
/// so a test that stops early leaves no runner behind to load the machine.
pub struct Reaper(pub std::process::Child);

impl std::ops::Deref for Reaper {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaper {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The venv's Python (with PyTorch and the test-only packages `just setup` installs), else
/// `python3`.
pub fn python() -> PathBuf {
    std::env::var_os("REPRISE_VENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A tiny robust-transfer experiment: an L2 source on three MNIST digits, transferred to two
/// others in both modes.
pub const TINY_RT: &str = "name: tiny-rt
paper: robust-transfer
description: tiny robust transfer
seed: 0
device: cpu
data:
  dataset: mnist-5k
  split: { train: 300, test: 60 }
  stratified: true
smoke:
  iterations: 3
robust-transfer:
  model: { small_cnn: { width: 1 } }
  normalize: { mean: [0.1307], std: [0.3081] }
  source:
    classes: [0, 1, 2]
    arm: l2-1
    epochs: 6
    batch: 32
    lr: 0.05
    momentum: 0.9
    weight_decay: 5.0e-4
    attack: { steps: 3, step_ratio: 0.6666666666666666 }
  eval: { pgd_steps: 3, ref_l2: 1.0 }
  transfer:
    targets:
      - { name: a, data: { dataset: mnist-5k }, classes: [5, 6], per_class: 10 }
    fixed: { seeds: [0, 1, 2], solver: { logistic: { iterations: 50, lr: 0.01, weight_decay: 5.0e-4 } } }
    full:
      seeds: [0, 1, 2]
      sgd: { steps: 60, batch: 16, lr: [0.01, 0.001], momentum: 0.9, weight_decay: 5.0e-4, decay_at: [0.7] }
";

/// Writes a tiny ImageFolder tree under `<p>/folder`: `per` PNGs per class of two classes,
/// bright and dark (24×20), in `train/` and `val/`.
pub fn write_image_folder(p: &Path, per: u8) {
    for split in ["train", "val"] {
        for (c, v) in [("bright", 220u8), ("dark", 30u8)] {
            let dir = p.join("folder").join(split).join(c);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..per {
                let img = image::RgbImage::from_pixel(
                    24,
                    20,
                    image::Rgb([v, v.wrapping_add(i * 3), 100 + i]),
                );
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// A tiny streamed convolutional deepthin run: WRN-10-2 teaches WRN-10-1 on an ImageFolder.
pub fn tiny_conv(p: &Path) -> String {
    format!(
        "name: tiny-conv
paper: deepthin
description: tiny convolutional deepthin
seed: 2
device: cpu
data: {{ dataset: imagefolder, path: {}, image_size: {{ resize: 20, crop: 16 }}, stream: true }}
deepthin:
  arch: {{ kind: wrn, depth: 10, thin: 1, wide: 2 }}
  batch: 4
  images:
    mean: [0.5, 0.5, 0.5]
    std: [0.25, 0.25, 0.25]
    augment: {{ hflip: true }}
    eval_batch: 8
    checkpoint_steps: 2
    fit_batches: 2
  teacher:
    loss: ce
    epochs: 4
    lr: 0.05
    optimizer: {{ sgd: {{ momentum: 0.9, weight_decay: 5.0e-4 }} }}
    lr_schedule: {{ step: {{ milestones: [3], gamma: 0.1, warmup_epochs: 1 }} }}
  arms:
    scratch:
      stages: [{{ train: {{ loss: ce, epochs: 4, lr: 0.05, optimizer: {{ sgd: {{ momentum: 0.9 }} }} }} }}]
    win:
      stages:
        - {{ imitate: {{ epochs: 1, lr: 0.05, m_init: random, optimizer: {{ sgd: {{ momentum: 0.9 }} }} }} }}
        - {{ train: {{ loss: {{ kd: {{ temperature: 4 }} }}, epochs: 2, lr: 0.05, optimizer: {{ sgd: {{ momentum: 0.9 }} }} }} }}
        - {{ train: {{ loss: ce, epochs: 1, lr: 0.005, optimizer: {{ sgd: {{ momentum: 0.9 }} }} }} }}
",
        p.join("folder").display()
    )
}

/// The newest checkpoint step in a run folder, if any.
pub fn newest_checkpoint(run: &Path) -> Option<u64> {
    fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .max()
}

/// A summary without its wall-clock fields (`secs`, `…_secs`, `wall_seconds`, `…_ms`, at any
/// depth): what a resumed run must reproduce exactly.
pub fn without_times(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| {
                !(k.as_str() == "secs"
                    || k.ends_with("_secs")
                    || k.as_str() == "wall_seconds"
                    || k.ends_with("_ms"))
            })
            .map(|(k, x)| (k.clone(), without_times(x)))
            .collect(),
        serde_json::Value::Array(a) => a.iter().map(without_times).collect(),
        x => x.clone(),
    }
}

/// Starts `t/<name>` into `<p>/<out>`, SIGKILLs it once its run folder satisfies `reached`
/// (or after 120 s), and returns its exit status and run folder.
pub fn kill_when(
    p: &Path,
    name: &str,
    out: &str,
    reached: impl Fn(&Path) -> bool,
) -> (std::process::ExitStatus, PathBuf) {
    let spec = format!("t/{name}");
    let mut child = spawn_runner(p, &["run", &spec, "--out", out, "--threads", "1"], false);
    let base = p.join(out).join(name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let hit = base.is_dir() && runs_under(&base).first().is_some_and(|r| reached(r));
        if hit || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    (status, runs_under(&base).remove(0))
}

/// `kill_when`, then `--resume` of the cut run to its end: the resumed run's summary, or None
/// when the run finished before the kill (the cut is then inconclusive; `what` says where).
pub fn kill_and_resume(
    p: &Path,
    name: &str,
    out: &str,
    what: &str,
    reached: impl Fn(&Path) -> bool,
) -> Option<serde_json::Value> {
    let (status, cut) = kill_when(p, name, out, reached);
    if status.success() {
        eprintln!("the run ended before the kill {what}; inconclusive");
        return None;
    }
    assert!(!cut.join("summary.json").exists());
    let o = runner(
        p,
        &["run", "--resume", cut.to_str().unwrap(), "--threads", "1"],
    );
    assert!(o.status.success(), "{}", text(&o));
    Some(summary(&cut))
}

/// The error lines of a failed command: what a user reads.
pub fn error_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// A finished `t/tiny` run turned back into one interrupted after step `keep`: later step
/// checkpoints, the summary, the report and the marker removed.
pub fn unfinish(run: &Path, keep: u64) {
    for f in ["summary.json", "report.md", "metrics.csv", "finished"] {
        let _ = fs::remove_file(run.join(f));
    }
    for e in fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if step > keep {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

/// A robust-transfer spec (`stream.yaml`, written into `p`) that trains a width-1 SmallCNN
/// source for 3 epochs of batch 4 on the image folder of [`write_image_folder`], streamed
/// (decoded batch by batch) at 16 px: `data` adds keys to the data section (`, workers: 1`),
/// `arm` is the source arm, `augment` its training augmentation and `eval_ref` the evaluation's
/// reference radius (`ref_l2: 0.5`).
pub fn write_stream_spec(p: &Path, data: &str, arm: &str, augment: &str, eval_ref: &str) {
    let spec = format!(
        "name: stream
paper: robust-transfer
description: streamed image folder
device: cpu
data: {{ dataset: imagefolder, path: {}, image_size: {{ resize: 20, crop: 16 }}, stream: true{data} }}
robust-transfer:
  model: {{ small_cnn: {{ width: 1 }} }}
  normalize: {{ mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] }}
  source:
    arm: {arm}
    epochs: 3
    batch: 4
    lr: 0.05
    momentum: 0.9
    weight_decay: 0.0
    augment: {{ {augment} }}
    attack: {{ steps: 2, step_ratio: 0.5 }}
  eval: {{ pgd_steps: 2, {eval_ref}, batch: 5 }}
",
        p.join("folder").display()
    );
    write(p, "stream.yaml", &spec);
}
