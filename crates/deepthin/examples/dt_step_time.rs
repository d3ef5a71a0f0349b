//! Median milliseconds of one go-wide-then-narrow imitation step (block 8 of a depth-16 MLP,
//! thin 16, wide 256, PCA-shaped pairs, its input cached) or one distillation step (the whole
//! thin depth-16 MLP, KL at T = 1), batch 128, Adam, for side-by-side timing with
//! `bench/pytorch/dt_step.py`.
//!
//! usage: cargo run --release -p deepthin --example dt_step_time -- [imitate|kd] [ITERS] [THREADS]

use deepthin::config::Loss;
use deepthin::model::{Glue, Mlp, Widened};
use deepthin::train::{block_optimizer, imitation_step, optimizer, train_step};
use tch::{Device, Kind, Tensor};

fn main() {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let what = a.get(1).map_or("imitate", String::as_str);
    let iters: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let threads: i32 = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    let dev = Device::Cpu;
    let (depth, thin, wide, batch, block) = (16, 16, 256, 128, 7);
    let net = Mlp::new(784, thin, depth, 10, dev, 0);
    let glue = Glue::random(depth, thin, wide, dev);
    let w = Widened {
        thin: &net,
        glue: Some(&glue),
    };
    let x = Tensor::rand([batch, 784], (Kind::Float, dev));
    let u = Tensor::randn([batch, wide], (Kind::Float, dev));
    let target = Tensor::randn([batch, wide], (Kind::Float, dev));
    let teacher_logits = Tensor::randn([batch, 10], (Kind::Float, dev));
    let mut opt = if what == "kd" {
        optimizer(&net)
    } else {
        block_optimizer(&w, block)
    };
    let ms = reprise_core::timing::median_ms(dev, 10, iters, || {
        if what == "kd" {
            train_step(
                &net,
                &mut opt,
                &x,
                &teacher_logits,
                Loss::Kd { temperature: 1.0 },
                1e-3,
            )
            .expect("a distillation step");
        } else {
            imitation_step(&w, block, &mut opt, &u, &target, 1e-3).expect("an imitation step");
        }
    });
    println!("{ms:.4}");
}
