//! Loaders for the formats users already have: MNIST / Fashion-MNIST IDX (plain or gzip),
//! CIFAR-10 / CIFAR-100 binary batches, and ImageFolder trees (PNG or JPEG).
//!
//! Every loader returns a [`Dataset`] of float `N×C×H×W` images in `[0, 1]` with int64 labels,
//! and every fault (truncation, a wrong magic number, an unreadable image, a label out of range)
//! is an error naming the file.

use super::augment::resized_crop_box;
use super::{Dataset, Rng};
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The largest image file [`open_image`] reads.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// Decodes the image file at `path` (PNG, JPEG, …, by its content), read as
/// [`crate::checkpoint::read_bounded`] reads: a regular file of at most [`MAX_IMAGE_BYTES`]
/// (a FIFO, a device or a link to one is refused, never waited on or read without end). An
/// error names the file.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let bytes = crate::checkpoint::read_bounded(path, MAX_IMAGE_BYTES)?;
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Io(path.to_path_buf(), e))?
        .decode()
        .map_err(|e| Error::Corrupt(path.to_path_buf(), format!("unreadable image: {e}")))
}

/// Reads a file, un-gzipping it when its name ends in `.gz` or it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::checkpoint::read_bounded(path, MAX_DATA_FILE_BYTES)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        // Bounded, so a small file that inflates without end (a gzip bomb) is refused.
        GzDecoder::new(&raw[..])
            .take(MAX_DATA_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::Corrupt(path.to_path_buf(), format!("bad gzip data: {e}")))?;
        if out.len() as u64 > MAX_DATA_FILE_BYTES {
            return Err(Error::Corrupt(
                path.to_path_buf(),
                format!("inflates to more than {MAX_DATA_FILE_BYTES} bytes"),
            ));
        }
        Ok(out)
    } else if path.extension().is_some_and(|e| e == "gz") {
        Err(Error::Corrupt(
            path.to_path_buf(),
            "named .gz but not gzip data".into(),
        ))
    } else {
        Ok(raw)
    }
}

/// The largest data file (IDX, CIFAR batch, CSV) read whole, compressed or inflated: 4 GiB.
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An IDX array of unsigned bytes: its dimensions and data.
fn read_idx(path: &Path, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = read_maybe_gz(path)?;
    let bad = |why: String| Error::Corrupt(path.to_path_buf(), why);
    if b.len() < 4 {
        return Err(bad("truncated: no IDX header".into()));
    }
    if b[0] != 0 || b[1] != 0 || b[2] != 0x08 {
        return Err(bad(format!(
            "wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 0000 08 for unsigned bytes)",
            b[0], b[1], b[2], b[3]
        )));
    }
    let nd = b[3] as usize;
    if nd != want_dims {
        return Err(bad(format!("{nd} dimensions, expected {want_dims}")));
    }
    let head = 4 + 4 * nd;
    if b.len() < head {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..nd).map(|i| be_u32(&b, 4 + 4 * i) as usize).collect();
    // Checked: dimensions whose product wraps around must not pass for the file's length.
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    if b.len() - head != n {
        return Err(bad(format!(
            "{} data bytes, the header promises {n} ({})",
            b.len() - head,
            if b.len() - head < n {
                "truncated"
            } else {
                "trailing bytes"
            }
        )));
    }
    Ok((dims, b[head..].to_vec()))
}

/// MNIST or Fashion-MNIST from an IDX image file and an IDX label file (plain or gzip).
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (d, px) = read_idx(images, 3)?;
    let (dl, ys) = read_idx(labels, 1)?;
    if d[0] != dl[0] {
        return Err(Error::Corrupt(
            labels.to_path_buf(),
            format!(
                "{} labels for {} images in {}",
                dl[0],
                d[0],
                images.display()
            ),
        ));
    }
    if let Some(&bad) = ys.iter().find(|&&y| y > 9) {
        return Err(Error::Corrupt(
            labels.to_path_buf(),
            format!("label {bad} outside 0..10"),
        ));
    }
    let x = Tensor::from_slice(&px).view([d[0] as i64, 1, d[1] as i64, d[2] as i64]);
    let y: Vec<i64> = ys.iter().map(|&v| i64::from(v)).collect();
    Ok(Dataset {
        x: x.to_kind(tch::Kind::Float) / 255.0,
        y: Tensor::from_slice(&y),
        classes: 10,
    })
}

/// CIFAR-10 (`coarse = false`, 1 label byte) or CIFAR-100 binary batches (2 label bytes:
/// coarse then fine; the fine label is used). Records are label byte(s) + 3072 pixel bytes.
pub fn load_cifar(files: &[PathBuf], hundred: bool) -> Result<Dataset> {
    let lab = if hundred { 2 } else { 1 };
    let rec = lab + 3072;
    let classes = if hundred { 100 } else { 10 };
    let mut px: Vec<u8> = Vec::new();
    let mut ys: Vec<i64> = Vec::new();
    for f in files {
        let b = read_maybe_gz(f)?;
        if b.is_empty() || b.len() % rec != 0 {
            return Err(Error::Corrupt(
                f.clone(),
                format!(
                    "{} bytes is not a whole number of {rec}-byte records (truncated?)",
                    b.len()
                ),
            ));
        }
        for (i, r) in b.chunks(rec).enumerate() {
            let y = r[lab - 1] as usize;
            if y >= classes {
                return Err(Error::Corrupt(
                    f.clone(),
                    format!("record {i}: label {y} outside 0..{classes}"),
                ));
            }
            ys.push(y as i64);
            px.extend_from_slice(&r[lab..]);
        }
    }
    if ys.is_empty() {
        return Err(Error::Data("no CIFAR batch files given".into()));
    }
    let n = ys.len() as i64;
    Ok(Dataset {
        x: Tensor::from_slice(&px)
            .view([n, 3, 32, 32])
            .to_kind(tch::Kind::Float)
            / 255.0,
        y: Tensor::from_slice(&ys),
        classes,
    })
}

/// The CIFAR batch files of a folder for a split (`data_batch_*.bin` / `test_batch.bin` for
/// CIFAR-10, `train.bin` / `test.bin` for CIFAR-100).
pub fn cifar_files(dir: &Path, hundred: bool, train: bool) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = match (hundred, train) {
        (false, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (false, false) => vec!["test_batch.bin".into()],
        (true, true) => vec!["train.bin".into()],
        (true, false) => vec!["test.bin".into()],
    };
    let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    for f in &files {
        if !f.is_file() {
            return Err(Error::Data(format!("missing CIFAR file {}", f.display())));
        }
    }
    Ok(files)
}

/// How ImageFolder images are brought to one size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSize {
    /// Resize so the shorter side is this (bilinear), before cropping.
    pub resize: u32,
    /// Then take the centre square of this side.
    pub crop: u32,
}

/// An ImageFolder tree indexed but not decoded: one sub-folder per class (sorted names give the
/// label ids), PNG or JPEG files inside (sorted). Batches are decoded on demand, by
/// [`ImageFolderIndex::workers`] threads, so a dataset larger than memory (ImageNet) can be
/// trained on.
#[derive(Debug, Clone)]
pub struct ImageFolderIndex {
    /// Image files.
    pub files: Vec<PathBuf>,
    /// Their labels.
    pub labels: Vec<i64>,
    /// Class names, by label id.
    pub classes: Vec<String>,
    /// The size images are brought to.
    pub size: ImageSize,
    /// The threads that decode a batch (0: one per core).
    workers: usize,
    /// The images decoded so far, by this index and its clones.
    decoded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ImageFolderIndex {
    /// Lists the tree under `root`.
    pub fn new(root: &Path, size: ImageSize) -> Result<ImageFolderIndex> {
        if size.crop == 0 || size.crop > size.resize {
            return Err(Error::Data(format!(
                "image size: crop {} must be between 1 and resize {}",
                size.crop, size.resize
            )));
        }
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| Error::Io(root.to_path_buf(), e))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(Error::Data(format!(
                "{}: no class sub-folders",
                root.display()
            )));
        }
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for (ci, name) in classes.iter().enumerate() {
            let mut fs: Vec<PathBuf> = std::fs::read_dir(root.join(name))
                .map_err(|e| Error::Io(root.join(name), e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        ["png", "jpg", "jpeg"].contains(&x.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            fs.sort();
            labels.extend(std::iter::repeat_n(ci as i64, fs.len()));
            files.extend(fs);
        }
        if files.is_empty() {
            return Err(Error::Data(format!(
                "{}: no PNG or JPEG images",
                root.display()
            )));
        }
        Ok(ImageFolderIndex {
            files,
            labels,
            classes,
            size,
            workers: 0,
            decoded: Default::default(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// The same index, decoding each batch on `workers` threads (0: one per core), as a
    /// `DataLoader`'s `num_workers`.
    pub fn with_workers(mut self, workers: usize) -> ImageFolderIndex {
        self.workers = workers;
        self
    }

    /// The threads that decode a batch.
    pub fn workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }

    /// How many images this index and its clones have decoded.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Decodes the images at `idx` (resize + centre crop, CHW in [0, 1]) with their labels,
    /// on all available cores.
    pub fn load(&self, idx: &[i64]) -> Result<(Tensor, Tensor)> {
        self.decode(
            idx,
            self.size.crop,
            |_, img| resize_center_crop(img, self.size),
            None,
        )
    }

    /// Decodes the images at `idx` as torchvision's `RandomResizedCrop(side)` does from the
    /// whole decoded image: the k-th image's box is drawn by [`resized_crop_box`] from
    /// `Rng::new(seeds[k])` on the image's own size, and the box is resized to `side × side`
    /// with a triangle (bilinear, antialiased) filter, as PIL's bilinear resize is.
    pub fn load_resized_crops(
        &self,
        idx: &[i64],
        side: u32,
        seeds: &[u64],
    ) -> Result<(Tensor, Tensor)> {
        self.load_resized_crops_then(idx, side, seeds, None)
    }

    /// [`ImageFolderIndex::load_resized_crops`], each crop (`3×side×side`) then transformed
    /// by `then(position in idx, crop)` on the decoding thread that made it (the rest of a
    /// training transform, image by image, on the workers as a `DataLoader`'s do).
    pub fn load_resized_crops_then(
        &self,
        idx: &[i64],
        side: u32,
        seeds: &[u64],
        then: Option<&(dyn Fn(usize, Tensor) -> Tensor + Sync)>,
    ) -> Result<(Tensor, Tensor)> {
        if seeds.len() != idx.len() || side == 0 {
            return Err(Error::Data(format!(
                "{} crop seeds for {} images of side {side}",
                seeds.len(),
                idx.len()
            )));
        }
        self.decode(
            idx,
            side,
            |k, img| {
                let (w, h) = img.dimensions();
                let mut rng = Rng::new(seeds[k]);
                crop_resize(
                    img,
                    resized_crop_box(i64::from(h), i64::from(w), &mut rng),
                    side,
                )
            },
            then,
        )
    }

    /// Decodes the images at `idx` on [`ImageFolderIndex::workers`] threads, bringing each to
    /// `side × side` with `f(position in idx, decoded image)`, then (as a `3×side×side`
    /// tensor) through `then(position in idx, image)` where given, which must keep its shape.
    fn decode(
        &self,
        idx: &[i64],
        side: u32,
        f: impl Fn(usize, &image::RgbImage) -> image::RgbImage + Sync,
        then: Option<&(dyn Fn(usize, Tensor) -> Tensor + Sync)>,
    ) -> Result<(Tensor, Tensor)> {
        let c = side as usize;
        let per = 3 * c * c;
        let mut px = vec![0f32; idx.len() * per];
        let threads = self.workers().min(idx.len().max(1));
        let chunk = idx.len().div_ceil(threads).max(1);
        let f = &f;
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = px
                .chunks_mut(chunk * per)
                .zip(idx.chunks(chunk))
                .enumerate()
                .map(|(part, (out, ids))| {
                    s.spawn(move || -> Result<()> {
                        for (k, &i) in ids.iter().enumerate() {
                            let file = self.files.get(i as usize).ok_or_else(|| {
                                Error::Data(format!(
                                    "image index {i} out of range ({})",
                                    self.files.len()
                                ))
                            })?;
                            let img = open_image(file)?;
                            self.decoded
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let rgb = f(part * chunk + k, &img.to_rgb8());
                            let dst = &mut out[k * per..(k + 1) * per];
                            // HWC bytes to CHW floats.
                            for (j, p) in rgb.pixels().enumerate() {
                                for ch in 0..3 {
                                    dst[ch * c * c + j] = f32::from(p.0[ch]) / 255.0;
                                }
                            }
                            if let Some(g) = then {
                                let img = Tensor::from_slice(dst).view([3, c as i64, c as i64]);
                                let out = g(part * chunk + k, img).contiguous();
                                if out.size() != [3, c as i64, c as i64]
                                    || out.kind() != tch::Kind::Float
                                {
                                    return Err(Error::msg(format!(
                                        "a training transform made a {:?} {:?} of a 3×{c}×{c} image",
                                        out.kind(),
                                        out.size()
                                    )));
                                }
                                out.copy_data(dst, per);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a decoding thread panicked"))
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        let n = idx.len() as i64;
        let ys: Vec<i64> = idx.iter().map(|&i| self.labels[i as usize]).collect();
        Ok((
            Tensor::from_slice(&px).view([n, 3, c as i64, c as i64]),
            Tensor::from_slice(&ys),
        ))
    }
}

/// An ImageFolder tree loaded into memory (see [`ImageFolderIndex`]). Returns the dataset and
/// the class names.
pub fn load_image_folder(root: &Path, size: ImageSize) -> Result<(Dataset, Vec<String>)> {
    let ix = ImageFolderIndex::new(root, size)?;
    let all: Vec<i64> = (0..ix.len() as i64).collect();
    let (x, y) = ix.load(&all)?;
    Ok((
        Dataset {
            x,
            y,
            classes: ix.classes.len(),
        },
        ix.classes,
    ))
}

/// The box `(top, left, height, width)` of `img` resized to `side × side` with a triangle
/// (bilinear, antialiased) filter: torchvision's `resized_crop` on a PIL image.
pub fn crop_resize(
    img: &image::RgbImage,
    (t, l, h, w): (i64, i64, i64, i64),
    side: u32,
) -> image::RgbImage {
    bilinear(img, (l as u32, t as u32, w as u32, h as u32), (side, side))
}

/// The box `(left, top, width, height)` of `img`, cut out (its edges clamp: no pixel outside
/// the box is read, as PIL's `crop` then `resize`), resized to `out` (width, height) with
/// PIL's antialiased bilinear filter (a triangle whose support widens with the reduction, in
/// 8-bit fixed point, as Pillow's `ImagingResample`), by the SIMD convolution of
/// `fast_image_resize`.
fn bilinear(
    img: &image::RgbImage,
    (l, t, w, h): (u32, u32, u32, u32),
    (ow, oh): (u32, u32),
) -> image::RgbImage {
    use fast_image_resize as fr;
    let src =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .expect("an RgbImage's buffer holds its pixels");
    let cut = fr::images::CroppedImage::new(&src, l, t, w, h).expect("the box is inside the image");
    let mut dst = fr::images::Image::new(ow, oh, fr::PixelType::U8x3);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&cut, &mut dst, &opts)
        .expect("the same pixel type on both sides");
    image::RgbImage::from_raw(ow, oh, dst.into_vec()).expect("the output holds ow × oh pixels")
}

/// `img` resized so its shorter side is `size.resize` (triangle filter), then its centre
/// `size.crop` square: torchvision's `Resize` then `CenterCrop`.
pub fn resize_center_crop(img: &image::RgbImage, size: ImageSize) -> image::RgbImage {
    let (w, h) = img.dimensions();
    // torchvision: the shorter side becomes `resize`, the longer int(resize · long / short)
    // (truncated); the crop's offset is round((side − crop) / 2), half to even.
    let long = |l: u32, s: u32| ((u64::from(size.resize) * u64::from(l)) / u64::from(s)) as u32;
    let (nw, nh) = if w <= h {
        (size.resize, long(h, w))
    } else {
        (long(w, h), size.resize)
    };
    let (nw, nh) = (nw.max(size.crop), nh.max(size.crop));
    let r = bilinear(img, (0, 0, w, h), (nw, nh));
    let off = |n: u32| (f64::from(n - size.crop) / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(&r, off(nw), off(nh), size.crop, size.crop).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn idx_plain_and_gzip() {
        let d = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
        std::fs::write(d.path().join("img"), idx(&[2, 2, 3], &px)).unwrap();
        std::fs::write(d.path().join("lab.gz"), gz(&idx(&[2], &[3, 9]))).unwrap();
        let ds = load_idx(&d.path().join("img"), &d.path().join("lab.gz")).unwrap();
        assert_eq!(ds.x.size(), vec![2, 1, 2, 3]);
        assert!((ds.x.double_value(&[1, 0, 1, 2]) - 220.0 / 255.0).abs() < 1e-6);
        assert_eq!(super::super::labels_vec(&ds.y), vec![3, 9]);
    }

    #[test]
    fn idx_faults_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let good = idx(&[2, 2, 2], &[0; 8]);
        std::fs::write(d.path().join("lab"), idx(&[2], &[1, 2])).unwrap();
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        let e = load_idx(&p, &d.path().join("lab")).unwrap_err().to_string();
        assert!(e.contains("img") && e.contains("truncated"), "{e}");
        let mut magic = good.clone();
        magic[2] = 0x0d;
        std::fs::write(&p, &magic).unwrap();
        let e = load_idx(&p, &d.path().join("lab")).unwrap_err().to_string();
        assert!(e.contains("wrong magic"), "{e}");
        std::fs::write(&p, &good).unwrap();
        std::fs::write(d.path().join("lab"), idx(&[2], &[1, 12])).unwrap();
        let e = load_idx(&p, &d.path().join("lab")).unwrap_err().to_string();
        assert!(e.contains("lab") && e.contains("label 12"), "{e}");
        std::fs::write(d.path().join("lab"), idx(&[3], &[1, 2, 3])).unwrap();
        assert!(load_idx(&p, &d.path().join("lab")).is_err());
        // 2^31 · 2^31 · 4 = 2^64 wraps to 0, which an empty data part would have matched.
        std::fs::write(&p, idx(&[1 << 31, 1 << 31, 4], &[])).unwrap();
        let e = load_idx(&p, &d.path().join("lab")).unwrap_err().to_string();
        assert!(e.contains("img") && e.contains("overflow"), "{e}");
    }

    #[test]
    fn cifar_10_and_100() {
        let d = tempfile::tempdir().unwrap();
        let mut r10 = vec![7u8];
        r10.extend((0..3072).map(|i| (i % 256) as u8));
        let p = d.path().join("b.bin");
        std::fs::write(&p, [r10.clone(), r10.clone()].concat()).unwrap();
        let ds = load_cifar(std::slice::from_ref(&p), false).unwrap();
        assert_eq!(ds.x.size(), vec![2, 3, 32, 32]);
        assert_eq!(super::super::labels_vec(&ds.y), vec![7, 7]);
        // Channel 1 starts at byte 1024 of the record: 1024 % 256 = 0; pixel (0, 1) is 1.
        assert!((ds.x.double_value(&[0, 0, 0, 1]) - 1.0 / 255.0).abs() < 1e-6);
        let mut r100 = vec![3u8, 88];
        r100.extend(vec![0u8; 3072]);
        std::fs::write(&p, &r100).unwrap();
        let ds = load_cifar(std::slice::from_ref(&p), true).unwrap();
        assert_eq!(
            (super::super::labels_vec(&ds.y), ds.classes),
            (vec![88], 100)
        );
        std::fs::write(&p, &r100[..3000]).unwrap();
        let e = load_cifar(std::slice::from_ref(&p), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.bin") && e.contains("records"), "{e}");
        let mut badlab = r10.clone();
        badlab[0] = 10;
        std::fs::write(&p, &badlab).unwrap();
        assert!(load_cifar(&[p], false)
            .unwrap_err()
            .to_string()
            .contains("label 10"));
    }

    #[test]
    fn image_folder_reads_resizes_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        for (c, v) in [("cat", 255u8), ("dog", 0u8)] {
            std::fs::create_dir_all(d.path().join(c)).unwrap();
            let img = image::RgbImage::from_pixel(12, 8, image::Rgb([v, 128, 0]));
            img.save(d.path().join(c).join("a.png")).unwrap();
            img.save(d.path().join(c).join("b.jpg")).unwrap();
        }
        let (ds, names) = load_image_folder(d.path(), ImageSize { resize: 6, crop: 4 }).unwrap();
        assert_eq!(names, vec!["cat", "dog"]);
        assert_eq!(ds.x.size(), vec![4, 3, 4, 4]);
        assert_eq!(super::super::labels_vec(&ds.y), vec![0, 0, 1, 1]);
        assert!((ds.x.double_value(&[0, 0, 1, 1]) - 1.0).abs() < 1e-6);
        assert!((ds.x.double_value(&[2, 1, 1, 1]) - 128.0 / 255.0).abs() < 1e-6);
        std::fs::write(d.path().join("dog/c.png"), b"not a png").unwrap();
        let e = load_image_folder(d.path(), ImageSize { resize: 6, crop: 4 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.png") && e.contains("unreadable"), "{e}");
        // The index decodes any batch, in any order, to the same tensors as the full load.
        std::fs::remove_file(d.path().join("dog/c.png")).unwrap();
        let ix = ImageFolderIndex::new(d.path(), ImageSize { resize: 6, crop: 4 }).unwrap();
        assert_eq!(ix.len(), 4);
        let (x, y) = ix.load(&[3, 0]).unwrap();
        assert!(x.get(0).equal(&ds.x.get(3)) && x.get(1).equal(&ds.x.get(0)));
        assert_eq!(super::super::labels_vec(&y), vec![1, 0]);
        assert!(ix
            .load(&[7])
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn random_resized_crops_come_from_the_whole_decoded_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        // 40 × 20, red rising left to right, green top to bottom.
        let img = image::RgbImage::from_fn(40, 20, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 12) as u8, 7])
        });
        img.save(d.path().join("a/x.png")).unwrap();
        img.save(d.path().join("a/y.png")).unwrap();
        // The eval size (a 4² centre crop) does not limit the training crops.
        let ix = ImageFolderIndex::new(d.path(), ImageSize { resize: 6, crop: 4 }).unwrap();
        let (x, y) = ix.load_resized_crops(&[1, 0, 1], 16, &[5, 9, 5]).unwrap();
        assert_eq!(x.size(), vec![3, 3, 16, 16]);
        assert_eq!(super::super::labels_vec(&y), vec![0, 0, 0]);
        assert!(x.get(0).equal(&x.get(2)), "the seed fixes the box");
        let mut rng = Rng::new(9);
        let (t, l, h, w) = resized_crop_box(20, 40, &mut rng);
        let want = image::imageops::resize(
            &*image::imageops::crop_imm(&img, l as u32, t as u32, w as u32, h as u32),
            16,
            16,
            image::imageops::FilterType::Triangle,
        );
        for (j, p) in want.pixels().enumerate() {
            let (r, c) = (j as i64 / 16, j as i64 % 16);
            for ch in 0..3 {
                let got = x.double_value(&[1, ch, r, c]);
                // The same box, resized by another implementation of the triangle filter: within
                // one 8-bit step (both are within one of PIL's, robust-transfer's official.rs).
                assert!((got - f64::from(p.0[ch as usize]) / 255.0).abs() <= 1.0 / 255.0 + 1e-6);
            }
        }
        assert!(ix.load_resized_crops(&[0, 1], 16, &[1]).is_err());
    }
}
