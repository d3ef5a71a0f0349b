//! `runner plan` for deepthin: a run is the wide teacher's training, then every arm's stages on
//! the thin network, so two steps are timed — one of the teacher and one of the thin network,
//! each a full-size forward, loss, backward and optimizer step on random inputs of the data's
//! shape — and the run's steps are counted stage by stage from the spec.

use crate::config::{ArchKind, Arm, Config, ImitationSchedule, Loss, Stage, TrainStage};
use crate::conv::{num_stages, ConvNet};
use crate::memory::Model;
use crate::train::{stage_optimizer, train_step};
use reprise_core::run::{per_rank, StepPlan};
use reprise_core::spec::SpecTree;
use reprise_core::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The steps of a run, split into the teacher's (the wide network) and the arms' (the thin
/// one: training, imitation and hints alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepCount {
    /// The teacher's training steps (0 when it is loaded or no arm needs it).
    pub teacher: u64,
    /// Every arm's steps at the run's depth.
    pub arms: u64,
}

/// The steps a run of `c` takes with `per_epoch` steps an epoch, as the run counts them: a
/// stage of `e` epochs takes `round(e · per_epoch)` steps (at least one); a progressive
/// imitation one such phase per block (per network stage for the convolutional families), a
/// joint one a single phase; merges and head copies none. The in-memory families run the WIN
/// arm a second time (the determinism check).
pub(crate) fn count_steps(c: &Config, per_epoch: u64) -> StepCount {
    let steps = |epochs: f64| ((epochs * per_epoch as f64).round() as u64).max(1);
    let blocks = if c.arch.kind.is_conv() {
        num_stages(c.arch.kind)
    } else {
        c.arch.depth
    } as u64;
    let todo = c.arms_here();
    let arm_steps = |a: &Arm| -> u64 {
        a.stages
            .iter()
            .map(|s| match s {
                Stage::Train(t) => steps(t.epochs),
                Stage::Hint(h) => steps(h.epochs),
                Stage::Imitate(m) => match (c.arch.kind.is_conv(), m.schedule) {
                    (false, ImitationSchedule::Joint) => steps(m.epochs),
                    _ => blocks * steps(m.epochs),
                },
                Stage::Merge | Stage::CopyHead => 0,
            })
            .sum()
    };
    let mut arms: u64 = todo.iter().map(|(_, a)| arm_steps(a)).sum();
    if !c.arch.kind.is_conv() {
        arms += todo
            .iter()
            .find(|(n, _)| n.as_str() == "win")
            .map_or(0, |(_, a)| arm_steps(a));
    }
    let trains_teacher = c.teacher_from.is_none() && todo.iter().any(|(_, a)| a.needs_teacher());
    StepCount {
        teacher: if trains_teacher {
            steps(c.teacher.epochs)
        } else {
            0
        },
        arms,
    }
}

/// A network of the run's family, wide (the teacher) or thin, with what one training step on
/// random inputs of the data's shape needs.
enum Timed {
    Conv(Box<ConvNet>),
    InMemory(Model),
}

impl Timed {
    fn params(&self) -> Vec<Tensor> {
        match self {
            Timed::Conv(n) => n.params(),
            Timed::InMemory(m) => m.net().params(),
        }
    }
}

/// `runner plan`: times `steps` training steps of the teacher and of the thin network (after
/// two warm-up steps each) with one rank's share of the batch, and projects the run's steps.
/// The step time reported is the mean over the run's steps (teacher steps at the teacher's
/// time, every other at the thin network's: an imitation step, which trains one block through
/// a forward to it, is counted as a whole thin step).
pub fn plan(tree: &SpecTree, dev: Device, steps: usize, ranks: usize) -> Result<StepPlan> {
    let c: Config = tree
        .typed("deepthin")
        .map_err(|e| Error::msg(e.to_string()))?;
    let h = tree.header().map_err(|e| Error::msg(e.to_string()))?;
    let rows = c.batch.div_ceil(ranks.max(1)) as i64;
    let data = h.data.dataset.as_str();
    let classes: i64 = if data.ends_with("100") {
        100
    } else if data == "imagefolder" {
        h.data
            .path
            .as_ref()
            .map(|p| p.join("train"))
            .and_then(|t| std::fs::read_dir(t).ok())
            .map_or(1000, |d| {
                d.flatten().filter(|e| e.path().is_dir()).count() as i64
            })
            .max(2)
    } else {
        10
    };
    let conv = c.arch.kind.is_conv();
    // Random inputs of the data's shape and random targets.
    let (x, y) = if conv {
        let pipe = c
            .images
            .as_ref()
            .ok_or_else(|| Error::msg("validated: convolutional families have `images`"))?;
        let side = match (pipe.augment.resized_crop, &h.data.image_size) {
            (s, _) if s > 0 => s,
            (_, Some(size)) => size.crop as i64,
            _ => 32,
        };
        (
            Tensor::rand([rows, 3, side, side], (Kind::Float, dev)),
            Tensor::randint(classes, [rows], (Kind::Int64, dev)),
        )
    } else if c.arch.kind == ArchKind::Encoder {
        let (x, y) = crate::stream::sort_task(rows as usize, 12, 10, 0);
        (x.to_device(dev), y.to_device(dev))
    } else {
        let features = match data {
            "digits" => 64,
            _ => 784,
        };
        (
            Tensor::rand([rows, features], (Kind::Float, dev)),
            Tensor::randint(classes, [rows], (Kind::Int64, dev)),
        )
    };
    let build = |wide: bool| -> Timed {
        if conv {
            Timed::Conv(Box::new(ConvNet::new(&c.arch, wide, classes, dev, 0)))
        } else {
            Timed::InMemory(Model::build(&c.arch, wide, x.size()[1], classes, dev, 0))
        }
    };
    let time = |net: &Timed, stage: &TrainStage| -> Result<(reprise_core::timing::Timing, i64)> {
        let params = net.params();
        let count = params.iter().map(|t| t.numel() as i64).sum();
        let mut opt = c
            .amp
            .optimizer(stage_optimizer(stage.optimizer, vec![(params, 1.0)]));
        let t = reprise_core::timing::time_ms(dev, 2, steps, || match net {
            Timed::Conv(n) => {
                let loss = c.amp.forward(dev, || {
                    n.forward(&x, true)
                        .to_kind(Kind::Float)
                        .cross_entropy_for_logits(&y)
                });
                opt.zero_grad();
                opt.backward(&loss).and_then(|()| opt.step(stage.lr))
            }
            Timed::InMemory(m) => {
                train_step(m.net(), &mut opt, &x, &y, Loss::Ce, stage.lr).map(|_| ())
            }
        })?;
        Ok((t, count))
    };
    let (teacher_t, teacher_params) = time(&build(true), &c.teacher)?;
    let teacher_ms = teacher_t.median;
    // The thin network's step, at the rate of the first arm's first training stage.
    let thin_stage = c
        .arms
        .values()
        .flat_map(|a| &a.stages)
        .find_map(|s| match s {
            Stage::Train(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| c.teacher.clone());
    let (thin_t, thin_params) = time(&build(false), &thin_stage)?;
    let thin_ms = thin_t.median;
    let what = format!(
        "one {} step: batch {}{}{} — the wide teacher {teacher_ms:.1} ms, the thin network \
         {thin_ms:.1} ms",
        match c.arch.kind {
            ArchKind::Resnet => format!("ResNet-{}", c.arch.depth),
            ArchKind::Wrn => format!("WRN-{}", c.arch.depth),
            k => format!("{k:?} (depth {})", c.arch.depth).to_lowercase(),
        },
        c.batch,
        per_rank(rows, ranks),
        match c.amp {
            reprise_core::amp::Amp::None => "",
            reprise_core::amp::Amp::Bf16 => ", bf16 autocast",
            reprise_core::amp::Amp::F16 => ", f16 autocast",
        }
    );
    let (n, (step_ms, spread_ms), from, params) = match reprise_core::data::train_size(&h.data) {
        Some((examples, how)) => {
            let per_epoch = examples.div_ceil(c.batch.max(1)) as u64;
            let s = count_steps(&c, per_epoch);
            let total = s.teacher + s.arms;
            let mean =
                |a: f64, b: f64| (a * s.teacher as f64 + b * s.arms as f64) / total.max(1) as f64;
            (
                Some(total),
                (
                    mean(teacher_ms, thin_ms),
                    (
                        mean(teacher_t.min, thin_t.min),
                        mean(teacher_t.max, thin_t.max),
                    ),
                ),
                format!(
                    "the teacher's {} and the arms' {} at depth {}: {per_epoch} an epoch of \
                     {examples} training examples ({how}); the time is their mean",
                    s.teacher, s.arms, c.arch.depth
                ),
                mean(teacher_params as f64, thin_params as f64).round() as i64,
            )
        }
        None => (
            None,
            (teacher_ms, (teacher_t.min, teacher_t.max)),
            format!(
                "unknown: the training set is not in place here ({})",
                h.data
                    .path
                    .as_ref()
                    .map_or("no data.path".into(), |p| p.display().to_string())
            ),
            teacher_params,
        ),
    };
    Ok(StepPlan {
        what,
        step_ms,
        spread_ms,
        steps: n,
        steps_from: from,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config from YAML, read as a spec's section is (through JSON).
    fn config(yaml: &str) -> Config {
        let v: serde_json::Value = serde_norway::from_str(yaml).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_run_s_steps_are_counted_stage_by_stage() {
        let c = config(
            "arch: { depth: 4, thin: 8, wide: 32 }
batch: 10
teacher: { loss: ce, epochs: 3, lr: 1.0e-3 }
arms:
  scratch:
    stages: [{ train: { loss: ce, epochs: 2, lr: 1.0e-3 } }]
  win:
    stages:
      - { imitate: { epochs: 0.5, lr: 1.0e-3 } }
      - merge
      - { train: { loss: ce, epochs: 1, lr: 1.0e-3 } }
  joint:
    depths: [4]
    stages: [{ imitate: { epochs: 1, lr: 1.0e-3, schedule: joint } }]
  deeper:
    depths: [8]
    stages: [{ train: { loss: ce, epochs: 9, lr: 1.0e-3 } }]
",
        );
        // 10 steps an epoch: teacher 30; scratch 20; WIN 4 blocks × 5 + 10, run twice (the
        // determinism check); joint 10; `deeper` is for another depth.
        assert_eq!(
            count_steps(&c, 10),
            StepCount {
                teacher: 30,
                arms: 20 + 2 * 30 + 10
            }
        );
        let mut alone = c.clone();
        alone.arms.retain(|k, _| k == "scratch");
        assert_eq!(
            count_steps(&alone, 10).teacher,
            0,
            "no arm needs the teacher"
        );
        let mut loaded = c;
        loaded.teacher_from = Some("t.safetensors".into());
        assert_eq!(count_steps(&loaded, 10).teacher, 0, "the teacher is loaded");
    }
}
