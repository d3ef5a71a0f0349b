//! Augmentation (random resized crop, pad + random crop, horizontal flip, colour jitter, PCA
//! lighting, additive Gaussian noise) and a loader that prepares the next batch on a
//! background thread while the current step runs.

use super::{batch_indices, Rng};
use serde::{Deserialize, Serialize};
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
    /// torchvision's `ColorJitter(j, j, j)` (brightness, contrast, saturation; no hue), after
    /// the flip: per image, three factors uniform in [max(0, 1 − j), 1 + j] applied in a random
    /// order ([`color_jitter`]); 3-channel images only. 0: off.
    #[serde(default)]
    pub jitter: f64,
    /// The robustness library's PCA `Lighting(σ)` with the ImageNet eigenvalues and
    /// eigenvectors (`robustness/data_augmentation.py`), last but for the noise: per image,
    /// α ~ N(0, σ²)³ ([`lighting`]); 3-channel images only. 0: off.
    #[serde(default)]
    pub lighting: f64,
}

/// The eigenvalues of the ImageNet pixel covariance (RGB), as the robustness library's
/// `IMAGENET_PCA` lists them.
pub const IMAGENET_EIGVAL: [f64; 3] = [0.2175, 0.0188, 0.0045];

/// The eigenvectors of the ImageNet pixel covariance, one per column (`IMAGENET_PCA['eigvec']`).
pub const IMAGENET_EIGVEC: [[f64; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// The luma of RGB images `…×3×H×W` with torchvision's weights (`rgb_to_grayscale`), keeping
/// a channel dimension of 1.
fn grayscale(x: &Tensor) -> Tensor {
    let c = |i: i64| x.narrow(-3, i, 1);
    c(0) * 0.2989 + c(1) * 0.587 + c(2) * 0.114
}

/// torchvision's `ColorJitter` on one image `3×H×W` in [0, 1] with its drawn parameters:
/// `factors` = (brightness, contrast, saturation), applied in `order` (0, 1, 2 name them),
/// each a blend `clamp(f·x + (1 − f)·d, 0, 1)` with black, the image's mean luma, and its
/// luma image respectively (torchvision's tensor `adjust_brightness`, `adjust_contrast`,
/// `adjust_saturation`).
pub fn color_jitter(x: &Tensor, factors: [f64; 3], order: [usize; 3]) -> Tensor {
    let mut x = x.shallow_clone();
    for &k in &order {
        let f = factors[k];
        let other = match k {
            0 => x.zeros_like(),
            1 => grayscale(&x).mean_dim([-3i64, -2, -1].as_slice(), true, x.kind()),
            _ => grayscale(&x),
        };
        x = (&x * f + other * (1.0 - f)).clamp(0.0, 1.0);
    }
    x
}

/// The robustness library's `Lighting` on an image `3×H×W` with its drawn `alpha`: adds
/// `Σ_j eigvec[c][j]·alpha[j]·eigval[j]` to channel c, without clamping.
pub fn lighting(x: &Tensor, alpha: [f64; 3]) -> Tensor {
    let rgb: Vec<f32> = IMAGENET_EIGVEC
        .iter()
        .map(|row| {
            (0..3)
                .map(|j| row[j] * alpha[j] * IMAGENET_EIGVAL[j])
                .sum::<f64>() as f32
        })
        .collect();
    x + Tensor::from_slice(&rgb)
        .view([3, 1, 1])
        .to_device(x.device())
        .to_kind(x.kind())
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

/// The box `(top, left, height, width)` of images `N×C×H×W` resized bilinearly
/// (align_corners = false, no antialiasing) to `side × side`: torchvision's `resized_crop` for
/// an upsampling crop of images held as tensors.
pub fn resized_crop(x: &Tensor, (t, l, h, w): (i64, i64, i64, i64), side: i64) -> Tensor {
    x.narrow(2, t, h)
        .narrow(3, l, w)
        .upsample_bilinear2d([side, side], false, None, None)
}

impl Augment {
    /// Whether it changes anything.
    pub fn is_identity(&self) -> bool {
        self.pad_crop == 0
            && !self.hflip
            && self.noise == 0.0
            && self.resized_crop == 0
            && self.jitter == 0.0
            && self.lighting == 0.0
    }

    /// What makes it unusable, if anything: a negative or non-finite size, noise, jitter or
    /// lighting, or a jitter above 1.
    pub fn problem(&self) -> Option<&'static str> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if self.pad_crop < 0 || self.resized_crop < 0 {
            Some("augment sizes must not be negative")
        } else if !ok(self.noise) || !ok(self.lighting) {
            Some("augment noise and lighting must be finite and not negative")
        } else if !ok(self.jitter) || self.jitter > 1.0 {
            Some("augment jitter must be in [0, 1]")
        } else {
            None
        }
    }

    /// Applies the augmentation to a batch `N×C×H×W`, drawing every random number from `rng`.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> Tensor {
        let n = x.size()[0];
        self.apply_rows(x, n, 0, rng)
    }

    /// [`Augment::apply`] for the rows `[start, start + len)` of a batch of `n`, given as `x`
    /// (`len` rows): every random number of the whole batch is drawn from `rng` in the same
    /// order, and the rows' own are applied to them, so that the ranks of a data-parallel run
    /// together compute exactly the batch one process computes while each transforms only its
    /// share of the images.
    pub fn apply_rows(&self, x: &Tensor, n: i64, start: i64, rng: &mut Rng) -> Tensor {
        let len = x.size()[0];
        assert!(
            start >= 0 && start + len <= n,
            "rows {start}..{} of a batch of {n}",
            start + len
        );
        let s = x.size();
        let draws = self.draw(n, (s[2], s[3]), rng);
        if len == 0 {
            return x.shallow_clone();
        }
        let rows: Vec<Tensor> = (0..len)
            .map(|k| self.apply_one(&x.get(k), &draws[(start + k) as usize]))
            .collect();
        self.add_noise(&Tensor::stack(&rows, 0), n, start, rng)
    }

    /// The random numbers of a batch of `n` images of `h × w`, image by image, drawn from `rng`
    /// in the order [`Augment::apply`] draws them (every crop box, then every padded crop's
    /// offset, every flip, then each image's jitter and lighting; the noise after, by
    /// [`Augment::add_noise`]).
    pub fn draw(&self, n: i64, (h, w): (i64, i64), rng: &mut Rng) -> Vec<Draws> {
        let mut d = vec![Draws::default(); n as usize];
        if self.resized_crop > 0 {
            for di in &mut d {
                di.crop = Some(resized_crop_box(h, w, rng));
            }
        }
        if self.pad_crop > 0 {
            let p = self.pad_crop;
            for di in &mut d {
                let dy = rng.below((2 * p + 1) as usize) as i64;
                let dx = rng.below((2 * p + 1) as usize) as i64;
                di.pad = Some((dy, dx));
            }
        }
        if self.hflip {
            for di in &mut d {
                di.flip = rng.below(2) == 1;
            }
        }
        if self.jitter > 0.0 || self.lighting > 0.0 {
            let lo = (1.0 - self.jitter).max(0.0);
            for di in &mut d {
                if self.jitter > 0.0 {
                    let mut order = [0usize, 1, 2];
                    rng.shuffle(&mut order);
                    let factors = [(); 3].map(|_| lo + (1.0 + self.jitter - lo) * rng.uniform());
                    di.jitter = Some((factors, order));
                }
                if self.lighting > 0.0 {
                    di.lighting = Some([(); 3].map(|_| rng.normal() * self.lighting));
                }
            }
        }
        d
    }

    /// One image `C×H×W` with its draws applied (all but the noise), as [`Augment::apply`]
    /// transforms it within a batch: the same operations on the same values, so any thread
    /// may transform any image.
    pub fn apply_one(&self, img: &Tensor, d: &Draws) -> Tensor {
        let mut x = img.shallow_clone();
        if let Some(b) = d.crop {
            x = resized_crop(&x.unsqueeze(0), b, self.resized_crop).squeeze_dim(0);
        }
        if let Some((dy, dx)) = d.pad {
            let p = self.pad_crop;
            let (h, w) = (x.size()[1], x.size()[2]);
            let padded = match self.pad_mode {
                PadMode::Zero => x.constant_pad_nd([p, p, p, p]),
                PadMode::Reflect => x.unsqueeze(0).reflection_pad2d([p, p, p, p]).squeeze_dim(0),
            };
            x = padded.narrow(1, dy, h).narrow(2, dx, w);
        }
        if d.flip {
            x = x.flip([2]);
        }
        if let Some((factors, order)) = d.jitter {
            x = color_jitter(&x, factors, order);
        }
        if let Some(alpha) = d.lighting {
            x = lighting(&x, alpha);
        }
        x
    }

    /// The batch's rows `[start, start + x's rows)` of `n` with the noise added, drawn from
    /// `rng` for the whole batch (the last draws of [`Augment::apply`]); `x` unchanged
    /// without noise.
    pub fn add_noise(&self, x: &Tensor, n: i64, start: i64, rng: &mut Rng) -> Tensor {
        if self.noise <= 0.0 {
            return x.shallow_clone();
        }
        // Drawn from `rng`, not LibTorch's global generator, so the loader thread stays
        // deterministic whatever the training thread draws meanwhile.
        let len = x.size()[0];
        let per = x.numel() as i64 / len.max(1);
        let z: Vec<f32> = (0..n * per)
            .map(|_| (rng.normal() * self.noise) as f32)
            .collect();
        let z = Tensor::from_slice(&z[(start * per) as usize..((start + len) * per) as usize]);
        x + z.view(x.size().as_slice()).to_device(x.device())
    }
}

/// The random numbers of one image of a batch ([`Augment::draw`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Draws {
    /// The resized crop's box (top, left, height, width).
    pub crop: Option<(i64, i64, i64, i64)>,
    /// The padded crop's offset (down, right).
    pub pad: Option<(i64, i64)>,
    /// Whether it is flipped left to right.
    pub flip: bool,
    /// The jitter's brightness, contrast and saturation factors, and their order.
    pub jitter: Option<([f64; 3], [usize; 3])>,
    /// The lighting's three PCA weights.
    pub lighting: Option<[f64; 3]>,
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

/// An endless, seeded stream of training batches, made ahead of the step that takes them
/// ([`Prefetch`](super::prefetch::Prefetch), two batches deep).
///
/// Batch order depends only on (seed, epoch) and augmentation only on (seed, step), so a run
/// resumed at step `s` sees exactly the batches an uninterrupted run saw from `s` on.
pub struct Loader {
    pre: super::prefetch::Prefetch<Batch>,
    per_epoch: u64,
    next: u64,
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
        let (x, y) = (x.shallow_clone(), y.shallow_clone());
        let pre = super::prefetch::Prefetch::new(start_step, u64::MAX, 2, move |step| {
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
            Ok(Batch { step, x: bx, y: by })
        });
        Loader {
            pre,
            per_epoch,
            next: start_step,
        }
    }

    /// Steps per epoch.
    pub fn per_epoch(&self) -> u64 {
        self.per_epoch
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        let b = self
            .pre
            .take(self.next)
            .expect("the loader makes a batch for every step");
        self.next += 1;
        b
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
    fn jitter_and_lighting_by_hand() {
        let cpu = (Kind::Float, tch::Device::Cpu);
        // One pixel per channel: r, g, b = 0.2, 0.6, 0.9; luma 0.5689.
        let x = Tensor::from_slice(&[0.2f32, 0.6, 0.9]).view([3, 1, 1]);
        let luma = 0.2989 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9;
        let v = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        let close = |a: Vec<f32>, b: [f64; 3]| {
            a.iter()
                .zip(b)
                .all(|(p, q)| (f64::from(*p) - q).abs() < 1e-6)
        };
        // Brightness alone, then clamped.
        let b = color_jitter(&x, [1.5, 1.0, 1.0], [0, 1, 2]);
        assert!(close(v(&b), [0.3, 0.9, 1.0]), "{:?}", v(&b));
        // Saturation 0 is the luma image.
        let s = color_jitter(&x, [1.0, 1.0, 0.0], [2, 0, 1]);
        assert!(close(v(&s), [luma; 3]), "{:?}", v(&s));
        // Contrast blends with the mean luma; the order matters once clamping bites.
        let c = color_jitter(&x, [1.0, 0.5, 1.0], [1, 0, 2]);
        assert!(close(
            v(&c),
            [0.1 + 0.5 * luma, 0.3 + 0.5 * luma, 0.45 + 0.5 * luma]
        ));
        let bc = color_jitter(&x, [1.5, 0.5, 1.0], [0, 1, 2]);
        let cb = color_jitter(&x, [1.5, 0.5, 1.0], [1, 0, 2]);
        assert!(!bc.allclose(&cb, 1e-6, 1e-6, false));
        // Lighting adds eigvec · (α ⊙ eigval) to every pixel, unclamped.
        let img = Tensor::ones([3, 2, 2], cpu);
        let l = lighting(&img, [1.0, 0.0, -2.0]);
        for (c, row) in IMAGENET_EIGVEC.iter().enumerate() {
            let want = 1.0 + row[0] * 0.2175 - 2.0 * row[2] * 0.0045;
            let got = l.get(c as i64).double_value(&[1, 1]);
            assert!((got - want).abs() < 1e-6, "{c}: {got} {want}");
        }
        // In a batch: seeded, and the identity factors are the identity.
        let aug = Augment {
            jitter: 0.1,
            lighting: 0.05,
            ..Default::default()
        };
        assert!(aug.problem().is_none());
        let xs = Tensor::rand([4, 3, 5, 5], cpu);
        let a = aug.apply(&xs, &mut Rng::new(3));
        assert!(a.equal(&aug.apply(&xs, &mut Rng::new(3))));
        assert!(!a.allclose(&xs, 1e-4, 1e-4, false));
        let d = (a - &xs).abs().max().double_value(&[]);
        assert!(d < 0.5, "small perturbations: {d}");
        let same = color_jitter(&xs.get(0), [1.0; 3], [2, 1, 0]);
        assert!(same.allclose(&xs.get(0), 1e-6, 1e-6, false));
        for bad in [
            Augment {
                jitter: 1.5,
                ..Default::default()
            },
            Augment {
                lighting: f64::NAN,
                ..Default::default()
            },
            Augment {
                resized_crop: -1,
                ..Default::default()
            },
        ] {
            assert!(bad.problem().is_some(), "{bad:?}");
        }
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
