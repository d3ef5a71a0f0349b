//! The MLP and shared-stream families (plain MLP, residual MLP, encoder), in memory: the data,
//! the teacher's block outputs and logits are held as tensors, every stage is a short loop of
//! `train.rs` over them, and an arm is the unit of resume (`arms.json`).

use crate::arm::{run_arm, Family};
use crate::config::{ArchKind, Config, HintStage, ImitateStage, Loss, MlpArch, TrainStage};
use crate::model::{self, Glue, Mlp, Net};
use crate::stream::{self, EncoderShape, Residual};
use crate::summary::{ArmResult, StageLog, Summary};
use crate::train::{self, Data};
use crate::{config, report, teacher_source, ARMS, SORT_TASK};
use reprise_core::data;
use reprise_core::plan::Ledger;
use reprise_core::run::{json_f64, RunContext};
use reprise_core::{Error, Result};
use std::time::Instant;
use tch::Tensor;

/// A thin or wide network of the configured family.
pub(crate) enum Model {
    /// The plain MLP: the one family with linear pairs and a merge.
    Mlp(Mlp),
    /// A family with a shared stream width.
    Stream(Box<dyn Net>),
}

impl Model {
    pub(crate) fn net(&self) -> &dyn Net {
        match self {
            Model::Mlp(m) => m,
            Model::Stream(n) => n.as_ref(),
        }
    }

    /// Builds S (`wide` false) or B from the architecture, on `inp` input features (the
    /// sequence length for the encoder).
    pub(crate) fn build(
        a: &MlpArch,
        wide: bool,
        inp: i64,
        classes: i64,
        dev: tch::Device,
        seed: u64,
    ) -> Model {
        let pick = |p: config::ThinWide| if wide { p.wide } else { p.thin };
        let width = if wide { a.wide } else { a.thin };
        let stream = a.stream.unwrap_or(0);
        match a.kind {
            ArchKind::Mlp => Model::Mlp(Mlp::new(inp, width, a.depth, classes, dev, seed)),
            ArchKind::Residual => Model::Stream(Box::new(Residual::new(
                inp, stream, width, a.depth, classes, dev, seed,
            ))),
            ArchKind::Encoder => Model::Stream(Box::new(stream::Encoder::new(
                EncoderShape {
                    vocab: classes,
                    length: inp,
                    stream,
                    heads: a.heads.map_or(1, pick),
                    head_dim: a.head_dim.map_or(1, pick),
                    ffn: width,
                    depth: a.depth,
                    classes,
                },
                dev,
                seed,
            ))),
            ArchKind::Resnet | ArchKind::Wrn => {
                unreachable!("the convolutional families run in `conv`")
            }
        }
    }
}

/// The MLP and shared-stream families' stages, in memory: an arm's thin network (replaced by
/// the merged one at a merge) and the linear pairs of its last imitation.
struct InMemory<'a> {
    c: &'a Config,
    d: &'a Data,
    teacher: &'a Model,
    seed: u64,
    thin: Model,
    glue: Option<Glue>,
}

impl<'a> InMemory<'a> {
    /// A fresh thin network of the seed (the same initialisation for every arm).
    fn new(c: &'a Config, d: &'a Data, teacher: &'a Model, seed: u64) -> Self {
        let classes = *d.logits.size().last().expect("logits");
        let thin = Model::build(&c.arch, false, d.x.size()[1], classes, d.x.device(), seed);
        InMemory {
            c,
            d,
            teacher,
            seed,
            thin,
            glue: None,
        }
    }
}

impl Family for InMemory<'_> {
    fn train(
        &mut self,
        _: &str,
        t: &TrainStage,
        e: &mut StageLog,
        _: &mut ArmResult,
    ) -> Result<bool> {
        e.final_loss = Some(train::train(self.thin.net(), self.d, t)?);
        Ok(true)
    }

    fn imitate(
        &mut self,
        _: &str,
        m: &ImitateStage,
        e: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool> {
        let (c, d) = (self.c, self.d);
        let g = match &self.thin {
            Model::Mlp(t) => Some(train::init_glue(t, d, m.m_init, c.arch.wide, self.seed)),
            Model::Stream(_) => None,
        };
        let fits = train::imitate(self.thin.net(), g.as_ref(), d, m)?;
        e.fits = Some(fits.clone());
        out.fits = Some(fits);
        if g.is_none() {
            out.acc_after_imitation = Some(train::test_accuracy(self.thin.net(), d));
        }
        self.glue = g;
        Ok(true)
    }

    fn merge(&mut self, e: &mut StageLog, out: &mut ArmResult) -> Result<bool> {
        let (Model::Mlp(t), Model::Mlp(teacher)) = (&self.thin, self.teacher) else {
            unreachable!("validated: only the MLP merges");
        };
        let g = self
            .glue
            .take()
            .expect("validated: an imitation precedes every merge");
        let (merged, err) = train::merge_checked(t, &g, &teacher.head, self.d);
        let acc = train::test_accuracy(&merged, self.d);
        let dead = merged.dead_units(&self.d.x);
        self.thin = Model::Mlp(merged);
        e.merge_error = Some(err);
        out.merge_error = Some(err);
        out.acc_after_merge = Some(acc);
        out.dead_after_merge = Some(dead);
        Ok(true)
    }

    fn hint(
        &mut self,
        _: &str,
        h: &HintStage,
        e: &mut StageLog,
        _: &mut ArmResult,
    ) -> Result<bool> {
        e.nmse = Some(train::hint(self.thin.net(), self.d, h, self.seed)?);
        Ok(true)
    }

    fn copy_head(&mut self, _: &str, e: &mut StageLog, out: &mut ArmResult) -> Result<bool> {
        e.tensors = Some(model::copy_named(
            self.thin.net(),
            self.teacher.net(),
            "head.",
        )?);
        out.acc_after_head = Some(train::test_accuracy(self.thin.net(), self.d));
        Ok(true)
    }

    fn accuracy(&mut self) -> Result<f64> {
        Ok(train::test_accuracy(self.thin.net(), self.d))
    }

    fn finish(&mut self, name: &str, out: &mut ArmResult) -> Result<()> {
        out.acc = train::test_accuracy(self.thin.net(), self.d);
        out.seq_acc = train::test_sequence_accuracy(self.thin.net(), self.d);
        tracing::info!("{name}: test accuracy {:.2}", out.acc);
        Ok(())
    }
}

/// An in-memory run: trains the teacher and runs every arm that applies at this depth. Each
/// finished arm is kept in `arms.json`, the teacher in `teacher.safetensors`, so a resumed run
/// redoes only what was unfinished.
pub(crate) fn run(ctx: &mut RunContext, c: &Config) -> Result<()> {
    let h = ctx.header().clone();
    let seed = h.seed;
    let dev = ctx.device();
    // Data-parallel, every rank holds the data and the teacher's outputs, and computes each
    // step on its rows of the batch (`train::Data::batches`).
    let par = ctx.parallel();
    let (x, y, x_test, y_test, classes) = if h.data.dataset == SORT_TASK {
        let sizes = h.data.split.ok_or_else(|| {
            Error::Data(format!("dataset `{SORT_TASK}` needs `data.split` sizes"))
        })?;
        let (x, y) = stream::sort_task(sizes.train + sizes.test, 12, 10, h.data.split_seed);
        let (n, m) = (sizes.train as i64, sizes.test as i64);
        let on = |t: &Tensor, a: i64, k: i64| t.narrow(0, a, k).to_device(dev);
        (on(&x, 0, n), on(&y, 0, n), on(&x, n, m), on(&y, n, m), 10)
    } else {
        let splits = data::load_splits(&h.data)?;
        let flat = |t: &Tensor| t.flatten(1, -1).to_device(dev);
        (
            flat(&splits.train.x),
            splits.train.y.to_device(dev),
            flat(&splits.test.x),
            splits.test.y.to_device(dev),
            splits.train.classes as i64,
        )
    };
    let dir = ctx.dir().to_path_buf();
    ctx.begin(0)?;
    // Stage 1: the wide teacher, one per (depth, seed).
    let teacher = Model::build(&c.arch, true, x.size()[1], classes, dev, seed ^ 0x7ea_c4e5);
    let tfile = dir.join("teacher.safetensors");
    let mut d = Data {
        x,
        y,
        x_test,
        y_test,
        feats: vec![],
        targets: vec![],
        feats_test: vec![],
        targets_test: vec![],
        logits: Tensor::zeros([0, classes], (tch::Kind::Float, dev)),
        seed,
        batch: c.batch,
        par: par.clone(),
    };
    d.check_split()?;
    let t0 = Instant::now();
    // Rank 0's teacher file (an earlier sitting's) on every rank, so that all load it or all
    // train it.
    ctx.share_files(&["teacher.safetensors"])?;
    if let Some(f) = teacher_source(c, &tfile) {
        let named = Tensor::read_safetensors(&f)?;
        model::load_named(teacher.net(), named)
            .map_err(|e| Error::msg(format!("{}: {e}", f.display())))?;
    } else {
        train::train(
            teacher.net(),
            &d,
            &TrainStage {
                loss: Loss::Ce,
                ..c.teacher.clone()
            },
        )?;
        let named: Vec<(String, Tensor)> = teacher
            .net()
            .named()
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect();
        let tmp = dir.join("teacher.tmp.safetensors");
        Tensor::write_safetensors(&named, &tmp)?;
        std::fs::rename(&tmp, &tfile).map_err(|e| Error::Io(tfile.clone(), e))?;
    }
    let teacher_secs = t0.elapsed().as_secs_f64();
    tch::no_grad(|| {
        let t = teacher.net();
        d.feats = t.forward_blocks(&d.x);
        d.feats_test = t.forward_blocks(&d.x_test);
        d.targets = d.feats.iter().map(|f| t.feature(f)).collect();
        d.targets_test = d.feats_test.iter().map(|f| t.feature(f)).collect();
        d.logits = t.forward(&d.x);
    });
    let teacher_acc = train::test_accuracy(teacher.net(), &d);
    let teacher_seq_acc = train::test_sequence_accuracy(teacher.net(), &d);
    reprise_core::note!(
        "teacher (depth {}, width {}): test accuracy {teacher_acc:.2}",
        c.arch.depth,
        c.arch.wide
    );
    let mut arms: Ledger<ArmResult> = Ledger::open(ctx, ARMS)?;
    let todo = c.arms_here();
    let mut progress = ctx.progress(todo.len() as u64, 0);
    for (k, (name, arm)) in todo.iter().enumerate() {
        let acc = arms
            .stage(name, || {
                run_arm(name, arm, &mut InMemory::new(c, &d, &teacher, seed))
            })?
            .acc;
        progress.set(k as u64 + 1, &format!("{name}: {acc:.2}%"));
        // Asked on any rank, every rank stops after the same arm.
        if par.any(ctx.interrupted())? && k + 1 < todo.len() {
            return Err(Error::Interrupted {
                step: k as u64 + 1,
                dir: dir.clone(),
            });
        }
    }
    progress.finish();
    // C0's determinism: the WIN arm once more from scratch must give the same accuracy.
    // (Compared as JSON numbers, where NaN is null: two NaN accuracies count as the same.)
    let deterministic = match todo.iter().find(|(n, _)| n.as_str() == "win") {
        Some((name, arm)) => {
            let again = run_arm(name, arm, &mut InMemory::new(c, &d, &teacher, seed))?;
            let first = arms.get("win").map_or(f64::NAN, |a| a.acc);
            Some(json_f64(again.acc) == json_f64(first))
        }
        None => None,
    };
    if !par.is_main() {
        // Rank 0 writes the summary and the report.
        return Ok(());
    }
    let mut summary = Summary::new(c.arch.kind, c.arch.depth, seed, arms.into_done());
    summary.deterministic = deterministic;
    summary.teacher_acc = Some(teacher_acc);
    summary.teacher_secs = Some(teacher_secs);
    summary.teacher_seq_acc = teacher_seq_acc;
    ctx.write_summary(&summary)?;
    let md = report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}
