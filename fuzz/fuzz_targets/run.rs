//! Runs what the `spec` target accepts. An input whose header and paper validation pass (lines
//! starting with `#= ` are overrides, as there) is executed as `runner run --smoke` would: its
//! `smoke:` settings applied, at most 2 training iterations, on the CPU with one thread, in a
//! temporary folder. Its datasets come from `REPRISE_DATA` (`just fuzz` points it at `data/`).
//! Any outcome is fine except a panic, an abort, a hang or runaway memory: a spec that
//! validates must run, or fail with an error. Paper-scale specs (`expected_minutes` over 120)
//! are skipped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_core::run::{RunContext, RunInfo};
use reprise_core::spec::SpecTree;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut tree) = SpecTree::from_str("fuzz.yaml", text) else {
        return;
    };
    let Ok(header) = tree.header() else {
        return;
    };
    // Paper-scale specs (expected to take days): even their smoke runs build the paper's networks
    // and take a minute, which would read as hangs; the `spec` target covers their validation.
    if header.expected_minutes.is_some_and(|m| m > 120.0) {
        return;
    }
    for (k, v) in &header.smoke.set {
        if tree.set(k, v.clone()).is_err() {
            return;
        }
    }
    for o in text.lines().filter_map(|l| l.strip_prefix("#= ")) {
        if tree.apply_override(o).is_err() {
            return;
        }
    }
    let Ok(header) = tree.header() else {
        return;
    };
    let papers = [
        jem::paper(),
        robust_transfer::paper(),
        deepthin::paper(),
        tsit::paper(),
    ];
    let Some(paper) = papers.iter().find(|p| p.name == header.paper) else {
        return;
    };
    let Ok(runs) = tree.expand() else {
        return;
    };
    let Some((_, run)) = runs.into_iter().next() else {
        return;
    };
    if (paper.validate)(&run).is_err() {
        return;
    }
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let info = RunInfo {
        smoke: true,
        smoke_iterations: Some(header.smoke.iterations.unwrap_or(2).min(2)),
        device: "Cpu".into(),
        threads: 1,
        versions: Default::default(),
        started: reprise_core::run::utc_stamp(),
        id: "fuzz".into(),
        provenance: Default::default(),
    };
    let Ok(mut ctx) = RunContext::create(dir.path(), run, info, tch::Device::Cpu) else {
        return;
    };
    let _ = (paper.run)(&mut ctx);
});
