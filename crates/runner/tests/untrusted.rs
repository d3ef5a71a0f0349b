//! The runner given run folders, specs and data a careless or hostile user has touched: a
//! narrowed sweep resumed, links and FIFOs planted in run folders, a run's identity changed on
//! resume or by hand, cross-validation specs that cannot be pooled, data files that are not
//! what they seem, experiments folders that loop, arguments that are not UTF-8.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// `TINY` with `seeds` and, if given, a `sweep:` section.
fn tiny_sweep(sweep: &str) -> String {
    let mut s = TINY.replace("seed: 0\n", "seed: 0\nseeds: [0, 1]\n");
    if !sweep.is_empty() {
        s.push_str(&format!("sweep:\n  {sweep}\n"));
    }
    s
}

/// The sub-folders of a sweep folder that are runs (hold a `spec.yaml`), by name.
fn run_names(sweep: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(sweep)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("spec.yaml").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Runs `c` with a deadline of `secs`: its output, or a failure naming `what` if it hangs.
fn output_within(c: &mut std::process::Command, secs: u64, what: &str) -> std::process::Output {
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "`{what}` hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = std::mem::replace(
        &mut child.0,
        std::process::Command::new("true").spawn().unwrap(),
    );
    c.wait_with_output().unwrap()
}

/// The runner in `p` with `args`, within `secs` ([`output_within`]).
fn runner_within(p: &Path, args: &[&str], secs: u64) -> std::process::Output {
    output_within(
        &mut runner_command(p, args),
        secs,
        &format!("runner {}", args.join(" ")),
    )
}

#[test]
fn a_resumed_sweep_runs_exactly_the_runs_it_was_started_with() {
    let d = setup();
    let p = d.path();
    write(p, "seeds.yaml", &tiny_sweep(""));
    // An override of a swept dimension narrows the sweep to one run; resumed, it stays one.
    let o = runner(p, &["run", "t/seeds", "--smoke", "--out", "a", "seed=0"]);
    assert!(o.status.success(), "{}", text(&o));
    let sweep = runs_under(&p.join("a/tiny")).remove(0);
    assert_eq!(run_names(&sweep), ["seed=0"]);
    let o = runner(p, &["run", "--resume", sweep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(run_names(&sweep), ["seed=0"], "{}", text(&o));

    // `--sweep` with a narrowed seed: 2 runs, and 2 again on resume.
    let o = runner(
        p,
        &[
            "run",
            "t/seeds",
            "--smoke",
            "--out",
            "b",
            "--sweep",
            "jem.arm=jem,base",
            "seed=0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sweep = runs_under(&p.join("b/tiny")).remove(0);
    let two = ["arm=base,seed=0", "arm=jem,seed=0"];
    assert_eq!(run_names(&sweep), two);
    let o = runner(p, &["run", "--resume", sweep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(run_names(&sweep), two);

    // A folder of an earlier version, whose sweep.yaml kept the spec's whole sweep: what its
    // sweep.json lists is what runs.
    let yaml = fs::read_to_string(sweep.join("sweep.yaml")).unwrap();
    assert!(yaml.contains("- 0") && !yaml.contains("- 1"), "{yaml}");
    fs::write(
        sweep.join("sweep.yaml"),
        yaml.replace("seeds:\n- 0\n", "seeds:\n- 0\n- 1\n"),
    )
    .unwrap();
    let o = runner(p, &["run", "--resume", sweep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(run_names(&sweep), two);

    // A sweep.json naming a run the spec does not make: refused, nothing run.
    let meta = fs::read_to_string(sweep.join("sweep.json")).unwrap();
    fs::write(
        sweep.join("sweep.json"),
        meta.replace("arm=jem,seed=0", "arm=jem,seed=9"),
    )
    .unwrap();
    let o = runner(p, &["run", "--resume", sweep.to_str().unwrap()]);
    assert_clean_error(&o, "arm=jem,seed=9");
}

#[test]
fn links_planted_in_a_run_or_sweep_folder_are_refused_not_followed() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["run", "t/tiny", "--out", "out", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("out/tiny")).remove(0);
    unfinish(&run, 40);
    let victim = p.join("victim");
    fs::create_dir_all(victim.join("dir")).unwrap();
    fs::write(victim.join("file"), "keep me").unwrap();
    let untouched = |what: &str| {
        assert_eq!(
            fs::read_to_string(victim.join("file")).unwrap(),
            "keep me",
            "{what}"
        );
        assert_eq!(
            fs::read_dir(victim.join("dir")).unwrap().count(),
            0,
            "{what}"
        );
    };
    for (name, to_dir) in [
        (".lock", false),
        ("run.log", false),
        ("metrics.jsonl", false),
        ("tensorboard", true),
        ("figures", true),
        ("checkpoints/step-000000099.safetensors", false),
    ] {
        let at = run.join(name);
        let kept = p.join("kept");
        let _ = fs::remove_dir_all(&kept);
        if at.is_dir() {
            copy_dir(&at, &kept);
            fs::remove_dir_all(&at).unwrap();
        } else if at.is_file() {
            fs::rename(&at, &kept).unwrap();
        }
        let target = victim.join(if to_dir { "dir" } else { "file" });
        std::os::unix::fs::symlink(&target, &at).unwrap();
        let o = runner(
            p,
            &["run", "--resume", run.to_str().unwrap(), "--threads", "1"],
        );
        assert_clean_error(&o, "is a link");
        untouched(name);
        fs::remove_file(&at).unwrap();
        if kept.is_dir() {
            copy_dir(&kept, &at);
        } else if kept.is_file() {
            fs::rename(&kept, &at).unwrap();
        }
    }
    // A FIFO where the log goes: refused, not waited on.
    let fifo = run.join("run.log.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = runner_within(p, &["run", "--resume", run.to_str().unwrap()], 60);
    assert_clean_error(&o, "not a regular file");
    fs::remove_file(&fifo).unwrap();
    // Nothing planted: it continues and finishes.
    let o = runner(
        p,
        &["run", "--resume", run.to_str().unwrap(), "--threads", "1"],
    );
    assert!(o.status.success(), "{}", text(&o));

    // A sweep folder, resumed or reported again.
    write(p, "seeds.yaml", &tiny_sweep(""));
    let o = runner(p, &["run", "t/seeds", "--smoke", "--out", "s"]);
    assert!(o.status.success(), "{}", text(&o));
    let sweep = runs_under(&p.join("s/tiny")).remove(0);
    fs::remove_file(sweep.join("report.md")).unwrap();
    std::os::unix::fs::symlink(victim.join("file"), sweep.join("report.md")).unwrap();
    for args in [vec!["run", "--resume"], vec!["report"]] {
        let mut a = args.clone();
        a.push(sweep.to_str().unwrap());
        assert_clean_error(&runner(p, &a), "is a link");
        untouched("report.md");
    }

    // `runner export`: a link where its temporary file goes is replaced, not written through.
    let exported = p.join("exported");
    fs::create_dir_all(&exported).unwrap();
    let tmp = exported.join("model.pt.tmp");
    std::os::unix::fs::symlink(victim.join("file"), &tmp).unwrap();
    let o = runner(
        p,
        &[
            "export",
            run.to_str().unwrap(),
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    untouched("model.pt.tmp");
    assert!(exported.join("model.pt").is_file() && fs::symlink_metadata(&tmp).is_err());
}

#[test]
fn a_run_cannot_become_another_run_of_its_sweep_on_resume() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "arms.yaml",
        &(TINY.to_string() + "sweep:\n  jem.arm: [jem, base]\n"),
    );
    let o = runner(
        p,
        &[
            "run",
            "t/arms",
            "--out",
            "out",
            "--threads",
            "1",
            "jem.arm=jem",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sweep = runs_under(&p.join("out/tiny")).remove(0);
    let run = sweep.join("arm=jem,seed=0");
    unfinish(&run, 40);
    let spec_before = fs::read(run.join("spec.yaml")).unwrap();
    // An override of the swept key: refused, the spec untouched.
    let o = runner(
        p,
        &["run", "--resume", run.to_str().unwrap(), "jem.arm=base"],
    );
    assert_clean_error(&o, "the sweep runs it as jem");
    assert_eq!(fs::read(run.join("spec.yaml")).unwrap(), spec_before);
    // The same by hand in spec.yaml, resumed alone or with its sweep: refused.
    let edited = String::from_utf8(spec_before.clone())
        .unwrap()
        .replace("arm: jem", "arm: base");
    fs::write(run.join("spec.yaml"), &edited).unwrap();
    for target in [&run, &sweep] {
        let o = runner(p, &["run", "--resume", target.to_str().unwrap()]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("the sweep runs it as jem"),
            "{}",
            text(&o)
        );
    }
    assert!(!run.join("summary.json").exists());

    // A single run whose seed is edited by hand: its checkpoints were written under another
    // spec. Refused; with --accept-edited-spec it continues, and the decision is kept.
    let o = runner(p, &["run", "t/tiny", "--out", "one", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let single = runs_under(&p.join("one/tiny")).remove(0);
    unfinish(&single, 40);
    let spec = fs::read_to_string(single.join("spec.yaml")).unwrap();
    assert!(spec.contains("seed: 0"), "{spec}");
    fs::write(single.join("spec.yaml"), spec.replace("seed: 0", "seed: 7")).unwrap();
    let o = runner(p, &["run", "--resume", single.to_str().unwrap()]);
    assert_clean_error(&o, "edited since");
    assert!(!single.join("summary.json").exists());
    let o = runner(
        p,
        &[
            "run",
            "--resume",
            single.to_str().unwrap(),
            "--accept-edited-spec",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_to_string(single.join("run.log")).unwrap();
    assert!(log.contains("--accept-edited-spec"), "{log}");
    assert!(single.join("spec-changes.jsonl").is_file());
    // A deliberate override on resume is recorded too, so it is not taken for an edit.
    let o = runner(p, &["run", "t/tiny", "--out", "two", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let other = runs_under(&p.join("two/tiny")).remove(0);
    unfinish(&other, 40);
    let o = runner(
        p,
        &[
            "run",
            "--resume",
            other.to_str().unwrap(),
            "jem.optim.lr=0.005",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_cross_validation_that_cannot_be_pooled_is_refused_before_it_runs() {
    let d = setup();
    let p = d.path();
    let cv = TINY.replace(
        "split: { train: 300, test: 100 }",
        "cv: { folds: 5, fold: 1 }",
    );
    write(
        p,
        "cv.yaml",
        &cv.replace("seed: 0\n", "seed: 0\nseeds: [0, 1, 2]\n"),
    );
    let o = runner(p, &["validate", "t/cv"]);
    assert_clean_error(&o, "data.cv.fold");
    let o = runner(p, &["run", "t/cv", "--smoke", "--out", "out"]);
    assert_clean_error(&o, "could not be pooled");
    assert!(!p.join("out/tiny").exists());
    // One seed with the fold fixed, and the folds without a fixed one, are fine.
    write(p, "cv1.yaml", &cv);
    assert!(runner(p, &["validate", "t/cv1"]).status.success());
}

#[test]
fn data_that_is_not_a_regular_file_of_bounded_size_is_refused_at_once() {
    let d = setup();
    let p = d.path();
    let data = p.join("data");
    fs::create_dir_all(&data).unwrap();
    let file = data.join("digits.csv.gz");
    let with_data = |args: &[&str]| {
        let mut c = runner_command(p, args);
        c.env("REPRISE_DATA", &data);
        c
    };
    let output_within = |args: &[&str]| {
        output_within(
            &mut with_data(args),
            60,
            &format!("runner {}", args.join(" ")),
        )
    };
    // A FIFO, a link to /dev/zero, a sparse file beyond the bound, a file with the wrong
    // checksum: `data --check` says what is wrong (never "present"), a run refuses it.
    let sparse = |f: &Path| {
        let h = fs::File::create(f).unwrap();
        h.set_len(60 << 30).unwrap();
    };
    for (what, make) in [
        (
            "fifo",
            &(|f: &Path| {
                assert!(std::process::Command::new("mkfifo")
                    .arg(f)
                    .status()
                    .unwrap()
                    .success());
            }) as &dyn Fn(&Path),
        ),
        ("/dev/zero", &|f: &Path| {
            std::os::unix::fs::symlink("/dev/zero", f).unwrap()
        }),
        ("sparse", &sparse),
        ("wrong checksum", &|f: &Path| {
            fs::write(f, b"\x1f\x8b not the digits").unwrap()
        }),
    ] {
        make(&file);
        let o = output_within(&["data", "--check", "t/tiny"]);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains("BAD") && !t.contains("present"),
            "{what}: {t}"
        );
        let o = output_within(&["run", "t/tiny", "--smoke", "--out", "out"]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{what}: {}", text(&o));
        fs::remove_file(&file).unwrap();
    }
    // A spec that extends a FIFO, and one lying under experiments/: an error, not a wait.
    let fifo = p.join("experiments/t/base.yaml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    write(p, "child.yaml", "extends: base.yaml\nname: c\n");
    let o = output_within(&["validate", "t/child"]);
    assert_clean_error(&o, "not a regular file");
    let o = output_within(&["list"]);
    assert!(text(&o).contains("tiny"), "{}", text(&o));
    let o = output_within(&["validate"]);
    assert!(
        !o.status.success() && text(&o).contains("not a regular file"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_experiments_folder_that_loops_is_walked_once() {
    let d = setup();
    let p = d.path();
    let ex = p.join("experiments");
    std::os::unix::fs::symlink(".", ex.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("..", ex.join("t/loop-b")).unwrap();
    let t = Instant::now();
    let o = runner_within(p, &["list"], 30);
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("tiny digits JEM"))
        .count();
    assert_eq!(listed, 1, "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_argument_that_is_not_utf8_is_no_panic() {
    use std::os::unix::ffi::OsStrExt as _;
    let d = setup();
    let p = d.path();
    let out = std::ffi::OsStr::from_bytes(b"x\xff");
    let o = runner_command(p, &["run", "t/tiny", "--smoke", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let run: PathBuf = runs_under(&p.join(out).join("tiny")).remove(0);
    let info = fs::read_to_string(run.join("run.json")).unwrap();
    assert!(info.contains("x\u{fffd}"), "{info}");
}

#[test]
fn a_cross_validation_report_checks_each_fold_it_pools() {
    use reprise_core::predictions::{Predictions, FILE};
    let d = setup();
    let p = d.path();
    let spec = TINY
        .replace("split: { train: 300, test: 100 }", "cv: { folds: 3 }")
        .replace("seed: 0\n", "seed: 0\nseeds: [0, 1, 2]\n")
        + "sweep:\n  jem.arm: [jem, base]\n";
    write(p, "cv.yaml", &spec);
    let o = runner(
        p,
        &["run", "t/cv", "--smoke", "--out", "out", "--jobs", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sweep = runs_under(&p.join("out/tiny")).remove(0);
    let report = |what: &str| -> String {
        let o = runner(p, &["report", sweep.to_str().unwrap()]);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{what}: {}", text(&o));
        fs::read_to_string(sweep.join("report.md")).unwrap()
    };
    let md = report("complete");
    assert!(
        md.contains("Pooled out-of-fold") && !md.contains("Not pooled"),
        "{md}"
    );

    // One fold of the JEM arm not finished: named, the rest reported.
    let fold = sweep.join("arm=jem,seed=2");
    fs::rename(fold.join("summary.json"), p.join("summary.json")).unwrap();
    let md = report("unfinished fold");
    assert!(md.contains("fold 2 (seed=2) not finished"), "{md}");
    fs::rename(p.join("summary.json"), fold.join("summary.json")).unwrap();

    // Its predictions missing, or another arm's copied in, or re-signed with a label no
    // class has: each named, none pooled, no panic.
    let file = fold.join(FILE);
    let kept = p.join("kept.safetensors");
    fs::rename(&file, &kept).unwrap();
    let md = report("missing file");
    assert!(md.contains("Not pooled") && md.contains(FILE), "{md}");
    fs::copy(sweep.join("arm=base,seed=2").join(FILE), &file).unwrap();
    let md = report("another arm's file");
    assert!(
        md.contains("Not pooled") && md.contains("not by the run of its folder"),
        "{md}"
    );
    let good = Predictions::load(&kept).unwrap();
    let mut labels = Vec::<i64>::try_from(&good.labels).unwrap();
    labels[0] = 99;
    let id = serde_json::from_slice::<serde_json::Value>(&fs::read(fold.join("run.json")).unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    Predictions::new(
        good.index.clone(),
        &good.logits,
        &tch::Tensor::from_slice(&labels),
    )
    .unwrap()
    .save(&file, &id)
    .unwrap();
    let md = report("label 99");
    assert!(
        md.contains("Not pooled") && md.contains("label of 99"),
        "{md}"
    );
    fs::rename(&kept, &file).unwrap();
    let md = report("restored");
    assert!(!md.contains("Not pooled"), "{md}");
}

#[test]
fn a_stderr_whose_reader_has_gone_neither_fails_nor_stops_a_run() {
    // `runner run … 2>&1 | head -2`: the reader takes two lines and goes; the sweep's runs
    // must still run to the end, finished.
    let d = setup();
    let p = d.path();
    write(p, "seeds.yaml", &tiny_sweep(""));
    let mut child = Reaper(
        runner_command(p, &["run", "t/seeds", "--smoke", "--out", "out"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    }
    drop(err);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the runner did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let sweep = runs_under(&p.join("out/tiny")).remove(0);
    for run in ["seed=0", "seed=1"] {
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(sweep.join(run).join("run.json")).unwrap()).unwrap();
        assert_eq!(info["status"], "finished", "{run}: {info}");
    }
}
