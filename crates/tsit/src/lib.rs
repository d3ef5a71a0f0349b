//! `tsit`: "TSIT: A Simple and Versatile Framework for Image-to-Image Translation" (Jiang et
//! al., ECCV 2020, arXiv 2007.12072).
//!
//! A run trains one arm (TSIT with both streams, TSIT without FAdaIN, TSIT for semantic
//! synthesis, or the pix2pixHD-style baseline) on one task for one seed: one generator step then
//! one discriminator step per iteration, each with its own TTUR Adam; it evaluates every
//! `eval.every` iterations with frozen evaluation networks trained in the project, and writes
//! image grids. [`report`] computes the spec's claims A1–A3 and S1–S3 from a sweep.

pub mod claims;
pub mod config;
pub mod data;
pub mod eval;
pub mod folders;
mod helpers;
pub mod model;
pub mod nets;
pub mod official;
pub mod report;
pub mod scenes;
pub mod summary;
pub mod train;

pub use config::{validate, Config};

use crate::config::{Arm, PerceptualConfig, Sampling, Task};
use crate::data::TaskData;
use crate::eval::Evaluator;
use crate::helpers::{judges, perceptual, perceptual_fixed};
use crate::model::{Discriminator, Generator, Mode, P2phd, Tsit};
use crate::nets::Perceptual;
use crate::summary::JudgeInfo;
use crate::train::{Gan, StepError};
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::Rng;
use reprise_core::inputs::{of_data, Input, InputKind};
use reprise_core::parallel::Parallel;
use reprise_core::run::{Paper, RunContext};
use reprise_core::spec::{SpecError, SpecTree};
use reprise_core::train::{Averages, Steps};
use reprise_core::{Error, Result};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// The paper, as the runner sees it.
pub fn paper() -> Paper {
    Paper {
        name: "tsit",
        title: "TSIT: A Simple and Versatile Framework for Image-to-Image Translation (arXiv 2007.12072)",
        validate,
        config: |t| reprise_core::run::section_with_defaults::<Config>(t, "tsit"),
        inputs,
        plan: Some(plan),
        exports: &[
            reprise_core::run::Export { name: "generator", file: Some("generator.safetensors"), prefix: "g", inputs: Some("images and outputs in [-1, 1] (x / 127.5 - 1 of 8-bit pixels)") },
            reprise_core::run::Export { name: "discriminator", file: None, prefix: "d", inputs: Some("images in [-1, 1]") },
        ],
        data_parallel: true,
        run,
        report: report::report_run,
        report_sweep: report::report_sweep,
    }
}

/// `runner plan`: times `steps` TSIT iterations (a generator step, then a discriminator step)
/// of the spec's networks, batch and size on `dev` after two warm-up ones, on random inputs (a
/// VGG-19 of the layout of the paper's loss network, with random weights: the same work); a run
/// takes `tsit.iterations` of them (its evaluations and helper networks are not counted).
pub fn plan(
    tree: &SpecTree,
    dev: Device,
    steps: usize,
    ranks: usize,
) -> Result<reprise_core::run::StepPlan> {
    let mut c: Config = tree.typed("tsit")?;
    // One rank's share of the batch (the synchronised BatchNorm's two small all-reduces a layer
    // are not in the time).
    c.batch = (c.batch + ranks.max(1) as i64 - 1) / ranks.max(1) as i64;
    let in_c = match (&c.folder, c.task) {
        (_, t) if t.is_ast() => 3,
        (Some(f), _) => f.label_nc + i64::from(f.dontcare) + i64::from(f.instance_edge),
        (None, Task::ScenesSis) => 7,
        (None, _) => 3,
    };
    let mut p = match c.perceptual {
        PerceptualConfig::Vgg19 { .. } => Perceptual::vgg19_layout(dev),
        _ => Perceptual::vgg_mini(dev, 10),
    };
    p.vs.freeze();
    let mut gan = build_gan(&c, p, in_c, dev, &Arc::new(Parallel::single()));
    let (h, w) = (c.size, c.size * c.aspect);
    let img = |ch: i64| Tensor::rand([c.batch, ch, h, w], (tch::Kind::Float, dev)) * 2.0 - 1.0;
    let (content, real) = (img(in_c), img(3));
    let style = c.task.is_ast().then(|| img(3));
    let t = reprise_core::timing::time_ms(dev, 2, steps, || {
        let b = data::Batch {
            content: content.shallow_clone(),
            style: style.as_ref().map(Tensor::shallow_clone),
            real: real.shallow_clone(),
            target: real.shallow_clone(),
        };
        gan.step(&c, &b, (c.optim.lr_g, c.optim.lr_d))
            .map(|_| ())
            .map_err(|e| Error::msg(e.to_string()))
    })?;
    Ok(reprise_core::run::StepPlan {
        what: format!(
            "one {:?} iteration (G then D) at {h}×{w}: batch {}, nf {}",
            c.task, c.batch, c.model.nf
        ),
        step_ms: t.median,
        spread_ms: (t.min, t.max),
        steps: Some(c.iterations),
        steps_from: "tsit.iterations".into(),
        params: 0,
    })
}

/// The inputs a run reads that reprise cannot fetch: the dataset's folders, the VGG-19 of the
/// perceptual loss, the released checkpoint (`tsit.from`) and the FID Inception weights.
pub fn inputs(tree: &SpecTree) -> Result<Vec<Input>, SpecError> {
    let c: Config = tree.typed("tsit")?;
    let h = tree.header()?;
    let mut v: Vec<Input> = of_data("data", &h.data).into_iter().collect();
    if let PerceptualConfig::Vgg19 { path } = &c.perceptual {
        v.push(Input::new(
            "tsit.perceptual.vgg19.path",
            path,
            InputKind::Vgg19,
        ));
    }
    v.extend(
        c.from
            .map(|p| Input::new("tsit.from", p, InputKind::TsitCheckpoint)),
    );
    v.extend(
        c.eval
            .fid_inception
            .map(|p| Input::new("tsit.eval.fid_inception", p, InputKind::FidInception)),
    );
    Ok(v)
}

/// The error a panic in a step carries: a failed collective of the synchronised BatchNorm
/// (which has no error path in a forward), or any other panic's message.
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    match panic.downcast::<Error>() {
        Ok(e) => *e,
        Err(p) => Error::msg(
            reprise_core::error::panic_message(p.as_ref())
                .unwrap_or_else(|| "a panic in the training step".into()),
        ),
    }
}

/// The networks and optimizers of a run trained by the ranks of `par` ([`Gan::data_parallel`]).
fn build_gan(c: &Config, p: Perceptual, in_c: i64, dev: Device, par: &Arc<Parallel>) -> Gan {
    let g: Box<dyn Generator> = match c.arm {
        Arm::P2phdLite => Box::new(P2phd::new(&c.model.p2phd, in_c, c.model.init, dev)),
        arm => Box::new(Tsit::new(
            &c.model,
            (c.size, c.size * c.aspect),
            in_c,
            c.task.is_ast(),
            arm == Arm::Full,
            dev,
        )),
    };
    let conditional_d = !c.task.is_ast();
    let d = Discriminator::new(&c.model, if conditional_d { 3 + in_c } else { 3 }, dev);
    let opt_g = c.amp.optimizer(train::adam(&c.optim, g.vs()));
    let opt_d = c.amp.optimizer(train::adam(&c.optim, &d.vs));
    Gan {
        g,
        d,
        p,
        opt_g,
        opt_d,
        conditional_d,
    }
    .data_parallel(par)
}

fn save(ctx: &RunContext, gan: &Gan, step: u64) -> Result<()> {
    let mut ck = Checkpoint::new();
    ck.put_vars("g", gan.g.vs());
    ck.put_vars("d", &gan.d.vs);
    gan.opt_g.save(&mut ck, "opt_g");
    gan.opt_d.save(&mut ck, "opt_d");
    ck.set("step", step);
    ctx.checkpoints().save(step, &ck)?;
    Ok(())
}

/// Checks, copying nothing, that a checkpoint holds every tensor of G, D and their optimizers
/// with its kind and shape, and the step.
fn fits(gan: &Gan, ck: &Checkpoint) -> Result<()> {
    ck.check_vars("g", gan.g.vs())?;
    ck.check_vars("d", &gan.d.vs)?;
    gan.opt_g.check(ck, "opt_g")?;
    gan.opt_d.check(ck, "opt_d")?;
    ck.get::<u64>("step").map(|_| ())
}

fn load(gan: &mut Gan, ck: &Checkpoint) -> Result<()> {
    fits(gan, ck)?;
    ck.load_vars("g", gan.g.vs())?;
    ck.load_vars("d", &gan.d.vs)?;
    gan.opt_g.load(ck, "opt_g")?;
    gan.opt_d.load(ck, "opt_d")?;
    Ok(())
}

/// Loads official weights (`tsit.from`, see [`official`]) into the generator (and the
/// discriminator when the file has it), and writes the generator evaluated to
/// `generator.safetensors` in the run folder.
fn load_official(ctx: &RunContext, f: &std::path::Path, gan: &Gan) -> Result<()> {
    let named = reprise_core::nn::read_weights(
        f,
        "the official latest_net_G/D/E.pth convert with scripts/convert_tsit_ckpt.py",
    )?;
    let map = official::to_reprise(&named)?;
    let from = f.display().to_string();
    official::load(gan.g.vs(), official::Store::G, &map, &from)?;
    if map.keys().any(|(s, _)| *s == official::Store::D) {
        official::load(&gan.d.vs, official::Store::D, &map, &from)?;
    }
    gan.g
        .vs()
        .save(ctx.dir().join("generator.safetensors"))
        .map_err(|e| Error::msg(format!("cannot write generator.safetensors: {e}")))?;
    reprise_core::note!("evaluating {from} (no training)");
    tracing::info!("evaluating {from} (no training)");
    Ok(())
}

/// The training items of `step`'s batch of `b` from `n`: the step's slice of its epoch's
/// seeded shuffle, the last partial batch dropped (`Sampling::Epochs`), or `b` draws from
/// `rng` with replacement.
fn batch_items(
    n: usize,
    b: usize,
    (sampling, seed, step): (Sampling, u64, u64),
    rng: &mut Rng,
) -> Vec<usize> {
    match sampling {
        Sampling::Replacement => (0..b).map(|_| rng.below(n)).collect(),
        Sampling::Epochs => {
            let per = (n / b.max(1)).max(1) as u64;
            let order = reprise_core::data::batch_indices(n, b, seed, step / per, true, true);
            order[(step % per) as usize]
                .iter()
                .map(|&i| i as usize)
                .collect()
        }
    }
}

/// Where a run's training batches come from.
enum Source {
    /// The small-scale tasks (generated or installed data, held in memory).
    Small(TaskData),
    /// A paper-scale dataset's folders, decoded per batch.
    Folder(folders::FolderData),
}

impl Source {
    fn train_len(&self) -> usize {
        match self {
            Source::Small(d) => d.train_len(),
            Source::Folder(f) => f.train.len(),
        }
    }

    /// The training batch of `step`: its content items are the step's slice of its epoch's
    /// seeded shuffle (`Sampling::Epochs`), or drawn from `rng` with replacement.
    fn batch(
        &self,
        task: Task,
        b: usize,
        (sampling, seed, step): (Sampling, u64, u64),
        rng: &mut Rng,
    ) -> Result<data::Batch> {
        let idx = batch_items(self.train_len(), b, (sampling, seed, step), rng);
        match self {
            Source::Small(d) => Ok(d.batch_of(&idx, rng)),
            Source::Folder(f) => {
                let (content, img) = f.load(true, &idx, Some(rng))?;
                Ok(if task.is_ast() {
                    data::Batch {
                        target: content.shallow_clone(),
                        content,
                        real: img.shallow_clone(),
                        style: Some(img),
                    }
                } else {
                    data::Batch {
                        content,
                        style: None,
                        target: img.shallow_clone(),
                        real: img,
                    }
                })
            }
        }
    }
}

/// What a run trains on and is judged by.
struct Setup {
    /// The training (and, for a folder task, test) data.
    src: Source,
    /// The loss network.
    p: Perceptual,
    /// Rank 0's evaluator of a small task (none on other ranks and for a folder task).
    ev: Option<Evaluator>,
    /// What the judges measured of themselves.
    judge_info: JudgeInfo,
    /// The content stream's input channels.
    in_c: i64,
}

/// The run's data, loss network and (rank 0, small tasks) judges; helper networks are shared by
/// the runs of a sweep.
fn setup(ctx: &RunContext, c: &Config, par: &reprise_core::parallel::Parallel) -> Result<Setup> {
    let h = ctx.header();
    let dev = ctx.device();
    // Helper networks, shared by the runs of a sweep.
    let dir = ctx.sweep_cache("tsit-nets");
    Ok(if c.task.is_folder() {
        let fc = c
            .folder
            .clone()
            .ok_or_else(|| Error::Data("needs `tsit.folder`".into()))?;
        let root = if h.data.dataset == "synthetic" {
            // Smoke tests: a tiny dataset in the task's own layout, read by the real code.
            folders::write_synthetic(
                c.task,
                &ctx.dir().join("synthetic-data"),
                &fc,
                c.size,
                c.size * c.aspect,
                2 * c.batch.max(1) as usize,
            )?
        } else {
            h.data
                .path
                .clone()
                .ok_or_else(|| Error::Data("a paper-scale tsit task reads `data.path`".into()))?
        };
        let f = folders::FolderData::new(c.task, &root, &fc, c.size, c.size * c.aspect)?;
        let in_c = f.content_channels();
        let p = perceptual_fixed(c, dev)?;
        Setup {
            src: Source::Folder(f),
            p,
            ev: None,
            judge_info: JudgeInfo::default(),
            in_c,
        }
    } else {
        let mut d = TaskData::new(c, &h.data)?;
        let p = perceptual(c, &d, &dir, dev)?;
        // The judges score rank 0's evaluation; the other ranks of a data-parallel run only train.
        let judged = par
            .is_main()
            .then(|| judges(c, &d, &dir, dev))
            .transpose()?;
        let test = d.take_test();
        let in_c = if c.task == Task::ScenesSis { 7 } else { 3 };
        let (ev, judge_info) = match judged {
            Some((judges, info)) => (Some(Evaluator::new(judges, test)), info),
            None => (None, JudgeInfo::default()),
        };
        Setup {
            src: Source::Small(d),
            p,
            ev,
            judge_info,
            in_c,
        }
    })
}

/// Trains and evaluates one run (one arm, one seed).
pub fn run(ctx: &mut RunContext) -> Result<()> {
    let c: Config = ctx.config()?;
    let h = ctx.header().clone();
    // Data-parallel: each rank trains on its rows of every batch (an equal share).
    let par = ctx.parallel();
    par.even(c.batch)?;
    ctx.record_share("train", c.batch as usize, c.amp)?;
    let seed = h.seed;
    let dev = ctx.device();
    let Setup {
        src,
        p,
        ev,
        judge_info,
        in_c,
    } = setup(ctx, &c, &par)?;
    if c.batch as usize > src.train_len() {
        return Err(Error::Data(format!(
            "tsit.batch {} is larger than the training set ({} items)",
            c.batch,
            src.train_len()
        )));
    }
    tch::manual_seed(seed as i64);
    let mut gan = build_gan(&c, p, in_c, dev, &par);
    let total = ctx.iterations(c.iterations);
    // An epoch as the official loader counts it (drop_last): ⌊items / batch⌋ iterations.
    let per_epoch = (src.train_len() / (c.batch as usize).max(1)).max(1) as u64;
    let total = if c.from.is_some() { 0 } else { total };
    let mut step = 0u64;
    if let Some(f) = &c.from {
        load_official(ctx, f, &gan)?;
    } else if let Some((_, ck)) = ctx.resume_point(|ck| fits(&gan, ck))? {
        load(&mut gan, &ck)?;
        step = ck.get("step")?;
    }
    // Rank 0's networks on every rank: the GAN, and the loss network (trained or read from a
    // cache on each rank).
    let mut steps = Steps::begin(ctx, total, step, &[gan.g.vs(), &gan.d.vs, &gan.p.vs])?;
    let mut data_secs = 0.0;
    let mut means = Averages::new(&["g_gan", "g_fm", "g_vgg", "g_kld", "d_real", "d_fake"]);
    let vae = c.model.vae;
    while steps.start_next() {
        let step = steps.step();
        let t0 = Instant::now();
        let mut rng = reprise_core::seed::step_rng(seed, step);
        let b = src.batch(c.task, c.batch as usize, (c.sampling, seed, step), &mut rng)?;
        data_secs += t0.elapsed().as_secs_f64();
        let f = train::lr_factor(&c.optim, step, total, per_epoch);
        let rows = |t: &Tensor| par.shard(&t.to_device(dev));
        let mine = data::Batch {
            content: rows(&b.content)?,
            style: b.style.as_ref().map(rows).transpose()?,
            real: rows(&b.real)?,
            target: rows(&b.target)?,
        };
        let n = c.batch;
        let (start, len) = par.rows(n)?;
        // This rank's rows of the noise drawn for the whole batch.
        let mut noise = |_: i64| train::draw_noise(&c, n, dev).map(|z| z.narrow(0, start, len));
        let st = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gan.step_with(
                &c,
                &mine,
                (c.optim.lr_g * f, c.optim.lr_d * f),
                &par,
                &mut noise,
            )
        }))
        .unwrap_or_else(|panic| Err(StepError::Failed(panic_error(panic))))
        .map_err(|e| e.at(step))?;
        means.add(&[st.g_gan, st.g_fm, st.g_vgg, st.g_kld, st.d_real, st.d_fake]);
        steps.end_step(&format!(
            "G {:.3} FM {} P {} D {:.3}/{:.3}",
            st.g_gan,
            reprise_core::progress::term(st.g_fm, 3),
            reprise_core::progress::term(st.g_vgg, 3),
            st.d_real,
            st.d_fake
        ));
        let step = steps.step();
        let eval_now = steps.at_every(c.eval.every);
        if steps.at_every(50) || eval_now {
            let mut vals: Vec<(String, f64)> = means
                .take()
                .into_iter()
                .map(|(n, m)| (n.to_string(), m))
                .collect();
            vals.push(("lr_factor".into(), f));
            if let (true, Some(ev)) = (eval_now, &ev) {
                let out = ev.generate(gan.g.as_ref(), vae, Mode::test(c.eval.train_bn));
                for (k, v) in ev.metrics(&out) {
                    vals.push((format!("eval_{k}"), v));
                }
            }
            let refs: Vec<(&str, f64)> = vals.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            ctx.log_metrics(step, step as f64 / total as f64, &refs)?;
        }
        if step.is_multiple_of(c.checkpoint_every) || eval_now {
            save(ctx, &gan, step)?;
        }
        steps.stop_if_interrupted(ctx, |s| save(ctx, &gan, s))?;
    }
    let (step, done) = (steps.step(), steps.ran());
    let step_ms = steps.finish();
    if !par.is_main() {
        // Rank 0 evaluates and writes the summary and the report.
        return Ok(());
    }
    let mut summary = match (&ev, &src) {
        (Some(ev), _) => eval::final_eval(ctx, &c, &mut gan, ev, step, step_ms, judge_info)?,
        (None, Source::Folder(f)) => eval::write_test_outputs(ctx, &c, &gan, f, step, step_ms)?,
        (None, Source::Small(_)) => unreachable!("small tasks have an evaluator"),
    };
    // The batches are drawn on the training thread: their share of an iteration.
    if done > 0 {
        summary.data_ms = Some(data_secs * 1000.0 / done as f64);
    }
    ctx.write_summary(&summary)?;
    // The evaluation's record of its batches has served (the summary holds the result).
    eval::forget_test_parts(ctx.dir())?;
    let md = report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_sampling_visits_each_item_at_most_once_an_epoch() {
        let (n, b) = (11, 3);
        let mut rng = Rng::new(0);
        let epoch = |e: u64, rng: &mut Rng| -> Vec<usize> {
            (3 * e..3 * e + 3)
                .flat_map(|step| batch_items(n, b, (Sampling::Epochs, 7, step), rng))
                .collect()
        };
        let first = epoch(0, &mut rng);
        let mut seen = first.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9, "3 batches of 3 distinct items; 2 dropped");
        let second = epoch(1, &mut rng);
        assert_ne!(first, second, "a new shuffle each epoch");
        assert_eq!(
            first,
            epoch(0, &mut Rng::new(5)),
            "seeded by the run, not the step rng"
        );
        let drawn = batch_items(n, b, (Sampling::Replacement, 7, 0), &mut Rng::new(1));
        assert_eq!(drawn.len(), 3);
        let mut r = Rng::new(1);
        assert_eq!(drawn, (0..3).map(|_| r.below(n)).collect::<Vec<_>>());
    }
}
