//! One TSIT iteration (the paper's Sec. 3, its objective; official models/pix2pix_model.py and
//! trainers/pix2pix_trainer.py): a generator step (hinge + feature matching + perceptual
//! [+ KL]), then a discriminator step on a freshly generated fake (hinge), each with its own
//! TTUR Adam.

use crate::config::{Config, DecayPer, OptimConfig};
use crate::data::Batch;
use crate::model::{Discriminator, GenInput, Generator, Mode};
use crate::nets::Perceptual;
pub use reprise_core::error::StepError;
use reprise_core::optim::{Optimizer, Rule};
use reprise_core::parallel::Parallel;
use reprise_core::Error;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// TTUR Adam over a store's trainable variables.
pub fn adam(o: &OptimConfig, vs: &tch::nn::VarStore) -> Optimizer {
    Optimizer::for_vars(
        Rule::Adam {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: 1e-8,
            decoupled: false,
        },
        vs,
        0.0,
    )
}

/// The learning-rate factor at `step` of `total` with `per_epoch` iterations an epoch: 1, then
/// linear to 0 after `decay_from`. Per epoch (official `Pix2PixTrainer.update_learning_rate`,
/// called with the 1-based epoch e after it ends: the rate drops by lr/niter_decay once
/// e > niter), epoch k (0-based) of E, niter = round(decay_from·E), trains at
/// 1 − max(0, k − niter)/(E − niter); per iteration, at (total − step)/(total − start).
pub(crate) fn lr_factor(o: &OptimConfig, step: u64, total: u64, per_epoch: u64) -> f64 {
    let (step, total) = match o.decay_per {
        DecayPer::Iteration => (step, total),
        DecayPer::Epoch => {
            let per = per_epoch.max(1);
            let epochs = total.div_ceil(per);
            let start = (o.decay_from * epochs as f64).round() as u64;
            let k = step / per;
            return if k <= start || epochs <= start {
                1.0
            } else {
                1.0 - (k - start) as f64 / (epochs - start) as f64
            };
        }
    };
    let start = (o.decay_from * total as f64).round() as u64;
    if step < start || total <= start {
        1.0
    } else {
        (total - step) as f64 / (total - start) as f64
    }
}

/// What one iteration measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// Generator hinge term.
    pub g_gan: f64,
    /// Feature matching (unweighted).
    pub g_fm: f64,
    /// Perceptual loss (unweighted).
    pub g_vgg: f64,
    /// KL (unweighted; 0 without VAE).
    pub g_kld: f64,
    /// Discriminator hinge on real.
    pub d_real: f64,
    /// Discriminator hinge on fake.
    pub d_fake: f64,
}

/// The networks and optimizers of a run.
pub struct Gan {
    /// The generator.
    pub g: Box<dyn Generator>,
    /// The discriminator.
    pub d: Discriminator,
    /// The frozen perceptual net.
    pub p: Perceptual,
    /// G's optimizer.
    pub opt_g: Optimizer,
    /// D's optimizer.
    pub opt_d: Optimizer,
    /// Whether D sees the label map beside the image (semantic synthesis).
    pub conditional_d: bool,
}

fn d_input(label: &Tensor, img: &Tensor, conditional: bool) -> Tensor {
    if conditional {
        Tensor::cat(&[label, img], 1)
    } else {
        img.shallow_clone()
    }
}

/// Hinge D loss on one scale's logits: real → mean relu(1 − D), fake → mean relu(1 + D).
fn hinge_d(logits: &Tensor, real: bool) -> Tensor {
    if real {
        (-logits + 1.0).relu().mean(Kind::Float)
    } else {
        (logits + 1.0).relu().mean(Kind::Float)
    }
}

/// The bottleneck input for a batch of `n`: N(0, 1) noise `n×3×2×2a` for style transfer, ε of
/// the VAE's latent size, or nothing; drawn from LibTorch's generator.
pub fn draw_noise(c: &Config, n: i64, dev: tch::Device) -> Option<Tensor> {
    if c.task.is_ast() {
        Some(Tensor::randn([n, 3, 2, 2 * c.aspect], (Kind::Float, dev)))
    } else if c.model.vae {
        Some(Tensor::randn([n, c.model.z_dim], (Kind::Float, dev)))
    } else {
        None
    }
}

impl Gan {
    /// The same networks trained by the ranks of `par`: both optimizers average the ranks'
    /// gradients before their steps (as DDP does), and FADE's BatchNorm normalises over every
    /// rank's rows, as the official code's SyncBatchNorm (`models/networks/sync_batchnorm`).
    pub fn data_parallel(mut self, par: &Arc<Parallel>) -> Gan {
        self.g.sync_batch_norm(par);
        Gan {
            opt_g: self.opt_g.data_parallel(par.clone()),
            opt_d: self.opt_d.data_parallel(par.clone()),
            ..self
        }
    }

    /// G's input for a batch with fresh bottleneck noise (or a fresh ε for the VAE).
    fn input<'a>(
        c: &Config,
        content: &'a Tensor,
        style: Option<&'a Tensor>,
        real: &'a Tensor,
        noise: &'a Option<Tensor>,
    ) -> GenInput<'a> {
        GenInput {
            content,
            style,
            noise: noise.as_ref(),
            real: c.model.vae.then_some(real),
        }
    }

    /// D on the fake and the real half in one call (batch-concatenated).
    fn d_pass(&self, content: &Tensor, fake: &Tensor, real: &Tensor) -> Vec<Vec<Tensor>> {
        self.d.forward(
            &Tensor::cat(
                &[
                    d_input(content, fake, self.conditional_d),
                    d_input(content, real, self.conditional_d),
                ],
                0,
            ),
            Mode::TRAIN,
        )
    }

    /// One iteration on a batch at learning rates `(lr_g, lr_d)`. Errors (with the losses)
    /// when a loss is not finite or beyond `guard`, before any update.
    pub fn step(
        &mut self,
        c: &Config,
        b: &Batch,
        lr: (f64, f64),
    ) -> std::result::Result<StepStats, StepError> {
        let dev = b.real.device();
        self.step_with(c, b, lr, &Parallel::single(), &mut |n| {
            draw_noise(c, n, dev)
        })
    }

    /// [`Gan::step`] with each generator pass's bottleneck noise (or VAE ε) for a batch of
    /// `n` from `noise_of`: the generator step's first, the discriminator step's second (as the
    /// official `Pix2PixTrainer` runs `run_generator_one_step`, then
    /// `run_discriminator_one_step` on a freshly generated fake).
    ///
    /// Data-parallel (`par` of several ranks): `b` holds this rank's rows of the batch,
    /// `noise_of` gives its rows of the noise drawn for the whole batch, the optimizers (made
    /// [`Optimizer::data_parallel`]) average the gradients over the ranks before each update
    /// (as DDP does), the KL term (a sum over rows)
    /// is weighted so that the ranks' mean is the whole batch's, and the logged and guarded
    /// losses are the ranks' means, so every rank takes the same decision.
    pub fn step_with(
        &mut self,
        c: &Config,
        b: &Batch,
        lr: (f64, f64),
        par: &Parallel,
        noise_of: &mut dyn FnMut(i64) -> Option<Tensor>,
    ) -> std::result::Result<StepStats, StepError> {
        let (content, style, real, target) = (&b.content, b.style.as_ref(), &b.real, &b.target);
        let failed = |e: Error| StepError::Failed(e);
        let dev = real.device();
        let n = real.size()[0];
        let mut st = StepStats::default();
        // Generator step: D's weights take no gradient (they are frozen for this pass). Under
        // mixed precision the networks' forwards run under autocast and their outputs come
        // back in float32 for the losses.
        let noise = noise_of(n);
        let inp = Self::input(c, content, style, real, &noise);
        let mut out = c.amp.run(dev, || self.g.forward(&inp, Mode::TRAIN));
        out.image = out.image.to_kind(Kind::Float);
        out.kld = out.kld.map(|k| k.to_kind(Kind::Float));
        self.d.vs.freeze();
        let pred = to_float(c.amp.run(dev, || self.d_pass(content, &out.image, real)));
        let num_d = pred.len() as f64;
        let mut gan = Tensor::zeros([], (Kind::Float, dev));
        let mut fm = Tensor::zeros([], (Kind::Float, dev));
        for scale in &pred {
            let last = scale.len() - 1;
            gan -= scale[last].narrow(0, 0, n).mean(Kind::Float);
            for f in &scale[..last] {
                let (fake, real) = (f.narrow(0, 0, n), f.narrow(0, n, n).detach());
                fm += (fake - real).abs().mean(Kind::Float);
            }
        }
        let gan = gan / num_d;
        let fm = fm / num_d;
        let vgg = if c.loss.lambda_vgg > 0.0 {
            c.amp
                .run(dev, || self.p.loss(&out.image, target))
                .to_kind(Kind::Float)
        } else {
            Tensor::zeros([], (Kind::Float, dev))
        };
        let mut loss = &gan + &fm * c.loss.lambda_feat + &vgg * c.loss.lambda_vgg;
        let mut kld = 0.0;
        if let Some(k) = &out.kld {
            let k = kld_term(k, &c.loss) * par.world() as f64;
            loss += &k * c.loss.lambda_kld;
            kld = k.double_value(&[]);
        }
        let means = par
            .mean(&[
                loss.double_value(&[]),
                gan.double_value(&[]),
                fm.double_value(&[]),
                vgg.double_value(&[]),
                kld,
            ])
            .inspect_err(|_| self.d.vs.unfreeze())
            .map_err(failed)?;
        let lv = means[0];
        [st.g_gan, st.g_fm, st.g_vgg, st.g_kld] = [means[1], means[2], means[3], means[4]];
        if !lv.is_finite() || lv.abs() > c.guard_loss {
            self.d.vs.unfreeze();
            return Err(StepError::Diverged(format!(
                "generator loss {lv:.3e} (hinge {:.3e}, FM {:.3e}, perceptual {:.3e}) is not finite or beyond ±{:.0e}",
                st.g_gan, st.g_fm, st.g_vgg, c.guard_loss
            )));
        }
        self.opt_g.zero_grad();
        let backward = self.opt_g.backward(&loss);
        if let Err(e) = backward {
            self.d.vs.unfreeze();
            return Err(StepError::Failed(Error::msg(format!(
                "generator backward: {e}"
            ))));
        }
        self.d.vs.unfreeze();
        self.opt_g.step(lr.0).map_err(failed)?;
        // Discriminator step on a fresh fake (new noise / new z), generated without gradient.
        let noise = noise_of(n);
        let inp = Self::input(c, content, style, real, &noise);
        let fake = tch::no_grad(|| {
            c.amp
                .run(dev, || self.g.forward(&inp, Mode::TRAIN).image)
                .to_kind(Kind::Float)
        });
        let pred = to_float(c.amp.run(dev, || self.d_pass(content, &fake, real)));
        let mut d_fake = Tensor::zeros([], (Kind::Float, dev));
        let mut d_real = Tensor::zeros([], (Kind::Float, dev));
        for scale in &pred {
            let logits = scale.last().expect("a scale has outputs");
            d_fake += hinge_d(&logits.narrow(0, 0, n), false);
            d_real += hinge_d(&logits.narrow(0, n, n), true);
        }
        let d_loss = (&d_fake + &d_real) / num_d;
        let means = par
            .mean(&[
                d_loss.double_value(&[]),
                d_fake.double_value(&[]) / num_d,
                d_real.double_value(&[]) / num_d,
            ])
            .map_err(failed)?;
        let dv = means[0];
        [st.d_fake, st.d_real] = [means[1], means[2]];
        if !dv.is_finite() || dv.abs() > c.guard_loss {
            return Err(StepError::Diverged(format!(
                "discriminator loss {dv:.3e} is not finite or beyond ±{:.0e}",
                c.guard_loss
            )));
        }
        self.opt_d.zero_grad();
        self.opt_d
            .backward(&d_loss)
            .map_err(|e| StepError::Failed(Error::msg(format!("discriminator backward: {e}"))))?;
        self.opt_d.step(lr.1).map_err(failed)?;
        Ok(st)
    }
}

/// The discriminator's outputs (each scale's features and logits) in float32, for the losses.
fn to_float(pred: Vec<Vec<Tensor>>) -> Vec<Vec<Tensor>> {
    pred.into_iter()
        .map(|scale| scale.into_iter().map(|t| t.to_kind(Kind::Float)).collect())
        .collect()
}

/// The networks, config and one batch of the timed TSIT iteration (style transfer, the full
/// arm): `paper_scale` gives the official widths at 256×256, batch 1, with VGG-19's layout as
/// the loss network (random weights: the timing does not depend on them); otherwise the small
/// scale of `digits-ast` (S = 32, nf 16, B = 8, VGG-mini). Shared by the criterion benchmark,
/// the `ts_step_time` example and the PyTorch twin's shapes (`bench/pytorch/ts_step.py`).
pub fn bench_setup(paper_scale: bool, dev: tch::Device) -> (Gan, Config, [Tensor; 2]) {
    let yaml = if paper_scale {
        "task: digits-ast\narm: full\nsize: 256\ntrain: 1\ntest: 2\nmodel: { nf: 64, cap: 16, ndf: 64, n_layers_d: 3 }\n\
         batch: 1\niterations: 1\nloss: { lambda_feat: 1.0, lambda_vgg: 1.0 }\noptim: { lr_g: 1.0e-4, lr_d: 4.0e-4 }\n\
         perceptual: { random: { seed: 0 } }\neval: { every: 1, n_test: 2, net_epochs: 1 }\ncheckpoint_every: 1\n"
    } else {
        "task: digits-ast\narm: full\nsize: 32\ntrain: 1\ntest: 2\nmodel: { nf: 16, cap: 8, ndf: 16, n_layers_d: 3 }\n\
         batch: 8\niterations: 1\nloss: { lambda_feat: 1.0, lambda_vgg: 0.25 }\noptim: { lr_g: 1.0e-4, lr_d: 4.0e-4 }\n\
         perceptual: { random: { seed: 0 } }\neval: { every: 1, n_test: 2, net_epochs: 1 }\ncheckpoint_every: 1\n"
    };
    // Through a JSON value, as specs are read (enums in their map form).
    let v: serde_json::Value = serde_norway::from_str(yaml).expect("the benchmark config is YAML");
    let c: Config = serde_json::from_value(v).expect("the benchmark config parses");
    tch::manual_seed(0);
    let mut p = if paper_scale {
        Perceptual::vgg19_layout(dev)
    } else {
        Perceptual::vgg_mini(dev, 10)
    };
    p.vs.freeze();
    let g = crate::model::Tsit::new(&c.model, (c.size, c.size), 3, true, true, dev);
    let d = Discriminator::new(&c.model, 3, dev);
    let opt_g = adam(&c.optim, &g.vs);
    let opt_d = adam(&c.optim, &d.vs);
    let gan = Gan {
        g: Box::new(g),
        d,
        p,
        opt_g,
        opt_d,
        conditional_d: false,
    };
    let shape = [c.batch, 3, c.size, c.size];
    let x = Tensor::rand(shape, (Kind::Float, dev)) * 2.0 - 1.0;
    let s = Tensor::rand(shape, (Kind::Float, dev)) * 2.0 - 1.0;
    (gan, c, [x, s])
}

/// The KL term as the official trainer weighs it: the batch's summed KL divergence over the
/// `kld_devices` it would be split across (each sums its share, the devices are averaged).
pub(crate) fn kld_term(kld_sum: &Tensor, loss: &crate::config::LossConfig) -> Tensor {
    kld_sum / loss.kld_devices.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kl_term_is_the_mean_over_devices_of_their_sums() {
        // 4 samples' KL divergences on 2 devices: (1 + 2) and (3 + 4), averaged = 5.
        let per_sample = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        let official = (per_sample.narrow(0, 0, 2).sum(Kind::Float)
            + per_sample.narrow(0, 2, 2).sum(Kind::Float))
            / 2.0;
        let loss = |kld_devices| crate::config::LossConfig {
            lambda_feat: 10.0,
            lambda_vgg: 10.0,
            lambda_kld: 0.05,
            kld_devices,
        };
        let sum = per_sample.sum(Kind::Float);
        assert_eq!(
            kld_term(&sum, &loss(2)).double_value(&[]),
            official.double_value(&[])
        );
        assert_eq!(kld_term(&sum, &loss(1)).double_value(&[]), 10.0);
    }

    #[test]
    fn the_benchmark_iteration_runs_and_updates_both_networks() {
        let (mut gan, c, [x, s]) = bench_setup(false, tch::Device::Cpu);
        let g0: Vec<Tensor> = gan
            .g
            .vs()
            .trainable_variables()
            .iter()
            .map(|t| t.copy())
            .collect();
        let d0: Vec<Tensor> = gan
            .d
            .vs
            .trainable_variables()
            .iter()
            .map(|t| t.copy())
            .collect();
        let st = gan
            .step(&c, &Batch::style_transfer(&x, &s), (1e-4, 4e-4))
            .unwrap();
        assert!(st.g_gan.is_finite() && st.g_fm > 0.0 && st.g_vgg > 0.0);
        assert!(st.d_real > 0.0 && st.d_fake > 0.0);
        let moved = |before: &[Tensor], after: Vec<Tensor>| {
            before
                .iter()
                .zip(after)
                .filter(|(a, b)| !a.equal(b))
                .count()
        };
        // Every generator parameter took an update, and every discriminator parameter but
        // perhaps the two logit biases: at init D ≈ 0 on both halves, so the hinge gradient of a
        // logit bias is mean(−1[real < 1]) + mean(1[fake > −1]) = −1 + 1 = 0 in exact
        // arithmetic; on a CPU with AVX-512 one of them moved (presumably a rounding residue of
        // the means, which Adam turns into a full step).
        assert_eq!(moved(&g0, gan.g.vs().trainable_variables()), g0.len());
        let d_moved = moved(&d0, gan.d.vs.trainable_variables());
        assert!(
            (d0.len() - 2..=d0.len()).contains(&d_moved),
            "{d_moved} of {} discriminator parameters moved",
            d0.len()
        );
        // D is trainable again after the generator step.
        assert!(gan
            .d
            .vs
            .trainable_variables()
            .iter()
            .all(|t| t.requires_grad()));
        assert!((lr_factor(&c.optim, 0, 10, 1) - 1.0).abs() < 1e-12);
        let decay = OptimConfig {
            decay_from: 0.5,
            decay_per: DecayPer::Iteration,
            ..c.optim.clone()
        };
        assert!((lr_factor(&decay, 5, 10, 1) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&decay, 8, 10, 1) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn the_rate_decays_once_an_epoch_as_the_official_trainer_updates_it() {
        // The official loop: lr = 2e-4 for niter = 2 epochs, then 2 decay epochs; after epoch
        // e (1-based) ends, update_learning_rate(e) takes lr/niter_decay off once e > niter.
        let (niter, niter_decay, per) = (2u64, 2u64, 3u64);
        let lr0 = 2e-4;
        let mut lr = lr0;
        let mut official = Vec::new();
        for e in 1..=niter + niter_decay {
            official.extend(std::iter::repeat_n(lr / lr0, per as usize));
            if e > niter {
                lr -= lr0 / niter_decay as f64;
            }
        }
        let o = OptimConfig {
            lr_g: 1e-4,
            lr_d: 4e-4,
            beta1: 0.0,
            beta2: 0.9,
            decay_from: 0.5,
            decay_per: DecayPer::Epoch,
        };
        let total = (niter + niter_decay) * per;
        let ours: Vec<f64> = (0..total).map(|s| lr_factor(&o, s, total, per)).collect();
        for (s, (a, b)) in ours.iter().zip(&official).enumerate() {
            assert!((a - b).abs() < 1e-12, "iteration {s}: {a} vs official {b}");
        }
        assert_eq!(
            official[3 * per as usize],
            0.5,
            "the last epoch at lr / niter_decay"
        );
    }
}
