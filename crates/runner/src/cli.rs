//! The command line: subcommands and their dispatch.

use crate::{experiments, sweep};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use reprise_core::spec::DeviceSpec;
use std::path::PathBuf;

/// reprise: re-run four 2020 machine-learning papers from YAML experiment specs.
#[derive(Debug, Parser)]
#[command(name = "runner", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an experiment (a path, or a name such as `jem/digits-calibration`).
    Run(RunArgs),
    /// List every experiment: paper, description, expected time.
    List,
    /// Parse and check experiments; exits non-zero on any error.
    Validate {
        /// Experiments to check (all under experiments/ when none is given).
        experiments: Vec<String>,
    },
    /// Versions of tch and LibTorch, threads, CUDA and cuDNN, devices.
    Info,
    /// Render the report of a run or sweep folder again.
    Report {
        /// A run folder (holding spec.yaml) or a sweep folder (holding sweep.json).
        dir: PathBuf,
    },
    /// A variant's sweep (or run) folder beside its parent's, metric by metric: what the specs
    /// differ in, which seeds they share, the means over seeds, the difference, Welch's t-test
    /// and its p-value adjusted by Holm's method over the table (timings and constants left out).
    Compare {
        /// The parent: a sweep or run folder.
        a: PathBuf,
        /// The variant: a sweep or run folder.
        b: PathBuf,
    },
    /// Write a finished run's trained networks as PyTorch state dicts (`torch.load`-able
    /// `.pt` files with the model's own names, no `model.` prefix) and a `config.json`.
    Export {
        /// A run folder (one run of a sweep).
        run: PathBuf,
        /// The folder to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Time a few real training steps of an experiment's full-size model on a device and project
    /// the run's wall time and device-hours (planning on the CPU where there is no CUDA).
    Plan {
        /// The experiment (a name or a YAML file).
        experiment: String,
        /// Overrides `key.sub=value`.
        overrides: Vec<String>,
        /// Device: auto, cpu, cuda or cuda:N (default: the spec's).
        #[arg(long)]
        device: Option<String>,
        /// Steps to time, after two warm-up steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Processes (devices) a data-parallel run would use, for the projection.
        #[arg(long, default_value_t = 1)]
        nproc: usize,
        /// Intra-op threads to time with (default: LibTorch's).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Fetch and verify the small datasets into data/ (all when none is named); with --check,
    /// list what experiments read and whether it is in place.
    Data {
        /// Dataset names (mnist-5k, digits), or with --check experiment names.
        names: Vec<String>,
        /// List the datasets and weights the named experiments need, each present or missing
        /// (with its layout, where to get it and the key that points at it); fetch nothing.
        /// Exits non-zero if anything is missing.
        #[arg(long)]
        check: bool,
    },
    /// Run one prepared run folder (used by `run --jobs` for its worker processes).
    #[command(hide = true)]
    Exec {
        /// The run folder.
        dir: PathBuf,
        /// Intra-op threads (default: those the run recorded).
        #[arg(long)]
        threads: Option<usize>,
        /// Device (default: the one the run recorded).
        #[arg(long)]
        device: Option<String>,
        /// The slots pipe the sweep's runner took this worker's token from: the worker puts it
        /// back if that runner goes away before it.
        #[arg(long)]
        token_from: Option<PathBuf>,
    },
}

/// Options of `runner run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The experiment: a YAML file or a name under experiments/.
    #[arg(required_unless_present = "resume")]
    pub experiment: Option<String>,
    /// Overrides `key.sub=value` (values are YAML scalars, type-checked).
    pub overrides: Vec<String>,
    /// Folder under which run folders are made.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Device: auto, cpu, cuda or cuda:N (overrides the spec's).
    #[arg(long)]
    pub device: Option<String>,
    /// Intra-op threads per run (default: LibTorch's, or 1 per process with --jobs > 1).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Continue a run or sweep folder from its checkpoints. A run folder may take overrides
    /// (`runner run --resume RUN_DIR jem.optim.lr=3e-5`), e.g. a lower learning rate after a
    /// divergence: it continues from its newest good checkpoint with the changed spec.
    #[arg(long, conflicts_with_all = ["print_config"])]
    pub resume: Option<PathBuf>,
    /// With --resume and overrides: continue from the newest checkpoint at or before this
    /// step (0: from the start); later ones are set aside, not deleted.
    #[arg(long, requires = "resume")]
    pub from_step: Option<u64>,
    /// With --resume: continue a run on another number of processes than it trained on (each
    /// rank's share of the batch then changes); refused otherwise, and said when given.
    #[arg(long, requires = "resume")]
    pub allow_world_change: bool,
    /// With --resume: continue a run whose spec.yaml was edited by hand since its checkpoints
    /// were written (refused otherwise); the decision is recorded in the run folder and logged.
    #[arg(long, requires = "resume")]
    pub accept_edited_spec: bool,
    /// Print the resolved spec, every key with its default, and the runs it expands to (with
    /// --smoke: the smoke budget too); run nothing.
    #[arg(long)]
    pub print_config: bool,
    /// Sweep a key over values from the command line: `--sweep jem.arm=jem,base` (or
    /// `key=[a, b]` for values holding commas); repeatable, and replacing a `sweep:` entry of
    /// the same key. `sweep={}` removes the spec's sweep, `seeds=[0]` its seeds, and an
    /// override of a swept key (`jem.arm=jem`) runs only that value.
    #[arg(long, value_name = "KEY=A,B", conflicts_with = "resume")]
    pub sweep: Vec<String>,
    /// Run the spec's `smoke:` budget: a few iterations, end to end.
    #[arg(long)]
    pub smoke: bool,
    /// Run the I-th of N slices of a sweep (0 ≤ I < N), e.g. a Slurm array task.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Sweep runs to execute at once, as separate processes.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Share cores with other runner processes through a named pipe holding one byte per
    /// free core (make's jobserver, without make): each run takes one before it starts and
    /// puts it back when it ends, in addition to the --jobs limit; a single run takes every
    /// free one and runs with that many threads (unless --threads). `just reproduce-all`
    /// uses it to start the next experiment while the last runs of one finish.
    #[arg(long, value_name = "FIFO")]
    pub slots: Option<PathBuf>,
    /// Train the run data-parallel on N local processes (Gloo; one GPU each on CUDA), as
    /// `torchrun --no-python --nproc_per_node N runner run …` does; the spec's batch is the
    /// global one, split among the ranks.
    #[arg(long, value_name = "N", conflicts_with = "print_config")]
    pub nproc: Option<usize>,
}

impl RunArgs {
    /// The sweep layer's plain options.
    fn options(&self) -> sweep::Options {
        sweep::Options {
            overrides: self.overrides.clone(),
            out: self.out.clone(),
            device: self.device.clone(),
            threads: self.threads,
            from_step: self.from_step,
            smoke: self.smoke,
            jobs: self.jobs,
            slots: self.slots.clone(),
            accept_edited_spec: self.accept_edited_spec,
        }
    }
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parse = || -> Option<(usize, usize)> {
        let (i, n) = s.split_once('/')?;
        Some((i.trim().parse().ok()?, n.trim().parse().ok()?))
    };
    match parse() {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        Some((i, n)) => bail!("--shard {s}: need 0 <= I < N, got I = {i}, N = {n}"),
        None => bail!("--shard {s}: expected I/N, e.g. 0/4"),
    }
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run(a),
        Command::List => list(),
        Command::Validate { experiments } => validate(&experiments),
        Command::Info => info(),
        Command::Report { dir } => sweep::report(&dir),
        Command::Export { run, out } => crate::export::export(&run, &out),
        Command::Plan {
            experiment,
            overrides,
            device,
            steps,
            nproc,
            threads,
        } => {
            crate::set_threads(threads)?;
            plan(&experiment, &overrides, device.as_deref(), steps, nproc)
        }
        Command::Compare { a, b } => {
            say_raw!("{}", crate::compare::table(&a, &b)?)?;
            Ok(())
        }
        Command::Data {
            names,
            check: false,
        } => data(&names),
        Command::Data { names, check: true } => data_check(&names),
        Command::Exec {
            dir,
            threads,
            device,
            token_from,
        } => sweep::exec_worker(&dir, threads, device.as_deref(), token_from.as_deref()),
    }
}

fn run(a: RunArgs) -> Result<()> {
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    if let Some(d) = &a.device {
        d.parse::<DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    }
    match a.nproc {
        Some(0) => bail!("--nproc must be at least 1"),
        Some(n) if n > 1 => {
            if std::env::var_os("RANK").is_some() {
                bail!("--nproc starts the ranks itself; under torchrun or srun leave it out");
            }
            return crate::ddp::launch_local(n, a.threads);
        }
        _ => crate::ddp::join_from_env()?,
    }
    crate::ddp::allow_world_change(a.allow_world_change);
    if let Some(dir) = &a.resume {
        // With --resume every positional argument is an override.
        let mut a = a.clone();
        if let Some(first) = a.experiment.take() {
            if !first.contains('=') {
                bail!("--resume continues the folder it names; `{first}` is not an override (key=value)");
            }
            a.overrides.insert(0, first);
        }
        return sweep::resume(dir, &a.options(), shard);
    }
    let arg = a
        .experiment
        .as_deref()
        .expect("clap requires it without --resume");
    let file = experiments::resolve(arg)?;
    let mut overrides = a.overrides.clone();
    if let Some(d) = &a.device {
        overrides.push(format!("device={d}"));
    }
    let mut tree = experiments::load(&file, a.smoke, &overrides)?;
    for s in &a.sweep {
        tree.apply_sweep(s)?;
    }
    let runs = experiments::check(&tree)?;
    if a.print_config {
        return print_config(&tree, &runs, a.smoke);
    }
    sweep::start(&tree, runs, &a.options(), shard)
}

/// `--print-config`: the resolved spec; then, as a second YAML document, every key a run
/// reads with the defaults of those the spec leaves out; then the runs it makes.
fn print_config(
    tree: &reprise_core::spec::SpecTree,
    runs: &[(String, reprise_core::spec::SpecTree)],
    smoke: bool,
) -> Result<()> {
    say_raw!("{}", tree.to_yaml())?;
    let (_, first) = runs.first().context("the spec expands to no run")?;
    let header = first.header()?;
    let paper = crate::paper(&header.paper)?;
    let mut knobs = serde_json::Map::new();
    knobs.insert("seed".into(), header.seed.into());
    knobs.insert("device".into(), header.device.to_string().into());
    knobs.insert("requires".into(), serde_json::to_value(header.requires)?);
    knobs.insert("tensorboard".into(), header.tensorboard.into());
    knobs.insert("data".into(), serde_json::to_value(&header.data)?);
    knobs.insert(paper.name.into(), (paper.config)(first)?);
    say!(
        "--- # every key a run reads, defaults filled in{}",
        if runs.len() > 1 {
            " (the first run's swept values)"
        } else {
            ""
        }
    )?;
    say_raw!("{}", serde_norway::to_string(&knobs)?)?;
    if smoke {
        let iters = header
            .smoke
            .iterations
            .map_or("the spec's own".to_string(), |n| n.to_string());
        say!("# --smoke: {iters} training iterations per run")?;
        for (k, v) in &header.smoke.set {
            let v = serde_norway::to_string(v)?;
            say!("#   smoke.set {k} = {}", v.trim())?;
        }
    }
    say!(
        "# expands to {} run{}{}",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        if runs.len() > 1 { ":" } else { "" }
    )?;
    if runs.len() > 1 {
        for (name, _) in runs {
            say!("#   {name}")?;
        }
    }
    Ok(())
}

fn list() -> Result<()> {
    let files = experiments::all();
    if files.is_empty() {
        bail!(
            "no experiments under {}",
            experiments::experiments_dir().display()
        );
    }
    let mut rows = Vec::new();
    for f in &files {
        let name = experiments::name_of(f);
        match reprise_core::spec::SpecTree::load(f).and_then(|t| t.header()) {
            Ok(h) => {
                let runs = reprise_core::spec::run_count(&h).unwrap_or(0);
                let time = h
                    .expected_minutes
                    .map_or("?".to_string(), |m| format!("{m:.0} min"));
                let needs = match h.requires {
                    reprise_core::spec::Requires::Cpu => "cpu",
                    reprise_core::spec::Requires::Gpu => "GPU",
                };
                rows.push(format!(
                    "{name:<36} {:<16} {needs:<5} {:>8} {:>5}  {}",
                    h.paper, time, runs, h.description
                ));
            }
            Err(e) => rows.push(format!("{name:<36} INVALID: {e}")),
        }
    }
    say!(
        "{:<36} {:<16} {:<5} {:>8} {:>5}  description",
        "experiment",
        "paper",
        "needs",
        "expected",
        "runs"
    )?;
    for r in rows {
        say!("{r}")?;
    }
    Ok(())
}

fn validate(names: &[String]) -> Result<()> {
    let files: Vec<PathBuf> = if names.is_empty() {
        experiments::all()
    } else {
        names
            .iter()
            .map(|n| experiments::resolve(n))
            .collect::<Result<_>>()?
    };
    if files.is_empty() {
        bail!("nothing to validate");
    }
    let mut bad = 0;
    for f in &files {
        let check = |smoke: bool| -> Result<usize> {
            let tree = experiments::load(f, smoke, &[])?;
            Ok(experiments::check(&tree)?.len())
        };
        match check(false).and_then(|n| check(true).map(|_| n)) {
            Ok(n) => say!(
                "ok      {} ({n} run{})",
                f.display(),
                if n == 1 { "" } else { "s" }
            )?,
            Err(e) => {
                bad += 1;
                say!("INVALID {e:#}")?;
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} experiment file(s) are invalid", files.len());
    }
    Ok(())
}

fn info() -> Result<()> {
    say!("reprise   {}", env!("CARGO_PKG_VERSION"))?;
    say!("tch       {}", reprise_core::TCH_VERSION)?;
    say!(
        "libtorch  {} ({})",
        env!("REPRISE_LIBTORCH_VERSION"),
        env!("REPRISE_LIBTORCH_LIB")
    )?;
    say!(
        "threads   {} intra-op, {} inter-op",
        tch::get_num_threads(),
        tch::get_num_interop_threads()
    )?;
    let cuda = tch::Cuda::is_available();
    say!(
        "cuda      {}",
        if cuda { "available" } else { "not available" }
    )?;
    say!(
        "cudnn     {}",
        if tch::Cuda::cudnn_is_available() {
            "available"
        } else {
            "not available"
        }
    )?;
    say!(
        "ddp       Gloo for host tensors{}",
        if dist::HAS_NCCL {
            ", NCCL for CUDA tensors"
        } else {
            " (this build has no NCCL: CUDA tensors go through host copies)"
        }
    )?;
    let n = tch::Cuda::device_count();
    say!(
        "devices   cpu{}",
        (0..n).map(|i| format!(", cuda:{i}")).collect::<String>()
    )?;
    if cuda {
        // Allocating on each device proves the CUDA library is linked and usable.
        for i in 0..n as usize {
            let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, tch::Device::Cuda(i)));
            let s = t.sum(tch::Kind::Float).double_value(&[]);
            say!("cuda:{i}    ok (test sum {s})")?;
        }
    }
    Ok(())
}

/// The peak resident memory of this process, in bytes (Linux's `VmHWM`).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn plan(
    experiment: &str,
    overrides: &[String],
    device: Option<&str>,
    steps: usize,
    nproc: usize,
) -> Result<()> {
    if steps == 0 || nproc == 0 {
        bail!("--steps and --nproc must be at least 1");
    }
    let file = experiments::resolve(experiment)?;
    let mut overrides = overrides.to_vec();
    if let Some(d) = device {
        d.parse::<DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        overrides.push(format!("device={d}"));
    }
    let tree = experiments::load(&file, false, &overrides)?;
    let runs = experiments::check(&tree)?;
    let (_, first) = runs.first().context("the spec expands to no run")?;
    let header = first.header()?;
    let paper = crate::paper(&header.paper)?;
    let Some(time_steps) = paper.plan else {
        bail!("`runner plan` does not time {} runs yet", paper.name);
    };
    let dev = header.device.resolve().map_err(anyhow::Error::msg)?;
    let where_ = if dev.is_cuda() {
        format!("{dev:?}")
    } else if tch::Cuda::is_available() {
        "the CPU".to_string()
    } else {
        "the CPU (no CUDA here: this is a plan for the CPU)".to_string()
    };
    // The runs that differ in more than their seed are timed each (an arm's step can cost many
    // times another's); the seeds of one configuration share its time.
    let groups = distinct_configs(&runs);
    say!(
        "plan for {experiment} ({} run{}, {} distinct configuration{} timed) on {where_}, {} intra-op threads:",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
        tch::get_num_threads()
    )?;
    let before = peak_rss();
    let gpu = match dev {
        tch::Device::Cuda(i) => {
            // A new peak from here: the model, its optimizer and the timed steps.
            dist::cuda_peak_bytes(i, true);
            Some(i)
        }
        _ => None,
    };
    let (mut hours_all, mut wall_all, mut known) = (0.0, 0.0, true);
    for (g, (rep, names)) in groups.iter().enumerate() {
        if groups.len() > 1 {
            say!(
                "configuration {} of {} ({} run{}: {})",
                g + 1,
                groups.len(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            )?;
        }
        let p = time_steps(rep, dev, steps, 1)
            .with_context(|| format!("timing {}", names.join(", ")))?;
        say!("  step      {}", p.what)?;
        say!(
            "  time      {:.1} ms a step (median of {steps}, after 2 warm-up steps; {:.1} to {:.1} ms)",
            p.step_ms,
            p.spread_ms.0,
            p.spread_ms.1
        )?;
        let Some(n) = p.steps else {
            say!("  steps     {}", p.steps_from)?;
            known = false;
            continue;
        };
        let hours = n as f64 * p.step_ms / 1000.0 / 3600.0;
        hours_all += hours * names.len() as f64;
        say!("  steps     {n} ({})", p.steps_from)?;
        say!(
            "  run       {} of training on one device ({:.2} device-hours for the {} run{})",
            reprise_core::progress::human_duration(hours * 3600.0),
            hours * names.len() as f64,
            names.len(),
            if names.len() == 1 { "" } else { "s" }
        )?;
        if nproc > 1 && paper.data_parallel {
            // One rank's share of the batch, timed, and the gradient average.
            let r = time_steps(rep, dev, steps, nproc)?;
            let ar = crate::ddp::time_all_reduce(nproc, r.params)?;
            let wall = n as f64 * (r.step_ms + ar) / 1000.0 / 3600.0;
            wall_all += wall * names.len() as f64;
            say!("  per rank  {}", r.what)?;
            say!(
                "  {nproc} ranks   {:.1} ms a step on each + {ar:.1} ms to average {:.1} M gradients \
                 (Gloo on this host, {nproc} local ranks): {} wall, {:.2} device-hours a run \
                 (`runner run … --nproc {nproc}` or torchrun)",
                r.step_ms,
                r.params as f64 / 1e6,
                reprise_core::progress::human_duration(wall * 3600.0),
                wall * nproc as f64
            )?;
        } else if nproc > 1 {
            say!(
                "  {nproc} procs   {} does not train data-parallel yet: a run takes the one-device time",
                paper.name
            )?;
        }
    }
    match (gpu, peak_rss()) {
        (None, Some(after)) => say!(
            "memory      peak resident set {:.2} GB (was {:.2} GB before the models)",
            after as f64 / 1e9,
            before.unwrap_or(0) as f64 / 1e9
        )?,
        (Some(i), _) => match dist::cuda_peak_bytes(i, false) {
            Some(b) => say!(
                "memory      peak GPU memory held by tensors {:.2} GB (the caching allocator's \
                 peak, as torch.cuda.max_memory_allocated)",
                b as f64 / 1e9
            )?,
            None => say!("memory      GPU memory is not measured by this build (no CUDA unit)")?,
        },
        _ => {}
    }
    if groups.len() > 1 && known {
        say!(
            "sweep       {:.2} device-hours of training for the {} runs{}",
            hours_all,
            runs.len(),
            if wall_all > 0.0 {
                format!(
                    "; with {nproc} ranks each, {} of wall time one run after the other",
                    reprise_core::progress::human_duration(wall_all * 3600.0)
                )
            } else {
                String::new()
            }
        )?;
    }
    say!("(evaluations, data loading and transfers are not in the projection)")?;
    Ok(())
}

/// The runs of a sweep grouped by configuration, their seeds aside: one spec to time for each
/// group (its first run's), with the names of its runs, in the sweep's order.
fn distinct_configs(
    runs: &[(String, reprise_core::spec::SpecTree)],
) -> Vec<(reprise_core::spec::SpecTree, Vec<String>)> {
    let mut groups: Vec<(String, reprise_core::spec::SpecTree, Vec<String>)> = Vec::new();
    for (name, t) in runs {
        let mut v = reprise_core::spec::to_json(t.value());
        if let Some(m) = v.as_object_mut() {
            m.remove("seed");
        }
        let key = v.to_string();
        let shown = if name.is_empty() { "the run" } else { name };
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, names)) => names.push(shown.to_string()),
            None => groups.push((key, t.clone(), vec![shown.to_string()])),
        }
    }
    groups.into_iter().map(|(_, t, n)| (t, n)).collect()
}

fn data_check(names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("--check lists what experiments need: name one or more (see `runner list`)");
    }
    let mut missing = 0;
    for n in names {
        let file = experiments::resolve(n)?;
        let tree = experiments::load(&file, false, &[])?;
        let runs = experiments::check(&tree)?;
        let paper = crate::paper(&tree.header()?.paper)?;
        say!("{n}:")?;
        let mut seen = Vec::new();
        let mut small = Vec::new();
        for (_, r) in &runs {
            for i in (paper.inputs)(r)? {
                if !seen.contains(&i) {
                    seen.push(i);
                }
            }
            let d = r.header()?.data.dataset;
            if let Some(rm) = reprise_core::data::remote(&d) {
                if !small.contains(&rm.name) {
                    small.push(rm.name);
                    let p = reprise_core::data::data_dir().join(rm.file);
                    // Whatever stands at the path is checked as a run would check it.
                    if std::fs::symlink_metadata(&p).is_err() {
                        say!(
                            "  ok       {:<40} {} (fetched by `runner data`)",
                            "data.dataset",
                            p.display()
                        )?;
                    } else if let Err(e) = reprise_core::data::verify(&p, rm.sha256) {
                        missing += 1;
                        say!("  BAD      {:<40} {}", "data.dataset", p.display())?;
                        say!("           {e}")?;
                    } else {
                        say!(
                            "  ok       {:<40} {} (present, sha256 verified)",
                            "data.dataset",
                            p.display()
                        )?;
                    }
                }
            }
        }
        if seen.is_empty() && small.is_empty() {
            say!("  nothing to provide")?;
        }
        for i in &seen {
            let m = i.missing();
            if m.is_empty() {
                say!("  ok       {:<40} {}", i.key, i.path.display())?;
            } else {
                missing += 1;
                say!("  MISSING  {:<40} {}", i.key, i.path.display())?;
                say!("           {}", i.explain(&m))?;
            }
        }
    }
    if missing > 0 {
        bail!("{missing} input(s) missing or unusable");
    }
    Ok(())
}

fn data(names: &[String]) -> Result<()> {
    let dir = reprise_core::data::data_dir();
    let remotes = reprise_core::data::REMOTES;
    let chosen: Vec<_> = if names.is_empty() {
        remotes.to_vec()
    } else {
        names
            .iter()
            .map(|n| {
                remotes
                    .iter()
                    .find(|r| r.name == n)
                    .copied()
                    .with_context(|| {
                        let known: Vec<&str> = remotes.iter().map(|r| r.name).collect();
                        format!("unknown dataset `{n}` (known: {})", known.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    for r in chosen {
        let p = reprise_core::data::ensure(&r, &dir)?;
        say!("ok {} -> {} (sha256 verified)", r.name, p.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("0/4").unwrap(), (0, 4));
        assert_eq!(parse_shard("3/4").unwrap(), (3, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1/0").is_err());
        assert!(parse_shard("a/b").is_err());
        assert!(parse_shard("3").is_err());
    }
}
