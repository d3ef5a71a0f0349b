//! One JEM training iteration (K SGLD steps + the three loss forwards + Adam), one SGLD step
//! alone, and a plain forward + backward for comparison, at the small scale (mnist-cnn and
//! digits-mlp, batch 64, K = 20) and at the WRN-28-10 size (batch 4, K = 2: a CPU cannot afford
//! more in a benchmark). Threads: `REPRISE_BENCH_THREADS` (default 1), as the PyTorch twin in
//! `bench/pytorch/jem_step.py`.

use criterion::{criterion_group, criterion_main, Criterion};
use jem::config::SgldConfig;
use jem::model::Classifier;
use jem::sampler::{sgld, ReplayBuffer};
use jem::{train_step, Config};
use reprise_core::data::Rng;
use reprise_core::optim::{Optimizer, Rule};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn config(model: &str, k: usize, batch: usize) -> Config {
    let yaml = format!(
        "model: {model}\narm: jem\niterations: 1\nsgld: {{ steps: {k} }}\nbuffer: {{ size: 2000 }}\n\
         optim: {{ lr: 1.0e-4, batch: {batch} }}\neval: {{ every: 1 }}\n"
    );
    let v: serde_norway::Value = serde_norway::from_str(&yaml).expect("bench config");
    serde_json::from_value(reprise_core::spec::to_json(&v)).expect("bench config types")
}

fn bench_model(cr: &mut Criterion, name: &str, c: &Config, shape: &[i64], batch: i64) {
    let dev = Device::Cpu;
    let model = Classifier::new(&c.model, shape, 10, dev, 0);
    let mut opt = Optimizer::for_vars(Rule::adam(), &model.vs, 0.0);
    let mut buffer = ReplayBuffer::new(c.buffer.size, shape, 10, 1);
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    let x = Tensor::rand(dims.as_slice(), (Kind::Float, dev)) * 2.0 - 1.0;
    let y = Tensor::randint(10, [batch], (Kind::Int64, dev));
    let mut rng = Rng::new(0);
    cr.bench_function(&format!("jem_iteration/{name}"), |b| {
        b.iter(|| {
            train_step(
                &model,
                &mut opt,
                Some(&mut buffer),
                c,
                &jem::StepBatch {
                    weights: (1.0, 0.0),
                    labelled: (&x, &y),
                    data: Some(&x),
                    lr: 1e-4,
                },
                (&mut rng, &mut jem::sampler::gaussian),
                &reprise_core::parallel::Parallel::single(),
            )
            .expect("no divergence")
        })
    });
    let one = SgldConfig { steps: 1, ..c.sgld };
    let f = |t: &Tensor| model.forward_t(t, false);
    cr.bench_function(&format!("sgld_step/{name}"), |b| {
        b.iter(|| sgld(&f, &x, None, &one, 1))
    });
    cr.bench_function(&format!("forward_backward_params/{name}"), |b| {
        b.iter(|| {
            opt.zero_grad();
            model
                .forward_t(&x, true)
                .cross_entropy_for_logits(&y)
                .backward();
        })
    });
}

fn small(cr: &mut Criterion) {
    let threads = std::env::var("REPRISE_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    tch::set_num_threads(threads);
    let cnn = config("{ cnn: { in_channels: 1, size: 28, convs: [[16, 1], [32, 2], [32, 2]], fc: [64], classes: 10 } }", 20, 64);
    bench_model(cr, "mnist_cnn_b64_k20", &cnn, &[1, 28, 28], 64);
    let mlp = config("{ mlp: { width: 256, depth: 2 } }", 20, 64);
    bench_model(cr, "digits_mlp_b64_k20", &mlp, &[1, 8, 8], 64);
}

fn wrn(cr: &mut Criterion) {
    let wrn = config("{ wrn: { depth: 28, widen: 10, classes: 10 } }", 2, 4);
    bench_model(cr, "wrn28_10_b4_k2", &wrn, &[3, 32, 32], 4);
}

criterion_group!(small_scale, small);
criterion_group! {
    name = paper_scale;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(60)).warm_up_time(Duration::from_secs(5));
    targets = wrn
}
criterion_main!(small_scale, paper_scale);
