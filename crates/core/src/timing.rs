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
            crate::note!("REPRISE_DEVICE=cuda, but CUDA is not available to this binary");
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

/// The wall times of timed steps: their median, and the fastest and slowest, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// The median.
    pub median: f64,
    /// The fastest step.
    pub min: f64,
    /// The slowest step.
    pub max: f64,
}

/// [`median_ms`] of a step that can fail, with the spread: the first step that fails (a warm-up
/// one included) ends the timing with its error, since a failed step's time is no step's.
pub fn time_ms(
    dev: Device,
    warmup: usize,
    iters: usize,
    mut step: impl FnMut() -> crate::Result<()>,
) -> crate::Result<Timing> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters.max(1) {
        let t = Instant::now();
        step().map_err(|e| {
            crate::Error::msg(format!(
                "timed step {} of {} failed: {e}",
                i + 1,
                warmup + iters.max(1)
            ))
        })?;
        if dev.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_is_an_error_and_the_spread_brackets_the_median() {
        let mut n = 0;
        let t = time_ms(Device::Cpu, 1, 5, || {
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(n));
            Ok(())
        })
        .unwrap();
        assert!(
            t.min <= t.median && t.median <= t.max && t.min >= 2.0,
            "{t:?}"
        );
        let e = time_ms(Device::Cpu, 2, 3, || Err(crate::Error::msg("guard")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed step 1 of 5 failed: guard"), "{e}");
    }
}
