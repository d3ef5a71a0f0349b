//! Seeded procedural data: out-of-distribution sets made from test images, and the random
//! draws (uniform, normal, permutations) procedural datasets are built from.

use super::Rng;
use tch::Tensor;

impl Rng {
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut v: Vec<i64> = (0..n as i64).collect();
        self.shuffle(&mut v);
        v
    }

    /// A random derangement of `0..n` (no fixed point), for `n ≥ 2`.
    pub fn derangement(&mut self, n: usize) -> Vec<i64> {
        assert!(n >= 2, "a derangement needs at least two elements");
        loop {
            let p = self.permutation(n);
            if p.iter().enumerate().all(|(i, &j)| i as i64 != j) {
                return p;
            }
        }
    }
}

/// `n` images of `shape` (C, H, W) uniform in `[lo, hi)`.
pub fn ood_uniform(n: i64, shape: [i64; 3], lo: f64, hi: f64, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let len = (n * shape.iter().product::<i64>()) as usize;
    let v: Vec<f32> = (0..len).map(|_| rng.range(lo, hi) as f32).collect();
    Tensor::from_slice(&v).view([n, shape[0], shape[1], shape[2]])
}

/// Each image's pixel positions under its own seeded permutation (channels move together):
/// the same intensity histogram, no structure.
pub fn ood_shuffled(x: &Tensor, seed: u64) -> Tensor {
    let s = x.size();
    let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
    let mut rng = Rng::new(seed);
    let flat = x.reshape([n, c, hw]);
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            let p = Tensor::from_slice(&rng.permutation(hw as usize)).to_device(x.device());
            flat.get(i).index_select(1, &p)
        })
        .collect();
    Tensor::stack(&rows, 0).reshape(&s)
}

/// `(x_i + x_π(i)) / 2` with π a seeded derangement.
pub fn ood_interp(x: &Tensor, seed: u64) -> Tensor {
    let n = x.size()[0] as usize;
    let p = Tensor::from_slice(&Rng::new(seed).derangement(n)).to_device(x.device());
    (x + x.index_select(0, &p)) / 2.0
}

/// `lo + hi − x`: dark strokes on a light background for digits.
pub fn ood_inverted(x: &Tensor, lo: f64, hi: f64) -> Tensor {
    x.neg() + (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn ood_sets_keep_what_they_promise() {
        let x = Tensor::rand([6, 1, 4, 4], (Kind::Float, tch::Device::Cpu));
        let s = ood_shuffled(&x, 3);
        // Same histogram per image, different arrangement.
        let sorted = |t: &Tensor| t.view([6, -1]).sort(1, false).0;
        assert!(sorted(&s).allclose(&sorted(&x), 0.0, 0.0, false));
        assert!(!s.allclose(&x, 0.0, 0.0, false));
        assert!(s.allclose(&ood_shuffled(&x, 3), 0.0, 0.0, false), "seeded");
        let i = ood_interp(&x, 1);
        let mean = (i.sum(Kind::Double) - x.sum(Kind::Double))
            .abs()
            .double_value(&[]);
        assert!(
            mean < 1e-4,
            "a derangement averages every image in exactly once"
        );
        assert!(ood_inverted(&x, 0.0, 1.0).allclose(&(1.0 - &x), 1e-6, 1e-6, false));
        let u = ood_uniform(10, [1, 4, 4], -1.0, 1.0, 0);
        assert!(u.min().double_value(&[]) >= -1.0 && u.max().double_value(&[]) < 1.0);
        assert!(u.mean(Kind::Double).double_value(&[]).abs() < 0.15);
        let d = Rng::new(5).derangement(7);
        assert!(d.iter().enumerate().all(|(i, &j)| i as i64 != j));
    }
}
