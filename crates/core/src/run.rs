//! Run folders and the context a paper crate runs in.
//!
//! A run folder `runs/<name>/<UTC time>/` holds `spec.yaml` (the resolved spec: `runner run` on
//! it replays the run), `run.json` (how it was started), `run.log`, `metrics.jsonl`,
//! `metrics.csv`, `summary.json`, `report.md`, `checkpoints/` and `figures/`.

use crate::checkpoint::{write_atomic, Checkpoint, CheckpointDir};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::spec::{Header, SpecError, SpecTree};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A paper crate, as the runner sees it: a name and the functions it dispatches to.
#[derive(Clone, Copy)]
pub struct Paper {
    /// The paper's name, as in a spec's `paper:` and its section key.
    pub name: &'static str,
    /// The paper's title and arXiv id.
    pub title: &'static str,
    /// Checks a spec's paper section (types, values); errors name the key and line.
    pub validate: fn(&SpecTree) -> Result<(), SpecError>,
    /// The paper section as its typed config reads it, every default filled in (what
    /// `--print-config` shows as the knobs a user can turn); see [`section_with_defaults`].
    pub config: fn(&SpecTree) -> Result<Json, SpecError>,
    /// The files and folders a run of the spec reads that reprise cannot fetch (datasets,
    /// pretrained weights), checked before it starts and listed by `runner data --check`.
    pub inputs: fn(&SpecTree) -> Result<Vec<crate::inputs::Input>, SpecError>,
    /// The trained networks of a run, which `runner export` writes as PyTorch state dicts.
    pub exports: &'static [Export],
    /// Times the training step of a run of the spec on a device (`runner plan`): `steps` real
    /// steps of its full-size model on random inputs of its shapes, after warm-up ones. `None`
    /// for a paper that does not plan yet.
    pub plan: Option<PlanFn>,
    /// Whether its training loop runs data-parallel ([`crate::parallel`]): shards each batch by
    /// rank and averages the gradients. A launch of several ranks is refused for one that does
    /// not.
    pub data_parallel: bool,
    /// Runs one (non-sweep) spec in its run folder, resuming from its checkpoints if any.
    pub run: fn(&mut RunContext) -> Result<()>,
    /// Renders `report.md` of a finished run folder again; returns the markdown.
    pub report: fn(&Path) -> Result<String>,
    /// Renders the report of a sweep folder from the summaries of its finished runs.
    pub report_sweep: fn(&Path, &[RunSummary]) -> Result<String>,
}

/// A paper's step timer for `runner plan` (see [`Paper::plan`]): the spec, the device, the
/// steps to time, and the ranks a data-parallel run would split each batch among (a paper whose
/// loop trains data-parallel times one rank's share, `⌈batch / ranks⌉` rows; others ignore it).
pub type PlanFn = fn(&SpecTree, tch::Device, usize, usize) -> Result<StepPlan>;

/// The timed step of a run, for `runner plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// What one step is (`one jem iteration: batch 64, SGLD K = 20`).
    pub what: String,
    /// Median milliseconds of a step, warm-up excluded.
    pub step_ms: f64,
    /// The fastest and the slowest of the timed steps, in milliseconds.
    pub spread_ms: (f64, f64),
    /// The steps the run takes, when they can be known without its data.
    pub steps: Option<u64>,
    /// How `steps` was counted, or why it is unknown.
    pub steps_from: String,
    /// The trained parameters (floats) whose gradients a data-parallel step averages.
    pub params: i64,
}

/// The number of trained (gradient-requiring) floats of a VarStore ([`StepPlan::params`]).
pub fn trained_params(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// ` (R per rank)` for a plan of `ranks` > 1 ranks timing `rows` rows each, else nothing.
pub fn per_rank(rows: i64, ranks: usize) -> String {
    if ranks > 1 {
        format!(" ({rows} per rank of {ranks})")
    } else {
        String::new()
    }
}

/// A trained network of a run folder, for `runner export`: the file a finished run writes it
/// to, or else the tensors under `prefix.` in the run's newest step checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    /// The exported file's stem (`model` → `model.pt`).
    pub name: &'static str,
    /// A safetensors file in the run folder holding the network, if the run writes one.
    pub file: Option<&'static str>,
    /// The prefix of the network's tensors in a step checkpoint (`model`).
    pub prefix: &'static str,
    /// How the network's inputs are scaled (`config.json`'s `inputs`), where a loader needs
    /// to be told: `images in [-1, 1] (x * 2 - 1 of [0, 1] pixels)`.
    pub inputs: Option<&'static str>,
}

/// The section `name` of a spec read as `T` and written back: the keys the spec gives and
/// every default of the ones it leaves out.
pub fn section_with_defaults<T: serde::de::DeserializeOwned + Serialize>(
    tree: &SpecTree,
    name: &str,
) -> Result<Json, SpecError> {
    let c: T = tree.typed(name)?;
    serde_json::to_value(c).map_err(|e| SpecError::at(name, e.to_string()))
}

/// What every checkpoint of a run says about itself: the experiment, the sha256 of its resolved
/// spec (`spec.yaml`), the commit of the code that wrote it (with `+dirty` when the checkout
/// had uncommitted changes) and, data-parallel, the world it was trained in (`world_size`,
/// `world_backend`, `grad_sync`, as `run.json`'s `world`).
fn checkpoint_about(spec: &SpecTree, header: &Header, info: &RunInfo) -> Vec<(String, String)> {
    let mut about = vec![
        ("experiment".to_string(), header.name.clone()),
        (SPEC_SHA_KEY.to_string(), spec_sha256(spec)),
    ];
    if let Some(c) = &info.provenance.commit {
        let dirty = if info.provenance.dirty == Some(true) {
            "+dirty"
        } else {
            ""
        };
        about.push(("commit".to_string(), format!("{c}{dirty}")));
    }
    if let Some(w) = &info.world {
        about.push(("world_size".to_string(), w.size.to_string()));
        about.push(("world_backend".to_string(), w.backend.clone()));
        if let Some(g) = &w.grad_sync {
            about.push(("grad_sync".to_string(), g.clone()));
        }
        for sh in &w.shares {
            about.push((
                format!("world_share.{}", sh.stage.replace(' ', "_")),
                format!(
                    "batch={} per_rank={} precision={}",
                    sh.batch, sh.per_rank, sh.precision
                ),
            ));
        }
    }
    about
}

/// The most entries [`check_no_links`] looks at, and the deepest folder it enters.
const MAX_WALK: (usize, usize) = (1_000_000, 16);

/// Refuses a run or sweep folder that holds anything but plain files and folders: a link
/// (planted to carry the run's writes outside `--out`), a FIFO, a device. Everything the runner
/// writes in a run folder goes to a path under it, so a folder that passes this check keeps
/// them there. The folder itself may be reached through a link (the user's `--out`).
pub fn check_no_links(dir: &Path) -> Result<()> {
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((d, depth)) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| Error::Io(d.clone(), e))?;
        for e in rd {
            let e = e.map_err(|e| Error::Io(d.clone(), e))?;
            seen += 1;
            let p = e.path();
            let t = e.file_type().map_err(|e| Error::Io(p.clone(), e))?;
            if t.is_symlink() {
                let to = fs::read_link(&p).map_or("?".into(), |t| t.display().to_string());
                return Err(Error::msg(format!(
                    "{} is a link (to {to}): a run folder holds only its own files and folders, so nothing it writes can land elsewhere; remove the link and resume again",
                    p.display()
                )));
            }
            if t.is_dir() {
                if depth + 1 >= MAX_WALK.1 {
                    return Err(Error::msg(format!(
                        "{} is nested more than {} folders deep: not a run folder",
                        p.display(),
                        MAX_WALK.1
                    )));
                }
                stack.push((p, depth + 1));
            } else if !t.is_file() {
                return Err(Error::msg(format!(
                    "{} is not a regular file (a FIFO, socket or device): a run folder holds only its own files and folders; remove it and resume again",
                    p.display()
                )));
            }
            if seen > MAX_WALK.0 {
                return Err(Error::msg(format!(
                    "{} holds more than {} entries: not a run folder",
                    dir.display(),
                    MAX_WALK.0
                )));
            }
        }
    }
    Ok(())
}

/// The metadata key of a checkpoint that holds the sha256 of the spec it was written under.
pub const SPEC_SHA_KEY: &str = "spec_sha256";

/// The sha256 (lower-case hex) of a resolved spec as a run folder's `spec.yaml` holds it: what
/// every checkpoint of a run records under [`SPEC_SHA_KEY`].
pub fn spec_sha256(spec: &SpecTree) -> String {
    use sha2::Digest as _;
    crate::checkpoint::hex(&sha2::Sha256::digest(spec.to_yaml().as_bytes()))
}

/// Whether the run in `dir` stopped because its training diverged: the runner writes
/// `diverged.json` (the step and the reason) when it does.
pub fn diverged(dir: &Path) -> bool {
    dir.join("diverged.json").is_file()
}

/// A finished run of a sweep: its folder, resolved spec and summary.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run's sub-folder name (`width=8,seed=1`).
    pub name: String,
    /// The run folder.
    pub dir: PathBuf,
    /// The resolved spec of the run.
    pub spec: SpecTree,
    /// `summary.json`.
    pub summary: Json,
}

impl RunSummary {
    /// `summary.json` as a paper's typed summary; an error names the run and the field.
    pub fn parse<S: serde::de::DeserializeOwned>(&self) -> Result<S> {
        parse_summary(&self.dir, &self.summary)
    }

    /// Whether the run was a `--smoke` run.
    pub fn smoke(&self) -> bool {
        self.summary["smoke"].as_bool() == Some(true)
    }
}

/// `summary` (the `summary.json` of the run folder `dir`) as a typed summary.
pub fn parse_summary<S: serde::de::DeserializeOwned>(dir: &Path, summary: &Json) -> Result<S> {
    S::deserialize(summary).map_err(|e| {
        Error::msg(format!(
            "{}: summary.json does not read as this paper's summary: {e}",
            dir.display()
        ))
    })
}

/// How a run was started (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// A `--smoke` run.
    pub smoke: bool,
    /// Training iterations of a smoke run.
    pub smoke_iterations: Option<u64>,
    /// The device used.
    pub device: String,
    /// Intra-op threads.
    pub threads: i32,
    /// Versions (reprise, tch, libtorch).
    pub versions: Map<String, Json>,
    /// UTC start time.
    pub started: String,
    /// The run's identity, stamped into each of its checkpoints so that a checkpoint of another
    /// run is never resumed from (empty in run folders of earlier versions: not checked).
    #[serde(default)]
    pub id: String,
    /// Where the run came from: the code's commit, the command, the host (absent in run folders
    /// of earlier versions).
    #[serde(default)]
    pub provenance: Provenance,
    /// Where the run stands, kept up to date by the runner (absent in run folders of earlier
    /// versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// UTC time the run last ended (finished, failed, diverged or interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The error that ended it, when it failed or diverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The data-parallel group it trains in (absent for one process, and in run folders of
    /// earlier versions, which were all one process unless launched data-parallel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<World>,
}

/// The data-parallel group of a run (`run.json`'s `world`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// The number of ranks (processes), each with its share of the spec's (global) batch.
    pub size: usize,
    /// The collectives' backend: `gloo`, or `gloo+nccl` (NCCL for CUDA tensors).
    pub backend: String,
    /// When the gradients are averaged: `reducer` (during the backward, by DDP's engine) or
    /// `after-backward` (absent in run folders of earlier versions, which averaged after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_sync: Option<String>,
    /// Each training stage's batch, rank 0's share of it and its precision, as the paper
    /// recorded them when the stage began ([`RunContext::record_share`]; empty in run folders
    /// of earlier versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
}

/// One training stage of a data-parallel run: its (global) batch, the rows of it rank 0
/// computes on (the others as many, or one fewer where it does not divide), and its precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The stage (`train`, `source`, `transfer`, `teacher`, …).
    pub stage: String,
    /// The spec's batch, over all ranks.
    pub batch: usize,
    /// Rank 0's rows of it.
    pub per_rank: usize,
    /// `float32`, `bf16` or `f16` (the spec's `amp`).
    pub precision: String,
}

impl Share {
    /// `source: 512, 256 a rank, bf16`.
    fn describe(&self) -> String {
        format!(
            "{}: {}, {} a rank, {}",
            self.stage, self.batch, self.per_rank, self.precision
        )
    }
}

impl World {
    /// The world of `par`; `None` for one process.
    pub fn of(par: &crate::parallel::Parallel) -> Option<World> {
        (par.world() > 1).then(|| World {
            size: par.world(),
            backend: par.backend().to_string(),
            grad_sync: Some(par.grad_sync().name().to_string()),
            shares: Vec::new(),
        })
    }
}

/// A run's report `md` with, under its title, the data-parallel world it was trained in (one
/// line; `md` itself for one process): the number of ranks, the collectives' backend and when
/// the gradients were averaged.
pub fn with_world(md: &str, world: Option<&World>) -> String {
    let Some(w) = world else {
        return md.to_string();
    };
    let sync = match w.grad_sync.as_deref() {
        Some("reducer") => ", gradients averaged during the backward by DDP's Reducer",
        Some("after-backward") | None => ", gradients averaged after the backward",
        Some(_) => "",
    };
    let shares = if w.shares.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = w.shares.iter().map(Share::describe).collect();
        format!(" ({})", each.join("; "))
    };
    let line = format!(
        "*Trained data-parallel: {} ranks ({}){sync}, each on its share of the spec's batch{shares}.*\n",
        w.size, w.backend
    );
    let at = md.find('\n').map_or(md.len(), |i| i + 1);
    let (title, rest) = md.split_at(at);
    format!("{title}\n{line}{rest}")
}

/// The `world` `run.json` in `dir` records (`None` for one process, or where it cannot be
/// read).
pub fn recorded_world(dir: &Path) -> Option<World> {
    let bytes = crate::checkpoint::read_bounded(&dir.join("run.json"), 1 << 20).ok()?;
    serde_json::from_slice::<RunInfo>(&bytes).ok()?.world
}

/// Where a run stands (`run.json`'s `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Its folder is made; it has not started (a sweep's run waiting for a worker).
    Prepared,
    /// A process is running it.
    Running,
    /// It ended with its summary and report.
    Finished,
    /// It stopped on an error (`error` says which).
    Failed,
    /// Its loss or energy diverged (`error` and `diverged.json` say where).
    Diverged,
    /// It was stopped by a signal after a checkpoint; `--resume` continues it.
    Interrupted,
}

/// Records in `dir/run.json` that the run is now `status` (with the error that ended it), and
/// when it ended if it did.
pub fn set_status(dir: &Path, status: RunStatus, error: Option<String>) -> Result<()> {
    update_info(dir, |info| {
        info.status = Some(status);
        info.ended =
            (status != RunStatus::Running && status != RunStatus::Prepared).then(utc_stamp);
        info.error = error;
    })
}

/// Records in `run.json` the data-parallel group a run continues in (`None`: one process).
pub fn set_world(dir: &Path, world: Option<World>) -> Result<()> {
    update_info(dir, |info| info.world = world)
}

/// Rewrites the run folder's `run.json` with `f` applied.
fn update_info(dir: &Path, f: impl FnOnce(&mut RunInfo)) -> Result<()> {
    let path = dir.join("run.json");
    let bytes = crate::checkpoint::read_bounded(&path, 1 << 20)?;
    let mut info: RunInfo =
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(path.clone(), e.to_string()))?;
    f(&mut info);
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(&info).expect("RunInfo serializes"),
    )
}

/// Where a run came from, recorded in `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Provenance {
    /// The git commit of the checkout the experiments were read from (`None` outside git).
    pub commit: Option<String>,
    /// Whether that checkout had changes not committed (tracked files modified or untracked
    /// files present).
    pub dirty: Option<bool>,
    /// The command line that started the run.
    pub command: Vec<String>,
    /// The machine's host name.
    pub host: String,
    /// The commit the running binary was built from (absent in run folders of earlier
    /// versions, and for a binary built outside git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<String>,
    /// Whether that checkout had uncommitted changes to tracked files when it was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_dirty: Option<bool>,
}

impl Provenance {
    /// The provenance of a run started now from the checkout holding `dir`.
    pub fn of(dir: &Path) -> Provenance {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "HEAD"]);
        let dirty = commit
            .as_ref()
            .and_then(|_| git(&["status", "--porcelain"]))
            .map(|s| !s.is_empty());
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map_or_else(String::new, |h| h.trim().to_string());
        Provenance {
            commit,
            dirty,
            // Lossy: an argument that is not UTF-8 (`--out $'x\xff'`) is recorded with U+FFFD
            // in its place, not a panic.
            command: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            host,
            built_from: None,
            built_dirty: None,
        }
    }

    /// [`Provenance::of`] with the commit the binary was built from (`built`, empty when
    /// unknown) and its dirty flag; a difference from the experiments' checkout (an older
    /// checkout run with a newer binary, or the other way round) is returned as a warning.
    pub fn of_build(dir: &Path, built: &str, built_dirty: bool) -> (Provenance, Option<String>) {
        let mut p = Provenance::of(dir);
        if built.is_empty() {
            return (p, None);
        }
        p.built_from = Some(built.to_string());
        p.built_dirty = Some(built_dirty);
        let short = |c: &str| c[..c.len().min(12)].to_string();
        let warn = match &p.commit {
            Some(c) if c != built => Some(format!(
                "the experiments under {} are at commit {}, but this runner was built from {}{}: run.json records both",
                dir.display(),
                short(c),
                short(built),
                if built_dirty { " (with uncommitted changes)" } else { "" }
            )),
            _ => None,
        };
        (p, warn)
    }
}

/// A new run identity: a sha256 prefix of the folder, the time and the process.
pub fn new_run_id(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    crate::checkpoint::hex(&h.finalize())[..16].to_string()
}

static INTERRUPT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// How many loops that check the interrupt flag are running in this process.
static CHECKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Held while a loop that checks [`interrupt_flag`] runs (a training loop from
/// [`RunContext::begin`] on, a sweep waiting for its workers): a signal then asks that loop to
/// stop after its step; with none held, the process has nothing to stop gracefully and a
/// signal ends it at once.
#[derive(Debug)]
pub struct StopChecked(());

impl StopChecked {
    /// Marks a flag-checking loop as running until the guard is dropped.
    pub fn new() -> Self {
        CHECKERS.fetch_add(1, Ordering::SeqCst);
        StopChecked(())
    }
}

impl Default for StopChecked {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StopChecked {
    fn drop(&mut self) {
        CHECKERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether some loop of this process checks the interrupt flag now.
pub fn stop_is_checked() -> bool {
    CHECKERS.load(Ordering::SeqCst) > 0
}

/// The flag set by SIGINT/SIGTERM; training loops check it through [`RunContext::interrupted`].
pub fn interrupt_flag() -> Arc<AtomicBool> {
    INTERRUPT
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// The current UTC time as `2026-11-28T15-04-05Z`, safe as a folder name.
pub fn utc_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]-[minute]-[second]Z");
    now.format(&f).expect("the format is valid")
}

/// Creates a new folder `<parent>/<stamp>` (with `-2`, `-3`, ... if taken); never reuses one.
pub fn create_unique_dir(parent: &Path, stamp: &str) -> Result<PathBuf> {
    fs::create_dir_all(parent).map_err(|e| Error::Io(parent.to_path_buf(), e))?;
    for i in 1..10_000 {
        let name = if i == 1 {
            stamp.to_string()
        } else {
            format!("{stamp}-{i}")
        };
        let p = parent.join(name);
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Io(p, e)),
        }
    }
    Err(Error::msg(format!(
        "no free run folder under {}",
        parent.display()
    )))
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricRecord {
    /// Training step.
    pub step: u64,
    /// Epoch (fractional where useful).
    pub epoch: f64,
    /// Seconds since the run started (continued across resumes).
    pub wall: f64,
    /// Named values.
    pub values: Map<String, Json>,
}

/// Reads `metrics.jsonl`; lines that do not parse (a torn last line) are skipped.
pub fn read_metrics(dir: &Path) -> Vec<MetricRecord> {
    let Ok(bytes) = crate::checkpoint::read_record(&dir.join("metrics.jsonl")) else {
        return vec![];
    };
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// The context of one run: its folder, resolved spec, device, logs and checkpoints.
pub struct RunContext {
    dir: PathBuf,
    spec: SpecTree,
    header: Header,
    info: RunInfo,
    device: tch::Device,
    checkpoints: CheckpointDir,
    metrics: Option<File>,
    started: Instant,
    wall_offset: f64,
    interrupt: Arc<AtomicBool>,
    stop_checked: Option<StopChecked>,
    tensorboard: Option<crate::tensorboard::EventFile>,
    parallel: Arc<crate::parallel::Parallel>,
}

impl RunContext {
    /// Prepares a run in an existing, empty folder: writes `spec.yaml` and `run.json`.
    pub fn create(dir: &Path, spec: SpecTree, info: RunInfo, device: tch::Device) -> Result<Self> {
        let header = spec.header()?;
        write_atomic(&dir.join("spec.yaml"), spec.to_yaml().as_bytes())?;
        let info_json = serde_json::to_vec_pretty(&info).expect("RunInfo serializes");
        write_atomic(&dir.join("run.json"), &info_json)?;
        Self::build(dir, spec, header, info, device)
    }

    /// Opens an existing run folder to continue it (`--resume`).
    pub fn open(dir: &Path, device: Option<tch::Device>) -> Result<Self> {
        check_no_links(dir)?;
        let spec = SpecTree::load(&dir.join("spec.yaml"))?;
        let header = spec.header()?;
        let info_path = dir.join("run.json");
        let text = crate::checkpoint::read_bounded(&info_path, 1 << 20)?;
        let info: RunInfo = serde_json::from_slice(&text)
            .map_err(|e| Error::Corrupt(info_path.clone(), e.to_string()))?;
        let device = match device {
            Some(d) => d,
            None => header.device.resolve().map_err(Error::msg)?,
        };
        Self::build(dir, spec, header, info, device)
    }

    fn build(
        dir: &Path,
        spec: SpecTree,
        header: Header,
        info: RunInfo,
        device: tch::Device,
    ) -> Result<Self> {
        for sub in ["checkpoints", "figures"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::Io(p, e))?;
        }
        remove_stale_temporaries(dir);
        Ok(RunContext {
            dir: dir.to_path_buf(),
            checkpoints: CheckpointDir::new(dir.join("checkpoints"), 2)
                .for_run(&info.id)
                .described(checkpoint_about(&spec, &header, &info)),
            spec,
            header,
            info,
            device,
            metrics: None,
            started: Instant::now(),
            wall_offset: 0.0,
            interrupt: interrupt_flag(),
            stop_checked: None,
            tensorboard: None,
            parallel: Arc::new(crate::parallel::Parallel::single()),
        })
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The resolved spec.
    pub fn spec(&self) -> &SpecTree {
        &self.spec
    }

    /// The spec's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.header.seed
    }

    /// The paper section, typed.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(self.spec.typed(&self.header.paper)?)
    }

    /// The device.
    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// Whether this is a `--smoke` run.
    pub fn smoke(&self) -> bool {
        self.info.smoke
    }

    /// The iteration budget: the smoke budget in a smoke run, else `full`.
    pub fn iterations(&self, full: u64) -> u64 {
        match (self.info.smoke, self.info.smoke_iterations) {
            (true, Some(n)) => n.min(full),
            _ => full,
        }
    }

    /// How the run was started.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The ranks training this run together ([`crate::parallel`]); one process by default.
    pub fn parallel(&self) -> Arc<crate::parallel::Parallel> {
        self.parallel.clone()
    }

    /// Trains this run as one rank of `p`. A rank other than 0 writes no checkpoint (its
    /// folder is a private scratch copy that the runner removes) and shows no progress.
    pub fn set_parallel(&mut self, p: Arc<crate::parallel::Parallel>) {
        if !p.is_main() {
            self.checkpoints = self.checkpoints.clone().discarding();
        }
        self.parallel = p;
    }

    /// Records, for a data-parallel run, that its training stage `stage` runs with the spec's
    /// batch `batch` split among the ranks, under `amp`: in `run.json`'s `world.shares`, the
    /// metadata of the checkpoints written from now on and the line under the report's title.
    /// With one process nothing is recorded.
    pub fn record_share(&mut self, stage: &str, batch: usize, amp: crate::amp::Amp) -> Result<()> {
        if self.parallel.world() == 1 {
            return Ok(());
        }
        let Some(mut world) = self.info.world.clone() else {
            return Ok(());
        };
        let (_, rows) = self.parallel.rows(batch as i64)?;
        let share = Share {
            stage: stage.to_string(),
            batch,
            per_rank: rows as usize,
            precision: amp.precision().to_string(),
        };
        if world.shares.contains(&share) {
            return Ok(());
        }
        world.shares.retain(|s| s.stage != stage);
        world.shares.push(share);
        self.info.world = Some(world.clone());
        if self.parallel.is_main() {
            update_info(&self.dir, |i| i.world = Some(world))?;
        }
        self.checkpoints = self.checkpoints.clone().described(checkpoint_about(
            &self.spec,
            &self.header,
            &self.info,
        ));
        Ok(())
    }

    /// The checkpoint to resume from: the newest one of the run folder that passes `fits`
    /// ([`CheckpointDir::latest_valid`]), found by rank 0 and sent to the other ranks.
    pub fn resume_point(
        &self,
        fits: impl Fn(&Checkpoint) -> Result<()>,
    ) -> Result<Option<(u64, Checkpoint)>> {
        let found = if self.parallel.is_main() {
            self.checkpoints.latest_valid(fits)?
        } else {
            None
        };
        self.parallel.share_checkpoint(found)
    }

    /// Rank 0's copies of the run folder's files `names` (a paper's ledger of finished stages:
    /// a trained source, its metrics, the transfers done) on every rank: each other rank writes
    /// them into its own folder, or removes its copy where rank 0 has none, so that the ranks
    /// skip and redo the same stages. With one process nothing happens.
    pub fn share_files(&self, names: &[&str]) -> Result<()> {
        if self.parallel.world() == 1 {
            return Ok(());
        }
        for name in names {
            let path = self.dir.join(name);
            // A flag byte (present or not), then the file's bytes.
            let mine =
                self.parallel
                    .is_main()
                    .then(|| match crate::checkpoint::read_record(&path) {
                        Ok(mut b) => {
                            b.insert(0, 1);
                            b
                        }
                        Err(_) => vec![0],
                    });
            let got = self.parallel.share_bytes(mine)?;
            if self.parallel.is_main() {
                continue;
            }
            match got.split_first() {
                Some((1, body)) => write_atomic(&path, body)?,
                _ => crate::checkpoint::remove_if_present(&path)?,
            }
        }
        Ok(())
    }

    /// The checkpoint folder.
    pub fn checkpoints(&self) -> &CheckpointDir {
        &self.checkpoints
    }

    /// The figures folder.
    pub fn figures(&self) -> PathBuf {
        self.dir.join("figures")
    }

    /// Whether SIGINT or SIGTERM has asked the run to stop.
    pub fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
    }

    /// Prepares the metrics log for a run starting (or resuming) after `step`: lines of later
    /// steps, written after the checkpoint the run resumes from, are dropped.
    pub fn begin(&mut self, step: u64) -> Result<()> {
        // From here the run's loop checks the interrupt flag (see `StopChecked`).
        self.stop_checked.get_or_insert_with(StopChecked::new);
        let path = self.dir.join("metrics.jsonl");
        // The lines up to the checkpoint are kept as written, byte for byte.
        let mut text = String::new();
        let mut kept = Vec::new();
        self.wall_offset = 0.0;
        if step > 0 {
            let old = crate::checkpoint::read_record(&path).unwrap_or_default();
            for line in String::from_utf8_lossy(&old).lines() {
                if let Ok(r) = serde_json::from_str::<MetricRecord>(line) {
                    if r.step <= step {
                        text.push_str(line);
                        text.push('\n');
                        self.wall_offset = r.wall;
                        kept.push(r);
                    }
                }
            }
        }
        write_atomic(&path, text.as_bytes())?;
        // The event file is written again from the lines kept, so that a resumed run's
        // TensorBoard curves hold no step twice.
        self.tensorboard = None;
        if self.header.tensorboard {
            let mut tb = crate::tensorboard::EventFile::new(&self.dir.join("tensorboard"))?;
            let base = self.started_unix();
            for r in &kept {
                for (k, v) in &r.values {
                    if let Some(v) = v.as_f64() {
                        tb.scalar(k, r.step, v, base + r.wall)?;
                    }
                }
            }
            self.tensorboard = Some(tb);
        }
        let f = crate::checkpoint::open_append(&path)?;
        self.metrics = Some(f);
        self.started = Instant::now();
        Ok(())
    }

    /// Adds the run's figures (`figures/*.png`) to its event file as images at its last step.
    fn figures_to_tensorboard(&mut self) -> Result<()> {
        let step = read_metrics(&self.dir).last().map_or(0, |r| r.step);
        let wall = self.started_unix() + self.wall();
        let mut pngs: Vec<PathBuf> = fs::read_dir(self.figures())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        pngs.sort();
        if pngs.is_empty() {
            return Ok(());
        }
        let dir = self.dir.join("tensorboard");
        let tb = match self.tensorboard.take() {
            Some(tb) => tb,
            // A run continued past its loop, or one that logged nothing (an evaluation).
            None => crate::tensorboard::EventFile::append_or_new(&dir)?,
        };
        let tb = self.tensorboard.insert(tb);
        for p in pngs {
            let bytes = crate::checkpoint::read_bounded(&p, 64 << 20)?;
            let tag = format!(
                "figures/{}",
                p.file_stem()
                    .map_or(String::new(), |s| s.to_string_lossy().into_owned())
            );
            tb.image(&tag, step, &bytes, wall)?;
        }
        self.tensorboard = None;
        Ok(())
    }

    /// Records the run as a session of TensorBoard's HParams dashboard, so that a sweep's runs
    /// can be compared there: its hyperparameters are the swept values its folder is named by
    /// (`arm=jem,seed=0`; a single run: its seed), its metrics the numbers of `summary.json`
    /// (as `summary/<key>` scalars; timing and constants left out) beside its curves.
    fn hparams_to_tensorboard(&mut self) -> Result<()> {
        let name = self
            .dir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let value = |v: &str| {
            v.parse::<f64>().map_or_else(
                |_| crate::tensorboard::HValue::Text(v.to_string()),
                crate::tensorboard::HValue::Number,
            )
        };
        let mut hparams: Vec<(String, crate::tensorboard::HValue)> = name
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), value(v)))
            .collect();
        if !hparams.iter().any(|(k, _)| k == "seed") {
            hparams.push((
                "seed".into(),
                crate::tensorboard::HValue::Number(self.header.seed as f64),
            ));
        }
        let summary: Json =
            crate::checkpoint::read_bounded(&self.dir.join("summary.json"), 16 << 20)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Json::Null);
        let timing = |k: &str| {
            k.ends_with("_ms")
                || k.ends_with("seconds")
                || k == "steps"
                || k == "classes"
                || k == "params"
        };
        let metrics: Vec<(String, f64)> = summary
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !timing(k))
            .filter_map(|(k, v)| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .map(|x| (format!("summary/{k}"), x))
            })
            .collect();
        let step = read_metrics(&self.dir).last().map_or(0, |r| r.step);
        let start = self.started_unix();
        let end = start + self.wall();
        let mut tb = crate::tensorboard::EventFile::append_or_new(&self.dir.join("tensorboard"))?;
        tb.hparams(&hparams, &metrics, step, (start, end))
    }

    /// Seconds since the run began, continued across resumes.
    pub fn wall(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    /// Appends one line to `metrics.jsonl` and to the log.
    pub fn log_metrics(&mut self, step: u64, epoch: f64, values: &[(&str, f64)]) -> Result<()> {
        let mut map = Map::new();
        for (k, v) in values {
            map.insert((*k).to_string(), json_f64(*v));
        }
        let rec = MetricRecord {
            step,
            epoch,
            wall: (self.wall() * 1000.0).round() / 1000.0,
            values: map,
        };
        let line = serde_json::to_string(&rec).expect("a record serializes");
        tracing::info!(target: "metrics", "{line}");
        if self.metrics.is_none() {
            self.begin(0)?;
        }
        let f = self.metrics.as_mut().expect("begin opened it");
        let path = self.dir.join("metrics.jsonl");
        writeln!(f, "{line}").map_err(|e| Error::Io(path, e))?;
        let base = self.started_unix();
        if let Some(tb) = self.tensorboard.as_mut() {
            // A term this run does not compute (NaN) is no point of a curve.
            for (k, v) in values.iter().filter(|(_, v)| !v.is_nan()) {
                tb.scalar(k, step, *v, base + rec.wall)?;
            }
        }
        Ok(())
    }

    /// The run's start (`run.json`'s `started`) in seconds since 1970, the origin of the
    /// event file's wall times (so TensorBoard's wall axis shows the run's real dates); 0 when
    /// it does not read as a time stamp.
    fn started_unix(&self) -> f64 {
        // `utc_stamp`'s form: 2026-12-07T14-26-09Z.
        let s = &self.info.started;
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i32>().ok();
        let parsed = (|| {
            let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
            let date = time::Date::from_calendar_date(num(0..4)?, month, num(8..10)? as u8).ok()?;
            let t =
                time::Time::from_hms(num(11..13)? as u8, num(14..16)? as u8, num(17..19)? as u8)
                    .ok()?;
            Some(date.with_time(t).assume_utc().unix_timestamp() as f64)
        })();
        parsed.unwrap_or(0.0)
    }

    /// A progress display for `total` steps starting at `done`.
    pub fn progress(&self, total: u64, done: u64) -> Progress {
        if !self.parallel.is_main() {
            return Progress::silent(total, done);
        }
        // In a sweep the run's folder names it (`arm=jem,seed=3`).
        let run = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.contains('='));
        let label = match run {
            Some(r) => format!("{} {r}", self.header.name),
            None => self.header.name.clone(),
        };
        Progress::new(&label, total, done)
    }

    /// Writes `summary.json` (final metrics, machine-readable).
    /// `summary` is a paper's typed summary (or any value that serialises to a JSON object).
    pub fn write_summary(&self, summary: &impl Serialize) -> Result<()> {
        let mut s = serde_json::to_value(summary)
            .map_err(|e| Error::msg(format!("the run's summary: {e}")))?;
        if let Json::Object(m) = &mut s {
            m.insert(
                "wall_seconds".into(),
                json!((self.wall() * 10.0).round() / 10.0),
            );
            m.insert("smoke".into(), json!(self.info.smoke));
        }
        write_atomic(
            &self.dir.join("summary.json"),
            serde_json::to_string_pretty(&s).expect("json").as_bytes(),
        )
    }

    /// Writes `report.md` (saying, under its title, the data-parallel world it was trained
    /// in, [`with_world`]).
    pub fn write_report(&self, markdown: &str) -> Result<()> {
        let md = with_world(markdown, self.info.world.as_ref());
        write_atomic(&self.dir.join("report.md"), md.as_bytes())
    }

    /// Ends the run: writes `metrics.csv` from `metrics.jsonl`, then, last, the `finished`
    /// marker: a run killed before it (after its summary, say) is continued by a resume, which
    /// writes whatever is missing.
    pub fn finish(&mut self) -> Result<()> {
        self.metrics = None;
        write_metrics_csv(&self.dir)?;
        if self.header.tensorboard {
            self.figures_to_tensorboard()?;
            self.hparams_to_tensorboard()?;
        }
        write_atomic(&self.dir.join(FINISHED), b"")
    }
}

/// Removes the temporary files an atomic write killed midway left in a run folder and its
/// `checkpoints/` (`.<name>.tmp-<pid>`): whoever opens the folder owns it, so none is in use.
fn remove_stale_temporaries(dir: &Path) {
    for d in [dir.to_path_buf(), dir.join("checkpoints")] {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with('.')
                && name.rsplit_once(".tmp-").is_some_and(|(_, pid)| {
                    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
                });
            if stale && e.file_type().is_ok_and(|t| t.is_file()) {
                match fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!("removed {}, left by a killed write", e.path().display())
                    }
                    Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
                }
            }
        }
    }
}

/// Deserialises a number that may have been written as `null` (how JSON holds NaN and the
/// infinities) into `f64::NAN`: `#[serde(deserialize_with = "reprise_core::run::nan_if_null")]`
/// on a summary's `f64` field, so that a run whose metric was NaN reads back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Deserialises an optional number whose `null` means NaN (a metric that was measured and came
/// out NaN) into `Some(f64::NAN)`; with `#[serde(default, skip_serializing_if = "Option::is_none")]`
/// an absent key stays `None` and `Some(NaN)` is written back as `null`.
pub fn some_nan_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    Ok(Some(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
}

/// `f64::NAN`, for `#[serde(default = "reprise_core::run::nan")]`.
pub fn nan() -> f64 {
    f64::NAN
}

/// A JSON number, or null for NaN and infinities.
pub fn json_f64(v: f64) -> Json {
    serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
}

/// Writes `metrics.csv` (step, epoch, wall, then every value name in order of appearance).
pub fn write_metrics_csv(dir: &Path) -> Result<()> {
    let recs = read_metrics(dir);
    let mut cols: Vec<String> = Vec::new();
    for r in &recs {
        for k in r.values.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let mut header = vec!["step", "epoch", "wall"];
    header.extend(cols.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            let mut row = vec![r.step.to_string(), r.epoch.to_string(), r.wall.to_string()];
            row.extend(cols.iter().map(|c| match r.values.get(c) {
                Some(Json::Number(n)) => n.to_string(),
                Some(Json::Null) => "nan".to_string(),
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            }));
            row
        })
        .collect();
    crate::report::write_csv(&dir.join("metrics.csv"), &header, &rows)
}

/// A finished run's header and summary (a paper's typed summary, or `serde_json::Value`), for
/// its report: an error naming the folder when the
/// run has no `summary.json` yet.
pub fn finished_run<S: serde::de::DeserializeOwned>(dir: &Path) -> Result<(Header, S)> {
    let spec = SpecTree::load(&dir.join("spec.yaml"))?;
    let h = spec.header()?;
    let s = read_summary(dir).ok_or_else(|| {
        Error::msg(format!(
            "{} has no summary.json (the run has not finished)",
            dir.display()
        ))
    })?;
    Ok((h, parse_summary(dir, &s)?))
}

/// The checkpoint a run ended with (another run's judge, an export): the newest step
/// checkpoint of the run folder `dir` that loads, verifies and belongs to the run (a
/// checkpoint stamped with another run's id, copied in, is passed over as on resuming), with its
/// step. An error naming the folder when it has none.
pub fn final_checkpoint(dir: &Path) -> Result<(u64, Checkpoint)> {
    CheckpointDir::new(dir.join("checkpoints"), 1)
        .for_run(&recorded_id(dir))
        .latest_valid(|_| Ok(()))?
        .ok_or_else(|| Error::msg(format!("{} has no checkpoint", dir.display())))
}

/// The names of the runs a sweep folder's `sweep.json` lists (empty when it has none).
pub fn expected_runs(sweep: &Path) -> Vec<String> {
    crate::checkpoint::read_record(&sweep.join("sweep.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
        .and_then(|v| {
            v["runs"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The marker a run writes once every output is in place (the last file it writes).
pub const FINISHED: &str = "finished";

/// Whether a run folder's run has finished: its `finished` marker is there or, in folders of
/// earlier versions that wrote none, its summary, report and `metrics.csv` all are.
pub fn is_finished(dir: &Path) -> bool {
    dir.join(FINISHED).is_file()
        || (!dir.join("run.json").is_file() || recorded_id(dir).is_empty())
            && ["summary.json", "report.md", "metrics.csv"]
                .iter()
                .all(|f| dir.join(f).is_file())
}

/// The run id `run.json` records (empty when it records none, or is missing or unreadable).
pub fn recorded_id(dir: &Path) -> String {
    crate::checkpoint::read_bounded(&dir.join("run.json"), 1 << 20)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
        .map(|i| i.id)
        .unwrap_or_default()
}

/// Reads `summary.json` of a run folder, if the run finished.
pub fn read_summary(dir: &Path) -> Option<Json> {
    let text = crate::checkpoint::read_record(&dir.join("summary.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The finished runs below a sweep folder (sub-folders holding `summary.json`), by name.
pub fn finished_runs(sweep: &Path) -> Result<Vec<RunSummary>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(sweep).map_err(|e| Error::Io(sweep.to_path_buf(), e))?;
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let Some(summary) = read_summary(&dir) else {
            continue;
        };
        let spec = SpecTree::load(&dir.join("spec.yaml"))?;
        out.push(RunSummary {
            name: e.file_name().to_string_lossy().into_owned(),
            dir,
            spec,
            summary,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_parallel_report_says_its_world_under_the_title() {
        let md = "# jem — tiny\n\nbody\n";
        assert_eq!(with_world(md, None), md);
        let w = World {
            size: 4,
            backend: "gloo+nccl".into(),
            grad_sync: Some("reducer".into()),
            shares: vec![],
        };
        let out = with_world(md, Some(&w));
        assert!(out.starts_with("# jem — tiny\n\n*Trained data-parallel: 4 ranks (gloo+nccl), gradients averaged during the backward by DDP's Reducer, each on its share of the spec's batch.*\n"), "{out}");
        assert!(out.ends_with("\nbody\n"), "{out}");
        let staged = World {
            shares: vec![
                Share {
                    stage: "source".into(),
                    batch: 512,
                    per_rank: 128,
                    precision: "bf16".into(),
                },
                Share {
                    stage: "transfer".into(),
                    batch: 64,
                    per_rank: 16,
                    precision: "float32".into(),
                },
            ],
            ..w.clone()
        };
        let out = with_world(md, Some(&staged));
        assert!(
            out.contains("each on its share of the spec's batch (source: 512, 128 a rank, bf16; transfer: 64, 16 a rank, float32).*"),
            "{out}"
        );
        let old = World {
            grad_sync: None,
            ..w
        };
        assert!(with_world(md, Some(&old)).contains("averaged after the backward"));
    }

    use super::*;

    const SPEC: &str = "name: t\npaper: p\ndescription: d\ndata: { dataset: digits }\np: {}\n";

    fn info() -> RunInfo {
        RunInfo {
            smoke: false,
            smoke_iterations: None,
            device: "cpu".into(),
            threads: 1,
            versions: Map::new(),
            started: utc_stamp(),
            id: "test-run".into(),
            provenance: Provenance::default(),
            status: None,
            ended: None,
            error: None,
            world: None,
        }
    }

    #[test]
    fn unique_dirs_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let a = create_unique_dir(d.path(), "x").unwrap();
        let b = create_unique_dir(d.path(), "x").unwrap();
        assert_ne!(a, b);
        assert!(b.ends_with("x-2"));
    }

    #[test]
    fn run_folder_layout_and_metrics_resume() {
        let d = tempfile::tempdir().unwrap();
        let dir = create_unique_dir(d.path(), "run").unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        let mut ctx = RunContext::create(&dir, spec, info(), tch::Device::Cpu).unwrap();
        ctx.begin(0).unwrap();
        for s in 1..=5 {
            ctx.log_metrics(s, 0.0, &[("loss", 1.0 / s as f64), ("nan", f64::NAN)])
                .unwrap();
        }
        ctx.write_summary(&json!({"acc": 0.5})).unwrap();
        ctx.finish().unwrap();
        for f in [
            "spec.yaml",
            "run.json",
            "metrics.jsonl",
            "metrics.csv",
            "summary.json",
        ] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        assert!(dir.join("checkpoints").is_dir() && dir.join("figures").is_dir());
        let csv = fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert!(csv.starts_with("step,epoch,wall,loss,nan\n"), "{csv}");
        assert_eq!(csv.lines().count(), 6);
        // Resuming from step 3 drops the lines of steps 4 and 5.
        let mut again = RunContext::open(&dir, Some(tch::Device::Cpu)).unwrap();
        again.begin(3).unwrap();
        again.log_metrics(4, 0.0, &[("loss", 0.1)]).unwrap();
        let steps: Vec<u64> = read_metrics(&dir).iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(again.info(), &info_with_started(&dir));
    }

    #[test]
    fn provenance_names_the_commit_and_whether_the_tree_is_dirty() {
        let d = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(d.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{ok:?}");
            String::from_utf8_lossy(&ok.stdout).trim().to_string()
        };
        let outside = Provenance::of(d.path());
        assert_eq!(
            (outside.commit.as_deref(), outside.dirty),
            (None, None),
            "not a git checkout"
        );
        assert!(!outside.command.is_empty());
        git(&["init", "-q"]);
        fs::write(d.path().join("a"), "1").unwrap();
        git(&["add", "a"]);
        git(&["commit", "-q", "-m", "a"]);
        let head = git(&["rev-parse", "HEAD"]);
        let clean = Provenance::of(d.path());
        assert_eq!(
            (clean.commit.as_deref(), clean.dirty),
            (Some(head.as_str()), Some(false))
        );
        fs::write(d.path().join("a"), "2").unwrap();
        assert_eq!(Provenance::of(d.path()).dirty, Some(true));
        // run.json of an earlier version (no provenance) still reads.
        let old = r#"{"smoke":false,"smoke_iterations":null,"device":"Cpu","threads":1,"versions":{},"started":"x"}"#;
        let r: RunInfo = serde_json::from_str(old).unwrap();
        assert_eq!(r.provenance, Provenance::default());
    }

    #[test]
    fn the_status_is_kept_in_run_json() {
        let d = tempfile::tempdir().unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        drop(RunContext::create(d.path(), spec, info(), tch::Device::Cpu).unwrap());
        set_status(d.path(), RunStatus::Running, None).unwrap();
        let r = info_with_started(d.path());
        assert_eq!(
            (r.status, r.ended, r.error),
            (Some(RunStatus::Running), None, None)
        );
        set_status(d.path(), RunStatus::Failed, Some("no data".into())).unwrap();
        let r = info_with_started(d.path());
        assert_eq!(r.status, Some(RunStatus::Failed));
        assert!(r.ended.is_some() && r.error.as_deref() == Some("no data"));
        let text = fs::read_to_string(d.path().join("run.json")).unwrap();
        assert!(text.contains("\"status\": \"failed\""), "{text}");
        // Everything else is as it was written.
        assert_eq!(r.id, "test-run");
    }

    #[test]
    fn a_checkpoint_says_which_experiment_spec_and_commit_wrote_it() {
        use sha2::Digest as _;
        let d = tempfile::tempdir().unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        let mut i = info();
        i.provenance.commit = Some("abc123".into());
        i.provenance.dirty = Some(true);
        let ctx = RunContext::create(d.path(), spec, i, tch::Device::Cpu).unwrap();
        let mut ck = crate::checkpoint::Checkpoint::new();
        ck.put(
            "w",
            &tch::Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu)),
        );
        let p = ctx.checkpoints().save(3, &ck).unwrap();
        ctx.checkpoints().save_best(&ck).unwrap();
        let spec_text = fs::read(d.path().join("spec.yaml")).unwrap();
        let want = crate::checkpoint::hex(&sha2::Sha256::digest(&spec_text));
        for f in [p, d.path().join("checkpoints/best.safetensors")] {
            let back = crate::checkpoint::Checkpoint::load(&f).unwrap();
            assert_eq!(back.meta["experiment"], "t");
            assert_eq!(back.meta["spec_sha256"], want);
            assert_eq!(back.meta["commit"], "abc123+dirty");
            assert_eq!(back.meta["run"], "test-run");
        }
    }

    #[test]
    fn the_final_checkpoint_is_the_newest_of_the_run_itself() {
        let d = tempfile::tempdir().unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        let ctx = RunContext::create(d.path(), spec, info(), tch::Device::Cpu).unwrap();
        let e = final_checkpoint(d.path()).unwrap_err().to_string();
        assert!(e.contains("has no checkpoint"), "{e}");
        let ck = |v: f64| {
            let mut ck = Checkpoint::new();
            ck.put("w", &tch::Tensor::from_slice(&[v]));
            ck
        };
        ctx.checkpoints().save(4, &ck(4.0)).unwrap();
        ctx.checkpoints().save(8, &ck(8.0)).unwrap();
        let (step, last) = final_checkpoint(d.path()).unwrap();
        assert_eq!(step, 8);
        assert_eq!(last.tensor("w").unwrap().double_value(&[0]), 8.0);
        // A newer checkpoint of another run, copied in, is passed over.
        CheckpointDir::new(d.path().join("checkpoints"), 5)
            .for_run("another-run")
            .save(9, &ck(9.0))
            .unwrap();
        assert_eq!(final_checkpoint(d.path()).unwrap().0, 8);
    }

    fn info_with_started(dir: &Path) -> RunInfo {
        serde_json::from_slice(&fs::read(dir.join("run.json")).unwrap()).unwrap()
    }

    #[test]
    fn opening_a_run_removes_what_killed_writes_left() {
        let d = tempfile::tempdir().unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        drop(RunContext::create(d.path(), spec, info(), tch::Device::Cpu).unwrap());
        let stale = [
            d.path().join(".summary.json.tmp-123"),
            d.path()
                .join("checkpoints/.step-000000040.safetensors.tmp-99"),
        ];
        let kept = d.path().join("checkpoints/notes.tmp-x");
        for f in stale.iter().chain([&kept]) {
            fs::write(f, b"partial").unwrap();
        }
        RunContext::open(d.path(), Some(tch::Device::Cpu)).unwrap();
        assert!(stale.iter().all(|f| !f.exists()));
        assert!(kept.exists());
    }

    #[test]
    fn smoke_iterations_cap_the_budget() {
        let d = tempfile::tempdir().unwrap();
        let spec = SpecTree::from_str("s.yaml", SPEC).unwrap();
        let mut i = info();
        i.smoke = true;
        i.smoke_iterations = Some(5);
        let ctx = RunContext::create(d.path(), spec, i, tch::Device::Cpu).unwrap();
        assert_eq!(ctx.iterations(1000), 5);
        assert_eq!(ctx.iterations(3), 3);
    }
}
