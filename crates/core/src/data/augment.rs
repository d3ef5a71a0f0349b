//! Augmentation (pad + random crop, horizontal flip, additive Gaussian noise) and a loader
//! that prepares the next batch on a background thread while the current step runs.

use super::{batch_indices, Rng};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use tch::Tensor;

/// How a padded border is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    /// Zeros.
    #[default]
    Zero,
    /// Reflection of the border pixels.
    Reflect,
}

/// Augmentation of a training batch; every field off by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Pad by this many pixels, then crop back to the original size at a random offset.
    #[serde(default)]
    pub pad_crop: i64,
    /// How the padding is filled.
    #[serde(default)]
    pub pad_mode: PadMode,
    /// Flip each image horizontally with probability ½.
    #[serde(default)]
    pub hflip: bool,
    /// Standard deviation of additive Gaussian noise.
    #[serde(default)]
    pub noise: f64,
    /// torchvision's `RandomResizedCrop` to this side (0: off), applied first: a crop of
    /// 8–100 % of the area with aspect ratio in [3/4, 4/3] (10 tries, then the centre crop),
    /// resized bilinearly.
    #[serde(default)]
    pub resized_crop: i64,
}

/// One `RandomResizedCrop` box `(top, left, height, width)` in an `h×w` image.
pub fn resized_crop_box(h: i64, w: i64, rng: &mut Rng) -> (i64, i64, i64, i64) {
    let area = (h * w) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (0.08 + 0.92 * rng.uniform());
        let ratio = (lo + (hi - lo) * rng.uniform()).exp();
        let cw = (target * ratio).sqrt().round() as i64;
        let ch = (target / ratio).sqrt().round() as i64;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.below((h - ch + 1) as usize) as i64;
            let left = rng.below((w - cw + 1) as usize) as i64;
            return (top, left, ch, cw);
        }
    }
    // Centre crop, aspect ratio clamped to the range.
    let r = w as f64 / h as f64;
    let (ch, cw) = if r < 0.75 {
        ((w as f64 / 0.75).round() as i64, w)
    } else if r > 4.0 / 3.0 {
        (h, (h as f64 * 4.0 / 3.0).round() as i64)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

impl Augment {
    /// Whether it changes anything.
    pub fn is_identity(&self) -> bool {
        self.pad_crop == 0 && !self.hflip && self.noise == 0.0 && self.resized_crop == 0
    }

    /// Applies the augmentation to a batch `N×C×H×W`, drawing every random number from `rng`.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> Tensor {
        let mut x = x.shallow_clone();
        if self.resized_crop > 0 {
            let s = x.size();
            let out = self.resized_crop;
            let crops: Vec<Tensor> = (0..s[0])
                .map(|i| {
                    let (t, l, ch, cw) = resized_crop_box(s[2], s[3], rng);
                    x.narrow(0, i, 1)
                        .narrow(2, t, ch)
                        .narrow(3, l, cw)
                        .upsample_bilinear2d([out, out], false, None, None)
                })
                .collect();
            x = Tensor::cat(&crops, 0);
        }
        let s = x.size();
        let (n, h, w) = (s[0], s[2], s[3]);
        if self.pad_crop > 0 {
            let p = self.pad_crop;
            let padded = match self.pad_mode {
                PadMode::Zero => x.constant_pad_nd([p, p, p, p]),
                PadMode::Reflect => x.reflection_pad2d([p, p, p, p]),
            };
            let crops: Vec<Tensor> = (0..n)
                .map(|i| {
                    let dy = rng.below((2 * p + 1) as usize) as i64;
                    let dx = rng.below((2 * p + 1) as usize) as i64;
                    padded.get(i).narrow(1, dy, h).narrow(2, dx, w)
                })
                .collect();
            x = Tensor::stack(&crops, 0);
        }
        if self.hflip {
            let flip: Vec<i64> = (0..n).filter(|_| rng.below(2) == 1).collect();
            if !flip.is_empty() {
                let idx = Tensor::from_slice(&flip).to_device(x.device());
                let flipped = x.index_select(0, &idx).flip([3]);
                x = x.index_copy(0, &idx, &flipped);
            }
        }
        if self.noise > 0.0 {
            // Drawn from `rng`, not LibTorch's global generator, so the loader thread stays
            // deterministic whatever the training thread draws meanwhile.
            let len = x.numel();
            let z: Vec<f32> = (0..len)
                .map(|_| (rng.normal() * self.noise) as f32)
                .collect();
            x = &x
                + Tensor::from_slice(&z)
                    .view(x.size().as_slice())
                    .to_device(x.device());
        }
        x
    }
}

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// The step this batch is for.
    pub step: u64,
    /// Inputs.
    pub x: Tensor,
    /// Labels.
    pub y: Tensor,
}

/// An endless, seeded stream of training batches, one batch ahead of the step that takes it.
///
/// Batch order depends only on (seed, epoch) and augmentation only on (seed, step), so a run
/// resumed at step `s` sees exactly the batches an uninterrupted run saw from `s` on.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    per_epoch: u64,
}

impl Loader {
    /// Batches of `batch` from `(x, y)` starting at `start_step`.
    pub fn new(
        x: &Tensor,
        y: &Tensor,
        batch: usize,
        seed: u64,
        drop_last: bool,
        aug: Augment,
        start_step: u64,
    ) -> Loader {
        let n = y.size()[0] as usize;
        let per_epoch = batch_indices(n, batch, seed, 0, true, drop_last)
            .len()
            .max(1) as u64;
        let (tx, rx) = sync_channel::<Batch>(1);
        let (x, y) = (x.shallow_clone(), y.shallow_clone());
        let worker = std::thread::spawn(move || {
            let mut step = start_step;
            loop {
                let epoch = step / per_epoch;
                let order = batch_indices(n, batch, seed, epoch, true, drop_last);
                let b = &order[(step % per_epoch) as usize];
                let idx = Tensor::from_slice(b).to_device(x.device());
                let mut bx = x.index_select(0, &idx);
                if !aug.is_identity() {
                    let mut rng = Rng::new(seed ^ step.wrapping_mul(0x2545_F491_4F6C_DD1D));
                    bx = aug.apply(&bx, &mut rng);
                }
                let by = y.index_select(0, &idx);
                if tx.send(Batch { step, x: bx, y: by }).is_err() {
                    return;
                }
                step += 1;
            }
        });
        Loader {
            rx: Some(rx),
            worker: Some(worker),
            per_epoch,
        }
    }

    /// Steps per epoch.
    pub fn per_epoch(&self) -> u64 {
        self.per_epoch
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        self.rx
            .as_ref()
            .and_then(|r| r.recv().ok())
            .expect("the loader thread runs until the loader is dropped")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel ends the worker at its next send.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn noise_is_the_step_generator_s_own_normal_stream() {
        let x = Tensor::zeros([3, 1, 5, 5], (Kind::Float, tch::Device::Cpu));
        let aug = Augment {
            noise: 0.5,
            ..Default::default()
        };
        let got = aug.apply(&x, &mut Rng::new(7));
        let mut r = Rng::new(7);
        let want: Vec<f32> = (0..75).map(|_| (r.normal() * 0.5) as f32).collect();
        let want = Tensor::from_slice(&want).view([3, 1, 5, 5]);
        let e = (got - want).abs().max().double_value(&[]);
        assert!(e < 1e-6, "{e}");
    }

    #[test]
    fn pad_crop_keeps_shape_and_content() {
        let x = Tensor::arange(2 * 16, (Kind::Float, tch::Device::Cpu)).view([2, 1, 4, 4]) + 1.0;
        let aug = Augment {
            pad_crop: 1,
            ..Default::default()
        };
        let y = aug.apply(&x, &mut Rng::new(0));
        assert_eq!(y.size(), x.size());
        // Zero padding: every value is either from the image or 0; the centre 2×2 is always kept.
        let centre = y.narrow(2, 1, 2).narrow(3, 1, 2);
        assert!(centre.gt(0.0).all().int64_value(&[]) == 1);
        let refl = Augment {
            pad_crop: 2,
            pad_mode: PadMode::Reflect,
            ..Default::default()
        }
        .apply(&x, &mut Rng::new(3));
        assert!(
            refl.gt(0.0).all().int64_value(&[]) == 1,
            "reflection adds no zeros"
        );
    }

    #[test]
    fn resized_crops_are_boxes_inside_the_image_with_bounded_area_and_ratio() {
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let (t, l, h, w) = resized_crop_box(32, 48, &mut rng);
            assert!(
                t >= 0 && l >= 0 && t + h <= 32 && l + w <= 48,
                "{t} {l} {h} {w}"
            );
            let area = (h * w) as f64 / (32.0 * 48.0);
            let ratio = w as f64 / h as f64;
            assert!((0.07..=1.0).contains(&area), "area {area}");
            assert!((0.7..=1.4).contains(&ratio), "ratio {ratio}");
        }
        let x = Tensor::rand([3, 3, 32, 48], (Kind::Float, tch::Device::Cpu));
        let aug = Augment {
            resized_crop: 24,
            ..Default::default()
        };
        let y = aug.apply(&x, &mut Rng::new(1));
        assert_eq!(y.size(), vec![3, 3, 24, 24]);
        assert!(y.equal(&aug.apply(&x, &mut Rng::new(1))), "seeded");
        // A constant image stays constant whatever the box.
        let c = Tensor::full([2, 1, 10, 10], 0.25, (Kind::Float, tch::Device::Cpu));
        let d = aug.apply(&c, &mut Rng::new(2)) - 0.25;
        assert!(d.abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn flips_are_horizontal_and_seeded() {
        let x = Tensor::arange(8 * 4, (Kind::Float, tch::Device::Cpu)).view([8, 1, 1, 4]);
        let aug = Augment {
            hflip: true,
            ..Default::default()
        };
        let a = aug.apply(&x, &mut Rng::new(1));
        assert!(a.equal(&aug.apply(&x, &mut Rng::new(1))));
        let mut flipped = 0;
        for i in 0..8 {
            let (r, o) = (a.get(i), x.get(i));
            if r.equal(&o.flip([2])) {
                flipped += 1;
            } else {
                assert!(r.equal(&o));
            }
        }
        assert!(flipped > 0 && flipped < 8, "{flipped}");
    }

    #[test]
    fn loader_resumes_with_the_same_batches() {
        let x = Tensor::arange(10, (Kind::Float, tch::Device::Cpu)).view([10, 1, 1, 1]);
        let y = Tensor::arange(10, (Kind::Int64, tch::Device::Cpu));
        let aug = Augment {
            hflip: true,
            ..Default::default()
        };
        let mut a = Loader::new(&x, &y, 4, 7, false, aug, 0);
        assert_eq!(a.per_epoch(), 3);
        let first: Vec<Batch> = (0..7).map(|_| a.next_batch()).collect();
        assert_eq!(first[2].y.size(), vec![2], "the last partial batch is kept");
        let mut b = Loader::new(&x, &y, 4, 7, false, aug, 4);
        for f in &first[4..] {
            let g = b.next_batch();
            assert_eq!(g.step, f.step);
            assert!(g.x.equal(&f.x) && g.y.equal(&f.y));
        }
    }
}
