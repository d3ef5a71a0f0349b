//! The small-scale data of the CPU protocol (docs/tsit.md): digits rendered in random styles (with the oracle render
//! of a content digit in a style image's style), and the procedural scenes for semantic
//! synthesis and for style transfer between their style domains.

use crate::config::{Config, Task};
use crate::scenes::{Scene, SceneStyle};
use reprise_core::data::{self, Rng};
use reprise_core::spec::DataSpec;
use reprise_core::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A digit's texture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Texture {
    /// No texture (T = 0).
    Flat,
    /// Horizontal stripes: T = +1 where ⌊v/p⌋ is even, −1 where odd (v = row).
    HStripes,
    /// Vertical stripes: the same on ⌊u/p⌋ (u = column).
    VStripes,
    /// Checker: the same on ⌊u/p⌋ + ⌊v/p⌋.
    Checker,
}

/// A digit style s = (c_f, c_b, t, p, a, g).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigitStyle {
    /// Foreground colour c_f.
    pub fg: [f64; 3],
    /// Background colour c_b.
    pub bg: [f64; 3],
    /// Texture t.
    pub texture: Texture,
    /// Texture period p (px).
    pub period: i64,
    /// Texture amplitude a.
    pub amp: f64,
    /// Vertical background gradient g.
    pub grad: f64,
}

fn luma(c: &[f64; 3]) -> f64 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

impl DigitStyle {
    /// Domain A: white flat digits on black.
    pub fn plain() -> DigitStyle {
        DigitStyle {
            fg: [1.0; 3],
            bg: [0.0; 3],
            texture: Texture::Flat,
            period: 2,
            amp: 0.0,
            grad: 0.0,
        }
    }

    /// A random style: colours U[0,1]³ redrawn until their lumas differ by ≥ 0.35; texture
    /// uniform over the four kinds, period 2 or 4, amplitude U[0, 0.25]; gradient U[−0.2, 0.2].
    pub fn random(rng: &mut Rng) -> DigitStyle {
        let (fg, bg) = loop {
            let f = [rng.uniform(), rng.uniform(), rng.uniform()];
            let b = [rng.uniform(), rng.uniform(), rng.uniform()];
            if (luma(&f) - luma(&b)).abs() >= 0.35 {
                break (f, b);
            }
        };
        let texture = [
            Texture::Flat,
            Texture::HStripes,
            Texture::VStripes,
            Texture::Checker,
        ][rng.below(4)];
        let period = if rng.below(2) == 0 { 2 } else { 4 };
        let amp = rng.range(0.0, 0.25);
        let grad = rng.range(-0.2, 0.2);
        DigitStyle {
            fg,
            bg,
            texture,
            period,
            amp,
            grad,
        }
    }

    fn planes(&self, s: i64) -> (Vec<f32>, Vec<f32>) {
        let n = (s * s) as usize;
        let (mut f, mut b) = (vec![0f32; 3 * n], vec![0f32; 3 * n]);
        for v in 0..s {
            for u in 0..s {
                let par = |q: i64| {
                    if (q / self.period) % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                };
                let t = match self.texture {
                    Texture::Flat => 0.0,
                    Texture::HStripes => par(v),
                    Texture::VStripes => par(u),
                    Texture::Checker => {
                        if (u / self.period + v / self.period) % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                };
                let ramp = v as f64 / (s - 1) as f64 - 0.5;
                let i = (v * s + u) as usize;
                for c in 0..3 {
                    f[c * n + i] = (self.fg[c] + self.amp * t).clamp(0.0, 1.0) as f32;
                    b[c * n + i] = (self.bg[c] + self.grad * ramp).clamp(0.0, 1.0) as f32;
                }
            }
        }
        (f, b)
    }
}

/// render(x, s) = x·clip(c_f + a·T) + (1 − x)·clip(c_b + g·(v/(S−1) − ½)) per channel, mapped
/// to `[−1, 1]`: digits `N×1×S×S` in `[0, 1]`, one style per digit, RGB `N×3×S×S`.
pub(crate) fn render_digits(x: &Tensor, styles: &[DigitStyle]) -> Tensor {
    let s = x.size()[2];
    let n = styles.len() as i64;
    let mut fg = Vec::with_capacity((n * 3 * s * s) as usize);
    let mut bg = Vec::with_capacity((n * 3 * s * s) as usize);
    for st in styles {
        let (f, b) = st.planes(s);
        fg.extend(f);
        bg.extend(b);
    }
    let dev = x.device();
    let fg = Tensor::from_slice(&fg).view([n, 3, s, s]).to_device(dev);
    let bg = Tensor::from_slice(&bg).view([n, 3, s, s]).to_device(dev);
    (x * fg + (1.0 - x) * bg) * 2.0 - 1.0
}

/// Digits split by class in stored order: the first `per_class` of each class train, the
/// rest test (docs/tsit.md, the small-scale protocol); images zero-padded to the next power of two, in `[0, 1]`.
pub(crate) fn digit_splits(
    spec: &DataSpec,
    per_class: usize,
) -> Result<(data::Dataset, data::Dataset)> {
    let all = data::load(spec)?;
    let h = all.x.size()[2];
    let s = (h as u64).next_power_of_two() as i64;
    let pad = (s - h) / 2;
    let x = if pad > 0 {
        all.x.constant_pad_nd([pad, s - h - pad, pad, s - h - pad])
    } else {
        all.x.shallow_clone()
    };
    let ys = data::labels_vec(&all.y);
    let mut seen = vec![0usize; all.classes];
    let (mut tr, mut te) = (Vec::new(), Vec::new());
    for (i, &y) in ys.iter().enumerate() {
        let k = y as usize;
        if seen[k] < per_class {
            tr.push(i as i64);
        } else {
            te.push(i as i64);
        }
        seen[k] += 1;
    }
    if seen.iter().any(|&c| c <= per_class) {
        return Err(Error::Data(format!(
            "`{}` has a class with at most {per_class} images: tsit.train leaves no test digit",
            spec.dataset
        )));
    }
    let ds = data::Dataset {
        x,
        y: all.y.shallow_clone(),
        classes: all.classes,
    };
    Ok((ds.subset(&tr), ds.subset(&te)))
}

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// The content stream's input (`[−1, 1]` image or `{0, 1}` label map).
    pub content: Tensor,
    /// The style image (style transfer).
    pub style: Option<Tensor>,
    /// What D sees as real (the style image, or the ground truth).
    pub real: Tensor,
    /// The perceptual target (the content image, or the ground truth).
    pub target: Tensor,
}

impl Batch {
    /// A style-transfer batch of contents `x` and styles `s`: D sees the styles as real, the
    /// perceptual loss compares with the contents.
    pub fn style_transfer(x: &Tensor, s: &Tensor) -> Batch {
        Batch {
            content: x.shallow_clone(),
            style: Some(s.shallow_clone()),
            real: s.shallow_clone(),
            target: x.shallow_clone(),
        }
    }
}

/// The fixed test set of a task and its references.
#[derive(Debug)]
pub struct TestSet {
    /// Content inputs.
    pub content: Tensor,
    /// Style images (style transfer).
    pub style: Option<Tensor>,
    /// What an output should look like: the oracle render, or the ground truth (`[−1, 1]`).
    pub oracle: Tensor,
    /// The FIDp reference set is `oracle`; this is a second real set for the floor.
    pub floor_set: Tensor,
    /// Digit labels of the contents (digits) or label maps `N×S×S` (scenes).
    pub labels: Tensor,
    /// Bottleneck noise per pair, fixed (seed 2021) and the same for every arm and seed.
    pub noise: Tensor,
}

/// The data of a task.
#[derive(Debug)]
pub struct TaskData {
    task: Task,
    size: i64,
    /// Training digits `N×1×S×S` in `[0, 1]` (digits).
    pub train_x: Tensor,
    /// Training labels (digits).
    pub train_y: Tensor,
    /// Training scenes.
    pub scenes: Vec<Scene>,
    /// The fixed test set.
    pub test: TestSet,
}

fn scene_stack(sc: &[Scene], f: impl Fn(&Scene) -> Tensor) -> Tensor {
    Tensor::stack(&sc.iter().map(f).collect::<Vec<_>>(), 0).to_kind(Kind::Float)
}

/// Test pairing: content i with style item k_i = (7i + 3) mod n (never i when n is even, as
/// for the 1000 test pairs); where k_i = i (odd n) the next item is taken.
pub(crate) fn partner(i: usize, n: usize) -> usize {
    let k = (7 * i + 3) % n;
    if k == i {
        (k + 1) % n
    } else {
        k
    }
}

impl TaskData {
    /// Builds the task's training pool and fixed test set.
    pub fn new(c: &Config, spec: &DataSpec) -> Result<TaskData> {
        let s = c.size;
        let n_test = c.test;
        let z = |n: i64| {
            tch::manual_seed(2021);
            Tensor::randn([n, 3, 2, 2], (Kind::Float, Device::Cpu))
        };
        match c.task {
            Task::DigitsAst => {
                let (tr, te) = digit_splits(spec, c.train)?;
                if tr.x.size()[2] != s {
                    return Err(Error::Data(format!(
                        "tsit.size is {s} but `{}` digits are {} px once padded",
                        spec.dataset,
                        tr.x.size()[2]
                    )));
                }
                let n = n_test.min(te.len());
                let x = te.x.narrow(0, 0, n as i64);
                let mut rng = Rng::new(2021);
                let styles: Vec<DigitStyle> =
                    (0..n).map(|_| DigitStyle::random(&mut rng)).collect();
                let mut rng2 = Rng::new(2022);
                let restyle: Vec<DigitStyle> =
                    (0..n).map(|_| DigitStyle::random(&mut rng2)).collect();
                let idx: Vec<i64> = (0..n).map(|i| partner(i, n) as i64).collect();
                let xs = x.index_select(0, &Tensor::from_slice(&idx));
                let test = TestSet {
                    content: render_digits(&x, &vec![DigitStyle::plain(); n]),
                    style: Some(render_digits(&xs, &styles)),
                    oracle: render_digits(&x, &styles),
                    floor_set: render_digits(&x, &restyle),
                    labels: te.y.narrow(0, 0, n as i64),
                    noise: z(n as i64),
                };
                Ok(TaskData {
                    task: c.task,
                    size: s,
                    train_x: tr.x,
                    train_y: tr.y,
                    scenes: vec![],
                    test,
                })
            }
            Task::FolderAst | Task::CityscapesSis | Task::Ade20kSis => Err(Error::msg(
                "a paper-scale task reads its folders (tsit::folders), not the small-scale data",
            )),
            Task::ScenesSis | Task::ScenesAst => {
                let mut rng = Rng::new(2020);
                let scenes: Vec<Scene> = (0..c.train)
                    .map(|_| Scene::random(s as usize, &mut rng))
                    .collect();
                let mut rng = Rng::new(2021);
                let test_sc: Vec<Scene> = (0..n_test)
                    .map(|_| Scene::random(s as usize, &mut rng))
                    .collect();
                let mut rng = Rng::new(2022);
                let floor_sc: Vec<Scene> = (0..n_test)
                    .map(|_| Scene::random(s as usize, &mut rng))
                    .collect();
                let labels = scene_stack(&test_sc, Scene::label_tensor).to_kind(Kind::Int64);
                let to_pm = |t: Tensor| t * 2.0 - 1.0;
                let test = if c.task == Task::ScenesSis {
                    let plain = SceneStyle::plain();
                    TestSet {
                        content: scene_stack(&test_sc, Scene::input_tensor),
                        style: None,
                        oracle: to_pm(scene_stack(&test_sc, |sc| sc.render(&plain))),
                        floor_set: to_pm(scene_stack(&floor_sc, |sc| sc.render(&plain))),
                        labels,
                        noise: z(n_test as i64),
                    }
                } else {
                    let mut ra = Rng::new(2021 ^ 0xa);
                    let mut rb = Rng::new(2021 ^ 0xb);
                    let sa: Vec<SceneStyle> =
                        (0..n_test).map(|_| SceneStyle::domain_a(&mut ra)).collect();
                    let sb: Vec<SceneStyle> =
                        (0..n_test).map(|_| SceneStyle::domain_b(&mut rb)).collect();
                    let mut rf = Rng::new(2022 ^ 0xb);
                    let sf: Vec<SceneStyle> =
                        (0..n_test).map(|_| SceneStyle::domain_b(&mut rf)).collect();
                    let pick = |f: &dyn Fn(usize) -> Tensor| {
                        to_pm(Tensor::stack(&(0..n_test).map(f).collect::<Vec<_>>(), 0))
                    };
                    TestSet {
                        content: pick(&|i| test_sc[i].render(&sa[i])),
                        style: Some(pick(&|i| test_sc[partner(i, n_test)].render(&sb[i]))),
                        oracle: pick(&|i| test_sc[i].render(&sb[i])),
                        floor_set: pick(&|i| test_sc[i].render(&sf[i])),
                        labels,
                        noise: z(n_test as i64),
                    }
                };
                Ok(TaskData {
                    task: c.task,
                    size: s,
                    train_x: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
                    train_y: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
                    scenes,
                    test,
                })
            }
        }
    }

    /// Moves the test set out (to the evaluator), leaving an empty one behind: the training
    /// pool is all a run needs afterwards.
    pub(crate) fn take_test(&mut self) -> TestSet {
        let empty = || Tensor::zeros([0], (Kind::Float, Device::Cpu));
        std::mem::replace(
            &mut self.test,
            TestSet {
                content: empty(),
                style: None,
                oracle: empty(),
                floor_set: empty(),
                labels: empty(),
                noise: empty(),
            },
        )
    }

    /// Training examples in the pool.
    pub(crate) fn train_len(&self) -> usize {
        match self.task {
            Task::DigitsAst => self.train_x.size()[0] as usize,
            _ => self.scenes.len(),
        }
    }

    /// The image side.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// A training batch of `b`, every draw from `rng`: random contents and, for style
    /// transfer, style images of fresh items in fresh styles.
    pub fn batch(&self, b: usize, rng: &mut Rng) -> Batch {
        let n = self.train_len();
        let ci: Vec<usize> = (0..b).map(|_| rng.below(n)).collect();
        self.batch_of(&ci, rng)
    }

    /// The training batch whose content items are `ci`; styles (and their items) are drawn
    /// from `rng`.
    pub fn batch_of(&self, ci: &[usize], rng: &mut Rng) -> Batch {
        let (n, b) = (self.train_len(), ci.len());
        match self.task {
            Task::DigitsAst => {
                let si: Vec<i64> = (0..b).map(|_| rng.below(n) as i64).collect();
                let styles: Vec<DigitStyle> = (0..b).map(|_| DigitStyle::random(rng)).collect();
                let ci: Vec<i64> = ci.iter().map(|&i| i as i64).collect();
                let xc = self.train_x.index_select(0, &Tensor::from_slice(&ci));
                let xs = self.train_x.index_select(0, &Tensor::from_slice(&si));
                let content = render_digits(&xc, &vec![DigitStyle::plain(); b]);
                let style = render_digits(&xs, &styles);
                Batch {
                    target: content.shallow_clone(),
                    content,
                    real: style.shallow_clone(),
                    style: Some(style),
                }
            }
            Task::ScenesSis => {
                let plain = SceneStyle::plain();
                let sc: Vec<&Scene> = ci.iter().map(|&i| &self.scenes[i]).collect();
                let content =
                    Tensor::stack(&sc.iter().map(|s| s.input_tensor()).collect::<Vec<_>>(), 0)
                        .to_kind(Kind::Float);
                let real =
                    Tensor::stack(&sc.iter().map(|s| s.render(&plain)).collect::<Vec<_>>(), 0)
                        .to_kind(Kind::Float)
                        * 2.0
                        - 1.0;
                Batch {
                    content,
                    style: None,
                    target: real.shallow_clone(),
                    real,
                }
            }
            _ => {
                let si: Vec<usize> = (0..b).map(|_| rng.below(n)).collect();
                let ims = |idx: &[usize], b_domain: bool, rng: &mut Rng| {
                    Tensor::stack(
                        &idx.iter()
                            .map(|&i| {
                                let st = if b_domain {
                                    SceneStyle::domain_b(rng)
                                } else {
                                    SceneStyle::domain_a(rng)
                                };
                                self.scenes[i].render(&st)
                            })
                            .collect::<Vec<_>>(),
                        0,
                    )
                    .to_kind(Kind::Float)
                        * 2.0
                        - 1.0
                };
                let content = ims(ci, false, rng);
                let style = ims(&si, true, rng);
                Batch {
                    target: content.shallow_clone(),
                    content,
                    real: style.shallow_clone(),
                    style: Some(style),
                }
            }
        }
    }

    /// Real training renders for the helper networks, with their per-pixel labels (scenes):
    /// for semantic synthesis the ground-truth style s₀; for style transfer half in domain A
    /// and half in domain B styles drawn from `rng`.
    pub(crate) fn scene_renders(&self, idx: &[i64], rng: &mut Rng) -> (Tensor, Tensor) {
        let plain = SceneStyle::plain();
        let mut ims = Vec::new();
        let mut labs = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            let sc = &self.scenes[i as usize];
            let st = match self.task {
                Task::ScenesSis => plain,
                _ if k % 2 == 0 => SceneStyle::domain_a(rng),
                _ => SceneStyle::domain_b(rng),
            };
            ims.push(sc.render(&st));
            labs.push(sc.label_tensor());
        }
        (
            Tensor::stack(&ims, 0).to_kind(Kind::Float) * 2.0 - 1.0,
            Tensor::stack(&labs, 0).to_kind(Kind::Int64),
        )
    }

    /// Training digits for the helper networks: each plain or (with probability ½) in a random
    /// style, with their labels.
    pub(crate) fn digit_renders(&self, idx: &[i64], rng: &mut Rng) -> (Tensor, Tensor) {
        let styles: Vec<DigitStyle> = idx
            .iter()
            .map(|_| {
                if rng.below(2) == 0 {
                    DigitStyle::plain()
                } else {
                    DigitStyle::random(rng)
                }
            })
            .collect();
        let i = Tensor::from_slice(idx);
        (
            render_digits(&self.train_x.index_select(0, &i), &styles),
            self.train_y.index_select(0, &i),
        )
    }
}

/// Class presence (multi-hot `N×K`) of label maps `N×S×S`.
pub fn presence(labels: &Tensor, k: i64) -> Tensor {
    let oh = labels.one_hot(k); // N×S×S×K
    oh.amax([1, 2].as_slice(), false).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_keep_their_contrast_and_render_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let s = DigitStyle::random(&mut rng);
            assert!((luma(&s.fg) - luma(&s.bg)).abs() >= 0.35);
            assert!(s.amp >= 0.0 && s.amp < 0.25 && s.grad.abs() <= 0.2);
            assert!(s.period == 2 || s.period == 4);
        }
        let x = Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu));
        let st: Vec<DigitStyle> = (0..4).map(|_| DigitStyle::random(&mut rng)).collect();
        let r = render_digits(&x, &st);
        assert_eq!(r.size(), vec![4, 3, 32, 32]);
        assert!(r.min().double_value(&[]) >= -1.0 && r.max().double_value(&[]) <= 1.0);
        // Plain: white on black, the digit itself in every channel.
        let p = render_digits(&x, &vec![DigitStyle::plain(); 4]);
        assert!(p.allclose(
            &(x.expand([4, 3, 32, 32], false) * 2.0 - 1.0),
            1e-6,
            1e-6,
            false
        ));
        // A foreground pixel takes c_f + a·T, a background one c_b + g·ramp.
        let s = DigitStyle {
            fg: [0.5, 0.2, 0.9],
            bg: [0.1, 0.1, 0.1],
            texture: Texture::HStripes,
            period: 2,
            amp: 0.2,
            grad: 0.2,
        };
        let one = Tensor::ones([1, 1, 32, 32], (Kind::Float, Device::Cpu));
        let r = (render_digits(&one, &[s]) + 1.0) / 2.0;
        assert!((r.double_value(&[0, 0, 0, 0]) - 0.7).abs() < 1e-6); // row 0: even
        assert!((r.double_value(&[0, 0, 2, 0]) - 0.3).abs() < 1e-6); // row 2: odd
        let zero = Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu));
        let r = (render_digits(&zero, &[s]) + 1.0) / 2.0;
        assert!((r.double_value(&[0, 0, 31, 5]) - (0.1 + 0.2 * 0.5)).abs() < 1e-6);
        assert!((r.double_value(&[0, 0, 0, 5]) - 0.0).abs() < 1e-6);
    }

    #[test]
    fn test_pairs_never_pair_a_content_with_itself() {
        for n in [1000usize, 300, 397] {
            assert!((0..n).all(|i| partner(i, n) != i), "{n}");
        }
    }

    #[test]
    fn presence_is_multi_hot() {
        let l = Tensor::from_slice(&[0i64, 0, 2, 2]).view([1, 2, 2]);
        assert_eq!(
            Vec::<f32>::try_from(presence(&l, 4).view(-1)).unwrap(),
            vec![1.0, 0.0, 1.0, 0.0]
        );
    }
}
