//! Source and target data: class selection with relabelling, seeded per-class draws (paired
//! across arms: they depend only on the transfer seed), and per-batch input transforms.

use crate::config::{Target, Transform};
pub use reprise_core::data::Images;
use reprise_core::data::{self, labels_vec, Dataset, Rng, Splits};
use reprise_core::spec::DataSpec;
use reprise_core::{Error, Result};
use tch::Tensor;

/// Keeps the examples whose label is in `classes`, relabelled by position in `classes`.
pub(crate) fn select_classes(ds: &Dataset, classes: &[i64]) -> Result<Dataset> {
    let labels = labels_vec(&ds.y);
    let mut idx = Vec::new();
    let mut y = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        if let Some(p) = classes.iter().position(|c| c == l) {
            idx.push(i as i64);
            y.push(p as i64);
        }
    }
    for c in classes {
        if !labels.contains(c) {
            return Err(Error::Data(format!("class {c} has no examples")));
        }
    }
    let sub = ds.subset(&idx);
    Ok(Dataset {
        x: sub.x,
        y: Tensor::from_slice(&y),
        classes: classes.len(),
    })
}

/// The source's train and holdout data: the header's dataset, restricted to `classes` before
/// it is split with `data.split` (seeded by `data.split_seed`). A streamed ImageFolder
/// (`data.stream: true`) keeps its `train/` and `val/` trees and is decoded per batch.
pub(crate) fn source_splits(spec: &DataSpec, classes: Option<&[i64]>) -> Result<(Images, Images)> {
    if spec.stream && classes.is_some() {
        return Err(Error::Data(
            "`data.stream` is for an imagefolder dataset without `source.classes`".into(),
        ));
    }
    let Some(cl) = classes else {
        return data::image_splits(spec);
    };
    let all = select_classes(&data::load(spec)?, cl)?;
    let sizes = spec
        .split
        .ok_or_else(|| Error::Data("the source data needs `data.split` sizes".into()))?;
    let s = data::split(&all, sizes, spec.split_seed, spec.stratified)?;
    Ok((Images::Memory(s.train), Images::Memory(s.test)))
}

/// Applies a target's transforms to a batch `N×C×H×W`.
pub fn transform(x: &Tensor, ts: &[Transform]) -> Tensor {
    let mut x = x.shallow_clone();
    for t in ts {
        x = match *t {
            Transform::Area(s) => x.adaptive_avg_pool2d([s, s]),
            Transform::Bilinear(s) => x.upsample_bilinear2d([s, s], false, None, None),
            Transform::Pad(p) => x.constant_pad_nd([p, p, p, p]),
            Transform::Rgb => x.repeat([1, 3, 1, 1]),
            Transform::CenterCrop(c) => {
                let s = x.size();
                // torchvision: int(round((H − c) / 2)), round half to even.
                let off = |n: i64| ((n - c) as f64 / 2.0).round_ties_even() as i64;
                x.narrow(2, off(s[2]), c).narrow(3, off(s[3]), c)
            }
        };
    }
    x
}

/// A target's data before the per-seed draw.
#[derive(Debug)]
pub enum TargetPool {
    /// One pool; each transfer seed draws `per_class` training examples per class, the rest
    /// is the test set.
    Draw(Dataset, usize),
    /// The dataset's own train and test split.
    Fixed(Splits),
}

impl TargetPool {
    /// Loads a target's data.
    pub fn load(t: &Target) -> Result<TargetPool> {
        let pick = |ds: Dataset| match &t.classes {
            Some(c) => select_classes(&ds, c),
            None => Ok(ds),
        };
        match t.per_class {
            Some(k) => Ok(TargetPool::Draw(pick(data::load(&t.data)?)?, k)),
            None => {
                let s = data::load_splits(&t.data)?;
                // The test examples `pick` keeps, in order.
                let test_index = labels_vec(&s.test.y)
                    .iter()
                    .zip(&s.test_index)
                    .filter(|(l, _)| t.classes.as_ref().is_none_or(|c| c.contains(l)))
                    .map(|(_, &i)| i)
                    .collect();
                Ok(TargetPool::Fixed(Splits {
                    train: pick(s.train)?,
                    val: s.val,
                    test: pick(s.test)?,
                    test_index,
                }))
            }
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            TargetPool::Draw(d, _) => d.classes,
            TargetPool::Fixed(s) => s.train.classes,
        }
    }

    /// The (train, test) sets of transfer seed `seed`. The draw depends only on the seed and
    /// the pool, so every arm (and every target built from the same pool) gets the same one.
    pub fn draw(&self, seed: u64) -> Result<(Dataset, Dataset)> {
        match self {
            TargetPool::Fixed(s) => Ok((
                s.train
                    .subset(&(0..s.train.len() as i64).collect::<Vec<_>>()),
                s.test.subset(&(0..s.test.len() as i64).collect::<Vec<_>>()),
            )),
            TargetPool::Draw(ds, k) => {
                let labels = labels_vec(&ds.y);
                let mut order: Vec<i64> = (0..ds.len() as i64).collect();
                Rng::new(seed).shuffle(&mut order);
                let mut taken = vec![0usize; ds.classes];
                let (mut tr, mut te) = (Vec::new(), Vec::new());
                for i in order {
                    let c = labels[i as usize] as usize;
                    if taken[c] < *k {
                        taken[c] += 1;
                        tr.push(i);
                    } else {
                        te.push(i);
                    }
                }
                if let Some(c) = taken.iter().position(|&n| n < *k) {
                    return Err(Error::Data(format!(
                        "class {c} has only {} examples, fewer than per_class = {k}",
                        taken[c]
                    )));
                }
                if te.is_empty() {
                    return Err(Error::Data("the draw leaves no test examples".into()));
                }
                tr.sort_unstable();
                te.sort_unstable();
                Ok((ds.subset(&tr), ds.subset(&te)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn toy(n: i64, classes: usize) -> Dataset {
        Dataset {
            x: Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]),
            y: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes as i64),
            classes,
        }
    }

    #[test]
    fn classes_are_selected_and_relabelled_in_order() {
        let d = select_classes(&toy(20, 10), &[7, 2]).unwrap();
        assert_eq!(labels_vec(&d.y), vec![1, 0, 1, 0]);
        assert_eq!(d.classes, 2);
        assert_eq!(
            Vec::<f32>::try_from(d.x.flatten(0, -1)).unwrap(),
            vec![2.0, 7.0, 12.0, 17.0]
        );
        assert!(select_classes(&toy(5, 10), &[7]).is_err());
    }

    #[test]
    fn draws_are_stratified_seeded_and_disjoint() {
        let pool = TargetPool::Draw(toy(100, 5), 3);
        let (tr, te) = pool.draw(4).unwrap();
        assert_eq!((tr.len(), te.len()), (15, 85));
        let mut counts = [0; 5];
        for l in labels_vec(&tr.y) {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [3; 5]);
        let ids = |d: &Dataset| Vec::<f32>::try_from(d.x.flatten(0, -1)).unwrap();
        let (a, b) = (ids(&tr), ids(&te));
        assert!(a.iter().all(|v| !b.contains(v)));
        assert_eq!(ids(&pool.draw(4).unwrap().0), a, "same seed, same draw");
        assert_ne!(ids(&pool.draw(5).unwrap().0), a);
        assert!(TargetPool::Draw(toy(10, 5), 3).draw(0).is_err());
    }

    #[test]
    fn transforms_downsample_resize_and_pad() {
        let x = Tensor::ones([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = transform(
            &x,
            &[
                Transform::Area(7),
                Transform::Bilinear(20),
                Transform::Pad(4),
                Transform::Rgb,
            ],
        );
        assert_eq!(y.size(), vec![2, 3, 28, 28]);
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 2.0 * 3.0 * 400.0);
    }

    #[test]
    fn centre_crops_take_torchvision_s_offsets() {
        let x = Tensor::arange(7 * 6, (Kind::Float, Device::Cpu)).view([1, 1, 7, 6]);
        // Rows: (7 − 4) / 2 = 1.5 rounds to 2 (half to even); columns: (6 − 4) / 2 = 1.
        let y = transform(&x, &[Transform::CenterCrop(4)]);
        assert_eq!(y.size(), vec![1, 1, 4, 4]);
        assert_eq!(y.double_value(&[0, 0, 0, 0]), (2 * 6 + 1) as f64);
        // Resize(256) → CenterCrop(224) of a 32² image keeps its centre 28².
        let z = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let t = transform(&z, &[Transform::Bilinear(256), Transform::CenterCrop(224)]);
        assert_eq!(t.size(), vec![2, 3, 224, 224]);
    }
}
