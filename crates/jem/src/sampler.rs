//! SGLD on the classifier's energy with a persistent replay buffer kept in host memory.

use crate::config::SgldConfig;
use reprise_core::data::Rng;
use tch::{Device, Kind, Tensor};

/// The score SGLD climbs: log p(x) = LSE f(x), or f(x)[y] for class-conditional chains.
pub fn score(logits: &Tensor, y: Option<&Tensor>) -> Tensor {
    match y {
        None => logits.logsumexp([1].as_slice(), false),
        Some(y) => logits.gather(1, &y.unsqueeze(1), false).squeeze_dim(1),
    }
}

/// Runs `steps` SGLD steps from `x0`: x ← x + α ∇ₓ Σ score(x) + σ_s ε (official
/// `train_wrn_ebm.py`, `sample_q`). `f` must run the model in eval mode. Gradients are taken
/// on x only: no parameter gradient accumulates. Noise comes from LibTorch's generator (the
/// caller seeds it).
pub fn sgld(
    f: &dyn Fn(&Tensor) -> Tensor,
    x0: &Tensor,
    y: Option<&Tensor>,
    cfg: &SgldConfig,
    steps: usize,
) -> Tensor {
    sgld_with(f, x0, y, cfg, steps, &mut gaussian)
}

/// Standard normal noise shaped like `x`, from LibTorch's generator.
pub fn gaussian(x: &Tensor) -> Tensor {
    x.randn_like()
}

/// [`sgld`] with each step's ε drawn by `noise` (given the current iterate).
pub fn sgld_with(
    f: &dyn Fn(&Tensor) -> Tensor,
    x0: &Tensor,
    y: Option<&Tensor>,
    cfg: &SgldConfig,
    steps: usize,
    noise: &mut dyn FnMut(&Tensor) -> Tensor,
) -> Tensor {
    let mut x = x0.detach();
    for _ in 0..steps {
        let xg = x.set_requires_grad(true);
        let s = score(&f(&xg), y).sum(Kind::Float);
        let g = Tensor::run_backward(&[s], &[&xg], false, false)
            .pop()
            .expect("one gradient");
        x = tch::no_grad(|| {
            let mut step = g * cfg.step_size;
            if let Some(m) = cfg.max_step {
                step = step.clamp(-m, m);
            }
            let mut nx = xg.detach() + step;
            if cfg.noise > 0.0 {
                nx += noise(&nx) * cfg.noise;
            }
            if cfg.clamp {
                nx = nx.clamp(-1.0, 1.0);
            }
            nx
        });
    }
    x.detach()
}

/// The replay buffer: `size` samples on the CPU, initialised U(−1, 1). With `classes` K, slots
/// `[k·size/K, (k+1)·size/K)` form class k's block for conditional draws.
#[derive(Debug)]
pub struct ReplayBuffer {
    /// The samples, `size × C × H × W`, on the CPU.
    pub data: Tensor,
    classes: usize,
}

fn uniform_rows(n: usize, shape: &[i64], rng: &mut Rng) -> Tensor {
    let per: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n as i64 * per)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    let mut dims = vec![n as i64];
    dims.extend_from_slice(shape);
    Tensor::from_slice(&v).view(dims.as_slice())
}

impl ReplayBuffer {
    /// A buffer of `size` samples shaped `shape` (C, H, W), U(−1, 1) from `seed`.
    pub fn new(size: usize, shape: &[i64], classes: usize, seed: u64) -> ReplayBuffer {
        ReplayBuffer {
            data: uniform_rows(size, shape, &mut Rng::new(seed)),
            classes,
        }
    }

    /// Slots.
    pub fn size(&self) -> usize {
        self.data.size()[0] as usize
    }

    /// Draws `n` slots with replacement (inside each label's block when `y` is given) and their
    /// samples, each row restarted from U(−1, 1) with probability `reinit`.
    pub fn draw(
        &self,
        n: usize,
        y: Option<&[i64]>,
        reinit: f64,
        rng: &mut Rng,
    ) -> (Vec<i64>, Tensor) {
        let size = self.size();
        let block = size / self.classes.max(1);
        let slots: Vec<i64> = (0..n)
            .map(|i| match y {
                None => rng.below(size) as i64,
                Some(y) => (y[i] as usize * block + rng.below(block)) as i64,
            })
            .collect();
        let x = self.data.index_select(0, &Tensor::from_slice(&slots));
        let fresh: Vec<i64> = (0..n as i64).filter(|_| rng.uniform() < reinit).collect();
        if !fresh.is_empty() {
            let shape = &self.data.size()[1..];
            let rows = uniform_rows(fresh.len(), shape, rng);
            return (slots, x.index_copy(0, &Tensor::from_slice(&fresh), &rows));
        }
        (slots, x)
    }

    /// Writes samples back into their slots (a slot drawn twice keeps the last row).
    pub fn write(&mut self, slots: &[i64], x: &Tensor) {
        let x = x.detach().to_device(Device::Cpu).to_kind(Kind::Float);
        tch::no_grad(|| {
            let _ = self
                .data
                .index_put_(&[Some(Tensor::from_slice(slots))], &x, false);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_on_an_analytic_energy_is_exact_and_touches_no_parameter() {
        // f_k(x) = −‖x − μ_k‖²/2, so ∇ₓ LSE f = Σ_k softmax_k (μ_k − x).
        let mu = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, -0.5, 1.5])
            .view([3, 2])
            .set_requires_grad(true);
        let f = |x: &Tensor| -> Tensor {
            let d = x.unsqueeze(1) - mu.unsqueeze(0);
            d.square().sum_dim_intlist(2, false, Kind::Float) * -0.5
        };
        let x0 = Tensor::from_slice(&[0.1f32, 0.2, -0.3, 0.4]).view([2, 2]);
        let cfg = SgldConfig {
            steps: 1,
            step_size: 0.7,
            noise: 0.0,
            clamp: false,
            max_step: None,
            class_cond: false,
        };
        let x1 = sgld(&f, &x0, None, &cfg, 1);
        let w = f(&x0).softmax(1, Kind::Float);
        let grad = (w.unsqueeze(2) * (mu.detach().unsqueeze(0) - x0.unsqueeze(1))).sum_dim_intlist(
            1,
            false,
            Kind::Float,
        );
        let want = &x0 + grad * 0.7;
        assert!(x1.allclose(&want, 1e-6, 1e-6, false), "{x1} vs {want}");
        assert!(
            !mu.grad().defined(),
            "SGLD must not accumulate parameter gradients"
        );
        // Conditional: ∇ₓ f_y(x) = μ_y − x.
        let y = Tensor::from_slice(&[2i64, 0]);
        let x1 = sgld(&f, &x0, Some(&y), &cfg, 1);
        let want = &x0 + (mu.detach().index_select(0, &y) - &x0) * 0.7;
        assert!(x1.allclose(&want, 1e-6, 1e-6, false));
    }

    #[test]
    fn step_clipping_bounds_each_move() {
        let w = Tensor::from_slice(&[3.0f32, -0.5]).view([1, 2]);
        let f = |x: &Tensor| x.matmul(&w.tr()); // one logit: ∇ₓ = w
        let x0 = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
        let cfg = SgldConfig {
            steps: 1,
            step_size: 1.0,
            noise: 0.0,
            clamp: false,
            max_step: Some(1.0),
            class_cond: false,
        };
        let x1 = sgld(&f, &x0, None, &cfg, 1);
        assert_eq!(
            Vec::<f32>::try_from(x1.view([-1])).unwrap(),
            vec![1.0, -0.5]
        );
    }

    #[test]
    fn buffer_reinit_fraction_blocks_and_write_back() {
        let mut b = ReplayBuffer::new(100, &[1, 2, 2], 10, 0);
        assert!(b.data.min().double_value(&[]) >= -1.0 && b.data.max().double_value(&[]) < 1.0);
        // Mark every slot with a value outside U(−1, 1) to count restarts.
        let _ = b.data.fill_(5.0);
        let mut rng = Rng::new(1);
        let mut fresh = 0usize;
        let draws = 10_000;
        for _ in 0..draws / 50 {
            let (_, x) = b.draw(50, None, 0.05, &mut rng);
            fresh += x
                .flatten(1, -1)
                .select(1, 0)
                .lt(2.0)
                .sum(Kind::Int64)
                .int64_value(&[]) as usize;
        }
        let frac = fresh as f64 / draws as f64;
        assert!((frac - 0.05).abs() < 0.01, "{frac}");
        // Conditional draws stay in their class block (10 slots per class).
        let ys: Vec<i64> = (0..40).map(|i| i % 10).collect();
        let (slots, _) = b.draw(40, Some(&ys), 0.0, &mut rng);
        for (s, y) in slots.iter().zip(&ys) {
            assert_eq!(s / 10, *y);
        }
        // After a write, the drawn slots hold the returned samples; duplicates do not crash.
        let x = Tensor::arange(3 * 4, (Kind::Float, Device::Cpu)).view([3, 1, 2, 2]);
        b.write(&[7, 3, 7], &x);
        assert!(b.data.get(3).equal(&x.get(1)));
        let last = b.data.get(7);
        assert!(last.equal(&x.get(0)) || last.equal(&x.get(2)));
    }
}
