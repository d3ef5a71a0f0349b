//! TSIT's procedural scenes for semantic image synthesis at small scale: label maps of six
//! classes (sky, grass, road, disc, box, tree) rendered in controllable styles, with the oracle
//! render of one layout in another style. Seeded by `reprise_core::data::Rng`.

use reprise_core::data::Rng;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy)]
enum Shape {
    Disc {
        cx: f64,
        cy: f64,
        r: f64,
    },
    Box {
        x0: f64,
        y0: f64,
        x1: f64,
        y1: f64,
    },
    Tree {
        cx: f64,
        cy: f64,
        r: f64,
        trunk: f64,
    },
}

/// A scene layout: a label map of `size × size` and what is needed to render it.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Side in pixels.
    pub size: usize,
    /// Class id per pixel, row-major.
    pub labels: Vec<u8>,
    horizon: usize,
    road: Option<(usize, usize)>,
    objects: Vec<Shape>,
    texture_seed: u64,
}

impl Scene {
    /// A random layout: horizon at U(0.3, 0.6)·S, a road band with probability ½, then 1–3
    /// objects (disc, box or tree) of random size and position, later ones occluding earlier.
    pub fn random(size: usize, rng: &mut Rng) -> Scene {
        let s = size as f64;
        let horizon = (rng.range(0.3, 0.6) * s) as usize;
        let road = (rng.uniform() < 0.5).then(|| {
            let h = ((rng.range(0.12, 0.25) * s) as usize).max(2);
            let top = horizon + 1 + rng.below((size - horizon - h).max(1));
            (top.min(size - h), (top + h).min(size))
        });
        let mut objects = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let cx = rng.range(0.1, 0.9) * s;
            let cy = rng.range(0.25, 0.85) * s;
            objects.push(match rng.below(3) {
                0 => Shape::Disc {
                    cx,
                    cy,
                    r: rng.range(0.08, 0.2) * s,
                },
                1 => {
                    let (w, h) = (rng.range(0.15, 0.35) * s, rng.range(0.15, 0.35) * s);
                    Shape::Box {
                        x0: cx - w / 2.0,
                        y0: cy - h / 2.0,
                        x1: cx + w / 2.0,
                        y1: cy + h / 2.0,
                    }
                }
                _ => Shape::Tree {
                    cx,
                    cy,
                    r: rng.range(0.08, 0.16) * s,
                    trunk: rng.range(0.1, 0.2) * s,
                },
            });
        }
        let mut labels = vec![0u8; size * size];
        for y in 0..size {
            for x in 0..size {
                let mut c = if y < horizon { 0 } else { 1 };
                if road.is_some_and(|(a, b)| y >= a && y < b) {
                    c = 2;
                }
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                for o in &objects {
                    if let Some(k) = o.class_at(px, py) {
                        c = k;
                    }
                }
                labels[y * size + x] = c;
            }
        }
        Scene {
            size,
            labels,
            horizon,
            road,
            objects,
            texture_seed: rng.next_u64(),
        }
    }

    /// The label map as an int64 `S×S` tensor.
    pub(crate) fn label_tensor(&self) -> Tensor {
        let v: Vec<i64> = self.labels.iter().map(|&c| i64::from(c)).collect();
        Tensor::from_slice(&v).view([self.size as i64, self.size as i64])
    }

    /// The generator input: one-hot classes (6) and the boundary edge (1), `7×S×S` in {0, 1};
    /// edge = 1 where any 4-neighbour has another class.
    pub(crate) fn input_tensor(&self) -> Tensor {
        let s = self.size;
        let mut v = vec![0f32; 7 * s * s];
        for y in 0..s {
            for x in 0..s {
                let c = self.labels[y * s + x] as usize;
                v[c * s * s + y * s + x] = 1.0;
                let diff = |xx: isize, yy: isize| {
                    xx >= 0
                        && yy >= 0
                        && (xx as usize) < s
                        && (yy as usize) < s
                        && self.labels[yy as usize * s + xx as usize] as usize != c
                };
                let (xi, yi) = (x as isize, y as isize);
                if diff(xi - 1, yi) || diff(xi + 1, yi) || diff(xi, yi - 1) || diff(xi, yi + 1) {
                    v[6 * s * s + y * s + x] = 1.0;
                }
            }
        }
        Tensor::from_slice(&v).view([7, s as i64, s as i64])
    }

    /// Renders the scene in `style`: RGB `3×S×S` in `[0, 1]`. The class textures (sky
    /// gradient, grass noise, grey road with dashes, radially shaded discs, 4-px bricks, dotted
    /// trees) depend on the layout alone, so one layout in two styles differs only by the style.
    pub fn render(&self, style: &SceneStyle) -> Tensor {
        let s = self.size;
        let sf = s as f64;
        let mut tex = Rng::new(self.texture_seed);
        let mut speck = Rng::new(self.texture_seed ^ 0xA5A5);
        let mut out = vec![0f32; 3 * s * s];
        for y in 0..s {
            for x in 0..s {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let grain = tex.range(-1.0, 1.0);
                let c = self.labels[y * s + x];
                let mut rgb = match c {
                    0 => {
                        let t = py / self.horizon.max(1) as f64;
                        [0.35 + 0.35 * t, 0.55 + 0.3 * t, 0.95]
                    }
                    1 => [0.2 + 0.06 * grain, 0.6 + 0.12 * grain, 0.2 + 0.05 * grain],
                    2 => {
                        let (a, b) = self.road.unwrap_or((0, 1));
                        let mid = (a + b) / 2;
                        let dash = y == mid && (x / 4) % 2 == 0;
                        if dash {
                            [0.95, 0.95, 0.9]
                        } else {
                            [0.45, 0.45, 0.47]
                        }
                    }
                    3 => {
                        let shade = self
                            .objects
                            .iter()
                            .rev()
                            .find_map(|o| match o {
                                Shape::Disc { cx, cy, r } if o.class_at(px, py) == Some(3) => {
                                    Some(1.0 - 0.6 * ((px - cx).hypot(py - cy) / r).min(1.0))
                                }
                                _ => None,
                            })
                            .unwrap_or(1.0);
                        [0.9 * shade + 0.1, 0.75 * shade + 0.05, 0.1 * shade]
                    }
                    4 => {
                        let row = y / 4;
                        let off = if row % 2 == 0 { 0 } else { 2 };
                        let mortar = y % 4 == 3 || (x + off) % 4 == 3;
                        if mortar {
                            [0.85, 0.82, 0.78]
                        } else {
                            [0.65, 0.25, 0.2]
                        }
                    }
                    _ => {
                        let dot = x % 3 == 1 && y % 3 == 1;
                        if dot {
                            [0.35, 0.7, 0.3]
                        } else {
                            [0.05, 0.35, 0.1]
                        }
                    }
                };
                rgb = style.apply(rgb, py / sf);
                let snow = speck.uniform() < style.snow;
                for ch in 0..3 {
                    let noise = style.noise * tex.range(-1.0, 1.0);
                    let v = if snow {
                        1.0
                    } else {
                        (rgb[ch] + noise).clamp(0.0, 1.0)
                    };
                    out[ch * s * s + y * s + x] = v as f32;
                }
            }
        }
        Tensor::from_slice(&out).view([3, s as i64, s as i64])
    }
}

impl Shape {
    fn class_at(&self, x: f64, y: f64) -> Option<u8> {
        match *self {
            Shape::Disc { cx, cy, r } => ((x - cx).hypot(y - cy) <= r).then_some(3),
            Shape::Box { x0, y0, x1, y1 } => {
                (x >= x0 && x <= x1 && y >= y0 && y <= y1).then_some(4)
            }
            Shape::Tree { cx, cy, r, trunk } => {
                let canopy = (x - cx).hypot(y - cy) <= r;
                let stem = (x - cx).abs() <= (r * 0.25).max(0.75) && y >= cy && y <= cy + r + trunk;
                (canopy || stem).then_some(5)
            }
        }
    }
}

/// How a scene is rendered: colour transforms applied to the class textures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneStyle {
    /// Hue rotation in turns (0..1).
    pub hue: f64,
    /// Added to every channel.
    pub brightness: f64,
    /// Contrast about 0.5 (1 keeps it).
    pub contrast: f64,
    /// Saturation (1 keeps it, 0 is grey).
    pub saturation: f64,
    /// Per-channel multiplier.
    pub tint: [f64; 3],
    /// Amplitude of per-pixel noise.
    pub noise: f64,
    /// Fraction of pixels turned white (snow speckles).
    pub snow: f64,
}

impl SceneStyle {
    /// The fixed style s₀ (the textures as they are).
    pub fn plain() -> SceneStyle {
        SceneStyle {
            hue: 0.0,
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
            tint: [1.0; 3],
            noise: 0.0,
            snow: 0.0,
        }
    }

    /// Domain A of scene style transfer: a narrow, saturated palette.
    pub(crate) fn domain_a(rng: &mut Rng) -> SceneStyle {
        SceneStyle {
            hue: rng.range(-0.03, 0.03),
            brightness: rng.range(0.0, 0.05),
            contrast: rng.range(1.05, 1.2),
            saturation: rng.range(1.2, 1.5),
            tint: [1.0; 3],
            noise: 0.02,
            snow: 0.0,
        }
    }

    /// Domain B: dark or blue tints, desaturation and snow speckles from a continuous family.
    pub(crate) fn domain_b(rng: &mut Rng) -> SceneStyle {
        let blue = rng.range(0.0, 1.0);
        SceneStyle {
            hue: rng.range(-0.05, 0.05),
            brightness: rng.range(-0.25, 0.0),
            contrast: rng.range(0.7, 1.0),
            saturation: rng.range(0.2, 0.7),
            tint: [1.0 - 0.3 * blue, 1.0 - 0.15 * blue, 1.0 + 0.2 * blue],
            noise: rng.range(0.0, 0.05),
            snow: rng.range(0.0, 0.08),
        }
    }

    fn apply(&self, rgb: [f64; 3], _v: f64) -> [f64; 3] {
        // Hue rotation about the grey axis (Rodrigues' rotation in RGB space).
        let th = self.hue * 2.0 * std::f64::consts::PI;
        let (c, s) = (th.cos(), th.sin());
        let k = 1.0 / 3.0;
        let sq = (1.0f64 / 3.0).sqrt();
        let m = [
            [
                c + (1.0 - c) * k,
                k * (1.0 - c) - sq * s,
                k * (1.0 - c) + sq * s,
            ],
            [
                k * (1.0 - c) + sq * s,
                c + k * (1.0 - c),
                k * (1.0 - c) - sq * s,
            ],
            [
                k * (1.0 - c) - sq * s,
                k * (1.0 - c) + sq * s,
                c + k * (1.0 - c),
            ],
        ];
        let mut o = [0.0; 3];
        for (i, row) in m.iter().enumerate() {
            o[i] = row[0] * rgb[0] + row[1] * rgb[1] + row[2] * rgb[2];
        }
        let grey = 0.299 * o[0] + 0.587 * o[1] + 0.114 * o[2];
        for (i, v) in o.iter_mut().enumerate() {
            let sat = grey + self.saturation * (*v - grey);
            let con = 0.5 + self.contrast * (sat - 0.5);
            *v = ((con + self.brightness) * self.tint[i]).clamp(0.0, 1.0);
        }
        o
    }
}

/// `n` scenes from `seed`, with their 7-channel inputs, label maps and renders in `style`.
pub fn scenes(
    n: usize,
    size: usize,
    seed: u64,
    style: &SceneStyle,
) -> (Vec<Scene>, Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let sc: Vec<Scene> = (0..n).map(|_| Scene::random(size, &mut rng)).collect();
    let inputs = Tensor::stack(&sc.iter().map(Scene::input_tensor).collect::<Vec<_>>(), 0);
    let labels = Tensor::stack(&sc.iter().map(Scene::label_tensor).collect::<Vec<_>>(), 0);
    let renders = Tensor::stack(&sc.iter().map(|s| s.render(style)).collect::<Vec<_>>(), 0);
    (sc, inputs, labels, renders.to_kind(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_seeded_and_consistent() {
        let (sc, inp, lab, ren) = scenes(20, 32, 2020, &SceneStyle::plain());
        assert_eq!(inp.size(), vec![20, 7, 32, 32]);
        assert_eq!(lab.size(), vec![20, 32, 32]);
        assert_eq!(ren.size(), vec![20, 3, 32, 32]);
        // One-hot: exactly one class per pixel, matching the label map.
        let onehot = inp.narrow(1, 0, 6);
        assert!(
            onehot
                .sum_dim_intlist(1, false, Kind::Float)
                .eq(1.0)
                .all()
                .int64_value(&[])
                == 1
        );
        assert!(
            onehot
                .argmax(1, false)
                .eq_tensor(&lab)
                .all()
                .int64_value(&[])
                == 1
        );
        // The top row is sky, and every class appears somewhere in 20 scenes.
        assert!(lab.narrow(1, 0, 1).eq(0).all().int64_value(&[]) == 1);
        for c in 0..6 {
            assert!(
                lab.eq(c).any().int64_value(&[]) == 1,
                "class {c} never drawn"
            );
        }
        let (_, _, lab2, ren2) = scenes(20, 32, 2020, &SceneStyle::plain());
        assert!(lab2.equal(&lab) && ren2.equal(&ren));
        assert!(ren.min().double_value(&[]) >= 0.0 && ren.max().double_value(&[]) <= 1.0);
        // The oracle: the same layout in another style differs in colour, not in layout.
        let b = SceneStyle::domain_b(&mut Rng::new(1));
        let other = sc[0].render(&b);
        assert!(!other.allclose(&ren.get(0), 1e-3, 1e-3, false));
        assert!(other.equal(&sc[0].render(&b)), "rendering is deterministic");
        // Edges sit on class boundaries.
        let edge = inp.narrow(1, 6, 1);
        assert!(edge.sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
