//! `dist`: data-parallel collectives for reprise on the engine PyTorch's own
//! `DistributedDataParallel` uses, LibTorch's c10d: a `TCPStore` rendezvous, a Gloo backend for
//! host tensors and, in builds with CUDA, an NCCL backend for CUDA tensors (torch.distributed's
//! default "cpu:gloo,cuda:nccl"), bound through a small C++ shim (`shim/`).
//!
//! A [`ProcessGroup`] is joined from the environment `torchrun` or Slurm set
//! ([`Launch::from_env`]) or from explicit values; it all-reduces (sum or mean) lists of
//! tensors in size-capped buckets, as DDP does, broadcasts from a root and waits at barriers.
//!
//! The shim also binds ATen's autocast state for any device ([`autocast`]): mixed precision on
//! the CPU (bfloat16) as on CUDA, which tch's own `autocast` (CUDA, float16) does not reach.

use std::ffi::{c_char, c_int, c_void, CString};
use tch::{Kind, Tensor};

mod heartbeat;
pub use heartbeat::{Heartbeat, StoreClient};

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;

    extern "C" {
        pub fn reprise_dist_init(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            timeout_ms: c_int,
            op_timeout_ms: c_int,
            cuda_device: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn reprise_dist_has_nccl(group: *mut c_void) -> c_int;
        pub fn reprise_dist_allreduce_sum(
            group: *mut c_void,
            t: *mut C_tensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn reprise_dist_broadcast(
            group: *mut c_void,
            t: *mut C_tensor,
            root: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn reprise_dist_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
        pub fn reprise_sync_batch_norm(
            group: *mut c_void,
            x: *const C_tensor,
            running_mean: *const C_tensor,
            running_var: *const C_tensor,
            momentum: f64,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut C_tensor;
        pub fn reprise_dist_free(group: *mut c_void);
        pub fn reprise_store_connect(
            host: *const c_char,
            port: c_int,
            timeout_ms: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn reprise_store_add(
            store: *mut c_void,
            key: *const c_char,
            delta: i64,
            out: *mut i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn reprise_store_free(store: *mut c_void);
        pub fn reprise_ddp_new(
            group: *mut c_void,
            params: *const *const C_tensor,
            n: usize,
            bucket_bytes: i64,
            first_bucket_bytes: i64,
            find_unused: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn reprise_ddp_prepare(
            ddp: *mut c_void,
            outputs: *const *const C_tensor,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn reprise_ddp_buckets(ddp: *mut c_void) -> i64;
        pub fn reprise_ddp_free(ddp: *mut c_void);
        pub fn reprise_autocast_enter(device: c_int, dtype: c_int) -> c_int;
        pub fn reprise_autocast_exit(device: c_int, was: c_int);
        #[cfg(reprise_nccl)]
        pub fn reprise_cuda_peak_bytes(device: c_int, reset: c_int) -> i64;
    }
}

/// An error of the distributed layer, with the c10d message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistError(pub String);

impl std::fmt::Display for DistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "distributed: {}", self.0)
    }
}

impl std::error::Error for DistError {}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, DistError>;

/// Where and as whom a process joins its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// The number of processes.
    pub world: usize,
    /// This process's rank on its machine (its device index on CUDA).
    pub local_rank: usize,
    /// The host of rank 0, which serves the rendezvous store.
    pub master_addr: String,
    /// The store's port.
    pub master_port: u16,
    /// Where these values came from (`torchrun (RANK, WORLD_SIZE)`, `Slurm (SLURM_PROCID,
    /// SLURM_NTASKS)`, `runner --nproc`), for the messages of a group that cannot form.
    pub from: String,
}

impl Launch {
    /// Rank `rank` of `world` processes (or threads) on this machine, meeting at
    /// 127.0.0.1:`port`: the ranks of a test, or of a measurement on one host.
    pub fn local(rank: usize, world: usize, port: u16) -> Launch {
        Launch {
            rank,
            world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            from: "this process".into(),
        }
    }

    /// The launch `torchrun` describes (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`) or, failing that, Slurm (`SLURM_PROCID`, `SLURM_NTASKS`,
    /// `SLURM_LOCALID`, with `MASTER_ADDR`/`MASTER_PORT` or 127.0.0.1:29500); `None` when
    /// neither says there are several processes.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable source.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| DistError(format!("{k}={v} is not a whole number")))
                })
                .transpose()
        };
        let torchrun = if var("REPRISE_NPROC_LAUNCHER").is_some() {
            "runner --nproc"
        } else {
            "torchrun's RANK and WORLD_SIZE"
        };
        let (rank, world, local, from) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (Some(r), Some(w)) => (r, w, num("LOCAL_RANK")?.unwrap_or(r), torchrun),
            (None, None) => match (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
                (Some(r), Some(w)) => (
                    r,
                    w,
                    num("SLURM_LOCALID")?.unwrap_or(r),
                    "Slurm's SLURM_PROCID and SLURM_NTASKS",
                ),
                _ => return Ok(None),
            },
            _ => {
                return Err(DistError(
                    "RANK and WORLD_SIZE go together (torchrun sets both)".into(),
                ))
            }
        };
        if world < 2 {
            return Ok(None);
        }
        if rank >= world {
            return Err(DistError(format!(
                "rank {rank} is not below the world size {world}"
            )));
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            Some(p) => match p.trim().parse::<u16>() {
                Ok(0) => {
                    return Err(DistError(
                        "MASTER_PORT=0: rank 0 would listen on a port of the system's choosing that the other ranks cannot know; give a fixed port (torchrun and `runner run --nproc` pick one themselves)".into(),
                    ))
                }
                Ok(port) => port,
                Err(_) => return Err(DistError(format!("MASTER_PORT={p} is not a port"))),
            },
            None => 29500,
        };
        Ok(Some(Launch {
            rank,
            world,
            local_rank: local,
            master_addr,
            master_port,
            from: from.into(),
        }))
    }
}

/// Bucket size of [`ProcessGroup::all_reduce_mean`]: DDP's default `bucket_cap_mb` (25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Whether this build has c10d's NCCL backend (LibTorch with CUDA, and the CUDA and NCCL
/// headers found when it was compiled).
pub const HAS_NCCL: bool = cfg!(reprise_nccl);

/// A joined process group: Gloo for host tensors, and NCCL for CUDA tensors when joined with a
/// CUDA device.
pub struct ProcessGroup {
    ptr: *mut c_void,
    rank: usize,
    world: usize,
    nccl: bool,
}

// The c10d process group is used from one thread at a time through `&mut self`, and may move
// between threads.
#[allow(unsafe_code)]
unsafe impl Send for ProcessGroup {}

const ERR_LEN: usize = 1024;

fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = vec![0u8; ERR_LEN];
    if f(buf.as_mut_ptr().cast(), ERR_LEN) == 0 {
        return Ok(());
    }
    Err(DistError(message(&buf)))
}

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    // c10d appends a C++ backtrace after the first line.
    text.lines().next().unwrap_or("").trim().to_string()
}

impl ProcessGroup {
    /// Joins the group of `launch` through its store, waiting at most `timeout` for it (a rank
    /// that cannot reach the store fails with the reason once it has passed).
    pub fn join(launch: &Launch, timeout: std::time::Duration) -> Result<ProcessGroup> {
        Self::join_with(launch, timeout, timeout, None)
    }

    /// [`ProcessGroup::join`], with collectives that wait at most `ops` for the other ranks
    /// (longer than any step, an evaluation rank 0 does alone included), and with `cuda`, an
    /// NCCL backend on that GPU for CUDA tensors (an error where this build has none, see
    /// [`HAS_NCCL`], or the machine has no such GPU; NCCL's communicators are made at the
    /// first collective on a CUDA tensor).
    pub fn join_with(
        launch: &Launch,
        timeout: std::time::Duration,
        ops: std::time::Duration,
        cuda: Option<usize>,
    ) -> Result<ProcessGroup> {
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| DistError("MASTER_ADDR holds a NUL byte".into()))?;
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        let op_ms = c_int::try_from(ops.as_millis()).unwrap_or(c_int::MAX);
        let mut buf = vec![0u8; ERR_LEN];
        #[allow(unsafe_code)]
        // SAFETY: the strings outlive the call; the shim copies what it keeps and writes at most
        // ERR_LEN bytes into `buf`.
        let ptr = unsafe {
            ffi::reprise_dist_init(
                host.as_ptr(),
                c_int::from(launch.master_port),
                launch.rank as c_int,
                launch.world as c_int,
                ms,
                op_ms,
                cuda.map_or(-1, |d| d as c_int),
                buf.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if ptr.is_null() {
            return Err(DistError(format!(
                "rank {} of {} (from {}) could not join the group at {}:{} within {:.0?}: {}{}",
                launch.rank,
                launch.world,
                launch.from,
                launch.master_addr,
                launch.master_port,
                timeout,
                message(&buf),
                if launch.from.starts_with("Slurm") {
                    "; start every rank (`srun … runner run …`), or run as one process with SLURM_NTASKS unset"
                } else {
                    ""
                }
            )));
        }
        #[allow(unsafe_code)]
        // SAFETY: `ptr` is the live group just made.
        let nccl = unsafe { ffi::reprise_dist_has_nccl(ptr) } != 0;
        Ok(ProcessGroup {
            ptr,
            rank: launch.rank,
            world: launch.world,
            nccl,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Whether CUDA tensors are reduced on their GPU by NCCL (otherwise through host copies
    /// by Gloo).
    pub fn nccl(&self) -> bool {
        self.nccl
    }

    /// Where a tensor on `device` is reduced: on its GPU with NCCL, in host memory otherwise.
    fn wire(&self, device: tch::Device) -> tch::Device {
        if device.is_cuda() && self.nccl {
            device
        } else {
            tch::Device::Cpu
        }
    }

    /// Sums a contiguous tensor over the ranks, in place.
    fn sum_one(&mut self, t: &mut Tensor) -> Result<()> {
        let g = self.ptr;
        #[allow(unsafe_code)]
        // SAFETY: `t` is a live tensor for the call; the shim only reads and writes its data.
        call(|e, n| unsafe { ffi::reprise_dist_allreduce_sum(g, t.as_mut_ptr(), e, n) })
    }

    /// Replaces each tensor by its mean over the ranks (gradients after a backward), in buckets
    /// of at most [`BUCKET_BYTES`] of one dtype on one device: each bucket is flattened into one buffer,
    /// summed, divided by the world size and copied back.
    pub fn all_reduce_mean(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.all_reduce(tensors, self.world as f64)
    }

    /// Replaces each tensor by its sum over the ranks, bucketed as [`Self::all_reduce_mean`].
    pub fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.all_reduce(tensors, 1.0)
    }

    /// Sums in buckets, then divides by `div` (1 for a sum).
    fn all_reduce(&mut self, tensors: &[Tensor], div: f64) -> Result<()> {
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0;
        let mut kind = None;
        for t in tensors {
            let b = t.numel() * t.kind().elt_size_in_bytes();
            let key = (t.kind(), t.device());
            if !bucket.is_empty() && (bytes + b > BUCKET_BYTES || kind != Some(key)) {
                self.reduce_bucket(&bucket, div)?;
                bucket.clear();
                bytes = 0;
            }
            kind = Some(key);
            bucket.push(t);
            bytes += b;
        }
        if !bucket.is_empty() {
            self.reduce_bucket(&bucket, div)?;
        }
        Ok(())
    }

    fn reduce_bucket(&mut self, bucket: &[&Tensor], div: f64) -> Result<()> {
        let flat: Vec<Tensor> = bucket
            .iter()
            .map(|t| t.detach().to_device(self.wire(t.device())).reshape([-1]))
            .collect();
        let mut buf = Tensor::cat(&flat, 0);
        self.sum_one(&mut buf)?;
        let buf = if div == 1.0 { buf } else { buf / div };
        let mut at = 0;
        for t in bucket {
            let n = t.numel() as i64;
            let part = buf.narrow(0, at, n).reshape(t.size());
            let mut dst = t.shallow_clone();
            tch::no_grad(|| dst.copy_(&part.to_device(t.device())));
            at += n;
        }
        Ok(())
    }

    /// Sets each tensor to its value on rank `root` (the parameters at the start of a run).
    pub fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
        for t in tensors {
            let mut buf = t
                .detach()
                .to_device(self.wire(t.device()))
                .contiguous()
                .copy();
            let g = self.ptr;
            #[allow(unsafe_code)]
            // SAFETY: `buf` is a live, contiguous tensor for the call.
            call(|e, n| unsafe {
                ffi::reprise_dist_broadcast(g, buf.as_mut_ptr(), root as c_int, e, n)
            })?;
            let mut dst = t.shallow_clone();
            tch::no_grad(|| dst.copy_(&buf.to_device(t.device())));
        }
        Ok(())
    }

    /// Waits until every rank has reached it.
    pub fn barrier(&mut self) -> Result<()> {
        let g = self.ptr;
        #[allow(unsafe_code)]
        // SAFETY: the group is live.
        call(|e, n| unsafe { ffi::reprise_dist_barrier(g, e, n) })
    }

    /// Batch normalisation of `x` (N×C×…, without affine parameters) with the statistics of the
    /// rows of every rank, as PyTorch's `SyncBatchNorm` in training: the mean and the biased
    /// variance over all ranks' rows normalise `x`, the running statistics (`running`: mean,
    /// variance) move by `momentum` towards them (the variance unbiased), and the backward sums
    /// the gradient's statistics over the ranks, so a data-parallel step computes what one
    /// process computes with BatchNorm on the whole batch. Every rank must call it for the same
    /// layers in the same order (forward and backward are collectives); the graph keeps the
    /// group alive until it is freed.
    pub fn sync_batch_norm(
        &mut self,
        x: &Tensor,
        running: Option<(&Tensor, &Tensor)>,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let (rm, rv) = match running {
            Some((m, v)) => (m.as_ptr(), v.as_ptr()),
            None => (std::ptr::null(), std::ptr::null()),
        };
        let mut buf = vec![0u8; ERR_LEN];
        #[allow(unsafe_code)]
        // SAFETY: the tensors are live for the call; the shim returns a new tensor it owns no
        // more (or null), and writes at most ERR_LEN bytes into `buf`.
        let out = unsafe {
            ffi::reprise_sync_batch_norm(
                self.ptr,
                x.as_ptr(),
                rm,
                rv,
                momentum,
                eps,
                buf.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if out.is_null() {
            return Err(DistError(message(&buf)));
        }
        #[allow(unsafe_code)]
        // SAFETY: `out` is a fresh tensor from `new at::Tensor`, owned by the result from now.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// DistributedDataParallel's gradient engine (c10d's `Reducer`) over `params`, the leaf
    /// tensors an optimizer steps, listed in the same order on every rank: after
    /// [`Reducer::prepare`], the next backward averages their gradients over the ranks while it
    /// runs, each bucket's all-reduce starting as soon as its gradients are in. Buckets as DDP's
    /// defaults make them ([`ReducerOptions`]). The Reducer keeps the group's backends alive.
    pub fn reducer(&mut self, params: &[Tensor], opts: ReducerOptions) -> Result<Reducer> {
        if params.is_empty() {
            return Err(DistError("a Reducer needs at least one parameter".into()));
        }
        if let Some(p) = params.iter().find(|p| !p.requires_grad()) {
            return Err(DistError(format!(
                "a Reducer's parameters must require gradients (one of shape {:?} does not)",
                p.size()
            )));
        }
        let ptrs: Vec<*const torch_sys::C_tensor> = params.iter().map(|p| p.as_ptr()).collect();
        let mut buf = vec![0u8; ERR_LEN];
        #[allow(unsafe_code)]
        // SAFETY: the tensors are live for the call (the Reducer keeps its own references); the
        // shim writes at most ERR_LEN bytes into `buf`.
        let ptr = unsafe {
            ffi::reprise_ddp_new(
                self.ptr,
                ptrs.as_ptr(),
                ptrs.len(),
                opts.bucket_bytes as i64,
                opts.first_bucket_bytes as i64,
                c_int::from(opts.find_unused),
                buf.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if ptr.is_null() {
            return Err(DistError(format!("the Reducer: {}", message(&buf))));
        }
        Ok(Reducer { ptr })
    }

    /// Sums one float per rank (a loss, a counter) and returns the total.
    pub fn sum_scalar(&mut self, v: f64) -> Result<f64> {
        let mut t = Tensor::from_slice(&[v]).to_kind(Kind::Double);
        self.sum_one(&mut t)?;
        Ok(t.double_value(&[0]))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` came from `reprise_dist_init` and is freed once, here.
        unsafe {
            ffi::reprise_dist_free(self.ptr)
        }
    }
}

/// How a [`Reducer`] buckets the gradients: DDP's defaults ([`ReducerOptions::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReducerOptions {
    /// The cap of a bucket's bytes (DDP's `bucket_cap_mb`, 25 MiB).
    pub bucket_bytes: u64,
    /// The cap of the first bucket, the last gradients of the backward (1 MiB).
    pub first_bucket_bytes: u64,
    /// Marks the parameters that got no gradient in a backward as ready (DDP's
    /// `find_unused_parameters`, off: a parameter without a gradient is then an error at the
    /// next step).
    pub find_unused: bool,
}

impl Default for ReducerOptions {
    fn default() -> Self {
        ReducerOptions {
            bucket_bytes: 25 * 1024 * 1024,
            first_bucket_bytes: 1024 * 1024,
            find_unused: false,
        }
    }
}

/// DistributedDataParallel's gradient engine, c10d's `Reducer`, over one list of parameters
/// ([`ProcessGroup::reducer`]). Dropping it removes its autograd hooks.
pub struct Reducer {
    ptr: *mut c_void,
}

// The Reducer guards its state with its own mutex (its hooks run on autograd's threads); the
// handle is used through `&mut self` and may move between threads.
#[allow(unsafe_code)]
unsafe impl Send for Reducer {}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reducer({} buckets)", self.buckets())
    }
}

impl Reducer {
    /// Arms the Reducer for the next backward, as DDP's forward does in training (with the
    /// buckets rebuilt in the order of the first backward's gradients, once it has run): that
    /// backward then leaves in each parameter's gradient its mean over the ranks. `outputs`
    /// (the losses) are searched for unused parameters where
    /// [`ReducerOptions::find_unused`] is set, and ignored otherwise. Every rank must prepare
    /// and run the backward alike; an error names a parameter that got no gradient in the
    /// previous backward.
    pub fn prepare(&mut self, outputs: &[&Tensor]) -> Result<()> {
        let ptrs: Vec<*const torch_sys::C_tensor> = outputs.iter().map(|t| t.as_ptr()).collect();
        let d = self.ptr;
        #[allow(unsafe_code)]
        // SAFETY: the Reducer and the tensors are live for the call.
        call(|e, n| unsafe { ffi::reprise_ddp_prepare(d, ptrs.as_ptr(), ptrs.len(), e, n) })
    }

    /// The number of buckets (one until they are rebuilt after the first backward).
    pub fn buckets(&self) -> usize {
        #[allow(unsafe_code)]
        // SAFETY: the Reducer is live.
        let n = unsafe { ffi::reprise_ddp_buckets(self.ptr) };
        usize::try_from(n).unwrap_or(0)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` came from `reprise_ddp_new` and is freed once, here.
        unsafe {
            ffi::reprise_ddp_free(self.ptr)
        }
    }
}

/// The reduced precision of [`autocast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: float32's range, no loss scaling needed.
    Bf16,
    /// float16: needs a loss scaler against underflow.
    F16,
}

/// Runs `f` under ATen's autocast for `device` in `dtype`: matrix products and convolutions run
/// in the reduced precision on float32 weights (kept as the master copy), reductions and losses
/// in float32, as `torch.autocast(device_type, dtype)` does. Nesting restores the outer state.
pub fn autocast<T>(device: tch::Device, dtype: Half, f: impl FnOnce() -> T) -> T {
    let dev = c_int::from(device.is_cuda());
    let dt = c_int::from(dtype == Half::F16);
    #[allow(unsafe_code)]
    // SAFETY: plain calls into ATen's thread-local autocast state.
    let was = unsafe { ffi::reprise_autocast_enter(dev, dt) };
    struct Exit(c_int, c_int);
    impl Drop for Exit {
        fn drop(&mut self) {
            #[allow(unsafe_code)]
            // SAFETY: as above; runs even if `f` panics, so the state is restored.
            unsafe {
                ffi::reprise_autocast_exit(self.0, self.1)
            }
        }
    }
    let _exit = Exit(dev, was);
    f()
}

/// The peak of the bytes CUDA's caching allocator has handed to tensors on GPU `device` since
/// the last reset (`torch.cuda.max_memory_allocated`); `reset` starts a new peak after reading.
/// `None` in a build without the CUDA unit (see the build script) or for a device the
/// allocator does not know. Call it only where CUDA is available.
pub fn cuda_peak_bytes(device: usize, reset: bool) -> Option<u64> {
    #[cfg(reprise_nccl)]
    {
        let Ok(d) = c_int::try_from(device) else {
            return None;
        };
        #[allow(unsafe_code)]
        // SAFETY: reads (and resets) the allocator's counters; C++ exceptions are caught in
        // the shim.
        let b = unsafe { ffi::reprise_cuda_peak_bytes(d, c_int::from(reset)) };
        u64::try_from(b).ok()
    }
    #[cfg(not(reprise_nccl))]
    {
        let _ = (device, reset);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_runs_matrix_products_in_bfloat16_and_restores_the_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, tch::Device::Cpu));
        let inside = autocast(tch::Device::Cpu, Half::Bf16, || {
            let nested = autocast(tch::Device::Cpu, Half::Bf16, || a.matmul(&b).kind());
            (nested, a.matmul(&b))
        });
        assert_eq!(inside.0, Kind::BFloat16);
        assert_eq!(inside.1.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast is off again");
        let exact = a.matmul(&b);
        let err = (inside.1.to_kind(Kind::Float) - &exact)
            .abs()
            .max()
            .double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(
            err > 0.0 && err < 0.02 * scale,
            "bfloat16 error {err} of {scale}"
        );
    }

    #[test]
    fn the_launch_is_read_from_torchrun_or_slurm_variables() {
        let vars = |pairs: &'static [(&str, &str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            Launch::from_vars(vars(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        let l = Launch::from_vars(vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.world, l.local_rank, l.master_port),
            (1, 4, 1, 29400)
        );
        let s = Launch::from_vars(vars(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.rank, s.world, s.master_addr.as_str(), s.master_port),
            (3, 8, "127.0.0.1", 29500)
        );
        assert!(s.from.starts_with("Slurm"), "{}", s.from);
        assert!(l.from.starts_with("torchrun"), "{}", l.from);
        let e = Launch::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "0"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("MASTER_PORT=0"), "{e}");
        assert!(Launch::from_vars(vars(&[("RANK", "4"), ("WORLD_SIZE", "4")])).is_err());
        assert!(Launch::from_vars(vars(&[("RANK", "0")])).is_err());
        assert!(Launch::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).is_err());
    }
}
