//! Median milliseconds of one epoch of the training-data loader alone (`data::augment::Loader`:
//! seeded shuffling, batch gathering, optional augmentation, one batch ahead on its thread), for
//! side-by-side timing with `bench/pytorch/loader_epoch.py` (a `DataLoader` over a
//! `TensorDataset`, the same augmentation in the loop).
//!
//! usage: cargo run --release -p reprise-core --example loader_epoch -- DATASET AUG [EPOCHS] [THREADS] [BATCH]
//! DATASET: digits (1437×1×8×8) or mnist-5k (4000×1×28×28); AUG: plain, noise (σ = 0.03, JEM's)
//! or crop-flip (pad 2, random crop, horizontal flip).

use reprise_core::data::augment::{Augment, Loader};
use tch::{Device, Kind, Tensor};

fn main() {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let dataset = a.get(1).map_or("digits", String::as_str);
    let aug_name = a.get(2).map_or("plain", String::as_str);
    let epochs: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: i32 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let batch: usize = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(64);
    tch::set_num_threads(threads);
    let (n, side) = match dataset {
        "digits" => (1437, 8),
        "mnist-5k" => (4000, 28),
        other => panic!("unknown dataset {other} (digits, mnist-5k)"),
    };
    let aug = match aug_name {
        "plain" => Augment::default(),
        "noise" => Augment {
            noise: 0.03,
            ..Default::default()
        },
        "crop-flip" => Augment {
            pad_crop: 2,
            hflip: true,
            ..Default::default()
        },
        other => panic!("unknown augmentation {other} (plain, noise, crop-flip)"),
    };
    let x = Tensor::rand([n, 1, side, side], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let mut loader = Loader::new(&x, &y, batch, 0, true, aug, 0);
    let per_epoch = loader.per_epoch();
    let ms = reprise_core::timing::median_ms(Device::Cpu, 1, epochs, || {
        for _ in 0..per_epoch {
            let b = loader.next_batch();
            std::hint::black_box(&b);
        }
    });
    println!("{ms:.4}");
}
