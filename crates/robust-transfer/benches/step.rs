//! Criterion benchmarks of one PGD-3 adversarial training step (L2, ε = 1, use-best): the
//! small CNN on a batch of 32 MNIST-sized images, and ResNet-50 on 2 images of 224 pixels.
//! The PyTorch-eager twin is `bench/pytorch/rt_step.py`; `just bench-compare` runs both.

use criterion::{criterion_group, criterion_main, Criterion};
use reprise_core::attack::Norm;
use robust_transfer::config::{Arm, AttackConfig, InitKind, ModelConfig, NormSpec, ResnetArch};
use robust_transfer::model::Net;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn bench_one(c: &mut Criterion, name: &str, model: ModelConfig, chans: i64, size: i64, batch: i64) {
    tch::set_num_threads(1);
    let norm = NormSpec {
        mean: vec![0.5; chans as usize],
        std: vec![0.25; chans as usize],
    };
    let net = Net::new(&model, &norm, 10, InitKind::HeNormal, Device::Cpu, 0);
    let mut opt = robust_transfer::train::sgd(net.params(true), 0.9, 5e-4);
    let attack = AttackConfig {
        steps: 3,
        step_ratio: 2.0 / 3.0,
        random_start: false,
        use_best: true,
        fgsm: false,
    };
    let x = Tensor::rand([batch, chans, size, size], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    c.bench_function(name, |b| {
        b.iter(|| {
            robust_transfer::train::train_step(
                &net,
                &mut opt,
                (Arm::Adv(Norm::L2, 1.0), 1.0, &attack),
                (&x, &y),
                (0.01, reprise_core::amp::Amp::None),
                &reprise_core::parallel::Parallel::single(),
            )
            .expect("a training step")
        })
    });
}

fn small(c: &mut Criterion) {
    bench_one(
        c,
        "pgd3_step_small_cnn_b32",
        ModelConfig::SmallCnn { width: 1 },
        1,
        28,
        32,
    );
}

fn r50(c: &mut Criterion) {
    bench_one(
        c,
        "pgd3_step_resnet50_224_b2",
        ModelConfig::Resnet {
            arch: ResnetArch::Resnet50,
            base: None,
            blocks: None,
        },
        3,
        224,
        2,
    );
}

criterion_group!(small_group, small);
criterion_group! {
    name = r50_group;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(20));
    targets = r50
}
criterion_main!(small_group, r50_group);
