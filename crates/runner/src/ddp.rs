//! Data-parallel launches: `torchrun --nproc_per_node N runner run …`, `srun runner run …`, or
//! `runner run … --nproc N`, which starts the N local processes itself.
//!
//! Every process runs the same command line. Rank 0 prepares the run folder as a single
//! process would and sends its path to the others; it alone writes there. The other ranks
//! train in a private scratch folder (a copy of the run's `spec.yaml` and `run.json`, removed
//! at the end) that receives nothing of value: their checkpoints are discarded, and they stop
//! after training, leaving the evaluation and the report to rank 0.

use anyhow::{bail, Context, Result};
use reprise_core::parallel::Parallel;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

static GROUP: OnceLock<Arc<Parallel>> = OnceLock::new();

/// How long a rank waits for the others to reach the rendezvous store:
/// `REPRISE_DIST_JOIN_SECS`, 120 s by default.
fn join_timeout() -> Duration {
    secs_var("REPRISE_DIST_JOIN_SECS", 120.0)
}

/// How long a collective waits for the other ranks (rank 0 evaluates alone meanwhile):
/// `REPRISE_DIST_TIMEOUT_SECS`, 30 minutes by default as in `torch.distributed`.
fn op_timeout() -> Duration {
    secs_var("REPRISE_DIST_TIMEOUT_SECS", 1800.0)
}

fn secs_var(name: &str, default: f64) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs_f64(default), Duration::from_secs_f64)
}

/// The group this process trains in, when it was launched as one of several ranks.
pub fn current() -> Option<Arc<Parallel>> {
    GROUP.get().cloned()
}

/// The device of this rank: with several ranks on CUDA, the GPU of its local rank
/// (`LOCAL_RANK`), one per process as torchrun expects.
pub fn rank_device(device: Option<tch::Device>) -> Option<tch::Device> {
    match (device, current()) {
        (Some(tch::Device::Cuda(_)), Some(_)) => {
            let local = std::env::var("LOCAL_RANK")
                .or_else(|_| std::env::var("SLURM_LOCALID"))
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some(tch::Device::Cuda(local))
        }
        (d, _) => d,
    }
}

/// The GPU whose NCCL backend this rank's CUDA tensors are reduced by, as torch.distributed's
/// default group does ("cpu:gloo,cuda:nccl"): its local rank's, where this build has NCCL and
/// the machine that GPU. `REPRISE_DIST_BACKEND=gloo` keeps every collective on Gloo (CUDA
/// tensors then go through host copies).
fn nccl_device(launch: &dist::Launch) -> Option<usize> {
    let gloo_only =
        std::env::var("REPRISE_DIST_BACKEND").is_ok_and(|b| b.eq_ignore_ascii_case("gloo"));
    let gpus = if dist::HAS_NCCL && !gloo_only {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    (launch.local_rank < gpus).then_some(launch.local_rank)
}

/// Joins the group the environment describes (torchrun's or Slurm's variables), if any.
pub fn join_from_env() -> Result<()> {
    let Some(launch) = dist::Launch::from_env()? else {
        return Ok(());
    };
    if GROUP.get().is_some() {
        return Ok(());
    }
    let cuda = nccl_device(&launch);
    let group = dist::ProcessGroup::join_with(&launch, join_timeout(), op_timeout(), cuda)?;
    tracing::info!(
        "data-parallel: rank {} of {} (Gloo{})",
        launch.rank,
        launch.world,
        if group.nccl() {
            ", NCCL for CUDA tensors"
        } else {
            ""
        }
    );
    let _ = GROUP.set(Arc::new(Parallel::of(group)));
    Ok(())
}

/// Refuses what a data-parallel launch cannot do: a sweep, several jobs, a shard, or a paper
/// whose loop does not train data-parallel yet.
pub fn check_single(paper: &str, runs: usize, jobs: usize, shard: bool) -> Result<()> {
    let p = crate::paper(paper)?;
    if !p.data_parallel {
        bail!(
            "{paper} does not train data-parallel yet (its loop has no sharding); run it as one \
             process per run"
        );
    }
    if runs != 1 || jobs != 1 || shard {
        bail!(
            "a data-parallel launch trains one run; narrow the sweep with overrides (a seed, an \
             arm: `seed=0 jem.arm=jem`) and start one launch per run"
        );
    }
    Ok(())
}

/// Rank 0: sends the prepared run folder (or, with `None`, that preparing it failed) to the
/// other ranks. The others: receives it.
pub fn share_dir(par: &Parallel, dir: Option<&Path>) -> Result<PathBuf> {
    let bytes = dir.map(|d| d.as_os_str().as_encoded_bytes().to_vec());
    let got = par.share_bytes(bytes)?;
    if got.is_empty() {
        bail!("rank 0 could not prepare the run (its output says why)");
    }
    Ok(PathBuf::from(
        String::from_utf8(got).context("rank 0's run folder is not a UTF-8 path")?,
    ))
}

/// A private scratch copy of the run folder for a rank other than 0: its spec and run
/// description, nothing else; removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Copies `dir`'s `spec.yaml` and `run.json` into a new folder under the temporary folder.
    pub fn of(dir: &Path, rank: usize) -> Result<Scratch> {
        remove_stale_scratch();
        let s = std::env::temp_dir().join(format!(
            "reprise-rank{rank}-{}-{}",
            std::process::id(),
            reprise_core::run::utc_stamp()
        ));
        std::fs::create_dir_all(&s).with_context(|| format!("cannot create {}", s.display()))?;
        let scratch = Scratch(s);
        for f in ["spec.yaml", "run.json"] {
            std::fs::copy(dir.join(f), scratch.0.join(f))
                .with_context(|| format!("cannot copy {} of {}", f, dir.display()))?;
        }
        Ok(scratch)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Removes the scratch folders of ranks that ended without removing theirs (killed).
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("reprise-rank") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `runner run … --nproc N`: starts N copies of this command line as the ranks of one local
/// group (torchrun's variables, a free port on 127.0.0.1), each with its share of the cores
/// unless `--threads` says otherwise, and waits for them. The first SIGINT/SIGTERM is passed
/// on once (they checkpoint and stop together); when one rank fails, the others are stopped.
pub fn launch_local(nproc: usize, threads: Option<usize>) -> Result<()> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("cannot find the runner binary")?;
    let args: Vec<String> = strip_nproc(std::env::args().skip(1));
    let per = threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / nproc).max(1)
    });
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..nproc {
        let mut c = Command::new(&exe);
        c.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if threads.is_none() {
            c.arg("--threads").arg(per.to_string());
        }
        // Their own process group: a terminal's Ctrl-C reaches this launcher alone, which
        // passes it on once (a second signal would stop a rank at once).
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        match c.spawn() {
            Ok(ch) => children.push(ch),
            Err(e) => {
                stop_all(&mut children, "KILL");
                return Err(e).context("cannot start a data-parallel rank");
            }
        }
    }
    eprintln!("data-parallel: {nproc} ranks on 127.0.0.1:{port}, {per} threads each");
    let interrupt = reprise_core::run::interrupt_flag();
    let _checked = reprise_core::run::StopChecked::new();
    let mut forwarded = false;
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; nproc];
    let mut stopped = false;
    loop {
        for (r, c) in children.iter_mut().enumerate() {
            if status[r].is_none() {
                status[r] = c.try_wait()?;
            }
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        let failed = status.iter().position(|s| s.is_some_and(|s| !s.success()));
        // SIGTERM to the ranks still running: they checkpoint and stop after their step.
        let term_running = |status: &[Option<std::process::ExitStatus>]| {
            for (c, s) in children.iter().zip(status) {
                if s.is_none() {
                    let _ = Command::new("kill")
                        .arg("-TERM")
                        .arg(c.id().to_string())
                        .status();
                }
            }
        };
        if failed.is_some() && !stopped {
            // The others would fail at their next collective; stop them now.
            term_running(&status);
            stopped = true;
        }
        if interrupt.load(std::sync::atomic::Ordering::SeqCst) && !forwarded {
            term_running(&status);
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad: Vec<String> = status
        .iter()
        .enumerate()
        .filter_map(|(r, s)| {
            let s = s.expect("every rank ended");
            (!s.success()).then(|| format!("rank {r} ({s})"))
        })
        .collect();
    if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(anyhow::Error::new(crate::Interrupted(
            "interrupted: rank 0 wrote a checkpoint; continue with the same command and \
             --resume RUN_DIR"
                .into(),
        )));
    }
    if !bad.is_empty() {
        bail!(
            "the data-parallel run failed: {} ended badly (the ranks' errors are above); a run \
             that had started keeps its last checkpoint: continue it with `runner run --resume \
             RUN_DIR --nproc {nproc}`",
            bad.join(", ")
        );
    }
    Ok(())
}

fn stop_all(children: &mut [Child], sig: &str) {
    for c in children.iter_mut() {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status();
        let _ = c.wait();
    }
}

/// Milliseconds to average `elems` float32 gradients over `ranks` ranks on this host (Gloo,
/// in-process ranks on 127.0.0.1, DDP's buckets): the median of 3 after one warm-up, as
/// `runner plan` adds it to a rank's step.
pub fn time_all_reduce(ranks: usize, elems: i64) -> Result<f64> {
    let port = free_port()?;
    let handles: Vec<_> = (0..ranks)
        .map(|rank| {
            std::thread::spawn(move || -> Result<f64> {
                let launch = dist::Launch::local(rank, ranks, port);
                let mut g = dist::ProcessGroup::join(&launch, Duration::from_secs(60))?;
                let t = tch::Tensor::zeros([elems.max(1)], (tch::Kind::Float, tch::Device::Cpu));
                let grads = [t];
                g.all_reduce_mean(&grads)?;
                let mut ms = Vec::new();
                for _ in 0..3 {
                    let t0 = std::time::Instant::now();
                    g.all_reduce_mean(&grads)?;
                    ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                ms.sort_by(f64::total_cmp);
                Ok(ms[1])
            })
        })
        .collect();
    let mut times = Vec::new();
    for h in handles {
        times.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a timing rank panicked"))??,
        );
    }
    Ok(times[0])
}

/// The command line without `--nproc N` / `--nproc=N`.
fn strip_nproc(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--nproc" {
            skip = true;
            continue;
        }
        if a.starts_with("--nproc=") {
            continue;
        }
        out.push(a);
    }
    out
}

/// A TCP port free on 127.0.0.1 now (the OS's pick), for the rendezvous store.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_the_command_line() {
        let a = ["run", "x", "--nproc", "2", "seed=1", "--nproc=3", "--smoke"]
            .map(String::from)
            .into_iter();
        assert_eq!(strip_nproc(a), ["run", "x", "seed=1", "--smoke"]);
    }
}
