//! Median milliseconds of one TSIT iteration (a generator step then a discriminator step, the
//! full arm of style transfer) at the small scale (S = 32, nf 16, batch 8) or at the paper's
//! 256×256 with the official widths (nf 64, cap 16, batch 1), for side-by-side timing with
//! `bench/pytorch/ts_step.py`.
//!
//! usage: cargo run --release -p tsit --example ts_step_time -- [small|256] [ITERS] [THREADS]

fn main() {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let paper = a.get(1).is_some_and(|s| s == "256");
    let iters: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: i32 = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    let dev = reprise_core::timing::device_from_env();
    let (mut gan, c, [x, s]) = tsit::train::bench_setup(paper, dev);
    let b = tsit::data::Batch::style_transfer(&x, &s);
    let warmup = if paper { 1 } else { 5 };
    let ms = reprise_core::timing::median_ms(dev, warmup, iters, || {
        gan.step(&c, &b, (1e-4, 4e-4)).expect("finite losses");
    });
    println!("{ms:.4}");
}
