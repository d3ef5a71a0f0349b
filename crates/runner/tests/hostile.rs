//! The runner under hostile and careless use: names that would leave `--out`, edited or foreign
//! checkpoints, resumes with other threads or shapes, two processes on one run folder, a run
//! killed between its outputs, a reader that closes the pipe.

use reprise_core::checkpoint::{Checkpoint, CheckpointDir};
use std::fs;
use std::path::Path;
use std::process::Stdio;

mod common;
use common::*;

/// The run folder's id, as `run.json` records it.
fn run_id(run: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("run.json")).unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Replaces the first `from` in a safetensors file's JSON header by `to` (same length).
fn edit_header(p: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut b = fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let head = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
    let at = head
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in the header"));
    b[8 + at..8 + at + to.len()].copy_from_slice(to.as_bytes());
    fs::write(p, b).unwrap();
}

/// Waits (a minute at most) until both runs, `seed=0` and `seed=1`, of the one sweep under
/// `<p>/out/tiny` are in their training loop (their `metrics.jsonl` exists); returns their folders.
fn both_seeds_training(p: &Path) -> Vec<std::path::PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs: Vec<_> = fs::read_dir(p.join("out/tiny"))
            .ok()
            .and_then(|mut e| e.next())
            .and_then(Result::ok)
            .map(|s| ["seed=0", "seed=1"].map(|n| s.path().join(n)).to_vec())
            .unwrap_or_default();
        if runs.len() == 2 && runs.iter().all(|r| r.join("metrics.jsonl").exists()) {
            return runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn run_folders_never_leave_out() {
    let d = setup();
    let p = d.path();
    fs::create_dir_all(p.join("out")).unwrap();
    write(
        p,
        "escape.yaml",
        &TINY.replace("name: tiny", "name: ../../escaped"),
    );
    let o = runner(p, &["run", "t/escape", "--out", "out"]);
    assert_clean_error(&o, "not a plain folder name");
    for o in [
        runner(p, &["run", "t/tiny", "--out", "out", "name=/tmp/abs"]),
        runner(p, &["run", "t/tiny", "--out", "out", "name=a/b"]),
        runner(p, &["run", "t/tiny", "--out", "out", "name="]),
    ] {
        assert_clean_error(&o, "name");
    }
    // A link planted where the experiment's folder goes cannot carry the run elsewhere.
    let elsewhere = p.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, p.join("out/tiny")).unwrap();
    let o = runner(p, &["run", "t/tiny", "--out", "out", "--smoke"]);
    assert_clean_error(&o, "outside --out");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert!(!p.join("escaped").exists() && !p.parent().unwrap().join("escaped").exists());
}

#[test]
fn edited_or_foreign_checkpoints_are_refused_and_the_run_falls_back() {
    let d = setup();
    let p = d.path();
    for seed in ["0", "1"] {
        let o = runner(
            p,
            &[
                "run",
                "t/tiny",
                "--out",
                &format!("s{seed}"),
                "--threads",
                "1",
                &format!("seed={seed}"),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let run = runs_under(&p.join("s0/tiny")).remove(0);
    let other = runs_under(&p.join("s1/tiny")).remove(0);
    let full = p.join("full-step-60.safetensors");
    fs::copy(run.join("checkpoints/step-000000060.safetensors"), &full).unwrap();
    let resume = |p: &Path| {
        runner(
            p,
            &["run", "--resume", run.to_str().unwrap(), "--threads", "1"],
        )
    };

    // A one-digit edit of the recorded step: the checksum covers the header.
    unfinish(&run, 60);
    edit_header(
        &run.join("checkpoints/step-000000060.safetensors"),
        "\"60\"",
        "\"10\"",
    );
    let o = resume(p);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("checksum mismatch") && t.contains("resuming from step 40"),
        "{t}"
    );
    assert_same_tensors(&full, &run.join("checkpoints/step-000000060.safetensors"));

    // Another run's checkpoint (seed 1, same shapes) copied in: refused.
    unfinish(&run, 40);
    fs::copy(
        other.join("checkpoints/step-000000060.safetensors"),
        run.join("checkpoints/step-000000060.safetensors"),
    )
    .unwrap();
    let t = text(&resume(p));
    assert!(
        t.contains("belongs to run") && t.contains("resuming from step 40"),
        "{t}"
    );
    assert_same_tensors(&full, &run.join("checkpoints/step-000000060.safetensors"));

    // A well-formed checkpoint of this run whose buffer has another dtype: it does not fit.
    unfinish(&run, 40);
    let mut ck = Checkpoint::load(&run.join("checkpoints/step-000000040.safetensors")).unwrap();
    ck.meta.remove("run");
    let b = ck.tensors["buffer"].to_kind(tch::Kind::Int);
    ck.put("buffer", &b);
    ck.set("step", 60);
    CheckpointDir::new(run.join("checkpoints"), 5)
        .for_run(&run_id(&run))
        .save(60, &ck)
        .unwrap();
    let o = resume(p);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("`buffer` is Int") && t.contains("resuming from step 40"),
        "{t}"
    );
    assert!(!t.contains("panicked") && !t.contains("diverged"), "{t}");
    assert_same_tensors(&full, &run.join("checkpoints/step-000000060.safetensors"));
}

#[test]
fn a_resume_keeps_the_recorded_threads_and_an_override_that_cannot_fit_changes_nothing() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["run", "t/tiny", "--out", "out", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("out/tiny")).remove(0);
    let full = p.join("full-step-60.safetensors");
    fs::copy(run.join("checkpoints/step-000000060.safetensors"), &full).unwrap();
    // The resume hint has no --threads: the run continues with the 1 thread it recorded.
    unfinish(&run, 40);
    let o = runner(p, &["run", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_to_string(run.join("run.log")).unwrap();
    let last = log
        .lines()
        .rfind(|l| l.contains(" threads, smoke="))
        .unwrap();
    assert!(last.contains(", 1 threads"), "{last}");
    assert_same_tensors(&full, &run.join("checkpoints/step-000000060.safetensors"));
    // Asked for another count, it says so.
    unfinish(&run, 40);
    let o = runner(
        p,
        &["run", "--resume", run.to_str().unwrap(), "--threads", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("ran with 1 thread(s); continuing with 2"),
        "{}",
        text(&o)
    );

    // An override of a width fits no checkpoint: a clear error, and spec.yaml as it was.
    unfinish(&run, 40);
    let spec = fs::read(run.join("spec.yaml")).unwrap();
    let o = runner(
        p,
        &[
            "run",
            "--resume",
            run.to_str().unwrap(),
            "jem.model.mlp.width=32",
        ],
    );
    assert_clean_error(&o, "none of its");
    assert!(text(&o).contains("model."), "{}", text(&o));
    assert_eq!(fs::read(run.join("spec.yaml")).unwrap(), spec);
    assert!(!text(&o).contains("libtorch"), "{}", text(&o));
    // ... so a plain resume still works.
    let o = runner(
        p,
        &["run", "--resume", run.to_str().unwrap(), "--threads", "1"],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn one_process_per_run_folder() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "long.yaml",
        &TINY
            .replace("iterations: 60", "iterations: 10000000")
            .replace("arm: jem", "arm: base"),
    );
    let mut first = Reaper(spawn_runner(
        p,
        &["run", "t/long", "--out", "out", "--threads", "1"],
        false,
    ));
    // Wait until the run has started (its folder and lock exist).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let run = loop {
        if let Some(r) = fs::read_dir(p.join("out/tiny"))
            .ok()
            .and_then(|mut e| e.next())
            .and_then(Result::ok)
            .map(|e| e.path())
            .filter(|r| r.join("metrics.jsonl").exists())
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first run did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let spec = fs::read(run.join("spec.yaml")).unwrap();
    let o = runner(
        p,
        &[
            "run",
            "--resume",
            run.to_str().unwrap(),
            "jem.optim.lr=0.001",
        ],
    );
    assert_clean_error(&o, "is in use by another runner process");
    assert!(
        text(&o).contains(&format!("pid {}", first.id())),
        "{}",
        text(&o)
    );
    assert_eq!(
        fs::read(run.join("spec.yaml")).unwrap(),
        spec,
        "spec.yaml untouched"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock died with its process: the run can be continued.
    let o = runner(
        p,
        &[
            "run",
            "--resume",
            run.to_str().unwrap(),
            "jem.iterations=100",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_run_killed_after_its_summary_is_completed_by_a_resume() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["run", "t/tiny", "--out", "out", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("out/tiny")).remove(0);
    let csv = fs::read(run.join("metrics.csv")).unwrap();
    // Killed after summary.json: the report, metrics.csv and the marker never written.
    for f in ["report.md", "metrics.csv", "finished"] {
        fs::remove_file(run.join(f)).unwrap();
    }
    let o = runner(p, &["run", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("already finished"), "{}", text(&o));
    for f in ["report.md", "metrics.csv", "finished", "summary.json"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert_eq!(fs::read(run.join("metrics.csv")).unwrap(), csv);
    let o = runner(p, &["run", "--resume", run.to_str().unwrap()]);
    assert!(text(&o).contains("already finished"), "{}", text(&o));
}

#[test]
fn a_closed_pipe_ends_the_runner_quietly() {
    let d = setup();
    for args in [
        &["list"][..],
        &["info"],
        &["run", "t/tiny", "--print-config"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(d.path())
            .env("REPRISE_DATA", root().join("data"))
            .env("REPRISE_EXPERIMENTS", d.path().join("experiments"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the runner writes a line.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {:?} {err}", o.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_killed_sweep_runner_takes_its_workers_and_their_tokens_with_it() {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let d = setup();
    let p = d.path();
    write(
        p,
        "sweep.yaml",
        &format!(
            "{}seeds: [0, 1]\n",
            TINY.replace("iterations: 60", "iterations: 10000000")
                .replace("arm: jem", "arm: base")
        ),
    );
    let fifo = p.join("slots");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut owner = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    owner.write_all(b"++").unwrap();
    let mut parent = Reaper(spawn_runner(
        p,
        &[
            "run",
            "t/sweep",
            "--out",
            "out",
            "--jobs",
            "2",
            "--slots",
            fifo.to_str().unwrap(),
        ],
        false,
    ));
    let runs = both_seeds_training(p);
    parent.kill().unwrap();
    parent.wait().unwrap();
    // Each worker notices, checkpoints, stops and puts its token back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for r in &runs {
        loop {
            let free = fs::File::open(r.join(".lock")).unwrap().try_lock().is_ok();
            if free {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a worker outlived its sweep runner: {}",
                r.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            fs::read_dir(r.join("checkpoints")).unwrap().count() > 0,
            "{} stopped without a checkpoint",
            r.display()
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut back = [0u8; 8];
    let n = owner.read(&mut back).unwrap_or(0);
    assert_eq!(&back[..n], b"++", "the tokens came back");
}

#[test]
fn a_signal_outside_a_training_loop_ends_the_runner_at_once() {
    let d = setup();
    let p = d.path();
    // A slots pipe holding no token: the run waits for a core before its folder is made and
    // its training starts. (A dataset that is a FIFO no longer blocks: it is refused.)
    let slots = p.join("slots");
    assert!(std::process::Command::new("mkfifo")
        .arg(&slots)
        .status()
        .unwrap()
        .success());
    let mut child = Reaper(
        runner_command(p, &["run", "t/tiny", "--out", "out", "--slots"])
            .arg(&slots)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Once it is waiting (no folder is made before it has a core), still running.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the runner ended instead of waiting for a core"
    );
    assert!(
        !p.join("out/tiny").exists(),
        "a folder before the run had a core"
    );
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(10),
            "one SIGTERM did not end a runner stuck before its training loop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
}

#[test]
fn a_file_size_limit_is_an_error_line_not_a_silent_death() {
    let d = setup();
    let p = d.path();
    // As `a_disk_that_fills_mid_run_...` in resume.rs, but SIGXFSZ left at its default (which
    // kills the process): the runner itself must turn it into an error naming the file.
    let o = std::process::Command::new("bash")
        .current_dir(p)
        .env("REPRISE_DATA", root().join("data"))
        .env("REPRISE_EXPERIMENTS", p.join("experiments"))
        .arg("-c")
        .arg(format!(
            "ulimit -f 8; exec {} run t/tiny --out out",
            env!("CARGO_BIN_EXE_runner")
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{:?} {}", o.status, text(&o));
    assert_clean_error(&o, "checkpoints/step-000000020.safetensors: ");
}

#[test]
fn a_stale_temporary_file_is_removed_when_the_run_continues() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["run", "t/tiny", "--out", "out", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("out/tiny")).remove(0);
    unfinish(&run, 40);
    // What a kill during the step-60 checkpoint's write leaves behind.
    let tmp = run.join("checkpoints/.step-000000060.safetensors.tmp-4242");
    fs::write(&tmp, b"half a checkpoint").unwrap();
    let o = runner(p, &["run", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!tmp.exists());
}

#[test]
fn numbers_beyond_f64_are_named_as_such() {
    let d = setup();
    let o = runner(
        d.path(),
        &["run", "t/tiny", "--print-config", "jem.optim.lr=1e400"],
    );
    assert_clean_error(&o, "not a finite number");
    write(d.path(), "inf.yaml", &TINY.replace("lr: 0.01", "lr: .inf"));
    let o = runner(d.path(), &["validate", "t/inf"]);
    assert!(text(&o).contains("not a finite number"), "{}", text(&o));
}

/// Copies the project's experiment specs into the test's experiments folder.
fn with_project_specs(p: &Path) {
    for e in fs::read_dir(root().join("experiments")).unwrap().flatten() {
        let dst = p.join("experiments").join(e.file_name());
        fs::create_dir_all(&dst).unwrap();
        for f in fs::read_dir(e.path()).unwrap().flatten() {
            fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
}

#[test]
fn the_smallest_accepted_sizes_run_or_fail_with_one_error_line() {
    let d = setup();
    let p = d.path();
    with_project_specs(p);
    // One run, not a sweep: its failure is the one error line.
    let one_run = ["--smoke", "sweep={}", "seeds=[]"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "t/tiny",
            vec![
                "jem.model.mlp.width=1",
                "jem.optim.batch=1",
                "jem.buffer.size=10",
                "jem.sgld.steps=0",
                "jem.eval.chains_per_class=0",
                "jem.eval.sample_steps=0",
                "jem.eval.max_test=1",
            ],
        ),
        (
            "t/tiny",
            vec!["data.split={train: 10, test: 1}", "jem.optim.batch=10"],
        ),
        (
            "jem/digits-calibration",
            vec!["data.cv={folds: 2}", "jem.eval.ece_bins=1"],
        ),
        ("tsit/digits-ast", vec!["tsit.eval.grid=0"]),
        ("t/tiny", vec!["data.split={train: 300, test: 0}"]),
        (
            "robust-transfer/mnist-eps-sweep",
            vec![
                "robust-transfer.model.small_cnn.width=1",
                "robust-transfer.source.batch=1",
                "robust-transfer.source.attack.steps=0",
                "robust-transfer.eval.pgd_steps=0",
                "robust-transfer.eval.batch=1",
            ],
        ),
        (
            "deepthin/mnist-mlp-depth",
            vec![
                "deepthin.arch.thin=1",
                "deepthin.arch.wide=1",
                "deepthin.batch=1",
            ],
        ),
        (
            "tsit/digits-ast",
            vec![
                "tsit.batch=1",
                "tsit.eval.n_test=1",
                "tsit.model.nf=1",
                "tsit.model.ndf=1",
                "tsit.model.num_d=1",
                "tsit.model.n_layers_d=1",
                "tsit.eval.grid=1",
            ],
        ),
    ];
    for (exp, overrides) in cases {
        let mut args = vec!["run", exp, "--out", "out", "--threads", "1"];
        if exp != "t/tiny" {
            args.extend(one_run);
        }
        args.extend(&overrides);
        let o = runner(p, &args);
        let t = text(&o);
        assert!(
            !t.contains("panicked") && !t.contains("RUST_BACKTRACE") && !t.contains("libtorch:"),
            "{exp} {overrides:?}: {t}"
        );
        let errors = t.lines().filter(|l| l.starts_with("error")).count();
        assert!(
            o.status.success() || (o.status.code() == Some(1) && errors == 1),
            "{exp} {overrides:?}: {:?}\n{t}",
            o.status
        );
    }
}

#[test]
fn ctrl_c_in_a_terminal_stops_a_sweep_with_every_worker_checkpointed() {
    use std::os::unix::process::CommandExt;
    let d = setup();
    let p = d.path();
    // No periodic checkpoints: the only ones are those the interruption writes. Slow steps
    // (3000 SGLD steps each), so a second signal would land in the middle of one.
    write(
        p,
        "sweep.yaml",
        &format!(
            "{}seeds: [0, 1]\n",
            TINY.replace("iterations: 60", "iterations: 10000000")
                .replace("sgld: { steps: 3 }", "sgld: { steps: 3000 }")
                .replace("checkpoint_every: 20", "checkpoint_every: 1000000000")
                .replace("every: 20", "every: 2")
        ),
    );
    // The runner leads its own process group, as a shell's foreground job does.
    let mut parent = Reaper(
        std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(p)
            .env("REPRISE_DATA", root().join("data"))
            .env("REPRISE_EXPERIMENTS", p.join("experiments"))
            .args(["run", "t/sweep", "--out", "out", "--jobs", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let runs = both_seeds_training(p);
    // Ctrl-C: SIGINT to the terminal's foreground process group.
    assert!(std::process::Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{}", parent.id())])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = parent.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Ctrl-C did not stop the sweep"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    for r in &runs {
        assert!(
            fs::read_dir(r.join("checkpoints")).unwrap().count() > 0,
            "{} stopped without its checkpoint",
            r.display()
        );
    }
}
