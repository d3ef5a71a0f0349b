//! Data-parallel training over the process group of `crates/dist` (LibTorch's c10d with Gloo).
//!
//! One run is trained by `world` processes ("ranks"), each holding the whole model. Every rank
//! builds the same global batch from `(seed, step)` and computes on its rows
//! ([`Parallel::shard`]); randomness drawn inside a step (SGLD noise, PGD starts, replay-buffer
//! draws) is drawn for the global batch, identically on every rank, and sliced the same way, so
//! that the union over the ranks is what one process would draw. After each backward the
//! gradients are averaged over the ranks by the optimizer itself
//! ([`crate::optim::Optimizer::data_parallel`]): by default during the backward, by
//! DistributedDataParallel's own engine (c10d's `Reducer`, [`GradSync::Reducer`]), whose
//! buckets' all-reduces overlap the rest of the backward; or after it
//! ([`GradSync::AfterBackward`], [`Parallel::average_grads`]). With equal shards the
//! average of the per-shard mean losses' gradients is the gradient of the global batch's mean
//! loss. Rank 0 alone writes the run folder; the others write nothing (their context discards)
//! and receive rank 0's checkpoint when the run resumes ([`Parallel::share_checkpoint`]).
//!
//! With one process every call is the identity and costs nothing.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// The ranks training one run together, or one process alone.
pub struct Parallel {
    rank: usize,
    world: usize,
    nccl: bool,
    sync: GradSync,
    group: Option<Mutex<dist::ProcessGroup>>,
}

/// When a data-parallel step averages the gradients over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradSync {
    /// During the backward, by DistributedDataParallel's engine (c10d's `Reducer`, DDP's
    /// default buckets): each bucket's all-reduce starts as soon as its gradients are in, so
    /// communication overlaps the rest of the backward. The default.
    Reducer,
    /// After the backward, before the optimizer step, in size-capped buckets
    /// ([`Parallel::average_grads`]): no overlap.
    AfterBackward,
}

impl GradSync {
    /// The environment's choice, `REPRISE_GRAD_SYNC=reducer|after-backward` (default
    /// `reducer`).
    pub fn from_env() -> Result<GradSync> {
        match std::env::var("REPRISE_GRAD_SYNC") {
            Err(_) => Ok(GradSync::Reducer),
            Ok(v) => match v.as_str() {
                "" | "reducer" => Ok(GradSync::Reducer),
                "after-backward" => Ok(GradSync::AfterBackward),
                other => Err(Error::msg(format!(
                    "REPRISE_GRAD_SYNC={other:?}: expected `reducer` or `after-backward`"
                ))),
            },
        }
    }

    /// Its name, as `run.json` records it.
    pub fn name(self) -> &'static str {
        match self {
            GradSync::Reducer => "reducer",
            GradSync::AfterBackward => "after-backward",
        }
    }
}

impl std::fmt::Debug for Parallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parallel(rank {} of {})", self.rank, self.world)
    }
}

fn dist_err(e: dist::DistError) -> Error {
    Error::msg(format!(
        "data-parallel: {e} (another rank has stopped or failed; its output says why)"
    ))
}

impl Parallel {
    /// One process: every collective is the identity.
    pub fn single() -> Parallel {
        Parallel {
            rank: 0,
            world: 1,
            nccl: false,
            sync: GradSync::Reducer,
            group: None,
        }
    }

    /// The ranks of a joined process group, averaging the gradients with DDP's `Reducer`.
    pub fn of(group: dist::ProcessGroup) -> Parallel {
        Parallel {
            rank: group.rank(),
            world: group.world(),
            nccl: group.nccl(),
            sync: GradSync::Reducer,
            group: Some(Mutex::new(group)),
        }
    }

    /// The same ranks, averaging the gradients as `sync` says.
    pub fn with_grad_sync(mut self, sync: GradSync) -> Parallel {
        self.sync = sync;
        self
    }

    /// When the gradients are averaged over the ranks.
    pub fn grad_sync(&self) -> GradSync {
        self.sync
    }

    /// DDP's gradient engine over `params` (those that require gradients), for an optimizer
    /// that averages during the backward; `None` for one process or
    /// [`GradSync::AfterBackward`].
    pub fn reducer(&self, params: &[Tensor]) -> Result<Option<dist::Reducer>> {
        if self.world == 1 || self.sync != GradSync::Reducer {
            return Ok(None);
        }
        let trained: Vec<Tensor> = params
            .iter()
            .filter(|p| p.requires_grad())
            .map(Tensor::shallow_clone)
            .collect();
        if trained.is_empty() {
            return Ok(None);
        }
        self.with(|g| g.reducer(&trained, dist::ReducerOptions::default()))
            .transpose()
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The collectives' backend: `gloo` for host tensors, `gloo+nccl` where CUDA tensors are
    /// reduced by NCCL; `none` for one process.
    pub fn backend(&self) -> &'static str {
        match (self.group.is_some(), self.nccl) {
            (false, _) => "none",
            (true, false) => "gloo",
            (true, true) => "gloo+nccl",
        }
    }

    /// Whether this is rank 0, the one that writes.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut dist::ProcessGroup) -> dist::Result<T>,
    ) -> Option<Result<T>> {
        let g = self.group.as_ref()?;
        let mut g = g.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut g).map_err(dist_err))
    }

    /// The rows `[start, start + len)` of a global batch of `n` that this rank computes on:
    /// the batch split as evenly as it goes (the first `n mod world` ranks take one more row).
    pub fn rows(&self, n: i64) -> Result<(i64, i64)> {
        let (w, r) = (self.world as i64, self.rank as i64);
        if n < w {
            return Err(Error::Data(format!(
                "a batch of {n} cannot be split among {w} data-parallel ranks"
            )));
        }
        let (q, extra) = (n / w, n % w);
        Ok((r * q + r.min(extra), q + i64::from(r < extra)))
    }

    /// Refuses a batch of `n` that does not divide evenly among the ranks (for a loop whose
    /// every batch must, such as JEM's, whose SGLD noise is drawn for `world` equal shares).
    pub fn even(&self, n: i64) -> Result<()> {
        let w = self.world as i64;
        if n % w != 0 {
            return Err(Error::Data(format!(
                "the batch of {n} does not divide among {w} data-parallel ranks; choose a batch \
                 that is a multiple of {w}"
            )));
        }
        Ok(())
    }

    /// The factor of this rank's mean loss over its rows of a batch of `n` that makes the
    /// average of the ranks' gradients the gradient of the mean over the whole batch:
    /// `len · world / n`, exactly 1 when the batch divides evenly.
    pub fn weight(&self, n: i64) -> Result<f64> {
        let (_, len) = self.rows(n)?;
        Ok((len * self.world as i64) as f64 / n as f64)
    }

    /// This rank's rows of a global batch (the whole of it in one process).
    pub fn shard(&self, t: &Tensor) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(t.shallow_clone());
        }
        let (start, len) = self.rows(t.size()[0])?;
        Ok(t.narrow(0, start, len))
    }

    /// This rank's rows of the tensors of a global batch (each with the batch's rows first),
    /// with the factor of its mean loss ([`Shard::weigh`]); in one process, the tensors
    /// themselves.
    pub fn shard_batch<const K: usize>(&self, batch: [&Tensor; K]) -> Result<Shard<K>> {
        let n = batch.first().map_or(0, |t| t.size()[0]);
        if let Some(t) = batch.iter().find(|t| t.size()[0] != n) {
            return Err(Error::Data(format!(
                "the parts of a batch have {n} and {} rows",
                t.size()[0]
            )));
        }
        let mut rows = Vec::with_capacity(K);
        for t in batch {
            rows.push(self.shard(t)?);
        }
        Ok(Shard {
            rows: rows.try_into().expect("K parts"),
            n,
            weight: if self.world == 1 {
                1.0
            } else {
                self.weight(n)?
            },
        })
    }

    /// This rank's rows of a global batch of `n`, already taken (loaded as its share alone,
    /// [`crate::data::Images::train_rows`]), with the factor of its mean loss as
    /// [`Parallel::shard_batch`] gives it; an error where a part does not hold this rank's
    /// number of rows.
    pub fn local_shard<const K: usize>(&self, n: i64, rows: [Tensor; K]) -> Result<Shard<K>> {
        let (_, len) = self.rows(n)?;
        if let Some(t) = rows.iter().find(|t| t.size()[0] != len) {
            return Err(Error::Data(format!(
                "rank {} holds {} rows of a batch of {n}, not its {len}",
                self.rank,
                t.size()[0]
            )));
        }
        Ok(Shard {
            rows,
            n,
            weight: if self.world == 1 {
                1.0
            } else {
                self.weight(n)?
            },
        })
    }

    /// The random numbers `draw` makes for this rank's rows `part` of a global batch of `n`:
    /// drawn (the same on every rank, whose generators are seeded alike) for a tensor shaped
    /// like the whole batch, then sliced. The ranks together draw what one process draws for
    /// the whole batch (PGD's random starts, SGLD's noise).
    pub fn draw_rows(
        &self,
        part: &Tensor,
        n: i64,
        draw: impl Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(draw(part));
        }
        let (start, len) = self.rows(n)?;
        let mut size = part.size();
        size[0] = n;
        let like = Tensor::empty(&size, (part.kind(), part.device()));
        Ok(draw(&like).narrow(0, start, len))
    }

    /// The global batch of `n` rows from each rank's rows (`part`, this rank's
    /// [`Parallel::shard`]), in rank order: every rank puts its rows into a zero tensor of the
    /// global shape and the ranks sum them, which is exact (adding zeros changes no float).
    pub fn gather(&self, part: &Tensor, n: i64) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(part.shallow_clone());
        }
        let (start, len) = self.rows(n)?;
        let mut size = part.size();
        size[0] = n;
        let full = Tensor::zeros(&size, (part.kind(), part.device()));
        tch::no_grad(|| full.narrow(0, start, len).copy_(&part.detach()));
        self.with(|g| g.all_reduce_sum(std::slice::from_ref(&full)))
            .transpose()?;
        Ok(full)
    }

    /// Replaces the gradients of `vars` by their means over the ranks, before the optimizer
    /// step. A variable without a gradient on this rank sends zeros (so that the ranks stay in
    /// step) and keeps none; with the same model and loss on every rank that does not happen.
    pub fn average_grads(&self, vars: &[Tensor]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    g
                } else {
                    v.zeros_like()
                }
            })
            .collect();
        self.with(|g| g.all_reduce_mean(&grads)).transpose()?;
        Ok(())
    }

    /// Sets every variable of `vs` to rank 0's value (at the start of a run, as DDP does).
    pub fn broadcast_vars(&self, vs: &tch::nn::VarStore) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        self.broadcast(&by_name(vs))
    }

    /// Sets the tensors to rank 0's values (the parameters and buffers at the start of a run).
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        self.with(|g| g.broadcast(tensors, 0)).transpose()?;
        Ok(())
    }

    /// Batch normalisation without affine parameters, synchronised over the ranks in training
    /// (`SyncBatchNorm`: the statistics of every rank's rows, see
    /// [`dist::ProcessGroup::sync_batch_norm`]); LibTorch's `batch_norm` on this rank's rows
    /// otherwise (one process, or `training` off: the running statistics). `running` (mean,
    /// variance) moves by `momentum` in training.
    pub fn batch_norm(
        &self,
        x: &Tensor,
        running: Option<(&Tensor, &Tensor)>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        match (&self.group, training) {
            (Some(g), true) => {
                let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
                g.sync_batch_norm(x, running, momentum, eps)
                    .map_err(dist_err)
            }
            _ => Ok(x.batch_norm(
                None::<&Tensor>,
                None::<&Tensor>,
                running.map(|r| r.0),
                running.map(|r| r.1),
                training,
                momentum,
                eps,
                false,
            )),
        }
    }

    /// The means over the ranks of per-rank values (logged losses, divergence guards), the same
    /// on every rank.
    pub fn mean(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world == 1 {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values).to_kind(Kind::Double);
        self.with(|g| g.all_reduce_sum(std::slice::from_ref(&t)))
            .transpose()?;
        let sums = Vec::<f64>::try_from(&t).map_err(|e| Error::msg(e.to_string()))?;
        Ok(sums.iter().map(|s| s / self.world as f64).collect())
    }

    /// Whether `flag` holds on any rank (an interrupt asked on one stops all at the same step).
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.world == 1 {
            return Ok(flag);
        }
        Ok(self.mean(&[f64::from(u8::from(flag))])?[0] > 0.0)
    }

    /// Rank 0's bytes on every rank (`bytes` is read on rank 0 only).
    pub fn share_bytes(&self, bytes: Option<Vec<u8>>) -> Result<Vec<u8>> {
        if self.world == 1 {
            return Ok(bytes.unwrap_or_default());
        }
        let mine = if self.is_main() {
            bytes.unwrap_or_default()
        } else {
            Vec::new()
        };
        let len = Tensor::from_slice(&[mine.len() as i64]);
        self.broadcast(std::slice::from_ref(&len))?;
        let n = len.int64_value(&[0]);
        let buf = if self.is_main() {
            Tensor::from_slice(&mine)
        } else {
            Tensor::zeros([n], (Kind::Uint8, tch::Device::Cpu))
        };
        self.broadcast(std::slice::from_ref(&buf))?;
        Vec::<u8>::try_from(&buf).map_err(|e| Error::msg(e.to_string()))
    }

    /// Rank 0's resume point on every rank: the checkpoint it found (or that there was none),
    /// sent as its verified bytes, so that every rank resumes from the same state whether or
    /// not the others can read the run folder.
    pub fn share_checkpoint(
        &self,
        found: Option<(u64, Checkpoint)>,
    ) -> Result<Option<(u64, Checkpoint)>> {
        if self.world == 1 {
            return Ok(found);
        }
        // The step (8 bytes, little-endian), then the checkpoint's bytes.
        let bytes = match (&found, self.is_main()) {
            (Some((step, ck)), true) => {
                let mut b = step.to_le_bytes().to_vec();
                b.extend(ck.to_bytes()?);
                Some(b)
            }
            _ => None,
        };
        let got = self.share_bytes(bytes)?;
        if self.is_main() {
            return Ok(found);
        }
        if got.is_empty() {
            return Ok(None);
        }
        let (step, body) = got.split_at(8.min(got.len()));
        let step = u64::from_le_bytes(
            step.try_into()
                .map_err(|_| Error::msg("rank 0's checkpoint arrived cut short"))?,
        );
        let ck = Checkpoint::from_bytes(body, std::path::Path::new("rank 0's checkpoint"))?;
        Ok(Some((step, ck)))
    }
}

/// This rank's rows of a global batch ([`Parallel::shard_batch`]).
#[derive(Debug)]
pub struct Shard<const K: usize> {
    /// This rank's rows of each part of the batch, in the order given.
    pub rows: [Tensor; K],
    /// The rows of the global batch.
    pub n: i64,
    weight: f64,
}

impl<const K: usize> Shard<K> {
    /// This rank's mean loss over its rows, weighed so that the average of the ranks'
    /// gradients is the gradient of the mean over the whole batch ([`Parallel::weight`]): an
    /// epoch's last batch may not split evenly. Unchanged when the batch splits evenly.
    pub fn weigh(&self, loss: Tensor) -> Tensor {
        if self.weight == 1.0 {
            loss
        } else {
            loss * self.weight
        }
    }
}

/// Every variable of `vs` in the order of their names ([`crate::nn::vars_by_name`]).
fn by_name(vs: &tch::nn::VarStore) -> Vec<Tensor> {
    crate::nn::vars_by_name(vs)
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_is_the_identity() {
        let p = Parallel::single();
        let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu));
        assert_eq!(p.shard(&t).unwrap(), t);
        assert_eq!(p.gather(&t, 6).unwrap(), t);
        assert_eq!(p.weight(7).unwrap(), 1.0);
        assert_eq!(p.mean(&[1.5, 2.0]).unwrap(), vec![1.5, 2.0]);
        assert!(p.any(true).unwrap());
        assert_eq!(p.rows(7).unwrap(), (0, 7));
    }

    #[test]
    fn an_uneven_batch_is_refused() {
        let p = Parallel {
            rank: 1,
            world: 2,
            nccl: false,
            sync: GradSync::Reducer,
            group: None,
        };
        assert_eq!(p.rows(8).unwrap(), (4, 4));
        // An odd batch: rank 0 takes rows 0..4, rank 1 rows 4..7, and rank 1's mean loss
        // counts 3/7 of the batch where an even share would count 1/2.
        assert_eq!(p.rows(7).unwrap(), (4, 3));
        assert!((p.weight(7).unwrap() - 6.0 / 7.0).abs() < 1e-15);
        let e = p.even(7).unwrap_err().to_string();
        assert!(e.contains("multiple of 2"), "{e}");
        assert!(p.rows(1).is_err());
    }

    #[test]
    fn a_shard_is_this_ranks_rows_with_the_weight_of_its_mean() {
        let x = Tensor::arange(14, (Kind::Float, tch::Device::Cpu)).view([7, 2]);
        let y = Tensor::arange(7, (Kind::Int64, tch::Device::Cpu));
        let one = Parallel::single().shard_batch([&x, &y]).unwrap();
        assert_eq!((one.n, &one.rows[0], &one.rows[1]), (7, &x, &y));
        let loss = Tensor::from(0.3f32);
        assert_eq!(one.weigh(loss.shallow_clone()), loss);
        let p = Parallel {
            rank: 1,
            world: 2,
            nccl: false,
            sync: GradSync::Reducer,
            group: None,
        };
        let s = p.shard_batch([&x, &y]).unwrap();
        assert_eq!(s.rows[0], x.narrow(0, 4, 3));
        assert_eq!(s.rows[1], y.narrow(0, 4, 3));
        assert_eq!(s.n, 7);
        let w = s.weigh(loss.shallow_clone()).double_value(&[]);
        assert!((w - 0.3f32 as f64 * 6.0 / 7.0).abs() < 1e-6, "{w}");
        // An even batch leaves the loss as it is; parts of different lengths are refused.
        let even = p.shard_batch([&x.narrow(0, 0, 6)]).unwrap();
        assert_eq!(even.weigh(loss.shallow_clone()), loss);
        assert!(p.shard_batch([&x, &y.narrow(0, 0, 6)]).is_err());
    }
}
