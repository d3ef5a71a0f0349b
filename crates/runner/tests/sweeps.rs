//! Sweeps end to end: expansion into worker processes, the aggregate report, shards sharing a
//! folder, diverged runs in a sweep report.

use std::fs;

mod common;
use common::*;

#[test]
fn sweeps_expand_run_in_workers_and_aggregate() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "sweep.yaml",
        "extends: tiny.yaml\nname: sw\nsweep:\n  jem.model.mlp.width: [8, 16]\nseeds: [0, 1]\n",
    );
    let o = runner(
        p,
        &["run", "t/sweep", "--smoke", "--jobs", "2", "--out", "out"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sweeps = runs_under(&p.join("out/sw"));
    assert_eq!(sweeps.len(), 1);
    let s = &sweeps[0];
    assert!(s.file_name().unwrap().to_string_lossy().ends_with("-smoke"));
    for name in [
        "width=8,seed=0",
        "width=8,seed=1",
        "width=16,seed=0",
        "width=16,seed=1",
    ] {
        assert!(s.join(name).join("summary.json").is_file(), "{name}");
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(s.join(name).join("run.json")).unwrap()).unwrap();
        assert_eq!(info["threads"], 1, "--jobs workers run single-threaded");
        assert_eq!(info["smoke"], true);
    }
    let report = fs::read_to_string(s.join("report.md")).unwrap();
    assert!(
        report.contains("| width=8 | 2 |") && report.contains("| width=16 | 2 |"),
        "{report}"
    );
}

#[test]
fn shards_split_a_sweep_and_share_its_folder() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "sweep.yaml",
        "extends: tiny.yaml\nname: sh\nseeds: [0, 1, 2]\n",
    );
    for s in ["0/2", "1/2"] {
        let o = runner(
            p,
            &["run", "t/sweep", "--smoke", "--shard", s, "--out", "out"],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let sweeps = runs_under(&p.join("out/sh"));
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    let s = &sweeps[0];
    for n in ["seed=0", "seed=1", "seed=2"] {
        assert!(s.join(n).join("summary.json").is_file(), "{n}");
    }
    assert!(fs::read_to_string(s.join("report.md"))
        .unwrap()
        .contains("| (all) | 3 |"));
}

#[test]
fn a_sweep_report_counts_a_run_with_diverged_json_as_diverged() {
    let d = setup();
    let p = d.path();
    // lr = 50 diverges; the sweep's report (from run.json/diverged.json, not the log's wording)
    // names it so.
    let o = runner(
        p,
        &[
            "run",
            "t/tiny",
            "--out",
            "out",
            "seeds=[0]",
            "--sweep",
            "jem.optim.lr=0.01,50",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let sweep = &runs_under(&p.join("out/tiny"))[0];
    let bad = sweep.join("lr=50,seed=0");
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(bad.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "diverged", "{info}");
    assert!(bad.join("diverged.json").is_file());
    // The log's wording is not what decides.
    fs::write(bad.join("run.log"), "").unwrap();
    let o = runner(p, &["report", sweep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let md = fs::read_to_string(sweep.join("report.md")).unwrap();
    assert!(md.contains("`lr=50,seed=0`: diverged"), "{md}");
}
