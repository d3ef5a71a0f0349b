//! `deepthin`: "Go Wide, Then Narrow: Efficient Training of Deep Thin Networks" (Zhou et al.,
//! ICML 2020, arXiv 2007.00811).
//!
//! A run trains the wide teacher B for one (depth, seed), caches its block outputs and logits,
//! then runs every arm of the spec on a fresh thin network S (the same initialisation and data
//! order for every arm of the seed). An arm is a declarative list of stages ([`config::Stage`]):
//! end-to-end training with CE or distillation, layerwise imitation through linear pairs, the
//! exact merge, FitNets' hint. [`report`] computes the small-scale claims C0–C4
//! (docs/deepthin.md) from a sweep over depths and seeds.

mod arm;
pub mod claims;
pub mod config;
pub mod conv;
mod memory;
pub mod model;
mod plan;
pub mod report;
pub mod stream;
pub mod summary;
pub mod train;

pub use config::Config;

use crate::config::Stage;
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::run::{Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::Result;

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "deepthin",
        title: "Go Wide, Then Narrow: Efficient Training of Deep Thin Networks (arXiv 2007.00811)",
        validate,
        config: |t| reprise_core::run::section_with_defaults::<Config>(t, "deepthin"),
        inputs,
        plan: Some(plan::plan),
        exports: &[reprise_core::run::Export {
            name: "teacher",
            file: Some("teacher.safetensors"),
            prefix: "teacher",
            inputs: None,
        }],
        data_parallel: true,
        run,
        report: report::report_run,
        report_sweep: report::report_sweep,
    }
}

/// Checks the `deepthin:` section ([`Config::validate`]).
pub fn validate(tree: &SpecTree) -> Result<(), SpecError> {
    tree.typed::<Config>("deepthin")?.validate(tree)
}

/// The inputs a run reads that reprise cannot fetch: the dataset and a teacher to load.
pub fn inputs(tree: &SpecTree) -> Result<Vec<Input>, SpecError> {
    let c: Config = tree.typed("deepthin")?;
    let h = tree.header()?;
    let mut v: Vec<Input> = of_data("data", &h.data).into_iter().collect();
    v.extend(
        c.teacher_from
            .map(|p| Input::new("deepthin.teacher_from", p, InputKind::RunCheckpoint)),
    );
    Ok(v)
}

/// Where a run's teacher comes from instead of stage 1: `teacher_from`, else the run folder's
/// `teacher.safetensors` if an earlier sitting wrote it.
fn teacher_source(c: &Config, tfile: &std::path::Path) -> Option<std::path::PathBuf> {
    c.teacher_from
        .clone()
        .or_else(|| tfile.is_file().then(|| tfile.to_path_buf()))
}

/// The run folder's ledger of finished arms.
const ARMS: &str = "arms.json";

/// The dataset name of the synthetic sorting task (docs/deepthin.md): length-12 sequences over 10
/// tokens, generated from `data.split_seed`.
pub(crate) const SORT_TASK: &str = "sort12";

/// Trains the teacher and runs every arm that applies at this depth, in the convolutional
/// families' phases ([`conv::run`]) or in memory (`memory.rs`), resuming what was unfinished.
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let mut c: Config = ctx.config()?;
    if ctx.smoke() {
        // A smoke run: every stage for a fraction of an epoch.
        let f = 0.05;
        c.teacher.epochs *= f;
        for arm in c.arms.values_mut() {
            for s in &mut arm.stages {
                match s {
                    Stage::Train(t) => t.epochs *= f,
                    Stage::Imitate(m) => m.epochs *= f,
                    Stage::Hint(hs) => hs.epochs *= f,
                    Stage::Merge | Stage::CopyHead => {}
                }
            }
        }
    }
    // Every stage shares the one batch; `amp` applies to the convolutional families.
    if c.arch.kind.is_conv() {
        ctx.record_share("every stage", c.batch, c.amp)?;
        return conv::run(ctx, &c);
    }
    ctx.record_share("every stage", c.batch, reprise_core::amp::Amp::None)?;
    memory::run(ctx, &c)
}
