//! Test-set predictions a run saves beside its summary, and their pooling across runs: the
//! out-of-fold predictions of a cross-validation cover every example of a dataset exactly once,
//! so metrics computed on the pool are metrics on the whole dataset.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::metrics::{self, Calibration};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The file a run writes its test predictions to.
pub const FILE: &str = "predictions.safetensors";

/// One model's predictions on a test set: the examples' positions in the dataset they came
/// from, their labels and the model's logits (and, in the saved file, the probabilities).
#[derive(Debug)]
pub struct Predictions {
    /// Each example's position in its dataset.
    pub index: Vec<i64>,
    /// Labels, `[n]` int64 on the host.
    pub labels: Tensor,
    /// Logits, `[n, classes]` float64 on the host.
    pub logits: Tensor,
}

impl Predictions {
    /// Predictions from logits and labels of the examples at `index`.
    pub fn new(index: Vec<i64>, logits: &Tensor, labels: &Tensor) -> Result<Predictions> {
        let (n, ln) = (logits.size(), labels.size());
        if n.len() != 2 || ln.len() != 1 || n[0] != ln[0] || n[0] != index.len() as i64 {
            return Err(Error::msg(format!(
                "predictions need [n, classes] logits, [n] labels and n indices: got {n:?}, {ln:?}, {}",
                index.len()
            )));
        }
        Ok(Predictions {
            index,
            labels: labels.to_device(Device::Cpu).to_kind(Kind::Int64),
            logits: logits.to_device(Device::Cpu).to_kind(Kind::Double),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Writes `index`, `labels`, `logits` and `probs` (float32 softmax) to a checksummed
    /// safetensors file, loadable with `safetensors.torch.load_file`, stamped with the id of the
    /// run that made them (`run`, as its `run.json` records it; empty for none).
    pub fn save(&self, path: &Path, run: &str) -> Result<()> {
        let mut ck = Checkpoint::new();
        if !run.is_empty() {
            ck.set(crate::checkpoint::RUN_KEY, run);
        }
        ck.put("index", &Tensor::from_slice(&self.index));
        ck.put("labels", &self.labels);
        ck.put("logits", &self.logits.to_kind(Kind::Float));
        ck.put(
            "probs",
            &self.logits.softmax(-1, Kind::Double).to_kind(Kind::Float),
        );
        ck.save(path)
    }

    /// Reads a file [`Predictions::save`] wrote (checksum verified), and checks what it holds
    /// before anything is computed from it: finite logits, labels that name one of the logits'
    /// classes, indices that are positions (≥ 0) each given once.
    pub fn load(path: &Path) -> Result<Predictions> {
        Self::load_stamped(path).map(|(p, _)| p)
    }

    /// [`Predictions::load`], with the run id the file is stamped with (empty when none).
    fn load_stamped(path: &Path) -> Result<(Predictions, String)> {
        let bad = |why: String| Error::Corrupt(path.to_path_buf(), why);
        let ck = Checkpoint::load(path)?;
        let index = Vec::<i64>::try_from(ck.tensor("index")?.to_kind(Kind::Int64))
            .map_err(|e| bad(e.to_string()))?;
        let p = Predictions::new(index, ck.tensor("logits")?, ck.tensor("labels")?)
            .map_err(|e| bad(e.to_string()))?;
        let classes = p.logits.size()[1];
        if classes < 1 {
            return Err(bad("the logits have no class".into()));
        }
        if !p.is_empty() {
            let (lo, hi) = (
                p.labels.min().int64_value(&[]),
                p.labels.max().int64_value(&[]),
            );
            if lo < 0 || hi >= classes {
                return Err(bad(format!(
                    "a label of {} is not one of the {classes} classes of its logits",
                    if lo < 0 { lo } else { hi }
                )));
            }
            if !bool::try_from(p.logits.isfinite().all()).unwrap_or(false) {
                return Err(bad("its logits are not all finite (NaN or infinite)".into()));
            }
        }
        let mut seen = p.index.clone();
        seen.sort_unstable();
        if seen.first().is_some_and(|&i| i < 0) {
            return Err(bad(format!("a negative example index {}", seen[0])));
        }
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("example {} is given twice", w[0])));
        }
        let run = ck.meta.get(crate::checkpoint::RUN_KEY).cloned();
        Ok((p, run.unwrap_or_default()))
    }

    /// The predictions a run folder holds ([`FILE`], [`Predictions::load`]), which must be that
    /// run's: a file stamped with another run's id (copied in from another arm's or seed's
    /// folder) is an error naming both. An error names the file when it is missing.
    pub fn of_run(dir: &Path) -> Result<Predictions> {
        let path = dir.join(FILE);
        let (p, stamped) = Self::load_stamped(&path)?;
        let id = crate::run::recorded_id(dir);
        if !stamped.is_empty() && !id.is_empty() && stamped != id {
            return Err(Error::Corrupt(
                path,
                format!("it was written by the run {stamped}, not by the run of its folder ({id}): copied from another run's folder?"),
            ));
        }
        Ok(p)
    }

    /// The union of several runs' predictions, ordered by index; an example predicted twice
    /// is an error (the parts must be disjoint, as the folds of a cross-validation are).
    pub fn pool(parts: &[Predictions]) -> Result<Predictions> {
        let index: Vec<i64> = parts.iter().flat_map(|p| p.index.iter().copied()).collect();
        let mut order: Vec<usize> = (0..index.len()).collect();
        order.sort_by_key(|&i| index[i]);
        if let Some(w) = order.windows(2).find(|w| index[w[0]] == index[w[1]]) {
            return Err(Error::msg(format!(
                "example {} is predicted by more than one of the pooled runs",
                index[w[0]]
            )));
        }
        let cat = |f: fn(&Predictions) -> &Tensor| {
            let ts: Vec<&Tensor> = parts.iter().map(f).collect();
            Tensor::cat(&ts, 0)
        };
        let take = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>());
        Ok(Predictions {
            index: order.iter().map(|&i| index[i]).collect(),
            labels: cat(|p| &p.labels).index_select(0, &take),
            logits: cat(|p| &p.logits).index_select(0, &take),
        })
    }

    /// Accuracy, NLL, ECE with `bins` bins and the confidence gap.
    pub fn calibration(&self, bins: usize) -> Calibration {
        metrics::calibration(&self.logits, &self.labels, bins)
    }

    /// Each example's confidence (the largest softmax probability) and whether its arg-max is
    /// the label, for statistics over resampled examples.
    pub fn confidence_correct(&self) -> (Vec<f64>, Vec<bool>) {
        let (conf, pred) = self.logits.softmax(-1, Kind::Double).max_dim(-1, false);
        let conf = Vec::<f64>::try_from(&conf).unwrap_or_default();
        let ok = Vec::<bool>::try_from(&pred.eq_tensor(&self.labels)).unwrap_or_default();
        (conf, ok)
    }
}

/// The `level` bootstrap interval of ECE(`a`) − ECE(`b`) with `bins` bins, over the examples
/// both predict (resampled together: the difference is paired), `draws` resamples from `seed`.
/// An error unless `a` and `b` predict the same examples in the same order.
pub fn ece_difference_interval(
    a: &Predictions,
    b: &Predictions,
    bins: usize,
    draws: usize,
    seed: u64,
    level: f64,
) -> Result<(f64, f64)> {
    if a.index != b.index {
        return Err(Error::msg(
            "a paired bootstrap needs both models' predictions on the same examples",
        ));
    }
    let (ca, ka) = a.confidence_correct();
    let (cb, kb) = b.confidence_correct();
    let (mut c, mut k) = (Vec::new(), Vec::new());
    let mut ece_of = |conf: &[f64], ok: &[bool], idx: &[usize]| {
        c.clear();
        k.clear();
        c.extend(idx.iter().map(|&i| conf[i]));
        k.extend(idx.iter().map(|&i| ok[i]));
        metrics::ece_from(&c, &k, bins).0
    };
    Ok(metrics::bootstrap_interval(
        a.len(),
        draws,
        seed,
        level,
        |idx| ece_of(&ca, &ka, idx) - ece_of(&cb, &kb, idx),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(index: &[i64], rows: &[[f64; 2]], labels: &[i64]) -> Predictions {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Predictions::new(
            index.to_vec(),
            &Tensor::from_slice(&flat).view([rows.len() as i64, 2]),
            &Tensor::from_slice(labels),
        )
        .unwrap()
    }

    #[test]
    fn pooling_orders_by_index_saves_and_refuses_overlaps() {
        let a = preds(&[3, 0], &[[1.0, 0.0], [0.0, 2.0]], &[0, 1]);
        let b = preds(&[1, 2], &[[0.5, 0.0], [0.0, 0.1]], &[1, 1]);
        let p = Predictions::pool(&[a, b]).unwrap();
        assert_eq!(p.index, vec![0, 1, 2, 3]);
        assert_eq!(Vec::<i64>::try_from(&p.labels).unwrap(), vec![1, 1, 1, 0]);
        let row0 = Vec::<f64>::try_from(&p.logits.get(0)).unwrap();
        assert_eq!(row0, vec![0.0, 2.0]);
        // Pooled metrics are metrics on the pooled examples: 3 of 4 right.
        assert!((p.calibration(10).acc - 0.75).abs() < 1e-12);
        let dir = std::env::temp_dir().join(format!("reprise-pred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        p.save(&dir.join(FILE), "").unwrap();
        let back = Predictions::load(&dir.join(FILE)).unwrap();
        assert_eq!(back.index, p.index);
        assert!(back.logits.allclose(&p.logits, 1e-6, 1e-6, false));
        std::fs::remove_dir_all(&dir).unwrap();
        let c = preds(&[2], &[[0.0, 1.0]], &[1]);
        let d = preds(&[2], &[[0.0, 1.0]], &[1]);
        let e = Predictions::pool(&[c, d]).unwrap_err().to_string();
        assert!(e.contains("example 2"), "{e}");
    }

    #[test]
    fn predictions_read_back_are_checked_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let load_err = |p: &Predictions| {
            p.save(&path, "").unwrap();
            Predictions::load(&path).unwrap_err().to_string()
        };
        // A label no logit column names (a re-signed file): an error, not a LibTorch panic.
        let e = load_err(&preds(&[0, 1], &[[1.0, 0.0], [0.0, 1.0]], &[0, 99]));
        assert!(e.contains("label of 99"), "{e}");
        let e = load_err(&preds(&[0, 1], &[[1.0, 0.0], [0.0, 1.0]], &[-1, 0]));
        assert!(e.contains("label of -1"), "{e}");
        let e = load_err(&preds(&[0, 1], &[[f64::NAN, 0.0], [0.0, 1.0]], &[0, 1]));
        assert!(e.contains("not all finite"), "{e}");
        let e = load_err(&preds(&[3, 3], &[[1.0, 0.0], [0.0, 1.0]], &[0, 1]));
        assert!(e.contains("example 3 is given twice"), "{e}");
        let e = load_err(&preds(&[-2, 3], &[[1.0, 0.0], [0.0, 1.0]], &[0, 1]));
        assert!(e.contains("negative"), "{e}");
        // Another run's file in a run's folder.
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("run.json"), r#"{"smoke":false,"smoke_iterations":null,"device":"Cpu","threads":1,"versions":{},"started":"x","id":"aaaa"}"#).unwrap();
        let good = preds(&[0, 1], &[[1.0, 0.0], [0.0, 1.0]], &[0, 1]);
        good.save(&run.join(FILE), "bbbb").unwrap();
        let e = Predictions::of_run(&run).unwrap_err().to_string();
        assert!(e.contains("bbbb") && e.contains("aaaa"), "{e}");
        good.save(&run.join(FILE), "aaaa").unwrap();
        assert_eq!(Predictions::of_run(&run).unwrap().index, vec![0, 1]);
        assert!(Predictions::of_run(dir.path()).is_err());
    }

    #[test]
    fn ece_difference_interval_is_paired_and_covers_the_difference() {
        // Model a: confident and always right (ECE ≈ 0.05); b: confidence 0.9, right half the time.
        let n = 200;
        let idx: Vec<i64> = (0..n).collect();
        let labels: Vec<i64> = (0..n).map(|i| i % 2).collect();
        let a_rows: Vec<[f64; 2]> = labels
            .iter()
            .map(|&l| if l == 0 { [3.0, 0.0] } else { [0.0, 3.0] })
            .collect();
        let b_rows: Vec<[f64; 2]> = (0..n).map(|_| [9f64.ln(), 0.0]).collect();
        let a = preds(&idx, &a_rows, &labels);
        let b = preds(&idx, &b_rows, &labels);
        let (ea, eb) = (a.calibration(20).ece, b.calibration(20).ece);
        let (lo, hi) = ece_difference_interval(&a, &b, 20, 500, 1, 0.95).unwrap();
        assert!(lo <= ea - eb && ea - eb <= hi, "{lo} {} {hi}", ea - eb);
        assert!(hi < 0.0, "a is clearly better calibrated: {lo} {hi}");
        let other = preds(&[0], &[[1.0, 0.0]], &[0]);
        assert!(ece_difference_interval(&a, &other, 20, 10, 1, 0.95).is_err());
    }
}
