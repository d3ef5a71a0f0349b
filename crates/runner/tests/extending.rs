//! docs/EXTENDING.md stays true: its example specs validate and run their smoke test, and the
//! source files and items it names exist.

mod common;

use common::*;
use std::fs;

fn guide() -> String {
    fs::read_to_string(root().join("docs/EXTENDING.md")).unwrap()
}

/// The ```yaml blocks whose first line is `# file: <path>`, as (path, text).
fn example_files(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = md;
    while let Some(i) = rest.find("```yaml\n") {
        let body = &rest[i + 8..];
        let end = body.find("```").expect("a closed block");
        let block = &body[..end];
        if let Some(path) = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# file: "))
        {
            out.push((path.trim().to_string(), block.to_string()));
        }
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn the_guide_s_example_specs_validate_and_run() {
    let files = example_files(&guide());
    assert!(!files.is_empty(), "no `# file:` example in the guide");
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for (path, text) in files {
        let rel = path
            .strip_prefix("experiments/")
            .expect("under experiments/");
        let paper = rel.split('/').next().unwrap();
        // The paper's specs, which the example extends.
        copy_dir(
            &root().join("experiments").join(paper),
            &p.join("experiments").join(paper),
        );
        fs::write(p.join("experiments").join(rel), &text).unwrap();
        let name = rel.trim_end_matches(".yaml");
        let o = runner(p, &["validate", name]);
        assert!(o.status.success(), "{path}: {}", text_of(&o));
        let o = runner(p, &["run", name, "--print-config"]);
        assert!(o.status.success(), "{path}: {}", text_of(&o));
        // What the example says it expands to.
        for want in text.lines().filter_map(|l| l.strip_prefix("# expect: ")) {
            assert!(
                text_of(&o).contains(want),
                "{path}: `{want}` in {}",
                text_of(&o)
            );
        }
        let o = runner(
            p,
            &[
                "run",
                name,
                "--smoke",
                "seed=0",
                "--out",
                "out",
                "--threads",
                "1",
            ],
        );
        assert!(o.status.success(), "{path}: {}", text_of(&o));
    }
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[test]
fn the_files_and_items_the_guide_names_exist() {
    let md = guide();
    let mut named = 0;
    for word in md.split('`') {
        let w = word.trim();
        if (w.starts_with("crates/") || w.starts_with("experiments/")) && !w.contains([' ', '<']) {
            let w = w.trim_end_matches(|c: char| !c.is_alphanumeric());
            // An example spec is written by the other test.
            if w.ends_with("mnist-small-k20.yaml") {
                continue;
            }
            assert!(root().join(w).exists(), "docs/EXTENDING.md names {w}");
            named += 1;
        }
    }
    assert!(named >= 6, "{named} paths");
    // The API a new loop or variant is written against.
    let sources: String = [
        "crates/core/src/train.rs",
        "crates/core/src/run.rs",
        "crates/core/src/parallel.rs",
        "crates/core/src/optim.rs",
        "crates/core/src/error.rs",
        "crates/jem/src/sampler.rs",
        "crates/jem/src/config.rs",
        "crates/robust-transfer/src/train.rs",
        "crates/robust-transfer/src/config.rs",
        "crates/runner/src/main.rs",
    ]
    .iter()
    .map(|f| fs::read_to_string(root().join(f)).unwrap())
    .collect();
    for item in [
        "pub fn begin(",
        "pub fn start_next(",
        "pub fn end_step(",
        "pub fn at_end(",
        "pub fn at_every(",
        "pub struct Averages",
        "pub fn take(",
        "pub fn stop_if_interrupted(",
        "pub fn resume_point(",
        "pub fn section_with_defaults",
        "pub fn draw_rows(",
        "pub fn data_parallel(",
        "pub fn shard_batch<",
        "pub fn weigh(",
        "pub fn at(self",
        "pub fn sgld_with(",
        "pub struct SgldConfig",
        "pub struct AttackConfig",
        "pub fn training_inputs_of_rows(",
        "pub data_parallel: bool",
        "pub fn papers()",
        "pub fn nan_if_null",
        "pub fn parse<S",
        "pub fn finished_run<S",
    ] {
        assert!(
            sources.contains(item),
            "docs/EXTENDING.md relies on `{item}`"
        );
    }
}
