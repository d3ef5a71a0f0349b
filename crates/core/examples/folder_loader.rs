//! Images per second of the robust-transfer ImageNet training transform on a streamed
//! ImageFolder: RandomResizedCrop 224 of the whole decoded image, horizontal flip, ColorJitter
//! 0.1 and Lighting 0.05, batches of `BATCH` made ahead by the batch loader (`Prefetch`, depth
//! 2) with `WORKERS` decoding threads, consumed as fast as they come. Twin:
//! `bench/pytorch/folder_loader.py` (torchvision's `ImageFolder` + `DataLoader`, the same
//! transforms and worker count). A folder: `python bench/make_jpeg_folder.py /tmp/jpegs 2000`.
//!
//! usage: folder_loader FOLDER [WORKERS] [BATCHES] [BATCH]

use reprise_core::data::augment::Augment;
use reprise_core::data::formats::{ImageFolderIndex, ImageSize};
use reprise_core::data::prefetch::Prefetch;
use reprise_core::data::{batch_indices, Images, Rng};
use std::time::Instant;

fn main() -> reprise_core::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let folder = std::path::PathBuf::from(a.get(1).map_or("/tmp/jpegs", String::as_str));
    let workers: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let batches: u64 = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let batch: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);
    // One LibTorch thread (the jitter and lighting run on tensors), as in a DataLoader worker.
    tch::set_num_threads(1);
    let size = ImageSize {
        resize: 256,
        crop: 224,
    };
    let ix = ImageFolderIndex::new(&folder.join("train"), size)?.with_workers(workers);
    let n = ix.len();
    let images = Images::Folder(ix.clone());
    // REPRISE_BENCH_CROP_ONLY=1: the crop and flip alone (the decoding's share of the time).
    let crop_only = std::env::var("REPRISE_BENCH_CROP_ONLY").is_ok_and(|v| v == "1");
    let aug = Augment {
        resized_crop: 224,
        hflip: true,
        jitter: if crop_only { 0.0 } else { 0.1 },
        lighting: if crop_only { 0.0 } else { 0.05 },
        ..Default::default()
    };
    let order = batch_indices(n, batch, 0, 0, true, true);
    let per_epoch = order.len() as u64;
    let mut pre = Prefetch::new(0, batches + 1, 2, move |step| {
        let idx = &order[(step % per_epoch) as usize];
        let mut rng = Rng::new(step);
        images.train_rows(idx, (0, idx.len() as i64), &aug, &mut rng)
    });
    // The first batch (the loader starting) is not timed.
    let _first = pre.take(0)?;
    let t = Instant::now();
    for s in 1..=batches {
        let (x, _) = pre.take(s)?;
        assert_eq!(x.size()[2], 224);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "reprise: {workers} worker(s), batch {batch}: {:.1} images/s ({batches} batches, {:.2} s; {} decoded)",
        (batches as usize * batch) as f64 / secs,
        secs,
        ix.decoded()
    );
    Ok(())
}
