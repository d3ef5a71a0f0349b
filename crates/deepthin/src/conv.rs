//! The convolutional families, at paper scale: torchvision's bottleneck ResNet whose teacher
//! widens the 3×3 bottleneck (ResNet-50 → 4×, the paper's ImageNet setting) and the
//! Wide-ResNet (WRN-40-2 → WRN-40-1). Their data cannot be held in memory with the teacher's
//! feature maps, so every stage streams augmented batches (an in-memory dataset or an
//! ImageFolder decoded batch by batch) and computes the frozen teacher's targets batch by batch.
//!
//! The run is a fixed plan of phases — the teacher's training, then each arm's stages, an
//! imitation stage being one phase per network stage — numbered by one global step counter.
//! Checkpoints (every `images.checkpoint_steps` steps and at the end of every phase) hold the
//! network being trained, any imitation map, the optimizer and the arm's log, so an
//! interrupted run resumes inside the phase it stopped in.

use crate::arm::{run_arm, Family};
use crate::config::{
    ArchKind, Config, HintStage, ImagePipeline, ImitateStage, Input, Loss, MlpArch, Optim, Sched,
    Stage, TrainStage,
};
use crate::model::copy_tensors;
use crate::summary::{ArmResult, StageLog, Summary};
use crate::train::{kd_loss, stage_optimizer, stage_schedule, BlockFit};
use reprise_core::amp::Amp;
use reprise_core::checkpoint::Checkpoint;
use reprise_core::data::{self, batch_indices, Images};
use reprise_core::models::{Block, ResNet, ResNetConfig, Stem, Wrn, WrnConfig, WrnNorm};
use reprise_core::nn::Activation;
use reprise_core::optim::Optimizer;
use reprise_core::parallel::{Parallel, Shard};
use reprise_core::plan::{sorted_json, Entered, Ledger, Phase, Phases};
use reprise_core::run::RunContext;
use reprise_core::train::{Averages, Steps};
use reprise_core::{Error, Result};
use std::cell::RefCell;
use std::time::Instant;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Blocks per stage of torchvision's bottleneck ResNet of this depth.
pub(crate) fn resnet_layers(depth: usize) -> Option<Vec<usize>> {
    match depth {
        50 => Some(vec![3, 4, 6, 3]),
        101 => Some(vec![3, 4, 23, 3]),
        152 => Some(vec![3, 8, 36, 3]),
        _ => None,
    }
}

/// Number of stages (imitation units) of a convolutional family.
pub fn num_stages(kind: ArchKind) -> usize {
    match kind {
        ArchKind::Wrn => 3,
        _ => 4,
    }
}

/// Channels of each stage's output for width factor `k`.
pub(crate) fn stage_widths(a: &MlpArch, k: i64) -> Vec<i64> {
    match a.kind {
        // The bottleneck's width factor changes only its inner width.
        ArchKind::Resnet => vec![256, 512, 1024, 2048],
        _ => [16, 32, 64].iter().map(|c| k.saturating_mul(*c)).collect(),
    }
}

#[derive(Debug)]
enum Body {
    ResNet(ResNet),
    Wrn(Wrn),
}

/// Which part of a network a variable belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Stem,
    Stage(usize),
    Head,
    /// The Wide-ResNet's energy head, kept for checkpoint shape only.
    Unused,
}

/// A thin or wide convolutional network and its variables.
#[derive(Debug)]
pub struct ConvNet {
    vs: nn::VarStore,
    body: Body,
}

impl ConvNet {
    /// Builds S (`wide` false) or B, seeded: torchvision's initialisation for the ResNet
    /// (Kaiming-normal fan-out convolutions, BN γ = 1, β = 0, PyTorch's linear default for
    /// `fc`), PyTorch's defaults for the Wide-ResNet.
    pub fn new(a: &MlpArch, wide: bool, classes: i64, dev: Device, seed: u64) -> ConvNet {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(dev);
        let k = if wide { a.wide } else { a.thin };
        let body = match a.kind {
            ArchKind::Resnet => Body::ResNet(ResNet::new(
                &vs.root(),
                &ResNetConfig {
                    block: Block::Bottleneck,
                    layers: resnet_layers(a.depth).expect("validated: a bottleneck depth"),
                    stem: Stem::Imagenet,
                    base: 64,
                    width_factor: k,
                    in_channels: 3,
                    classes,
                },
            )),
            ArchKind::Wrn => Body::Wrn(Wrn::new(
                &vs.root(),
                &WrnConfig {
                    depth: a.depth,
                    widen: k,
                    norm: WrnNorm::Batch,
                    dropout: 0.0,
                    act: Activation::Relu,
                    in_channels: 3,
                    classes,
                    bn_momentum: 0.1,
                },
            )),
            k => unreachable!("{k:?} is not a convolutional family"),
        };
        ConvNet { vs, body }
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        match &self.body {
            Body::ResNet(r) => r.num_stages(),
            Body::Wrn(_) => 3,
        }
    }

    /// The stem on normalised images.
    pub fn stem(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::ResNet(r) => r.stem_t(x, train),
            Body::Wrn(w) => w.stem(x),
        }
    }

    /// Stage `i` (0-based) on the previous stage's output.
    pub fn stage(&self, i: usize, h: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::ResNet(r) => r.stage_t(i, h, train),
            Body::Wrn(w) => w.stage_t(i, h, train),
        }
    }

    /// The head on the last stage's output: logits.
    pub fn head(&self, h: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::ResNet(r) => h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&r.fc),
            Body::Wrn(w) => w.pool_t(h, train).apply(&w.class_output),
        }
    }

    /// The stem and stages `0..=i`.
    pub fn prefix(&self, x: &Tensor, i: usize, train: bool) -> Tensor {
        let mut h = self.stem(x, train);
        for j in 0..=i {
            h = self.stage(j, &h, train);
        }
        h
    }

    /// The logits.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.prefix(x, self.stages() - 1, train);
        self.head(&h, train)
    }

    fn part(&self, name: &str) -> Part {
        let top = name.split('.').next().unwrap_or("");
        if let Some(k) = top.strip_prefix("layer") {
            return Part::Stage(k.parse::<usize>().map_or(0, |k| k - 1));
        }
        match (&self.body, top) {
            (_, "conv1") | (Body::ResNet(_), "bn1") => Part::Stem,
            (Body::Wrn(_), "energy_output") => Part::Unused,
            _ => Part::Head,
        }
    }

    /// Every variable by name (BatchNorm statistics included), sorted.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        reprise_core::nn::vars_by_name(&self.vs)
    }

    fn params_where(&self, keep: impl Fn(Part) -> bool) -> Vec<Tensor> {
        self.named()
            .into_iter()
            .filter(|(n, t)| t.requires_grad() && keep(self.part(n)))
            .map(|(_, t)| t)
            .collect()
    }

    /// The trainable parameters of stage `i`, with the stem's for stage 0.
    pub(crate) fn stage_params(&self, i: usize) -> Vec<Tensor> {
        self.params_where(|p| p == Part::Stage(i) || (i == 0 && p == Part::Stem))
    }

    /// The trainable parameters of the stem and stages `0..=i`.
    pub(crate) fn prefix_params(&self, i: usize) -> Vec<Tensor> {
        self.params_where(|p| p == Part::Stem || matches!(p, Part::Stage(j) if j <= i))
    }

    /// Every trainable parameter (the Wide-ResNet's unused energy head excluded).
    pub fn params(&self) -> Vec<Tensor> {
        self.params_where(|p| p != Part::Unused)
    }

    /// Copies the head's variables (`fc`, or the Wide-ResNet's final BN and `class_output`)
    /// from `src`; returns how many tensors were copied.
    pub fn copy_head(&self, src: &ConvNet) -> Result<usize> {
        copy_tensors(self.named(), src.named(), |k| self.part(k) == Part::Head)
    }

    /// Loads every variable from named tensors (all must be present with their shapes).
    pub fn load(&self, named: Vec<(String, Tensor)>) -> Result<()> {
        copy_tensors(self.named(), named, |_| true).map(|_| ())
    }
}

/// A 1×1 widening convolution (thin channels → wide), used by the imitation and hint losses
/// only; PyTorch's default initialisation (Kaiming-uniform, a = √5, and its bias bound).
#[derive(Debug)]
struct Proj {
    w: Tensor,
    b: Tensor,
}

impl Proj {
    fn new(inp: i64, out: i64, dev: Device, seed: u64) -> Proj {
        tch::manual_seed(seed as i64);
        let bound = 1.0 / (inp as f64).sqrt();
        let opts = (Kind::Float, dev);
        Proj {
            w: (Tensor::rand([out, inp, 1, 1], opts) * 2.0 - 1.0) * bound,
            b: (Tensor::rand([out], opts) * 2.0 - 1.0) * bound,
        }
        .requires_grad()
    }

    fn requires_grad(self) -> Proj {
        Proj {
            w: self.w.set_requires_grad(true),
            b: self.b.set_requires_grad(true),
        }
    }

    fn apply(&self, h: &Tensor) -> Tensor {
        h.conv2d(&self.w, Some(&self.b), [1, 1], [0, 0], [1, 1], 1)
    }

    fn named(&self) -> Vec<(String, Tensor)> {
        vec![
            ("proj.b".into(), self.b.shallow_clone()),
            ("proj.w".into(), self.w.shallow_clone()),
        ]
    }
}

/// Training and test batches: index order per (seed, epoch), augmentation per (seed, step),
/// then per-channel normalisation; test images centre-cropped to `eval_crop`.
pub struct Pipeline<'a> {
    train: &'a Images,
    test: &'a Images,
    p: &'a ImagePipeline,
    batch: usize,
    seed: u64,
    dev: Device,
    mean: Tensor,
    std: Tensor,
    order: RefCell<Option<(u64, Vec<Vec<i64>>)>>,
}

impl<'a> Pipeline<'a> {
    /// A pipeline over `train` and `test`.
    pub fn new(
        train: &'a Images,
        test: &'a Images,
        p: &'a ImagePipeline,
        batch: usize,
        seed: u64,
        dev: Device,
    ) -> Pipeline<'a> {
        let ch = |v: &[f64]| {
            Tensor::from_slice(&v.iter().map(|&a| a as f32).collect::<Vec<_>>())
                .view([1, -1, 1, 1])
                .to_device(dev)
        };
        Pipeline {
            train,
            test,
            p,
            batch,
            seed,
            dev,
            mean: ch(&p.mean),
            std: ch(&p.std),
            order: RefCell::new(None),
        }
    }

    /// Steps per epoch (the last batch may be short).
    pub fn per_epoch(&self) -> u64 {
        self.train.len().div_ceil(self.batch) as u64
    }

    /// Steps of a stage of `epochs` epochs (at least one).
    pub fn steps(&self, epochs: f64) -> u64 {
        ((epochs * self.per_epoch() as f64).round() as u64).max(1)
    }

    fn normalize(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }

    /// The example indices of a stage's step `step` (every stage sees the same sequence).
    fn indices(&self, step: u64) -> Vec<i64> {
        let per = self.per_epoch();
        let epoch = step / per;
        let mut o = self.order.borrow_mut();
        if o.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let b = batch_indices(self.train.len(), self.batch, self.seed, epoch, true, false);
            *o = Some((epoch, b));
        }
        o.as_ref().expect("set above").1[(step % per) as usize].clone()
    }

    /// Augments (seeded by the step) and normalises a decoded batch on the device.
    fn prepare(&self, step: u64, x: Tensor, y: Tensor) -> (Tensor, Tensor) {
        let n = x.size()[0];
        self.prepare_rows(step, (x, y), n, 0)
    }

    /// [`Self::prepare`] for the rows `start..` of a batch of `n` (a data-parallel rank's
    /// share, decoded alone): the augmentation draws for the whole batch and applies this
    /// share's ([`reprise_core::data::augment::Augment::apply_rows`]).
    fn prepare_rows(
        &self,
        step: u64,
        (x, y): (Tensor, Tensor),
        n: i64,
        start: i64,
    ) -> (Tensor, Tensor) {
        let mut x = x.to_device(self.dev);
        if !self.p.augment.is_identity() {
            let mut rng = reprise_core::seed::step_rng(self.seed, step);
            x = self.p.augment.apply_rows(&x, n, start, &mut rng);
        }
        (self.normalize(&x), y.to_device(self.dev))
    }

    /// The training batch of a stage's step `step`.
    pub fn train_batch(&self, step: u64) -> Result<(Tensor, Tensor)> {
        let (x, y) = self.train.batch(&self.indices(step))?;
        Ok(self.prepare(step, x, y))
    }

    /// The indices of step `step`'s batch that this rank reads (its rows `start..start + len`
    /// of the batch), the rows, and the batch's size.
    fn rows_of(&self, par: &Parallel, step: u64) -> Result<(Vec<i64>, (i64, i64), i64)> {
        let idx = self.indices(step);
        let n = idx.len() as i64;
        let (start, len) = par.rows(n)?;
        Ok((
            idx[start as usize..(start + len) as usize].to_vec(),
            (start, len),
            n,
        ))
    }

    /// The test batches (the first `limit` of them when given), in order.
    pub(crate) fn test_batches(
        &self,
        limit: Option<usize>,
    ) -> impl Iterator<Item = Result<(Tensor, Tensor)>> + '_ {
        let n = self.test.len() as i64;
        let b = self.p.eval_batch.max(1) as i64;
        (0..n)
            .step_by(b as usize)
            .take(limit.unwrap_or(usize::MAX))
            .map(move |i| {
                let idx: Vec<i64> = (i..(i + b).min(n)).collect();
                let (x, y) = self.test.batch(&idx)?;
                let mut x = x.to_device(self.dev);
                if let Some(c) = self.p.eval_crop {
                    let (h, w) = (x.size()[2], x.size()[3]);
                    if c > h || c > w {
                        return Err(Error::Data(format!(
                            "images.eval_crop {c} is larger than the test images ({h}×{w})"
                        )));
                    }
                    x = x.narrow(2, (h - c) / 2, c).narrow(3, (w - c) / 2, c);
                }
                Ok((self.normalize(&x), y.to_device(self.dev)))
            })
    }
}

/// Top-1 and top-5 test accuracy (%), final weights, eval mode, under no_grad. Ties go to the
/// lower class (LibTorch's argmax and topk keep the first maximum).
pub fn evaluate(net: &ConvNet, p: &Pipeline<'_>) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let (mut top1, mut top5, mut n) = (0i64, 0i64, 0i64);
        for b in p.test_batches(None) {
            let (x, y) = b?;
            let z = net.forward(&x, false);
            if z.isfinite().all().int64_value(&[]) == 0 {
                return Err(Error::msg(
                    "the test logits are not finite: the network diverged",
                ));
            }
            let hits = reprise_core::metrics::top_k_counts(&z, &y, &[1, 5]);
            top1 += hits[0];
            top5 += hits[1];
            n += y.size()[0];
        }
        if n == 0 {
            return Err(Error::Data("the test set is empty".into()));
        }
        Ok((
            100.0 * top1 as f64 / n as f64,
            100.0 * top5 as f64 / n as f64,
        ))
    })
}

/// Runs the plan's phases (named `teacher`, or `<arm>/<stage index>` with `/<block>` for an
/// imitation block; a head copy counts one step) with checkpoints and resume.
struct Exec<'c, 'p> {
    ctx: &'c mut RunContext,
    p: &'p Pipeline<'p>,
    phases: Phases,
    every: u64,
    /// Mixed precision of every phase's step (`deepthin.amp`).
    amp: Amp,
}

/// What a phase entry found.
enum Entry {
    /// Run from this step (0 for a fresh phase).
    From(u64),
    /// A later phase's checkpoint exists: this one is done.
    Done,
}

impl Exec<'_, '_> {
    /// Enters phase `name`: restores `state`, the optimizer and the arm's log from the
    /// checkpoint if the run resumes inside it.
    fn enter(
        &mut self,
        name: &str,
        state: &[(String, Tensor)],
        opt: Option<&mut Optimizer>,
        log: &mut ArmResult,
    ) -> Result<Entry> {
        let (local, ck) = match self.phases.enter(name)? {
            Entered::Done => return Ok(Entry::Done),
            Entered::Fresh => return Ok(Entry::From(0)),
            Entered::Resume { local, checkpoint } => (local, checkpoint),
        };
        // Every tensor checked (kind and shape) before any is copied.
        for (k, t) in state {
            ck.tensor_like(k, t)?;
        }
        if let Some(o) = opt.as_deref() {
            o.check(&ck, "opt")?;
        }
        tch::no_grad(|| -> Result<()> {
            for (k, t) in state {
                let mut t = t.shallow_clone();
                t.f_copy_(ck.tensor(k)?)?;
            }
            Ok(())
        })?;
        if let Some(o) = opt {
            o.load(&ck, "opt")?;
        }
        let text: String = ck.get("log")?;
        *log = serde_json::from_str(&text).map_err(|e| Error::msg(e.to_string()))?;
        tracing::info!("resuming {name} at its step {local}");
        reprise_core::note!("resuming {name} at its step {local}");
        Ok(Entry::From(local))
    }

    fn save(
        &self,
        name: &str,
        local: u64,
        state: &[(String, Tensor)],
        opt: &Optimizer,
        log: &ArmResult,
    ) -> Result<()> {
        let mut ck = Checkpoint::new();
        for (k, t) in state {
            ck.put(k.clone(), t);
        }
        opt.save(&mut ck, "opt");
        ck.set("log", sorted_json(log, false)?);
        self.phases.save(self.ctx, name, local, ck)
    }

    /// Runs `f(opt, step, batch) -> loss` for the steps of phase `name` from `from`,
    /// checkpointing `state` and `opt`; returns the mean loss of the last epoch's steps run in
    /// this sitting. Data-parallel, `batch` is this rank's rows `[x, y]` of the batch (whose
    /// `weigh` makes the ranks' average gradient the whole batch's when the epoch's last batch
    /// does not split evenly); the logged and checked loss is the ranks' mean, and an interrupt
    /// on any rank stops all after the same step.
    fn steps(
        &mut self,
        name: &str,
        from: u64,
        state: &[(String, Tensor)],
        opt: &mut Optimizer,
        log: &ArmResult,
        mut f: impl FnMut(&mut Optimizer, u64, &Shard<2>) -> Result<f64>,
    ) -> Result<f64> {
        let par = self.ctx.parallel();
        let (total, offset) = (self.phases.steps(name), self.phases.offset(name));
        let per = self.p.per_epoch();
        let mut steps = Steps::phase(self.ctx, total, from, offset);
        // The mean loss of the last epoch's steps.
        let mut last = Averages::new(&["loss"]);
        let p = self.p;
        // A streamed ImageFolder decodes the next batch on other threads while this step runs.
        let folder = match p.train {
            Images::Folder(f) => Some(f),
            Images::Memory(_) => None,
        };
        std::thread::scope(|scope| -> Result<()> {
            let mut next: Option<std::thread::ScopedJoinHandle<'_, Result<(Tensor, Tensor)>>> =
                None;
            // Each rank reads, decodes and augments only its rows of every batch.
            while steps.start_next() {
                let step = steps.step();
                let (mine, (start, _), n) = p.rows_of(&par, step)?;
                let decoded = match next.take() {
                    Some(h) => h
                        .join()
                        .map_err(|_| Error::msg("a decoding thread panicked"))?,
                    None => p.train.batch(&mine),
                };
                if let (Some(f), true) = (folder, step + 1 < total) {
                    let (idx, _, _) = p.rows_of(&par, step + 1)?;
                    next = Some(scope.spawn(move || f.load(&idx)));
                }
                let (x, y) = p.prepare_rows(step, decoded?, n, start);
                let l = par
                    .local_shard(n, [x, y])
                    .and_then(|batch| f(opt, step, &batch))
                    .and_then(|l| Ok(par.mean(&[l])?[0]))
                    .map_err(|e| Error::msg(format!("{name}, step {step}: {e}")))?;
                if !l.is_finite() {
                    return Err(Error::Diverged {
                        step: offset + step,
                        why: format!("{name}: loss {l} at its step {step}"),
                    });
                }
                if step + per >= total {
                    last.add(&[l]);
                }
                steps.end_step(&format!("{name} loss {l:.4}"));
                let done = steps.step();
                if steps.at_every(per) {
                    self.ctx.log_metrics(
                        offset + done,
                        done as f64 / per as f64,
                        &[("loss", l)],
                    )?;
                }
                if steps.at_every(self.every) {
                    self.save(name, done, state, opt, log)?;
                }
                steps
                    .stop_if_interrupted(self.ctx, |done| self.save(name, done, state, opt, log))?;
            }
            Ok(())
        })?;
        steps.finish();
        Ok(last.take()[0].1)
    }
}

/// The mean squared error, in float32 under autocast too (as `mse_loss` is autocast's; a
/// no-op on float32 inputs).
fn mse(a: &Tensor, b: &Tensor) -> Tensor {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .square()
        .mean(Kind::Float)
}

fn prefixed(prefix: &str, v: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    v.into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect()
}

/// The phases of a stage: one per network stage for an imitation.
fn stage_phases(
    arm: &str,
    i: usize,
    s: &Stage,
    p: &Pipeline<'_>,
    n: usize,
    it: &dyn Fn(u64) -> u64,
) -> Vec<Phase> {
    let one = |steps: u64| Phase {
        name: format!("{arm}/{i}"),
        steps,
    };
    match s {
        Stage::Train(t) => vec![one(it(p.steps(t.epochs)))],
        Stage::Hint(h) => vec![one(it(p.steps(h.epochs)))],
        Stage::CopyHead | Stage::Merge => vec![one(1)],
        Stage::Imitate(m) => (0..n)
            .map(|b| Phase {
                name: format!("{arm}/{i}/{b}"),
                steps: it(p.steps(m.epochs)),
            })
            .collect(),
    }
}

/// Phase `name`: enters it (restoring `state` on resume), builds its optimizer over `params`
/// and its schedule, and steps on `loss(x, y)` at the scheduled rate; the last epoch's mean loss,
/// or None when a later checkpoint shows the phase done.
fn run_phase(
    ex: &mut Exec<'_, '_>,
    name: &str,
    state: &[(String, Tensor)],
    params: Vec<Tensor>,
    (o, sched, lr): (Optim, &Sched, f64),
    log: &mut ArmResult,
    mut loss: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Option<f64>> {
    // Data-parallel, its step averages the ranks' gradients first (as DDP does); with
    // `amp: f16` it unscales them, or skips an overflowing step.
    let (amp, dev) = (ex.amp, ex.ctx.device());
    let mut opt = amp
        .optimizer(stage_optimizer(o, vec![(params, 1.0)]))
        .data_parallel(ex.ctx.parallel());
    let Entry::From(from) = ex.enter(name, state, Some(&mut opt), log)? else {
        return Ok(None);
    };
    let total = ex.phases.steps(name);
    let (sched, warm) = stage_schedule(sched, total, ex.p.per_epoch());
    let snapshot = log.clone();
    let par = ex.ctx.parallel();
    let l = ex.steps(
        name,
        from,
        state,
        &mut opt,
        &snapshot,
        |opt, step, batch| {
            let [x, y] = &batch.rows;
            // The forwards and the loss under autocast with `amp` (the loss in float32).
            let l = amp.try_forward(dev, || loss(x, y))?;
            opt.zero_grad();
            opt.backward(&batch.weigh(l.shallow_clone()))?;
            opt.step(sched.lr(lr, step, warm))?;
            Ok(l.double_value(&[]))
        },
    )?;
    // Rank 0's BatchNorm statistics on every rank, as DDP's buffer broadcast leaves them: the
    // later phases' eval-mode forwards of this network (frozen prefixes, the teacher) then agree.
    par.broadcast(
        &state
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect::<Vec<_>>(),
    )?;
    Ok(Some(l))
}

/// Trains `net` with a loss: the teacher's stage 1, or an arm's end-to-end stage.
fn train_phase(
    ex: &mut Exec<'_, '_>,
    name: &str,
    net: &ConvNet,
    teacher: Option<&ConvNet>,
    t: &TrainStage,
    log: &mut ArmResult,
) -> Result<Option<f64>> {
    let state = prefixed("net.", net.named());
    let rule = (t.optimizer, &t.lr_schedule, t.lr);
    run_phase(ex, name, &state, net.params(), rule, log, |x, y| {
        let z = net.forward(x, true);
        match (t.loss, teacher) {
            (Loss::Ce, _) => Ok(z.to_kind(Kind::Float).cross_entropy_for_logits(y)),
            (Loss::Kd { temperature }, Some(b)) => {
                let zt = tch::no_grad(|| b.forward(x, false));
                Ok(kd_loss(&z, &zt, temperature))
            }
            (Loss::Kd { .. }, None) => Err(Error::msg("distillation without a teacher")),
        }
    })
}

/// The normalised imitation error of stage `i`: MSE over the mean per-feature variance of the
/// teacher's output, on the first `fit_batches` training and test batches.
fn stage_fit(
    p: &Pipeline<'_>,
    thin: &ConvNet,
    teacher: &ConvNet,
    proj: Option<&Proj>,
    i: usize,
    input: Input,
) -> Result<BlockFit> {
    let k = p.p.fit_batches.max(1);
    let fit = |x: &Tensor| -> (f64, f64) {
        let target = teacher.prefix(x, i, false);
        let inp = match (input, i) {
            (_, 0) => thin.stem(x, false),
            (Input::Teacher, _) => teacher.prefix(x, i - 1, false),
            (Input::StudentPrefix, _) => thin.prefix(x, i - 1, false),
        };
        let out = thin.stage(i, &inp, false);
        let out = proj.map_or(out.shallow_clone(), |q| q.apply(&out));
        let var = target
            .var_dim([0].as_slice(), true, false)
            .mean(Kind::Float)
            .double_value(&[]);
        (mse(&out, &target).double_value(&[]), var)
    };
    tch::no_grad(|| {
        let mut tr = (0.0, 0.0);
        for s in 0..k as u64 {
            let (x, _) = p.train_batch(s)?;
            let (a, b) = fit(&x);
            tr = (tr.0 + a, tr.1 + b);
        }
        let mut te = (0.0, 0.0);
        for b in p.test_batches(Some(k)) {
            let (x, _) = b?;
            let (a, v) = fit(&x);
            te = (te.0 + a, te.1 + v);
        }
        Ok(BlockFit {
            block: i + 1,
            nmse_train: tr.0 / tr.1.max(1e-12),
            nmse_test: te.0 / te.1.max(1e-12),
        })
    })
}

/// Imitation of stage `i`: the thin stage (with the stem for stage 0) and, where the widths
/// differ, a 1×1 widening map learn to reproduce the teacher's stage output from the thin
/// prefix (frozen, eval mode) or the teacher's.
fn imitate_phase(
    ex: &mut Exec<'_, '_>,
    name: &str,
    (thin, teacher): (&ConvNet, &ConvNet),
    (i, proj): (usize, Option<&Proj>),
    m: &ImitateStage,
    log: &mut ArmResult,
) -> Result<bool> {
    let mut params = thin.stage_params(i);
    let mut state = prefixed("net.", thin.named());
    if let Some(q) = proj {
        params.extend(q.named().into_iter().map(|(_, t)| t));
        state.extend(q.named());
    }
    let rule = (m.optimizer, &m.lr_schedule, m.lr);
    let ran = run_phase(ex, name, &state, params, rule, log, |x, _| {
        let (inp, target) = tch::no_grad(|| {
            let target = teacher.prefix(x, i, false);
            let inp = match (m.input, i) {
                (_, 0) => None,
                (Input::Teacher, _) => Some(teacher.prefix(x, i - 1, false)),
                (Input::StudentPrefix, _) => Some(thin.prefix(x, i - 1, false)),
            };
            (inp, target)
        });
        let inp = inp.unwrap_or_else(|| thin.stem(x, true));
        let out = thin.stage(i, &inp, true);
        let out = proj.map_or(out.shallow_clone(), |q| q.apply(&out));
        Ok(mse(&out, &target))
    })?;
    Ok(ran.is_some())
}

/// FitNets' hint: the stem and stages `0..block` with a 1×1 regressor match the teacher's
/// stage `block` output.
fn hint_phase(
    ex: &mut Exec<'_, '_>,
    name: &str,
    thin: &ConvNet,
    teacher: &ConvNet,
    reg: &Proj,
    h: &HintStage,
    log: &mut ArmResult,
) -> Result<Option<f64>> {
    let k = h.block - 1;
    let mut params = thin.prefix_params(k);
    params.extend(reg.named().into_iter().map(|(_, t)| t));
    let mut state = prefixed("net.", thin.named());
    state.extend(reg.named());
    let rule = (h.optimizer, &h.lr_schedule, h.lr);
    run_phase(ex, name, &state, params, rule, log, |x, _| {
        let target = tch::no_grad(|| teacher.prefix(x, k, false));
        Ok(mse(&reg.apply(&thin.prefix(x, k, true)), &target))
    })
}

/// The convolutional families' stages, in checkpointed phases: an arm's thin network, the
/// teacher where the arm needs it, and the two networks' stage widths.
struct Phased<'a, 'c, 'p> {
    ex: &'a mut Exec<'c, 'p>,
    teacher: Option<&'a ConvNet>,
    thin: ConvNet,
    /// The thin and the wide network's stage widths.
    widths: (Vec<i64>, Vec<i64>),
    seed: u64,
}

impl<'a, 'c, 'p> Phased<'a, 'c, 'p> {
    /// A fresh thin network of the seed (the same initialisation for every arm).
    fn new(
        ex: &'a mut Exec<'c, 'p>,
        c: &Config,
        classes: i64,
        teacher: Option<&'a ConvNet>,
        seed: u64,
    ) -> Self {
        let thin = ConvNet::new(&c.arch, false, classes, ex.p.dev, seed);
        let widths = (
            stage_widths(&c.arch, c.arch.thin),
            stage_widths(&c.arch, c.arch.wide),
        );
        Phased {
            ex,
            teacher,
            thin,
            widths,
            seed,
        }
    }

    fn teacher(&self) -> Result<&'a ConvNet> {
        self.teacher
            .ok_or_else(|| Error::msg("this arm needs the teacher"))
    }
}

impl Family for Phased<'_, '_, '_> {
    fn train(
        &mut self,
        key: &str,
        t: &TrainStage,
        e: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool> {
        let l = train_phase(self.ex, key, &self.thin, self.teacher, t, out)?;
        e.final_loss = l;
        Ok(l.is_some())
    }

    /// One phase per network stage, each (with its widening map where the widths differ)
    /// fitted and measured in turn.
    fn imitate(
        &mut self,
        key: &str,
        m: &ImitateStage,
        _: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool> {
        let b = self.teacher()?;
        let (tw, ww) = &self.widths;
        let dev = self.ex.p.dev;
        let mut any = false;
        for i in 0..self.thin.stages() {
            let proj = (tw[i] != ww[i]).then(|| {
                Proj::new(
                    tw[i],
                    ww[i],
                    dev,
                    self.seed.wrapping_mul(31).wrapping_add(i as u64),
                )
            });
            let key = format!("{key}/{i}");
            if imitate_phase(self.ex, &key, (&self.thin, b), (i, proj.as_ref()), m, out)? {
                let fit = stage_fit(self.ex.p, &self.thin, b, proj.as_ref(), i, m.input)?;
                out.fits.get_or_insert_with(Vec::new).push(fit);
                any = true;
            }
        }
        if any {
            out.acc_after_imitation = Some(evaluate(&self.thin, self.ex.p)?.0);
        }
        Ok(any)
    }

    fn merge(&mut self, _: &mut StageLog, _: &mut ArmResult) -> Result<bool> {
        unreachable!("validated: the convolutional families do not merge")
    }

    fn hint(
        &mut self,
        key: &str,
        h: &HintStage,
        e: &mut StageLog,
        out: &mut ArmResult,
    ) -> Result<bool> {
        let b = self.teacher()?;
        let k = h.block - 1;
        let (tw, ww) = &self.widths;
        let seed = self.seed.wrapping_mul(131).wrapping_add(3);
        let reg = Proj::new(tw[k], ww[k], self.ex.p.dev, seed);
        let l = hint_phase(self.ex, key, &self.thin, b, &reg, h, out)?;
        e.final_mse = l;
        Ok(l.is_some())
    }

    fn copy_head(&mut self, key: &str, e: &mut StageLog, out: &mut ArmResult) -> Result<bool> {
        let b = self.teacher()?;
        let state = prefixed("net.", self.thin.named());
        match self.ex.enter(key, &state, None, out)? {
            Entry::Done => Ok(false),
            Entry::From(_) => {
                e.tensors = Some(self.thin.copy_head(b)?);
                out.acc_after_head = Some(evaluate(&self.thin, self.ex.p)?.0);
                Ok(true)
            }
        }
    }

    fn accuracy(&mut self) -> Result<f64> {
        Ok(evaluate(&self.thin, self.ex.p)?.0)
    }

    fn finish(&mut self, name: &str, out: &mut ArmResult) -> Result<()> {
        let (top1, top5) = evaluate(&self.thin, self.ex.p)?;
        out.acc = top1;
        out.top5 = Some(top5);
        tracing::info!("{name}: top-1 {top1:.2}, top-5 {top5:.2}");
        Ok(())
    }
}

/// A convolutional run: the teacher (trained, loaded from `teacher_from`, or skipped when no
/// arm needs it), then every arm that applies at this depth; `arms.json` keeps finished arms.
pub fn run(ctx: &mut RunContext, c: &Config) -> Result<()> {
    let h = ctx.header().clone();
    let par = ctx.parallel();
    let seed = h.seed;
    let dev = ctx.device();
    let pipe = c
        .images
        .as_ref()
        .ok_or_else(|| Error::msg("validated: convolutional families have `images`"))?;
    let (train, test) = data::image_splits(&h.data)?;
    if train.is_empty() || test.is_empty() {
        return Err(Error::Data("the train or the test set is empty".into()));
    }
    if c.batch > train.len() {
        return Err(Error::Data(format!(
            "batch {} is larger than the training set ({})",
            c.batch,
            train.len()
        )));
    }
    let classes = train.classes() as i64;
    let p = Pipeline::new(&train, &test, pipe, c.batch, seed, dev);
    let todo = c.arms_here();
    let with_teacher = todo.iter().any(|(_, a)| a.needs_teacher());
    let it = |s: u64| ctx.iterations(s);
    let n = num_stages(c.arch.kind);
    let mut plan = vec![Phase {
        name: "teacher".into(),
        steps: if with_teacher && c.teacher_from.is_none() {
            it(p.steps(c.teacher.epochs))
        } else {
            0
        },
    }];
    for (name, arm) in &todo {
        for (i, s) in arm.stages.iter().enumerate() {
            plan.extend(stage_phases(name, i, s, &p, n, &it));
        }
    }
    // Rank 0's latest checkpoint that is a position in this plan and carries the arm's log
    // (the tensors are checked against the phase's state when it is entered).
    let dir = ctx.dir().to_path_buf();
    let phases = Phases::open(ctx, plan, |ck| ck.get::<String>("log").map(|_| ()))?;
    let every = pipe.checkpoint_steps.max(1);
    let mut ex = Exec {
        ctx,
        p: &p,
        phases,
        every,
        amp: c.amp,
    };
    // Stage 1.
    let t0 = Instant::now();
    let teacher =
        with_teacher.then(|| ConvNet::new(&c.arch, true, classes, dev, seed ^ 0x7ea_c4e5));
    let tfile = dir.join("teacher.safetensors");
    let mut teacher_metrics = None;
    if let Some(b) = &teacher {
        if let Some(f) = crate::teacher_source(c, &tfile) {
            let named = Tensor::read_safetensors(&f)?;
            b.load(named)
                .map_err(|e| Error::msg(format!("{}: {e}", f.display())))?;
        } else {
            let mut log = ArmResult::default();
            let stage = TrainStage {
                loss: Loss::Ce,
                ..c.teacher.clone()
            };
            train_phase(&mut ex, "teacher", b, None, &stage, &mut log)?;
            let tmp = dir.join("teacher.tmp.safetensors");
            Tensor::write_safetensors(&b.named(), &tmp)?;
            std::fs::rename(&tmp, &tfile).map_err(|e| Error::Io(tfile.clone(), e))?;
        }
        // Rank 0's teacher (trained, read from its file, or restored) on every rank.
        par.broadcast_vars(&b.vs)?;
        let (top1, top5) = evaluate(b, &p)?;
        reprise_core::note!(
            "teacher ({}-{}): top-1 {top1:.2}, top-5 {top5:.2}",
            c.arch.depth,
            c.arch.wide
        );
        teacher_metrics = Some((top1, top5, t0.elapsed().as_secs_f64()));
    }
    // The arms rank 0 has finished (its folder holds the ledger): every rank skips the same.
    let mut arms: Ledger<ArmResult> = Ledger::open(ex.ctx, crate::ARMS)?;
    for (name, arm) in &todo {
        arms.stage(name, || {
            run_arm(
                name,
                arm,
                &mut Phased::new(&mut ex, c, classes, teacher.as_ref(), seed),
            )
        })?;
    }
    let ctx = ex.ctx;
    if !par.is_main() {
        // Rank 0 writes the summary and the report.
        return Ok(());
    }
    let mut summary = Summary::new(c.arch.kind, c.arch.depth, seed, arms.into_done());
    if let Some((top1, top5, secs)) = teacher_metrics {
        summary.teacher_acc = Some(top1);
        summary.teacher_top5 = Some(top5);
        summary.teacher_secs = Some(secs);
    }
    ctx.write_summary(&summary)?;
    let md = crate::report::report_run(ctx.dir())?;
    ctx.write_report(&md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch(kind: ArchKind, depth: usize, thin: i64, wide: i64) -> MlpArch {
        MlpArch {
            kind,
            depth,
            thin,
            wide,
            stream: None,
            heads: None,
            head_dim: None,
        }
    }

    fn count(v: &[Tensor]) -> i64 {
        v.iter().map(Tensor::numel).sum::<usize>() as i64
    }

    #[test]
    fn stages_and_head_partition_the_parameters_and_compose_the_forward() {
        for (a, wide) in [
            (arch(ArchKind::Resnet, 50, 1, 4), false),
            (arch(ArchKind::Wrn, 16, 1, 2), true),
        ] {
            let net = ConvNet::new(&a, wide, 10, Device::Cpu, 3);
            let n = net.stages();
            let parts: i64 = (0..n).map(|i| count(&net.stage_params(i))).sum::<i64>()
                + count(&net.params_where(|p| p == Part::Head));
            assert_eq!(parts, count(&net.params()), "{:?}", a.kind);
            assert_eq!(
                count(&net.prefix_params(n - 1)) + count(&net.params_where(|p| p == Part::Head)),
                count(&net.params())
            );
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            let (a1, b1) = tch::no_grad(|| {
                (
                    net.forward(&x, false),
                    net.head(&net.prefix(&x, n - 1, false), false),
                )
            });
            assert_eq!(a1.size(), [2, 10]);
            assert!(a1.equal(&b1));
            for (i, w) in stage_widths(&a, if wide { a.wide } else { a.thin })
                .iter()
                .enumerate()
            {
                let h = tch::no_grad(|| net.prefix(&x, i, false));
                assert_eq!(h.size()[1], *w, "stage {i}");
            }
        }
    }

    #[test]
    fn resnet50_has_torchvision_s_parameter_count_and_the_teacher_widens_the_bottleneck() {
        let a = arch(ArchKind::Resnet, 50, 1, 4);
        let thin = ConvNet::new(&a, false, 1000, Device::Cpu, 0);
        // torchvision.models.resnet50(): 25,557,032 parameters.
        assert_eq!(count(&thin.params()), 25_557_032);
        let wide = ConvNet::new(&a, true, 1000, Device::Cpu, 0);
        // The same layout with a 4x inner width (the spec's "~223 M").
        assert_eq!(count(&wide.params()), 223_439_144);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let z = tch::no_grad(|| wide.forward(&x, false));
        reprise_core::note!(
            "eval logits at init: max |z| = {}",
            z.abs().max().double_value(&[])
        );
        // The same stage outputs: the teacher's head reads a thin network's last stage.
        assert_eq!(thin.copy_head(&wide).unwrap(), 2);
    }
}
