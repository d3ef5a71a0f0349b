//! Milliseconds of one data-parallel training step (forward, backward, gradient average, SGD
//! update) of a ResNet, with the gradients averaged during the backward by DDP's `Reducer`
//! (`REPRISE_GRAD_SYNC=reducer`, overlapping the all-reduces with the backward) or after it
//! (`after-backward`). Run one process per rank with torchrun's variables, e.g.
//!
//! ```text
//! torchrun --no-python --nproc_per_node 2 target/release/examples/ddp_overlap r18 8 32 20 1
//! ```
//!
//! usage: ddp_overlap [r18|r50] [PER_RANK_BATCH] [SIZE] [ITERS] [THREADS]
//!
//! Rank 0 prints the median, fastest and slowest step, and the mode.

use reprise_core::parallel::{GradSync, Parallel};
use robust_transfer::config::{InitKind, ModelConfig, NormSpec, ResnetArch};
use robust_transfer::model::Net;
use std::sync::Arc;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

fn main() -> reprise_core::Result<()> {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).map_or("r18", String::as_str);
    let batch: i64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let size: i64 = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let iters: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: i32 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    let dev = reprise_core::timing::device_from_env();
    let launch = dist::Launch::from_env()
        .map_err(|e| reprise_core::Error::msg(e.to_string()))?
        .ok_or_else(|| reprise_core::Error::msg("launch with torchrun (RANK, WORLD_SIZE)"))?;
    let cuda = dev.is_cuda().then_some(launch.local_rank);
    let group = dist::ProcessGroup::join_with(
        &launch,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(600),
        cuda,
    )
    .map_err(|e| reprise_core::Error::msg(e.to_string()))?;
    let sync = GradSync::from_env()?;
    let par = Arc::new(Parallel::of(group).with_grad_sync(sync));
    let arch = match arch {
        "r50" => ResnetArch::Resnet50,
        _ => ResnetArch::Resnet18,
    };
    let model = ModelConfig::Resnet {
        arch,
        base: None,
        blocks: None,
    };
    let norm = NormSpec {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    let classes = 1000;
    let net = Net::new(&model, &norm, classes, InitKind::HeNormal, dev, 0);
    par.broadcast_vars(&net.vs)?;
    let mut opt =
        robust_transfer::train::sgd(net.params(true), 0.9, 5e-4).data_parallel(Arc::clone(&par));
    let x = Tensor::rand([batch, 3, size, size], (Kind::Float, dev));
    let y = Tensor::randint(classes, [batch], (Kind::Int64, dev));
    let t = reprise_core::timing::time_ms(dev, 3, iters, || {
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.zero_grad();
        opt.backward(&loss)?;
        opt.step(0.01)
    })?;
    if par.is_main() {
        let params: i64 = net
            .vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64;
        println!(
            "{} ranks, {:?}, {params} parameters, batch {batch}/rank at {size}px, {threads} thread(s): \
             {} step {:.1} ms (min {:.1}, max {:.1}, {iters} steps)",
            par.world(),
            arch,
            sync.name(),
            t.median,
            t.min,
            t.max
        );
    }
    Ok(())
}
