//! Criterion benchmarks of one TSIT iteration (generator step then discriminator step, the
//! full arm of style transfer) at the small scale (S = 32, nf 16, batch 8) and at the paper's
//! 256×256 with the official widths (batch 1), one thread. The PyTorch-eager twin is
//! `bench/pytorch/ts_step.py`; `just bench-compare` runs both.

use criterion::{criterion_group, criterion_main, Criterion};

fn steps(c: &mut Criterion) {
    tch::set_num_threads(1);
    let dev = tch::Device::Cpu;
    let (mut gan, cfg, [x, s]) = tsit::train::bench_setup(false, dev);
    let batch = tsit::data::Batch::style_transfer(&x, &s);
    c.bench_function("tsit_iteration_s32_nf16_b8", |b| {
        b.iter(|| gan.step(&cfg, &batch, (1e-4, 4e-4)).unwrap())
    });
    let mut g = c.benchmark_group("paper_scale");
    g.sample_size(10);
    let (mut gan, cfg, [x, s]) = tsit::train::bench_setup(true, dev);
    let batch = tsit::data::Batch::style_transfer(&x, &s);
    g.bench_function("tsit_iteration_256_nf64_b1", |b| {
        b.iter(|| gan.step(&cfg, &batch, (1e-4, 4e-4)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
