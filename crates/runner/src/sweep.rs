//! Run and sweep folders: creating them, executing their runs (in this process or as `--jobs`
//! worker processes), resuming them, and writing their reports.

use crate::slots::Slots;
use anyhow::{bail, Context, Result};
use reprise_core::checkpoint::write_atomic;
use reprise_core::run::{
    create_unique_dir, finished_runs, is_finished, set_status, utc_stamp, RunContext, RunInfo,
    RunStatus,
};
use reprise_core::spec::SpecTree;
use serde_json::{json, Map, Value as Json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// What a run or a sweep is asked to do, from the command line (`runner run`'s options).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides `key=value` (with `--resume`: of the run folder's spec).
    pub overrides: Vec<String>,
    /// The folder under which run folders are made.
    pub out: PathBuf,
    /// The device asked for, if any.
    pub device: Option<String>,
    /// Intra-op threads per run, if given.
    pub threads: Option<usize>,
    /// With `--resume` and overrides: continue from the newest checkpoint at or before it.
    pub from_step: Option<u64>,
    /// A smoke run.
    pub smoke: bool,
    /// Sweep runs at once, as worker processes.
    pub jobs: usize,
    /// The shared cores' pipe (`--slots`).
    pub slots: Option<PathBuf>,
    /// With `--resume`: continue a run whose `spec.yaml` was edited since its checkpoints were
    /// written (the decision is logged).
    pub accept_edited_spec: bool,
}

/// A short, stable hex hash (FNV-1a, 64 bits) of a text: names the folder shards share.
fn short_hash(s: &str) -> String {
    format!("{:016x}", reprise_core::cache::fnv1a(s))[..10].to_string()
}

fn versions() -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("reprise".into(), json!(env!("CARGO_PKG_VERSION")));
    m.insert("tch".into(), json!(reprise_core::TCH_VERSION));
    m.insert("libtorch".into(), json!(env!("REPRISE_LIBTORCH_VERSION")));
    m
}

fn is_interrupt(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref(),
        Some(reprise_core::Error::Interrupted { .. })
    )
}

/// Writes a new run's `spec.yaml` and `run.json` into `dir`.
fn prepare(dir: &Path, tree: SpecTree, smoke: bool, threads: Option<usize>) -> Result<()> {
    let header = tree.header()?;
    let device = header.device.resolve().map_err(anyhow::Error::msg)?;
    let (provenance, warn) = reprise_core::run::Provenance::of_build(
        &crate::experiments::experiments_dir(),
        env!("REPRISE_BUILD_COMMIT"),
        env!("REPRISE_BUILD_DIRTY") == "true",
    );
    // Said once a process, not once a run of the sweep.
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(w) = warn {
        if !WARNED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!("{w}");
        }
    }
    let info = RunInfo {
        smoke,
        smoke_iterations: header.smoke.iterations.filter(|_| smoke),
        device: format!("{device:?}"),
        threads: threads.map_or_else(tch::get_num_threads, |t| t as i32),
        versions: versions(),
        started: utc_stamp(),
        id: reprise_core::run::new_run_id(dir),
        provenance,
        status: Some(RunStatus::Prepared),
        ended: None,
        error: None,
        world: crate::ddp::current().and_then(|p| reprise_core::run::World::of(&p)),
    };
    RunContext::create(dir, tree, info, device)?;
    Ok(())
}

/// [`prepare`] of a new single run's folder, which is removed if that fails: nothing ran, and
/// no half-made folder is left behind.
fn prepare_or_remove(
    dir: &Path,
    tree: SpecTree,
    smoke: bool,
    threads: Option<usize>,
) -> Result<()> {
    prepare(dir, tree, smoke, threads).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(dir);
    })
}

/// The device a run records in `run.json` (`Cpu`, `Cuda(0)`), if it reads as one.
fn recorded_device(s: &str) -> Option<tch::Device> {
    match s {
        "Cpu" => Some(tch::Device::Cpu),
        _ => s
            .strip_prefix("Cuda(")?
            .strip_suffix(')')?
            .parse()
            .ok()
            .map(tch::Device::Cuda),
    }
}

/// The threads and device a run continues with: those it recorded when it started (so a
/// resumed run computes what an uninterrupted one would), unless `threads` or `device` are
/// given, which is said when they differ from the recorded ones.
fn continue_with(
    dir: &Path,
    threads: Option<usize>,
    device: Option<&str>,
) -> Result<(usize, Option<tch::Device>)> {
    let info_path = dir.join("run.json");
    let Ok(bytes) = reprise_core::checkpoint::read_bounded(&info_path, 1 << 20) else {
        return Ok((
            threads.unwrap_or(tch::get_num_threads().max(1) as usize),
            None,
        ));
    };
    let info: RunInfo = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid run.json", info_path.display()))?;
    let was = info.world.as_ref().map_or(1, |w| w.size);
    let now = crate::ddp::current().map_or(1, |p| p.world());
    if was != now {
        if !crate::ddp::world_change_allowed() {
            bail!(
                "{} trained on {was} process(es), and would continue on {now}: each rank's share of the batch, and the numbers, would change. Resume it as it ran ({}), or pass --allow-world-change to continue on {now}",
                dir.display(),
                if was == 1 {
                    "without --nproc, torchrun or srun".to_string()
                } else {
                    format!("--nproc {was}, or torchrun/srun with {was} ranks")
                }
            );
        }
        let line = format!(
            "continuing a run trained on {was} process(es) on {now}, as asked (--allow-world-change)"
        );
        tracing::warn!("{line}");
        if crate::ddp::current().is_none_or(|p| p.is_main()) {
            note_in_log(dir, &line)?;
            reprise_core::run::set_world(
                dir,
                crate::ddp::current().and_then(|p| reprise_core::run::World::of(&p)),
            )?;
        }
    }
    let recorded_threads = usize::try_from(info.threads).unwrap_or(1).max(1);
    let t = match threads {
        Some(t) if t != recorded_threads => {
            reprise_core::note!(
                "note: {} ran with {recorded_threads} thread(s); continuing with {t} as asked, so its numbers can differ from an uninterrupted run",
                dir.display()
            );
            t
        }
        Some(t) => t,
        None => recorded_threads,
    };
    let recorded = recorded_device(&info.device);
    let dev = match device {
        Some(d) => {
            let want = d
                .parse::<reprise_core::spec::DeviceSpec>()
                .map_err(|e| anyhow::anyhow!("--device: {e}"))?
                .resolve()
                .map_err(anyhow::Error::msg)?;
            if recorded.is_some_and(|r| r != want) {
                reprise_core::note!(
                    "note: {} ran on {}; continuing on {want:?} as asked, so its numbers can differ from an uninterrupted run",
                    dir.display(),
                    info.device
                );
            }
            Some(want)
        }
        None => match recorded {
            Some(tch::Device::Cuda(i)) if i >= tch::Cuda::device_count().max(0) as usize => bail!(
                "{} ran on {}, which this machine does not have; continue it elsewhere, or here with --device cpu (its numbers will differ)",
                dir.display(),
                info.device
            ),
            r => r,
        },
    };
    Ok((t, dev))
}

/// Executes the run prepared in `dir`, resuming from its checkpoints if it has any, with the
/// threads and device it recorded unless `threads` or `device` say otherwise.
pub fn exec(dir: &Path, threads: Option<usize>, device: Option<&str>) -> Result<()> {
    let _lock = lock_folder(dir, "run folder")?;
    exec_locked(dir, threads, device)
}

/// An exclusive lock on a run or sweep folder (`.lock`, holding the owner's pid and host),
/// released when dropped or when the process ends, however it ends.
struct FolderLock(#[allow(dead_code)] std::fs::File);

/// Takes the folder's lock, or says which process holds it.
fn lock_folder(dir: &Path, what: &str) -> Result<FolderLock> {
    use std::io::Write as _;
    let path = dir.join(".lock");
    // A link planted as `.lock` is refused, not followed (its target would be truncated).
    let mut f = reprise_core::checkpoint::open_lock_file(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            f.set_len(0)?;
            write!(
                f,
                "pid {} on {} since {}",
                std::process::id(),
                host.trim(),
                utc_stamp()
            )?;
            Ok(FolderLock(f))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = reprise_core::checkpoint::read_bounded(&path, 4096)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            bail!(
                "{what} {} is in use by another runner process ({}); wait for it to end or stop it first",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder.trim() }
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A sweep's worker process: runs `dir` as [`exec`] does, and stops it (with a checkpoint, as
/// on SIGTERM) if the sweep's runner that started it goes away, killed or crashed; the worker
/// then puts back the slots token (`token_from`) its runner took for it, which nobody else would.
pub fn exec_worker(
    dir: &Path,
    threads: Option<usize>,
    device: Option<&str>,
    token_from: Option<&Path>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let parent = std::os::unix::process::parent_id();
    let orphaned = std::sync::Arc::new(AtomicBool::new(false));
    let watch = orphaned.clone();
    let stop = reprise_core::run::interrupt_flag();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            reprise_core::note!(
                "the sweep's runner (pid {parent}) has gone: checkpointing and stopping"
            );
            watch.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            break;
        }
    });
    let result = exec(dir, threads, device);
    if orphaned.load(Ordering::SeqCst) {
        if let Some(fifo) = token_from {
            let mut token = Slots::open(fifo)?;
            token.adopt_one();
            // Dropping it writes the token back.
            drop(token);
        }
    }
    result
}

/// [`exec`] for a caller that holds the run folder's lock.
fn exec_locked(dir: &Path, threads: Option<usize>, device: Option<&str>) -> Result<()> {
    if is_finished(dir) {
        reprise_core::note!("already finished: {}", dir.display());
        return Ok(());
    }
    let spec = SpecTree::load(&dir.join("spec.yaml"))?;
    check_identity(dir, &spec)?;
    check_spec_unchanged(dir, &spec, false)?;
    let (threads, device) = continue_with(dir, threads, device)?;
    crate::set_threads(Some(threads))?;
    let mut ctx = RunContext::open(dir, crate::ddp::rank_device(device))
        .with_context(|| format!("opening run folder {}", dir.display()))?;
    if let Some(p) = crate::ddp::current() {
        ctx.set_parallel(p);
    }
    let paper = crate::paper(&ctx.header().paper)?;
    reprise_core::logging::set_log_file(Some(&dir.join("run.log")))
        .with_context(|| format!("cannot write {}", dir.join("run.log").display()))?;
    tracing::info!(
        "run {} on {:?}, {} threads, smoke={}",
        dir.display(),
        ctx.device(),
        tch::get_num_threads(),
        ctx.smoke()
    );
    set_status(dir, RunStatus::Running, None)?;
    reprise_core::note!("run: {}", dir.display());
    // A panic inside the paper's code (a LibTorch error through one of tch's panicking calls,
    // an allocation LibTorch refuses) ends the run with one error line, not a backtrace.
    let run = paper.run;
    let caught = catch_quietly(|| run(&mut ctx));
    let result = match caught {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(msg) => {
            let after = reprise_core::run::read_metrics(dir)
                .last()
                .map_or("before its first logged step".to_string(), |m| {
                    format!("after step {}", m.step)
                });
            Err(anyhow::anyhow!(
                "the run failed {after}: {}",
                first_line(&msg)
            ))
        }
    }
    .and_then(|()| {
        ctx.finish()?;
        Ok(())
    });
    match &result {
        Ok(()) => {
            tracing::info!("finished");
            set_status(dir, RunStatus::Finished, None)?;
        }
        Err(e) if is_interrupt(e) => {
            tracing::info!("{e:#}");
            set_status(dir, RunStatus::Interrupted, None)?;
        }
        Err(e) => {
            tracing::error!("{e:#}");
            if let Some(reprise_core::Error::Diverged { step, why }) =
                e.downcast_ref::<reprise_core::Error>()
            {
                // Where it went bad, for a restart with other settings (see override_run).
                let rec = json!({ "step": step, "why": why });
                write_atomic(&dir.join("diverged.json"), rec.to_string().as_bytes())?;
                set_status(dir, RunStatus::Diverged, Some(format!("{e:#}")))?;
            } else {
                // Best effort: the error itself may be that the folder cannot be written.
                let _ = set_status(dir, RunStatus::Failed, Some(format!("{e:#}")));
            }
        }
    }
    reprise_core::logging::set_log_file(None)?;
    result?;
    reprise_core::note!("done: {} (report.md, summary.json)", dir.display());
    Ok(())
}

/// The informative start of a panic's message: up to its first line break, printed or escaped
/// (a LibTorch error's C++ backtrace follows it), without the `unwrap` wording around it.
fn first_line(msg: &str) -> String {
    let line = msg.split("\\n").next().unwrap_or(msg);
    let line = line.lines().next().unwrap_or("").trim();
    let line = line
        .strip_prefix("called `Result::unwrap()` on an `Err` value: ")
        .unwrap_or(line);
    match line.strip_prefix("Torch(\"") {
        Some(rest) => format!("libtorch: {}", rest.trim_end_matches("\")")),
        None => line.to_string(),
    }
}

/// Runs `f`, turning a panic into its message (the default hook, which prints a backtrace
/// note, is silenced meanwhile; the message goes to the run's log by the caller).
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        reprise_core::error::panic_message(p.as_ref()).unwrap_or_else(|| "an internal error".into())
    })
}

/// Starts a new experiment: one run folder, or a sweep folder with one sub-folder per run.
pub fn start(
    tree: &SpecTree,
    runs: Vec<(String, SpecTree)>,
    a: &Options,
    shard: Option<(usize, usize)>,
) -> Result<()> {
    if let Some(par) = crate::ddp::current() {
        return start_parallel(tree, runs, a, shard, &par);
    }
    admit(tree, &runs, a)?;
    start_admitted(tree, runs, a, shard)
}

/// Refuses a paper-scale spec without CUDA (unless `--smoke`) and checks what its runs read.
fn admit(tree: &SpecTree, runs: &[(String, SpecTree)], a: &Options) -> Result<()> {
    let header = tree.header()?;
    if !a.smoke {
        if let Some(why) = header.requires.refusal(
            &header.name,
            header.device,
            tch::Cuda::is_available(),
            header.expected_minutes,
        ) {
            bail!("{why}");
        }
    }
    check_inputs(&header.paper, runs)
}

/// A data-parallel launch of one run ([`crate::ddp`]): rank 0 prepares the folder as
/// [`start`] does and runs in it; the others train beside it in scratch folders.
fn start_parallel(
    tree: &SpecTree,
    runs: Vec<(String, SpecTree)>,
    a: &Options,
    shard: Option<(usize, usize)>,
    par: &reprise_core::parallel::Parallel,
) -> Result<()> {
    let header = tree.header()?;
    // A sweep narrowed to one run by overrides is that run, in a run folder of its own.
    let allowed = crate::ddp::check_single(&header.paper, runs.len(), a.jobs, shard.is_some());
    if !par.is_main() {
        allowed?;
        let scratch = crate::ddp::share_run(par, None)?.context("rank 0's run")?;
        return exec_follower(scratch, a.threads, par);
    }
    let made = allowed.and_then(|()| {
        admit(tree, &runs, a)?;
        let (dir, t) = new_run_folder(tree, runs, a)?;
        prepare_or_remove(&dir, t, a.smoke, a.threads)?;
        Ok(dir)
    });
    let shared = crate::ddp::share_run(par, made.as_ref().ok().map(PathBuf::as_path));
    let dir = made?;
    shared?;
    exec(&dir, a.threads, None)
}

/// The canonical `--out` folder (made if missing) and the time stamp naming a new run or sweep
/// folder (`-smoke` for a smoke run).
fn out_and_stamp(a: &Options) -> Result<(PathBuf, String)> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let out = a
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve --out {}", a.out.display()))?;
    let stamp = if a.smoke {
        format!("{}-smoke", utc_stamp())
    } else {
        utc_stamp()
    };
    Ok((out, stamp))
}

/// The folder of a new single run under `--out`, and its spec.
fn new_run_folder(
    tree: &SpecTree,
    runs: Vec<(String, SpecTree)>,
    a: &Options,
) -> Result<(PathBuf, SpecTree)> {
    let header = tree.header()?;
    let (out, stamp) = out_and_stamp(a)?;
    let dir = create_unique_dir(&out.join(&header.name), &stamp)?;
    inside(&out, &dir)?;
    let (_, t) = runs
        .into_iter()
        .next()
        .context("the spec expands to no run")?;
    Ok((dir, t))
}

/// A rank other than 0 of a data-parallel run: trains in `scratch`, a private copy of the run's
/// spec and `run.json` that rank 0 sent (see [`crate::ddp`]), with the threads and device the
/// run recorded.
fn exec_follower(
    scratch: crate::ddp::Scratch,
    threads: Option<usize>,
    par: &reprise_core::parallel::Parallel,
) -> Result<()> {
    let (threads, device) = continue_with(scratch.path(), threads, None)?;
    crate::set_threads(Some(threads))?;
    let mut ctx = RunContext::open(scratch.path(), crate::ddp::rank_device(device))?;
    ctx.set_parallel(crate::ddp::current().context("a data-parallel group")?);
    let paper = crate::paper(&ctx.header().paper)?;
    let run = paper.run;
    let ran = catch_quietly(|| run(&mut ctx));
    // Its part is over (rank 0 evaluates alone from here): its silence is no longer a failure.
    crate::ddp::leave();
    match ran {
        Ok(r) => Ok(r?),
        Err(msg) => bail!("rank {} failed: {}", par.rank(), first_line(&msg)),
    }
}

/// [`start`] after [`admit`].
fn start_admitted(
    tree: &SpecTree,
    runs: Vec<(String, SpecTree)>,
    a: &Options,
    shard: Option<(usize, usize)>,
) -> Result<()> {
    let single = runs.len() == 1 && runs[0].0.is_empty();
    if single {
        if shard.is_some_and(|(i, _)| i != 0) {
            reprise_core::note!("nothing to do: a single run belongs to shard 0");
            return Ok(());
        }
        let (_held, threads) = single_run_slots(a)?;
        let (dir, t) = new_run_folder(tree, runs, a)?;
        crate::set_threads(threads)?;
        prepare_or_remove(&dir, t, a.smoke, threads)?;
        return exec(&dir, threads, None);
    }
    let header = tree.header()?;
    // What the folder keeps expands to these runs alone (an override that narrowed the
    // sweep is written into it), so a resume runs what was asked and nothing more.
    let tree = &tree.narrowed()?;
    let (out, stamp) = out_and_stamp(a)?;
    let parent = out.join(&header.name);
    // Shards of one sweep, started on different machines, share one folder named by the spec.
    let sdir = match shard {
        Some(_) => {
            let name = format!(
                "shards-{}{}",
                short_hash(&tree.to_yaml()),
                if a.smoke { "-smoke" } else { "" }
            );
            let d = parent.join(name);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            d
        }
        None => create_unique_dir(&parent, &stamp)?,
    };
    inside(&out, &sdir)?;
    let _lock = match shard {
        None => Some(lock_folder(&sdir, "sweep folder")?),
        Some(_) => None,
    };
    let names: Vec<String> = runs.iter().map(|(n, _)| n.clone()).collect();
    let meta =
        json!({ "name": header.name, "paper": header.paper, "smoke": a.smoke, "runs": names });
    write_atomic(&sdir.join("sweep.yaml"), tree.to_yaml().as_bytes())?;
    write_atomic(
        &sdir.join("sweep.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    let threads = a.threads.or((a.jobs > 1 || a.slots.is_some()).then_some(1));
    let mut todo = Vec::new();
    for (i, (name, t)) in runs.into_iter().enumerate() {
        if shard.is_some_and(|(s, n)| i % n != s) {
            continue;
        }
        let dir = sdir.join(&name);
        if !dir.join("spec.yaml").exists() {
            match std::fs::create_dir(&dir) {
                Ok(()) => prepare(&dir, t, a.smoke, threads)?,
                // Another shard process made it first: it owns the run.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()))
                }
            }
        }
        todo.push(dir);
    }
    reprise_core::note!(
        "sweep: {} ({} of {} runs here)",
        sdir.display(),
        todo.len(),
        names.len()
    );
    run_all(&sdir, &todo, a.jobs, threads, None, a.slots.as_deref())
}

/// Checks, once for a whole sweep and before any folder is made, what its runs read: the small
/// datasets `runner data` fetches (fetched now if missing, and verified) and the paper-scale
/// inputs reprise cannot fetch (each missing one named with its layout, source and key).
fn check_inputs(paper: &str, runs: &[(String, SpecTree)]) -> Result<()> {
    let paper = crate::paper(paper)?;
    let mut inputs = Vec::new();
    let mut remotes = Vec::new();
    for (_, r) in runs {
        for i in (paper.inputs)(r)? {
            if !inputs.contains(&i) {
                inputs.push(i);
            }
        }
        let d = r.header()?.data;
        if let Some(rm) = reprise_core::data::remote(&d.dataset) {
            if !remotes
                .iter()
                .any(|x: &reprise_core::data::Remote| x.name == rm.name)
            {
                remotes.push(rm);
            }
        }
    }
    let dir = reprise_core::data::data_dir();
    for rm in remotes {
        reprise_core::data::ensure(&rm, &dir)?;
    }
    reprise_core::inputs::check_all(&inputs)?;
    Ok(())
}

/// Refuses a folder that does not resolve to a place under `out` (the canonical `--out`): a
/// link planted at `<out>/<name>` would otherwise carry the run elsewhere.
fn inside(out: &Path, dir: &Path) -> Result<()> {
    let real = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if !real.starts_with(out) {
        let _ = std::fs::remove_dir(dir);
        bail!(
            "{} resolves to {}, outside --out {}: refusing to write there",
            dir.display(),
            real.display(),
            out.display()
        );
    }
    Ok(())
}

/// Continues a run folder or a sweep folder.
pub fn resume(dir: &Path, a: &Options, shard: Option<(usize, usize)>) -> Result<()> {
    // Nothing planted in the folder (a link, a FIFO) can carry what the run writes elsewhere.
    reprise_core::run::check_no_links(dir)?;
    if let Some(par) = crate::ddp::current() {
        if !a.overrides.is_empty() {
            bail!("a data-parallel launch continues one run folder as it is, without overrides");
        }
        // Rank 0 alone reads the folder (the others may be on machines that cannot); it sends
        // them what they need below. A refusal here ends the others at their next collective.
        if par.is_main() {
            if !dir.join("spec.yaml").is_file() {
                bail!(
                    "a data-parallel launch continues one run folder (holding spec.yaml), not {}",
                    dir.display()
                );
            }
            let paper = SpecTree::load(&dir.join("spec.yaml"))?.header()?.paper;
            crate::ddp::check_single(&paper, 1, a.jobs, shard.is_some())?;
        }
        // Rank 0's view of the folder decides for all: a finished run ends every rank.
        if par.any(par.is_main() && is_finished(dir))? {
            if par.is_main() {
                reprise_core::note!("already finished: {}", dir.display());
            }
            return Ok(());
        }
        if !par.is_main() {
            let scratch = crate::ddp::share_run(&par, None)?.context("rank 0's run")?;
            return exec_follower(scratch, a.threads, &par);
        }
        let _lock = lock_folder(dir, "run folder")?;
        crate::ddp::share_run(&par, Some(dir))?;
        return exec_locked(dir, a.threads, a.device.as_deref());
    }
    if !a.overrides.is_empty() && !dir.join("spec.yaml").is_file() {
        bail!(
            "--resume with overrides changes one run folder (spec.yaml), not a sweep: give the run's folder under {}",
            dir.display()
        );
    }
    if a.overrides.is_empty() && a.from_step.is_some() {
        bail!("--from-step goes with overrides (e.g. a lower learning rate): without them the run would go the same way again");
    }
    if dir.join("spec.yaml").is_file() {
        // Held from before the spec may change until the run ends: no other process can
        // rewrite its spec or checkpoints meanwhile.
        let _lock = lock_folder(dir, "run folder")?;
        if !is_finished(dir) {
            let spec = SpecTree::load(&dir.join("spec.yaml"))?;
            check_identity(dir, &spec)?;
            check_spec_unchanged(dir, &spec, a.accept_edited_spec)?;
        }
        let undo = if a.overrides.is_empty() {
            None
        } else {
            Some(override_run(dir, &a.overrides, a.from_step)?)
        };
        let (_held, threads) = single_run_slots(a)?;
        let result = exec_locked(dir, threads, a.device.as_deref());
        if let (Err(e), Some(undo)) = (&result, undo) {
            if matches!(
                e.downcast_ref(),
                Some(reprise_core::Error::Unresumable { .. })
            ) {
                // The overridden spec fits none of the run's checkpoints: keep the run as it was.
                undo.apply(dir)?;
            }
        }
        return result;
    }
    let meta_path = dir.join("sweep.json");
    if !meta_path.is_file() {
        bail!(
            "{} is neither a run folder (spec.yaml) nor a sweep folder (sweep.json)",
            dir.display()
        );
    }
    // Shards of one sweep share its folder by design; a whole sweep resumed is one owner.
    let _lock = match shard {
        None => Some(lock_folder(dir, "sweep folder")?),
        Some(_) => None,
    };
    let meta: Json = serde_json::from_slice(&reprise_core::checkpoint::read_record(&meta_path)?)
        .with_context(|| format!("{} is not valid JSON", meta_path.display()))?;
    let smoke = meta["smoke"].as_bool().unwrap_or(false);
    let tree = SpecTree::load(&dir.join("sweep.yaml"))?;
    let runs = listed_runs(dir, crate::experiments::check(&tree)?)?;
    // Runs not yet prepared get the threads a new sweep would give them; prepared runs continue
    // with the threads and device they recorded, unless --threads or --device say otherwise.
    let fresh = a.threads.or((a.jobs > 1 || a.slots.is_some()).then_some(1));
    let mut todo = Vec::new();
    for (i, (name, t)) in runs.into_iter().enumerate() {
        if shard.is_some_and(|(s, n)| i % n != s) {
            continue;
        }
        let d = dir.join(&name);
        if !d.join("spec.yaml").exists() {
            std::fs::create_dir_all(&d)?;
            prepare(&d, t, smoke, fresh)?;
        }
        todo.push(d);
    }
    run_all(
        dir,
        &todo,
        a.jobs,
        a.threads,
        a.device.as_deref(),
        a.slots.as_deref(),
    )
}

/// The runs of a resumed sweep: exactly those its `sweep.json` lists, in the order of the
/// expanded `sweep.yaml` (a sweep started narrowed by an override, by a version that kept the
/// whole spec's sweep in `sweep.yaml`, runs only what it was started with). A listed run the
/// spec no longer expands to is an error naming it.
fn listed_runs(dir: &Path, runs: Vec<(String, SpecTree)>) -> Result<Vec<(String, SpecTree)>> {
    let listed = reprise_core::run::expected_runs(dir);
    if listed.is_empty() {
        bail!(
            "{} lists no runs: it is not a sweep folder this runner wrote",
            dir.join("sweep.json").display()
        );
    }
    if let Some(missing) = listed.iter().find(|n| !runs.iter().any(|(m, _)| m == *n)) {
        bail!(
            "{} lists the run `{missing}`, which {} does not expand to (was it edited?); nothing was run",
            dir.join("sweep.json").display(),
            dir.join("sweep.yaml").display()
        );
    }
    Ok(runs
        .into_iter()
        .filter(|(n, _)| listed.contains(n))
        .collect())
}

/// The run a sweep folder expects in `dir` (one of its sub-folders), as its `sweep.yaml`
/// expands it; `None` when `dir` is not a run its parent's `sweep.json` lists.
fn expected_in_sweep(dir: &Path) -> Result<Option<(Vec<String>, SpecTree)>> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Ok(None);
    };
    if !reprise_core::run::expected_runs(parent)
        .iter()
        .any(|n| n == name)
    {
        return Ok(None);
    }
    let sweep = SpecTree::load(&parent.join("sweep.yaml"))?;
    let keys: Vec<String> = sweep.header()?.sweep.keys().cloned().collect();
    let run = sweep
        .expand()?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .with_context(|| {
            format!(
                "{} does not expand to the run `{name}` that its sweep.json lists",
                parent.join("sweep.yaml").display()
            )
        })?;
    Ok(Some((keys, run)))
}

/// Refuses a run of a sweep whose spec no longer is the run its folder name and the sweep's
/// `sweep.json` say it is: a swept key, the seed, the name or the paper changed (by an override
/// on resume, or by hand in `spec.yaml`).
fn check_identity(dir: &Path, spec: &SpecTree) -> Result<()> {
    let Some((mut keys, want)) = expected_in_sweep(dir)? else {
        return Ok(());
    };
    keys.extend(["seed", "name", "paper"].map(String::from));
    for k in &keys {
        let (a, b) = (want.get(k), spec.get(k));
        let same = match (a, b) {
            (Some(a), Some(b)) => reprise_core::spec::same_value(a, b),
            (a, b) => a == b,
        };
        if !same {
            let show = |v: Option<&serde_norway::Value>| {
                v.map_or("(absent)".to_string(), reprise_core::spec::scalar_text)
            };
            bail!(
                "{}: `{k}` is {} in its spec.yaml, but the sweep runs it as {} (the folder's name and sweep.json say so)",
                dir.display(),
                show(b),
                show(a)
            );
        }
    }
    Ok(())
}

/// The record of a run's deliberate spec changes (`spec-changes.jsonl`, one JSON line each:
/// the sha256 before and after, when, why), which lets it continue from checkpoints written
/// under the spec as it was.
const SPEC_CHANGES: &str = "spec-changes.jsonl";

/// Appends a deliberate change of a run's spec to its [`SPEC_CHANGES`] record.
fn record_spec_change(dir: &Path, from: &str, to: &str, why: &str) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let line = json!({ "from": from, "to": to, "at": utc_stamp(), "why": why }).to_string() + "\n";
    let path = dir.join(SPEC_CHANGES);
    reprise_core::checkpoint::append_to(&path, line.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The spec hashes a run's [`SPEC_CHANGES`] record lists, and the hash its last change led to.
fn recorded_spec_changes(dir: &Path) -> (Vec<String>, Option<String>) {
    let text = reprise_core::checkpoint::read_bounded(&dir.join(SPEC_CHANGES), 1 << 20)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let mut seen = Vec::new();
    let mut last = None;
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Json>(l) else {
            continue;
        };
        if let (Some(f), Some(t)) = (v["from"].as_str(), v["to"].as_str()) {
            seen.push(f.to_string());
            seen.push(t.to_string());
            last = Some(t.to_string());
        }
    }
    (seen, last)
}

/// Refuses to continue a run whose `spec.yaml` is not the spec its newest checkpoint was
/// written under (its recorded sha256), unless the change was made deliberately (an override
/// on resume, recorded in [`SPEC_CHANGES`]) or `accept` (`--accept-edited-spec`) says to,
/// which is then recorded and logged.
fn check_spec_unchanged(dir: &Path, spec: &SpecTree, accept: bool) -> Result<()> {
    let ckdir = reprise_core::checkpoint::CheckpointDir::new(dir.join("checkpoints"), 1);
    // The newest checkpoint of this run (one copied in from another run is passed over, as
    // the run's resume passes over it).
    let id = reprise_core::run::recorded_id(dir);
    let Some((step, written)) = ckdir.steps().into_iter().rev().find_map(|(step, p)| {
        let mut meta = reprise_core::checkpoint::read_metadata(&p).ok()?;
        let owner = meta.remove(reprise_core::checkpoint::RUN_KEY);
        if !id.is_empty() && owner.is_some_and(|o| o != id) {
            return None;
        }
        meta.remove(reprise_core::run::SPEC_SHA_KEY)
            .map(|h| (step, h))
    }) else {
        return Ok(());
    };
    let now = reprise_core::run::spec_sha256(spec);
    if written == now {
        return Ok(());
    }
    let (seen, last) = recorded_spec_changes(dir);
    if last.as_deref() == Some(now.as_str()) && seen.contains(&written) {
        return Ok(());
    }
    if !accept {
        bail!(
            "{}: spec.yaml is not the spec its checkpoint of step {step} was written under (sha256 {} there, {} now): it was edited since. Put it back, give the change as an override (`runner run --resume {} key=value`), or continue under the edited spec with `--accept-edited-spec` (logged)",
            dir.display(),
            &written[..written.len().min(12)],
            &now[..12],
            dir.display()
        );
    }
    record_spec_change(
        dir,
        &written,
        &now,
        "spec.yaml edited by hand; continued under it as asked (--accept-edited-spec)",
    )?;
    note_in_log(
        dir,
        &format!(
            "spec.yaml was edited since the checkpoint of step {step}; continuing under the edited spec as asked (--accept-edited-spec)"
        ),
    )
}

/// Keys that identify a run: they cannot change once it has started.
const FIXED_ON_RESUME: [&str; 8] = [
    "name", "paper", "seed", "seeds", "sweep", "data", "smoke", "extends",
];

/// What [`override_run`] changed, to put back when the overridden run cannot continue.
struct Undo {
    spec: Vec<u8>,
    diverged: Option<Vec<u8>>,
}

impl Undo {
    fn apply(self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("spec.yaml"), &self.spec)?;
        if let Some(d) = self.diverged {
            write_atomic(&dir.join("diverged.json"), &d)?;
        }
        note_in_log(
            dir,
            "the overrides were undone: no checkpoint fits the run they describe; spec.yaml is as before",
        )
    }
}

/// Appends a time-stamped line to the run's `run.log` and says it on stderr.
fn note_in_log(dir: &Path, what: &str) -> Result<()> {
    let line = format!("{} {what}\n", utc_stamp());
    let log = dir.join("run.log");
    reprise_core::checkpoint::append_to(&log, line.as_bytes())
        .with_context(|| format!("cannot write {}", log.display()))?;
    reprise_core::note!("{}: {}", dir.display(), line.trim_end());
    Ok(())
}

/// Applies overrides to a started run's spec before it continues from its newest good
/// checkpoint, e.g. a lower learning rate after a divergence. The spec as it was is kept once
/// as `spec.orig.yaml`, and `run.log` records each change. Returns what to put back if the run
/// then fits none of its checkpoints (an override of a width, say).
fn override_run(dir: &Path, overrides: &[String], from_step: Option<u64>) -> Result<Undo> {
    if is_finished(dir) {
        bail!(
            "{} has finished: there is nothing to continue with other settings; start a new run",
            dir.display()
        );
    }
    let path = dir.join("spec.yaml");
    let mut tree = SpecTree::load(&path)?;
    let before_sha = reprise_core::run::spec_sha256(&tree);
    for o in overrides {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
        let top = key.split('.').next().unwrap_or_default();
        if FIXED_ON_RESUME.contains(&top) {
            bail!("override `{o}`: `{top}` identifies the run and cannot change once it has started; start a new run instead");
        }
        tree.apply_override(o)?;
    }
    check_identity(dir, &tree).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; the overrides ({}) would make it another run of its sweep: start a new run instead",
            overrides.join(" ")
        )
    })?;
    crate::experiments::check(&tree)?;
    let mut notes = Vec::new();
    let diverged = dir.join("diverged.json");
    let mut keep_upto = from_step;
    if let Ok(bytes) = reprise_core::checkpoint::read_record(&diverged) {
        let rec: Json = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", diverged.display()))?;
        let at = rec["step"].as_u64().unwrap_or(0);
        notes.push(format!(
            "it had diverged at step {at} ({})",
            rec["why"].as_str().unwrap_or("?")
        ));
        // A checkpoint at or after the diverging step holds the state that went bad.
        keep_upto = Some(keep_upto.map_or(at.saturating_sub(1), |k| k.min(at.saturating_sub(1))));
    }
    if let Some(k) = keep_upto {
        let ck = reprise_core::checkpoint::CheckpointDir::new(dir.join("checkpoints"), usize::MAX);
        let aside = dir
            .join("checkpoints")
            .join(format!("set-aside-{}", utc_stamp()));
        let mut moved = 0;
        for (step, path) in ck.steps() {
            if step > k {
                std::fs::create_dir_all(&aside)
                    .with_context(|| format!("cannot make {}", aside.display()))?;
                let to = aside.join(path.file_name().unwrap_or_default());
                std::fs::rename(&path, &to)
                    .with_context(|| format!("cannot move {} aside", path.display()))?;
                moved += 1;
            }
        }
        let from = ck
            .steps()
            .last()
            .map_or("the start".to_string(), |(s, _)| format!("step {s}"));
        notes.push(format!(
            "continues from {from}{}",
            if moved > 0 {
                format!(
                    "; {moved} later checkpoint(s) set aside in {}",
                    aside.display()
                )
            } else {
                String::new()
            }
        ));
    }
    let undo = Undo {
        spec: reprise_core::checkpoint::read_record(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        diverged: reprise_core::checkpoint::read_record(&diverged).ok(),
    };
    let orig = dir.join("spec.orig.yaml");
    if !orig.exists() {
        std::fs::copy(&path, &orig)
            .with_context(|| format!("cannot keep {} as {}", path.display(), orig.display()))?;
    }
    write_atomic(&path, tree.to_yaml().as_bytes())?;
    record_spec_change(
        dir,
        &before_sha,
        &reprise_core::run::spec_sha256(&tree),
        &format!("resumed with overrides: {}", overrides.join(" ")),
    )?;
    if diverged.exists() {
        std::fs::remove_file(&diverged)
            .with_context(|| format!("cannot remove {}", diverged.display()))?;
    }
    note_in_log(
        dir,
        &format!(
            "resumed with overrides: {}{}",
            overrides.join(" "),
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
    )?;
    Ok(undo)
}

/// With `--slots`, the tokens a run executed in this process holds until it ends (every free
/// one, at least one, waiting for it) and the threads it runs with: as many as it holds, unless
/// `--threads` says. Without, no tokens and `--threads`.
fn single_run_slots(a: &Options) -> Result<(Option<Slots>, Option<usize>)> {
    let Some(path) = &a.slots else {
        return Ok((None, a.threads));
    };
    let mut slots = Slots::open(path)?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let held = slots.take_for_one_run(a.threads.unwrap_or(cores))?;
    Ok((Some(slots), a.threads.or(Some(held))))
}

fn run_all(
    sdir: &Path,
    todo: &[PathBuf],
    jobs: usize,
    threads: Option<usize>,
    device: Option<&str>,
    slots: Option<&Path>,
) -> Result<()> {
    let mut failed: Vec<String> = Vec::new();
    if jobs <= 1 && slots.is_none() {
        let mut eta = SweepEta::new(todo.len());
        for d in todo {
            let r = exec(d, threads, device);
            eta.one_ended(d, r.is_ok());
            if let Err(e) = r {
                if is_interrupt(&e) {
                    return Err(anyhow::Error::new(crate::Interrupted(format!(
                        "{e:#}\nresume the whole sweep with: runner run --resume {}",
                        sdir.display()
                    ))));
                }
                reprise_core::note!("error: {e:#}");
                failed.push(d.display().to_string());
            }
        }
    } else {
        let slots = slots.map(Slots::open).transpose()?;
        failed = run_parallel(sdir, todo, jobs, threads, device, slots)?;
    }
    report(sdir)?;
    if !failed.is_empty() {
        bail!("{} run(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// The sweep-level progress line: which run of how many ended, and the sweep's ETA from the
/// rate at which runs have ended so far (all runs at once, with `--jobs`).
struct SweepEta {
    total: usize,
    ended: usize,
    started: Instant,
}

impl SweepEta {
    fn new(total: usize) -> Self {
        SweepEta {
            total,
            ended: 0,
            started: Instant::now(),
        }
    }

    fn one_ended(&mut self, dir: &Path, ok: bool) {
        self.ended += 1;
        let el = self.started.elapsed().as_secs_f64();
        let left = self.total.saturating_sub(self.ended);
        let eta = el / self.ended as f64 * left as f64;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        reprise_core::note!(
            "sweep: run {} of {} {} ({}), elapsed {}, eta {}",
            self.ended,
            self.total,
            if ok { "ended" } else { "FAILED" },
            name.unwrap_or_default(),
            reprise_core::progress::human_duration(el),
            reprise_core::progress::human_duration(eta),
        );
    }
}

fn spawn(
    dir: &Path,
    threads: Option<usize>,
    device: Option<&str>,
    slots: Option<&Path>,
) -> Result<Child> {
    let mut c = Command::new(std::env::current_exe().context("cannot find the runner binary")?);
    c.arg("exec").arg(dir);
    if let Some(t) = threads {
        c.arg("--threads").arg(t.to_string());
    }
    if let Some(d) = device {
        c.arg("--device").arg(d);
    }
    if let Some(s) = slots {
        c.arg("--token-from").arg(s);
    }
    // A process group of its own: Ctrl-C in a terminal reaches this runner alone, which asks
    // each worker once (SIGTERM) to checkpoint and stop; the worker taking the terminal's
    // SIGINT as well would read the forwarded SIGTERM as a second signal and stop at once.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c.spawn()
        .with_context(|| format!("cannot start a worker for {}", dir.display()))
}

/// Runs the runs of `todo` as worker processes, `jobs` at a time and, with `slots`, each
/// holding a token of the shared pipe while it runs. Says once when every run has started
/// (`sweep DIR: every run started`), the moment a scheduler sharing the slots may start more.
fn run_parallel(
    sdir: &Path,
    todo: &[PathBuf],
    jobs: usize,
    threads: Option<usize>,
    device: Option<&str>,
    mut slots: Option<Slots>,
) -> Result<Vec<String>> {
    let interrupt = reprise_core::run::interrupt_flag();
    let _checked = reprise_core::run::StopChecked::new();
    let mut queue = todo.iter().peekable();
    let mut running: Vec<(PathBuf, Child)> = Vec::new();
    let mut failed = Vec::new();
    let mut forwarded = false;
    let mut announced = false;
    let mut eta = SweepEta::new(todo.len());
    loop {
        while running.len() < jobs && !interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            let Some(d) = queue.peek() else { break };
            if let Some(s) = slots.as_mut() {
                if !s.try_take()? {
                    break;
                }
            }
            let fifo = slots.as_ref().map(|s| s.path().to_path_buf());
            running.push((d.to_path_buf(), spawn(d, threads, device, fifo.as_deref())?));
            queue.next();
        }
        if queue.peek().is_none() && !announced {
            reprise_core::note!("sweep {}: every run started", sdir.display());
            announced = true;
        }
        let stopping = interrupt.load(std::sync::atomic::Ordering::SeqCst);
        if running.is_empty() && (stopping || queue.peek().is_none()) {
            break;
        }
        if stopping && !forwarded {
            // Workers checkpoint and stop on SIGTERM, as on SIGINT.
            for (_, c) in &running {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
            forwarded = true;
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (d, _) = running.remove(i);
                    if let Some(s) = slots.as_mut() {
                        s.give_back()?;
                    }
                    if !stopping {
                        eta.one_ended(&d, status.success());
                    }
                    if !status.success() {
                        failed.push(d.display().to_string());
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(anyhow::Error::new(crate::Interrupted(format!(
            "interrupted; the workers wrote checkpoints; resume the sweep with: runner run --resume {}",
            sdir.display()
        ))));
    }
    Ok(failed)
}

/// Renders the report of a run folder or a sweep folder again.
pub fn report(dir: &Path) -> Result<()> {
    reprise_core::run::check_no_links(dir)?;
    if dir.join("spec.yaml").is_file() {
        let spec = SpecTree::load(&dir.join("spec.yaml"))?;
        let paper = crate::paper(&spec.header()?.paper)?;
        let md = reprise_core::run::with_world(
            &(paper.report)(dir)?,
            reprise_core::run::recorded_world(dir).as_ref(),
        );
        write_atomic(&dir.join("report.md"), md.as_bytes())?;
        reprise_core::note!("report: {}", dir.join("report.md").display());
        return Ok(());
    }
    if !dir.join("sweep.json").is_file() {
        bail!(
            "{} is neither a run folder (spec.yaml) nor a sweep folder (sweep.json)",
            dir.display()
        );
    }
    let spec = SpecTree::load(&dir.join("sweep.yaml"))?;
    let paper = crate::paper(&spec.header()?.paper)?;
    let runs = finished_runs(dir)?;
    let md = (paper.report_sweep)(dir, &runs)?;
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    reprise_core::note!(
        "report: {} ({} finished runs)",
        dir.join("report.md").display(),
        runs.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_panic_reads_as_one_line() {
        let msg = "called `Result::unwrap()` on an `Err` value: Torch(\"stack expects a non-empty TensorList\\nException raised from stack at TensorShape.cpp:3462\\nframe #0: ...\")";
        assert_eq!(
            first_line(msg),
            "libtorch: stack expects a non-empty TensorList"
        );
        assert_eq!(
            first_line("index out of bounds\nat src/x.rs"),
            "index out of bounds"
        );
    }

    #[test]
    fn short_hash_is_stable() {
        assert_eq!(short_hash("abc"), short_hash("abc"));
        assert_ne!(short_hash("abc"), short_hash("abd"));
        assert_eq!(short_hash("").len(), 10);
    }
}
