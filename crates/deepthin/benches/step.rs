//! Criterion benchmarks of one imitation step (block 8 of a depth-16 MLP, thin 16, wide 256)
//! and one distillation step (the thin depth-16 MLP, KL at T = 1), batch 128, one thread. The
//! PyTorch-eager twin is `bench/pytorch/dt_step.py`; `just bench-compare` runs both.

use criterion::{criterion_group, criterion_main, Criterion};
use deepthin::config::Loss;
use deepthin::model::{Glue, Mlp, Widened};
use deepthin::train::{block_optimizer, imitation_step, optimizer, train_step};
use tch::{Device, Kind, Tensor};

fn steps(c: &mut Criterion) {
    tch::set_num_threads(1);
    let dev = Device::Cpu;
    let net = Mlp::new(784, 16, 16, 10, dev, 0);
    let glue = Glue::random(16, 16, 256, dev);
    let w = Widened {
        thin: &net,
        glue: Some(&glue),
    };
    let u = Tensor::randn([128, 256], (Kind::Float, dev));
    let target = Tensor::randn([128, 256], (Kind::Float, dev));
    let mut opt = block_optimizer(&w, 7);
    c.bench_function("imitation_step_block8_w16_W256_b128", |b| {
        b.iter(|| imitation_step(&w, 7, &mut opt, &u, &target, 1e-3).expect("an imitation step"))
    });
    let x = Tensor::rand([128, 784], (Kind::Float, dev));
    let t = Tensor::randn([128, 10], (Kind::Float, dev));
    let mut opt = optimizer(&net);
    c.bench_function("distillation_step_depth16_w16_b128", |b| {
        b.iter(|| {
            train_step(&net, &mut opt, &x, &t, Loss::Kd { temperature: 1.0 }, 1e-3)
                .expect("a distillation step")
        })
    });
}

criterion_group!(benches, steps);
criterion_main!(benches);
