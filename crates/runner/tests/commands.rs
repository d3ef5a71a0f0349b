//! The runner's other commands end to end: compare, tensorboard, export, plan.

use std::fs;
use std::process::Command;

mod common;
use common::*;

#[test]
fn compare_puts_a_variant_beside_its_parent_metric_by_metric() {
    let d = setup();
    let p = d.path();
    for (out, lr) in [("a", "0.01"), ("b", "0.03")] {
        let lr = format!("jem.optim.lr={lr}");
        let o = runner(
            p,
            &[
                "run",
                "t/tiny",
                "--smoke",
                "--out",
                out,
                "seeds=[0, 1]",
                &lr,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let a = &runs_under(&p.join("a/tiny"))[0];
    let b = &runs_under(&p.join("b/tiny"))[0];
    let o = runner(p, &["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let acc = t
        .lines()
        .find(|l| l.starts_with("| (all) | acc |"))
        .unwrap_or_else(|| panic!("no acc row: {t}"));
    assert!(acc.matches("(n=2)").count() == 2, "{acc}");
    assert!(acc.ends_with("| yes |") || acc.ends_with("| no |"), "{acc}");
    // What differs between the specs, the seeds both sides ran, the test; no timing or
    // constant rows.
    assert!(t.contains("`jem.optim.lr`: 0.01 → 0.03"), "{t}");
    assert!(t.contains("Both sides ran the same 2 seed(s)"), "{t}");
    assert!(t.contains("Welch's t-test") && t.contains("Holm"), "{t}");
    for timing in ["step_ms", "wall", "_secs", "| classes |"] {
        assert!(!t.contains(timing), "`{timing}` compared: {t}");
    }
    // A run folder against a sweep, and a folder that is neither.
    let run_a = a.join("seed=0");
    assert!(runner(
        p,
        &["compare", run_a.to_str().unwrap(), b.to_str().unwrap()]
    )
    .status
    .success());
    assert_clean_error(
        &runner(p, &["compare", "nowhere", b.to_str().unwrap()]),
        "neither a run folder",
    );
}

#[test]
fn tensorboard_reads_back_the_metrics_and_figures_a_run_writes() {
    let d = setup();
    let p = d.path();
    // The JEM arm, and the base arm, which logs NaN for the terms it does not compute: those
    // are no curves.
    let o = runner(p, &["run", "t/tiny", "--out", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = runner(p, &["run", "t/tiny", "--out", "base", "jem.arm=base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = runs_under(&p.join("base/tiny")).remove(0);
    let run = &runs_under(&p.join("out/tiny"))[0];
    assert!(run.join("tensorboard").is_dir());
    let python = python();
    // TensorBoard's own reader against metrics.jsonl, value by value (float32 in the events).
    let script = r#"
import json, math, sys
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    sys.exit("the tensorboard package is missing from the venv: `just setup` installs it")
run = sys.argv[1]
ea = EventAccumulator(run + "/tensorboard", size_guidance={"scalars": 0, "images": 0})
ea.Reload()
want = {}
for line in open(run + "/metrics.jsonl"):
    r = json.loads(line)
    for k, v in r["values"].items():
        if v is not None:
            want.setdefault(k, []).append((r["step"], v))
tags = ea.Tags()
curves = [t for t in tags["scalars"] if not t.startswith("summary/")]
assert sorted(curves) == sorted(want), (tags["scalars"], sorted(want))
for k, pts in want.items():
    got = [(e.step, e.value) for e in ea.Scalars(k)]
    assert [s for s, _ in got] == [s for s, _ in pts], k
    for (_, a), (_, b) in zip(got, pts):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30), (k, a, b)
    # Real times: the run's start and after (not seconds since 1970).
    import time
    walls = [e.wall_time for e in ea.Scalars(k)]
    assert all(time.time() - 86400 < w < time.time() + 60 for w in walls), (k, walls[:3])
import os
figs = sorted(f[:-4] for f in os.listdir(run + "/figures") if f.endswith(".png"))
assert figs and sorted(t.split("/", 1)[1] for t in tags["images"]) == figs, (tags["images"], figs)
img = ea.Images(tags["images"][0])[0]
assert img.width > 0 and img.height > 0 and img.encoded_image_string[:4] == b"\x89PNG"
# The run is a session of the HParams dashboard: its seed (and swept values), its summary's
# numbers as metrics, ended well.
from tensorboard.plugins.hparams import plugin_data_pb2
content = ea.PluginTagToContent("hparams")
start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
assert start.session_start_info.hparams["seed"].number_value == 0, start
end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
from tensorboard.plugins.hparams import api_pb2
assert end.session_end_info.status == api_pb2.STATUS_SUCCESS, end
summary = json.load(open(run + "/summary.json"))
acc = ea.Scalars("summary/acc")[-1].value
assert math.isclose(acc, summary["acc"], rel_tol=1e-6), (acc, summary["acc"])
assert "summary/wall_seconds" not in tags["scalars"], tags["scalars"]
print(f"{len(want)} scalars and {len(figs)} figures read back")
"#;
    for r in [run, &base] {
        let o = Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(r)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", r.display(), text(&o));
    }
    // Switched off, no event file.
    let o = runner(
        p,
        &[
            "run",
            "t/tiny",
            "--smoke",
            "--out",
            "off",
            "tensorboard=false",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!runs_under(&p.join("off/tiny"))[0]
        .join("tensorboard")
        .exists());
}

#[test]
fn export_writes_a_state_dict_torch_load_reads() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["run", "t/tiny", "--smoke", "--out", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = &runs_under(&p.join("out/tiny"))[0];
    let o = runner(p, &["export", run.to_str().unwrap(), "--out", "exported"]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(p.join("exported/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["experiment"], "tiny");
    assert_eq!(
        cfg["config"]["ce_weight"], 1.0,
        "the paper config with its defaults"
    );
    let python = python();
    let script = r#"
import glob, sys, torch
sys.path.insert(0, sys.argv[3] + "/scripts")
from convert_robustness_ckpt import read_safetensors
sd = torch.load(sys.argv[2] + "/model.pt")
assert type(sd).__name__ == "OrderedDict" and not any(k.startswith("model.") for k in sd), list(sd)
ck = read_safetensors(sorted(glob.glob(sys.argv[1] + "/checkpoints/step-*.safetensors"))[-1])
want = {k[len("model."):]: v for k, v in ck.items() if k.startswith("model.")}
assert set(sd) == set(want) and all(sd[k].equal(v) for k, v in want.items())
print(len(sd), "tensors")
"#;
    let o = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(run)
        .arg(p.join("exported"))
        .arg(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_clean_error(
        &runner(p, &["export", "out", "--out", "x"]),
        "is not a run folder",
    );
    // How the inputs are scaled, and that the run finished.
    assert!(
        cfg["inputs"]["model.pt"]
            .as_str()
            .is_some_and(|s| s.contains("[-1, 1]")),
        "{cfg}"
    );
    assert_eq!(cfg["finished"], true, "{cfg}");
    // An unfinished run is exported from its last checkpoint, and says so.
    let _ = fs::remove_file(run.join("finished"));
    let _ = fs::remove_file(run.join("model.safetensors"));
    let o = runner(p, &["export", run.to_str().unwrap(), "--out", "unfinished"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("has not finished"), "{}", text(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(p.join("unfinished/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["finished"], false, "{cfg}");
    assert!(cfg["step"].as_u64().is_some(), "{cfg}");
    // Nothing to export: the message names what is missing, without an empty name.
    fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let o = runner(p, &["export", run.to_str().unwrap(), "--out", "none"]);
    assert_clean_error(&o, "no model.safetensors, and no step checkpoint");
}

#[test]
fn plan_times_real_steps_and_projects_the_run() {
    let d = setup();
    let p = d.path();
    let o = runner(p, &["plan", "t/tiny", "--steps", "3", "--nproc", "2"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for needle in [
        "one jem iteration: batch 32, SGLD K = 3",
        "ms a step (median of 3",
        "steps     60 (jem.iterations)",
        "of training on one device",
        "one jem iteration: batch 32 (16 per rank of 2)",
        "ms to average 0.0 M gradients (Gloo on this host, 2 local ranks)",
    ] {
        assert!(t.contains(needle), "`{needle}` in {t}");
    }
    let ms: f64 = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("time"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(ms > 0.0 && ms.is_finite(), "{t}");
    assert!(!p.join("runs").exists(), "a plan makes no run folder");
    // Each distinct configuration of a sweep is timed, seeds aside; --threads; the spread.
    write(
        p,
        "arms.yaml",
        &(TINY.replace("seed: 0\n", "seed: 0\nseeds: [0, 1]\n")
            + "sweep:\n  jem.arm: [jem, base]\n"),
    );
    let o = runner(p, &["plan", "t/arms", "--steps", "3", "--threads", "1"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for needle in [
        "(4 runs, 2 distinct configurations timed)",
        "1 intra-op threads",
        "configuration 1 of 2 (2 runs: arm=jem,seed=0, arm=jem,seed=1)",
        "one jem iteration: batch 32, SGLD K = 3",
        "one base iteration: batch 32, SGLD K = 3 (not used by this arm)",
        "device-hours of training for the 4 runs",
    ] {
        assert!(t.contains(needle), "`{needle}` in {t}");
    }
    let spreads: Vec<(f64, f64, f64)> = t
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("time")?;
            let median: f64 = l.split_whitespace().next()?.parse().ok()?;
            let (_, range) = l.split_once("warm-up steps; ")?;
            let (lo, hi) = range.trim_end_matches(" ms)").split_once(" to ")?;
            Some((lo.parse().ok()?, median, hi.parse().ok()?))
        })
        .collect();
    assert_eq!(spreads.len(), 2, "{t}");
    assert!(spreads.iter().all(|(lo, m, hi)| lo <= m && m <= hi), "{t}");
    // A timed step that fails is an error, not a time.
    let o = runner(p, &["plan", "t/tiny", "--steps", "3", "jem.optim.lr=1e30"]);
    assert_clean_error(&o, "timed step");
    let ts = root().join("experiments/tsit/digits-ast.yaml");
    let o = runner(
        p,
        &["plan", ts.to_str().unwrap(), "--steps", "1", "--nproc", "2"],
    );
    // TSIT trains data-parallel (its FADE BatchNorm synchronised): a rank's share is timed.
    assert!(
        o.status.success() && text(&o).contains("2 ranks") && text(&o).contains("per rank"),
        "{}",
        text(&o)
    );
    // deepthin: the teacher's step and the thin network's, weighted by the steps of each
    // (counted stage by stage), and data-parallel in every family.
    let spec = fs::read_to_string(root().join("experiments/deepthin/mnist-residual.yaml")).unwrap();
    write(p, "dt.yaml", &spec);
    let o = runner(p, &["plan", "t/dt", "--steps", "1", "--nproc", "2"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for needle in [
        "one residual (depth 16) step: batch 128 — the wide teacher",
        "steps     24000 (the teacher's 960 and the arms' 23040 at depth 16: 32 an epoch of 4000",
        "batch 128 (64 per rank of 2)",
    ] {
        assert!(t.contains(needle), "`{needle}` in {t}");
    }
    // A convolutional one on an ImageFolder: its images counted (2 classes × 16), 8 batches
    // of 4 an epoch: teacher 4 epochs (32 steps), scratch 4 (32), WIN 3 stages × 1 + 2 + 1 (48).
    write_image_folder(p, 16);
    write(p, "tiny-conv.yaml", &tiny_conv(p));
    let o = runner(p, &["plan", "t/tiny-conv", "--steps", "1"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for needle in [
        "one WRN-10 step: batch 4 — the wide teacher",
        "steps     112 (the teacher's 32 and the arms' 80 at depth 10: 8 an epoch of 32",
    ] {
        assert!(t.contains(needle), "`{needle}` in {t}");
    }
}

#[test]
fn run_json_records_the_commit_the_binary_was_built_from_beside_the_checkout_s() {
    let d = setup();
    let p = d.path();
    // The experiments in a git checkout of their own: at another commit than the binary's.
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(p.join("experiments"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "x"]);
    let checkout = git(&["rev-parse", "HEAD"]);
    let o = runner(p, &["run", "t/tiny", "--smoke", "--out", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("out/tiny")).remove(0);
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("run.json")).unwrap()).unwrap();
    let prov = &info["provenance"];
    assert_eq!(prov["commit"], checkout.as_str(), "{info}");
    let built = prov["built_from"].as_str().expect("the build commit");
    assert_eq!(built.len(), 40, "{info}");
    assert_ne!(built, checkout);
    assert!(prov["built_dirty"].is_boolean(), "{info}");
    assert!(
        text(&o).contains("but this runner was built from"),
        "{}",
        text(&o)
    );
    // A smoke run records its smoke budget; a full run none.
    assert_eq!(info["smoke_iterations"], 3, "{info}");
    let o = runner(
        p,
        &[
            "run",
            "t/tiny",
            "--out",
            "full",
            "jem.iterations=2",
            "jem.eval.every=2",
            "jem.checkpoint_every=2",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let run = runs_under(&p.join("full/tiny")).remove(0);
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("run.json")).unwrap()).unwrap();
    assert!(info["smoke_iterations"].is_null(), "{info}");
}
