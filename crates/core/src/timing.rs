//! What the step-timing examples share: the device they run on and the median of a step's
//! wall time.

use std::time::Instant;
use tch::Device;

/// The device named by `REPRISE_DEVICE`: `cpu` forces the CPU, `cuda` requires CUDA (exiting
/// with an error when this binary cannot see it); otherwise CUDA when available.
pub fn device_from_env() -> Device {
    match std::env::var("REPRISE_DEVICE").as_deref() {
        Ok("cpu") => Device::Cpu,
        Ok("cuda") if !tch::Cuda::is_available() => {
            eprintln!("REPRISE_DEVICE=cuda, but CUDA is not available to this binary");
            std::process::exit(1)
        }
        _ => Device::cuda_if_available(),
    }
}

/// Median milliseconds of `step` over `iters` calls after `warmup` untimed ones, waiting for
/// the GPU after each call on a CUDA device.
pub fn median_ms(dev: Device, warmup: usize, iters: usize, mut step: impl FnMut()) -> f64 {
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters.max(1) {
        let t = Instant::now();
        step();
        if dev.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
