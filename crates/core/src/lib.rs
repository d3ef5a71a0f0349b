//! `reprise-core`: the toolkit shared by every paper crate of reprise.
//!
//! It knows no paper. It holds the experiment-spec loader ([`spec`]), run folders and the
//! context a run executes in ([`run`]), progress and logging, checkpoints, datasets
//! ([`data`]), metrics, optimizers and reports.

pub mod amp;
pub mod attack;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod fixture;
pub mod inception;
pub mod inputs;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod optim;
pub mod parallel;
pub mod plan;
pub mod plot;
pub mod predictions;
pub mod progress;
pub mod report;
pub mod run;
pub mod seed;
pub mod spec;
pub mod tensorboard;
pub mod timing;
pub mod torch_save;
pub mod train;

pub use error::{Error, Result};

/// The version of `tch` reprise is built with (it binds PyTorch 2.11.0).
pub const TCH_VERSION: &str = "0.24.0";
