//! The paper-scale datasets in their own folder layouts, decoded batch by batch (the paper's datasets; official data/*_dataset.py):
//!
//! - style transfer (`folder-ast`): `trainA/`, `trainB/`, `testA/`, `testB/` under `data.path`
//!   (CycleGAN's layout, as summer2winter_yosemite ships). Content item i is paired with style
//!   item i by sorted position; the style list (or the content list) is repeated as
//!   `tsit.folder.style_repeat` / `content_repeat` say, then both are cut to the shorter length
//!   (official data/summer2winteryosemite_dataset.py); shuffling reorders pairs, never re-pairs.
//! - Cityscapes (`cityscapes-sis`): `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` with
//!   `gtFine/{train,val}/<city>/*_gtFine_labelIds.png` and `*_gtFine_instanceIds.png`; the
//!   input is the one-hot label map (`label_nc` channels) and the instance-edge map.
//! - ADE20K (`ade20k-sis`): `ADEChallengeData2016/images/{training,validation}/*.jpg` with
//!   `annotations/.../*.png`; label 0 ("other") becomes the don't-care class `label_nc`.
//!
//! Images are resized bicubically, label maps by nearest neighbour; with `load_size` both are
//! resized to it and randomly cropped to the model's size; flips use one draw for the pair.

use crate::config::{FolderConfig, Task};
use reprise_core::data::formats::open_image;
use reprise_core::data::Rng;
use reprise_core::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// One training or test item.
#[derive(Debug, Clone)]
pub struct Item {
    /// The content image or the label map.
    pub a: PathBuf,
    /// The style image or the photo.
    pub b: PathBuf,
    /// The instance-id map (Cityscapes).
    pub inst: Option<PathBuf>,
}

/// A folder dataset's items and how to decode them.
#[derive(Debug)]
pub struct FolderData {
    task: Task,
    cfg: FolderConfig,
    h: u32,
    w: u32,
    /// Training items.
    pub train: Vec<Item>,
    /// Test items.
    pub test: Vec<Item>,
}

fn sorted_files(dir: &Path, suffix: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| Error::Io(d.clone(), e))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if suffix.iter().any(|s| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.to_ascii_lowercase().ends_with(s))
            }) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::Data(format!(
            "{}: no files ending in {}",
            dir.display(),
            suffix.join(" or ")
        )));
    }
    Ok(out)
}

const IMAGES: [&str; 3] = [".png", ".jpg", ".jpeg"];

fn unpaired(root: &Path, split: &str, cfg: &FolderConfig, train: bool) -> Result<Vec<Item>> {
    let mut a = sorted_files(&root.join(format!("{split}A")), &IMAGES)?;
    let mut b = sorted_files(&root.join(format!("{split}B")), &IMAGES)?;
    if train {
        let rep = |v: Vec<PathBuf>, k: usize| -> Vec<PathBuf> {
            (0..k.max(1)).flat_map(|_| v.iter().cloned()).collect()
        };
        a = rep(a, cfg.content_repeat);
        b = rep(b, cfg.style_repeat);
    }
    let n = a.len().min(b.len());
    Ok(a.into_iter()
        .zip(b)
        .take(n)
        .map(|(a, b)| Item { a, b, inst: None })
        .collect())
}

/// A photo with its label map (`what` names it in the error when the map is missing).
fn item(img: PathBuf, lab: PathBuf, inst: Option<PathBuf>, what: &str) -> Result<Item> {
    if !lab.is_file() {
        return Err(Error::Data(format!(
            "{}: no {what} {}",
            img.display(),
            lab.display()
        )));
    }
    Ok(Item {
        a: lab,
        b: img,
        inst,
    })
}

fn cityscapes(root: &Path, split: &str) -> Result<Vec<Item>> {
    let imgs = sorted_files(&root.join("leftImg8bit").join(split), &["_leftimg8bit.png"])?;
    imgs.into_iter()
        .map(|img| {
            let rel = img
                .strip_prefix(root.join("leftImg8bit").join(split))
                .expect("listed below it");
            let stem = rel.to_string_lossy().replace("_leftImg8bit.png", "");
            let gt = root.join("gtFine").join(split);
            let lab = gt.join(format!("{stem}_gtFine_labelIds.png"));
            let inst = gt.join(format!("{stem}_gtFine_instanceIds.png"));
            let inst = inst.is_file().then_some(inst);
            item(img, lab, inst, "label map")
        })
        .collect()
}

fn ade20k(root: &Path, split: &str) -> Result<Vec<Item>> {
    let base = if root.join("ADEChallengeData2016").is_dir() {
        root.join("ADEChallengeData2016")
    } else {
        root.to_path_buf()
    };
    let imgs = sorted_files(&base.join("images").join(split), &[".jpg"])?;
    imgs.into_iter()
        .map(|img| {
            let name = img
                .file_stem()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let lab = base
                .join("annotations")
                .join(split)
                .join(format!("{name}.png"));
            item(img, lab, None, "annotation")
        })
        .collect()
}

/// Where a crop starts and whether the pair is flipped.
#[derive(Debug, Clone, Copy)]
struct Aug {
    x0: u32,
    y0: u32,
    flip: bool,
}

impl FolderData {
    /// Lists the dataset under `root` for a folder task at `h × w`.
    pub fn new(task: Task, root: &Path, cfg: &FolderConfig, h: i64, w: i64) -> Result<FolderData> {
        let (train, test) = match task {
            Task::FolderAst => (
                unpaired(root, "train", cfg, true)?,
                unpaired(root, "test", cfg, false)?,
            ),
            Task::CityscapesSis => (cityscapes(root, "train")?, cityscapes(root, "val")?),
            Task::Ade20kSis => (ade20k(root, "training")?, ade20k(root, "validation")?),
            _ => unreachable!("only folder tasks"),
        };
        Ok(FolderData {
            task,
            cfg: cfg.clone(),
            h: h as u32,
            w: w as u32,
            train,
            test,
        })
    }

    /// Channels of the content input: 3 (style transfer) or the label classes (+ don't-care)
    /// (+ instance edge).
    pub(crate) fn content_channels(&self) -> i64 {
        match self.task {
            Task::FolderAst => 3,
            _ => {
                self.cfg.label_nc + i64::from(self.cfg.dontcare) + i64::from(self.cfg.instance_edge)
            }
        }
    }

    fn aug(&self, rng: Option<&mut Rng>) -> Aug {
        match rng {
            None => Aug {
                x0: 0,
                y0: 0,
                flip: false,
            },
            Some(r) => {
                let (lw, lh) = self.load_size();
                Aug {
                    x0: r.below((lw - self.w + 1) as usize) as u32,
                    y0: r.below((lh - self.h + 1) as usize) as u32,
                    flip: self.cfg.flip && r.below(2) == 1,
                }
            }
        }
    }

    fn load_size(&self) -> (u32, u32) {
        match self.cfg.load_size {
            Some(l) => {
                let l = (l as u32).max(self.h);
                (l * self.w / self.h, l)
            }
            None => (self.w, self.h),
        }
    }

    fn geometry<P: image::Pixel + 'static>(
        &self,
        img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
        filter: image::imageops::FilterType,
        a: Aug,
    ) -> image::ImageBuffer<P, Vec<P::Subpixel>> {
        let (lw, lh) = self.load_size();
        let r = image::imageops::resize(img, lw, lh, filter);
        let mut c = image::imageops::crop_imm(&r, a.x0, a.y0, self.w, self.h).to_image();
        if a.flip {
            image::imageops::flip_horizontal_in_place(&mut c);
        }
        c
    }

    fn rgb(&self, p: &Path, a: Aug) -> Result<Tensor> {
        let img = open_image(p)?.to_rgb8();
        let c = self.geometry(&img, image::imageops::FilterType::CatmullRom, a);
        let t = Tensor::from_slice(c.as_raw())
            .view([self.h as i64, self.w as i64, 3])
            .permute([2, 0, 1])
            .to_kind(Kind::Float);
        Ok(t / 127.5 - 1.0)
    }

    fn label(&self, it: &Item, a: Aug) -> Result<Tensor> {
        let img = open_image(&it.a)?.to_luma8();
        let c = self.geometry(&img, image::imageops::FilterType::Nearest, a);
        let mut lab = Tensor::from_slice(c.as_raw())
            .view([self.h as i64, self.w as i64])
            .to_kind(Kind::Int64);
        let nc = self.cfg.label_nc;
        if self.task == Task::Ade20kSis && self.cfg.dontcare {
            // 1..150 → 0..149; 0 ("other") → the don't-care class 150.
            let minus = &lab - 1;
            lab = minus.where_self(&minus.ge(0), &Tensor::from(nc));
        }
        let classes = nc + i64::from(self.cfg.dontcare);
        if lab.max().int64_value(&[]) >= classes {
            return Err(Error::Data(format!(
                "{}: label {} ≥ the {classes} classes of tsit.folder.label_nc",
                it.a.display(),
                lab.max().int64_value(&[])
            )));
        }
        let mut chans = vec![lab.one_hot(classes).permute([2, 0, 1]).to_kind(Kind::Float)];
        if self.cfg.instance_edge {
            let inst = match &it.inst {
                Some(p) => {
                    let img = open_image(p)?.to_luma16();
                    let c = self.geometry(&img, image::imageops::FilterType::Nearest, a);
                    Tensor::from_slice(&c.as_raw().iter().map(|&v| v as i64).collect::<Vec<_>>())
                        .view([self.h as i64, self.w as i64])
                }
                None => lab.shallow_clone(),
            };
            chans.push(edges(&inst).unsqueeze(0));
        }
        Ok(Tensor::cat(&chans, 0))
    }

    /// Decodes the items `idx` of the training (`rng` given: crops and flips drawn) or test
    /// set: (content input, image) batches.
    pub fn load(
        &self,
        train: bool,
        idx: &[usize],
        mut rng: Option<&mut Rng>,
    ) -> Result<(Tensor, Tensor)> {
        let items = if train { &self.train } else { &self.test };
        let mut cs = Vec::new();
        let mut bs = Vec::new();
        for &i in idx {
            let it = &items[i];
            let a = self.aug(rng.as_deref_mut());
            let c = if self.task == Task::FolderAst {
                self.rgb(&it.a, a)?
            } else {
                self.label(it, a)?
            };
            cs.push(c);
            bs.push(self.rgb(&it.b, a)?);
        }
        Ok((Tensor::stack(&cs, 0), Tensor::stack(&bs, 0)))
    }
}

/// Writes a tiny dataset of `n` train and `n` test items in the task's own folder layout under
/// `root` (random blocky label maps and instance ids, noise photos, 1.5× the model's size so
/// the resize path runs): the smoke tests of the paper-scale specs read it with the real code.
pub(crate) fn write_synthetic(
    task: Task,
    root: &Path,
    cfg: &FolderConfig,
    h: i64,
    w: i64,
    n: usize,
) -> Result<PathBuf> {
    let (h, w) = ((h * 3 / 2) as u32, (w * 3 / 2) as u32);
    let mut rng = Rng::new(99);
    let mk = |p: &Path| -> Result<()> {
        let d = p.parent().expect("a file path");
        std::fs::create_dir_all(d).map_err(|e| Error::Io(d.to_path_buf(), e))
    };
    let save = |img: &image::DynamicImage, p: &Path| -> Result<()> {
        mk(p)?;
        img.save(p)
            .map_err(|e| Error::Data(format!("{}: {e}", p.display())))
    };
    let photo = |rng: &mut Rng| {
        let v: Vec<u8> = (0..h * w * 3).map(|_| rng.below(256) as u8).collect();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, v).expect("sized"))
    };
    let blocks = |rng: &mut Rng, k: usize| -> Vec<u16> {
        let cells: Vec<u16> = (0..16).map(|_| rng.below(k) as u16).collect();
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                cells[((y * 4 / h) * 4 + x * 4 / w) as usize]
            })
            .collect()
    };
    for (split, count) in [(0, n), (1, n)] {
        for i in 0..count {
            match task {
                Task::FolderAst => {
                    let sp = if split == 0 { "train" } else { "test" };
                    save(&photo(&mut rng), &root.join(format!("{sp}A/{i:04}.png")))?;
                    save(&photo(&mut rng), &root.join(format!("{sp}B/{i:04}.jpg")))?;
                }
                Task::CityscapesSis => {
                    let sp = if split == 0 { "train" } else { "val" };
                    let stem = format!("{sp}/city/city_{i:06}_000019");
                    save(
                        &photo(&mut rng),
                        &root.join(format!("leftImg8bit/{stem}_leftImg8bit.png")),
                    )?;
                    let lab: Vec<u8> = blocks(&mut rng, cfg.label_nc as usize)
                        .iter()
                        .map(|&v| v as u8)
                        .collect();
                    let l = image::GrayImage::from_raw(w, h, lab).expect("sized");
                    save(
                        &image::DynamicImage::ImageLuma8(l),
                        &root.join(format!("gtFine/{stem}_gtFine_labelIds.png")),
                    )?;
                    let inst = blocks(&mut rng, 30_000);
                    let t = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w, h, inst)
                        .expect("sized");
                    save(
                        &image::DynamicImage::ImageLuma16(t),
                        &root.join(format!("gtFine/{stem}_gtFine_instanceIds.png")),
                    )?;
                }
                Task::Ade20kSis => {
                    let sp = if split == 0 { "training" } else { "validation" };
                    let base = root.join("ADEChallengeData2016");
                    let name = format!("ADE_{sp}_{i:08}");
                    save(
                        &photo(&mut rng),
                        &base.join(format!("images/{sp}/{name}.jpg")),
                    )?;
                    let lab: Vec<u8> = blocks(&mut rng, cfg.label_nc as usize + 1)
                        .iter()
                        .map(|&v| v as u8)
                        .collect();
                    let l = image::GrayImage::from_raw(w, h, lab).expect("sized");
                    save(
                        &image::DynamicImage::ImageLuma8(l),
                        &base.join(format!("annotations/{sp}/{name}.png")),
                    )?;
                }
                _ => unreachable!("only folder tasks"),
            }
        }
    }
    Ok(root.to_path_buf())
}

/// The instance-edge map of an id map `H×W`: 1 where any 4-neighbour has another id, computed
/// symmetrically (both pixels of a differing pair are edges).
pub fn edges(ids: &Tensor) -> Tensor {
    let (h, w) = (ids.size()[0], ids.size()[1]);
    let dh = ids
        .narrow(1, 1, w - 1)
        .ne_tensor(&ids.narrow(1, 0, w - 1))
        .to_kind(Kind::Float);
    let dv = ids
        .narrow(0, 1, h - 1)
        .ne_tensor(&ids.narrow(0, 0, h - 1))
        .to_kind(Kind::Float);
    let pad = |t: &Tensor, p: [i64; 4]| t.pad(p, "constant", 0.0);
    let any = pad(&dh, [1, 0, 0, 0])
        + pad(&dh, [0, 1, 0, 0])
        + pad(&dv, [0, 0, 1, 0])
        + pad(&dv, [0, 0, 0, 1]);
    any.gt(0.0).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(label_nc: i64, dontcare: bool, edge: bool) -> FolderConfig {
        FolderConfig {
            load_size: None,
            flip: true,
            label_nc,
            dontcare,
            instance_edge: edge,
            style_repeat: 2,
            content_repeat: 1,
        }
    }

    #[test]
    fn every_layout_reads_back_with_its_channels() {
        let d = tempfile::tempdir().unwrap();
        for (task, c, chans, w) in [
            (Task::CityscapesSis, cfg(35, false, true), 36, 32),
            (Task::Ade20kSis, cfg(150, true, false), 151, 16),
            (Task::FolderAst, cfg(0, false, false), 3, 16),
        ] {
            let root = d.path().join(format!("{task:?}"));
            write_synthetic(task, &root, &c, 16, w, 3).unwrap();
            let f = FolderData::new(task, &root, &c, 16, w).unwrap();
            assert_eq!((f.train.len(), f.test.len()), (3, 3), "{task:?}");
            assert_eq!(f.content_channels(), chans);
            let (a, b) = f.load(true, &[0, 2], Some(&mut Rng::new(1))).unwrap();
            assert_eq!(a.size(), vec![2, chans, 16, w]);
            assert_eq!(b.size(), vec![2, 3, 16, w]);
            assert!(b.min().double_value(&[]) >= -1.0 && b.max().double_value(&[]) <= 1.0);
            if task != Task::FolderAst {
                // One class per pixel.
                let oh = a.narrow(1, 0, c.label_nc + i64::from(c.dontcare));
                assert!(
                    oh.sum_dim_intlist(1, false, Kind::Float)
                        .eq(1.0)
                        .all()
                        .int64_value(&[])
                        == 1
                );
            }
        }
        // Unpaired lists: the style list doubled in training, then both cut to the shorter.
        let root = d.path().join("FolderAst");
        let f = FolderData::new(Task::FolderAst, &root, &cfg(0, false, false), 16, 16).unwrap();
        assert!(f
            .train
            .iter()
            .enumerate()
            .all(|(i, it)| it.a.ends_with(format!("trainA/{i:04}.png"))));
        // A missing folder is an error naming it.
        let e = FolderData::new(Task::CityscapesSis, d.path(), &cfg(35, false, true), 16, 32)
            .unwrap_err();
        assert!(e.to_string().contains("leftImg8bit"), "{e}");
    }

    #[test]
    fn instance_edges_are_symmetric() {
        let ids = Tensor::from_slice(&[1i64, 1, 2, 1, 1, 2, 3, 3, 3]).view([3, 3]);
        let e = Vec::<f32>::try_from(edges(&ids).view(-1)).unwrap();
        assert_eq!(e, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }
}
