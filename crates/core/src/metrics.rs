//! Metrics: accuracy, top-k, NLL, expected calibration error and its reliability table, bootstrap
//! intervals, AUROC,
//! Fréchet distance, KID, Inception Score, pixel accuracy and mIoU, PSNR.

use tch::{Kind, Tensor};

/// Fraction of rows whose arg-max logit is the label.
pub fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    logits
        .argmax(-1, false)
        .eq_tensor(y)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Mean negative log-likelihood of the labels under softmax(logits).
pub fn nll(logits: &Tensor, y: &Tensor) -> f64 {
    logits
        .to_kind(Kind::Double)
        .log_softmax(-1, Kind::Double)
        .nll_loss(y)
        .double_value(&[])
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bin {
    /// Lower edge (exclusive).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Examples whose confidence falls in the bin.
    pub count: usize,
    /// Mean confidence in the bin (0 when empty).
    pub confidence: f64,
    /// Accuracy in the bin (0 when empty).
    pub accuracy: f64,
}

/// Expected calibration error with `bins` equal-width bins (`lo < conf <= hi`), and the bins.
///
/// Confidence is the max softmax probability; ECE = Σ (n_b / n) |acc_b − conf_b|.
pub fn ece(logits: &Tensor, y: &Tensor, bins: usize) -> (f64, Vec<Bin>) {
    let probs = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let (conf, pred) = probs.max_dim(-1, false);
    let conf = Vec::<f64>::try_from(&conf.to_device(tch::Device::Cpu)).expect("double");
    let correct: Vec<bool> =
        Vec::<bool>::try_from(&pred.eq_tensor(y).to_device(tch::Device::Cpu)).expect("bool");
    ece_from(&conf, &correct, bins)
}

/// ECE from confidences and correctness flags.
pub fn ece_from(conf: &[f64], correct: &[bool], bins: usize) -> (f64, Vec<Bin>) {
    let n = conf.len();
    let mut out: Vec<Bin> = (0..bins)
        .map(|b| Bin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count: 0,
            confidence: 0.0,
            accuracy: 0.0,
        })
        .collect();
    for (&c, &ok) in conf.iter().zip(correct) {
        // Bin b holds lo < c <= hi: b = ceil(c·bins) − 1, clamped to the range.
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        out[b].count += 1;
        out[b].confidence += c;
        out[b].accuracy += f64::from(u8::from(ok));
    }
    let mut e = 0.0;
    for b in &mut out {
        if b.count > 0 {
            b.confidence /= b.count as f64;
            b.accuracy /= b.count as f64;
            e += b.count as f64 / n as f64 * (b.accuracy - b.confidence).abs();
        }
    }
    (e, out)
}

/// Accuracy, NLL and calibration of a classifier's predictions on one test set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Calibration {
    /// Accuracy.
    pub acc: f64,
    /// Mean NLL.
    pub nll: f64,
    /// ECE (fraction, not %).
    pub ece: f64,
    /// Mean confidence − accuracy (positive: over-confident).
    pub conf_minus_acc: f64,
    /// The reliability bins.
    pub bins: Vec<Bin>,
}

/// Accuracy, NLL, ECE with `bins` bins, its reliability bins and the confidence gap of `logits`
/// (rows of class scores, on the host) against the labels `y`.
pub fn calibration(logits: &Tensor, y: &Tensor, bins: usize) -> Calibration {
    let (ece, b) = ece(logits, y, bins);
    let conf = logits
        .softmax(-1, Kind::Double)
        .amax([1].as_slice(), false)
        .mean(Kind::Double)
        .double_value(&[]);
    let acc = accuracy(logits, y);
    Calibration {
        acc,
        nll: nll(logits, y),
        ece,
        conf_minus_acc: conf - acc,
        bins: b,
    }
}

/// The `level` (e.g. 0.95) percentile bootstrap interval of a statistic of `n` paired examples:
/// `draws` resamples of `0..n` with replacement, drawn from `seed`, each passed to `stat`;
/// the interval's ends are the (1 − level)/2 and (1 + level)/2 quantiles of the draws
/// (linear interpolation, as numpy's default). `(NaN, NaN)` for `n == 0` or no draws.
pub fn bootstrap_interval(
    n: usize,
    draws: usize,
    seed: u64,
    level: f64,
    mut stat: impl FnMut(&[usize]) -> f64,
) -> (f64, f64) {
    if n == 0 || draws == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = crate::data::Rng::new(seed);
    let mut idx = vec![0usize; n];
    let mut vals: Vec<f64> = (0..draws)
        .map(|_| {
            for i in idx.iter_mut() {
                *i = rng.below(n);
            }
            stat(&idx)
        })
        .collect();
    vals.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (draws - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        vals[lo] + (vals[hi] - vals[lo]) * (pos - lo as f64)
    };
    (q((1.0 - level) / 2.0), q((1.0 + level) / 2.0))
}

/// How many rows of `logits` have their label `y` among the `k` largest, for each `k` of `ks`,
/// from one `topk` of the largest (ties go to the lower class, as LibTorch's topk keeps the first
/// maximum): the top-1 and top-5 counts of one evaluation batch.
pub fn top_k_counts(logits: &Tensor, y: &Tensor, ks: &[i64]) -> Vec<i64> {
    let kmax = ks
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .min(logits.size()[logits.dim() - 1]);
    let (_, idx) = logits.topk(kmax, -1, true, true);
    let hit = idx.eq_tensor(&y.unsqueeze(-1));
    ks.iter()
        .map(|&k| {
            hit.narrow(-1, 0, k.min(kmax))
                .sum(Kind::Int64)
                .int64_value(&[])
        })
        .collect()
}

/// Area under the ROC curve for telling `pos` (label 1) from `neg` (label 0) by a score that is
/// higher for positives; ties count ½ (scikit-learn's `roc_auc_score`).
pub fn auroc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (tie-averaged, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

fn mean_cov(f: &Tensor) -> (Tensor, Tensor) {
    let f = f.to_kind(Kind::Double);
    let n = f.size()[0] as f64;
    let mu = f.mean_dim(0, false, Kind::Double);
    let c = &f - &mu;
    (mu, c.tr().matmul(&c) / (n - 1.0))
}

fn sqrt_psd(m: &Tensor) -> Tensor {
    let (w, v) = m.linalg_eigh("L");
    let w = w.clamp_min(0.0).sqrt();
    (&v * w.unsqueeze(0)).matmul(&v.tr())
}

/// Fréchet distance between two feature sets `N×d` (rows are samples), in float64:
/// ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^½, the trace term as Σ √max(λ, 0) over the
/// eigenvalues of A Σ₂ A with A = Σ₁^½ from a symmetric eigendecomposition.
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> f64 {
    let (m1, s1) = mean_cov(a);
    let (m2, s2) = mean_cov(b);
    let r = sqrt_psd(&s1);
    let inner = r.matmul(&s2).matmul(&r);
    let inner = (&inner + inner.tr()) / 2.0;
    let tr_sqrt = inner
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double);
    let d = (&m1 - &m2).square().sum(Kind::Double) + s1.trace() + s2.trace() - tr_sqrt * 2.0;
    d.double_value(&[])
}

/// Pixel accuracy and mean IoU of predicted against true label maps (any shape, int64, classes
/// `0..k`); the mean is over classes present in either map.
pub fn pixel_acc_miou(pred: &Tensor, truth: &Tensor, k: i64) -> (f64, f64) {
    let p = pred.flatten(0, -1).to_kind(Kind::Int64);
    let t = truth.flatten(0, -1).to_kind(Kind::Int64);
    let conf = (t * k + p)
        .bincount::<Tensor>(None, k * k)
        .view([k, k])
        .to_kind(Kind::Double);
    let tp = conf.diagonal(0, 0, 1);
    let total = conf.sum(Kind::Double).double_value(&[]);
    let acc = tp.sum(Kind::Double).double_value(&[]) / total;
    let union = conf.sum_dim_intlist(0, false, Kind::Double)
        + conf.sum_dim_intlist(1, false, Kind::Double)
        - &tp;
    let present = union.gt(0.0);
    let iou = (tp / union.clamp_min(1.0)).masked_select(&present);
    (acc, iou.mean(Kind::Double).double_value(&[]))
}

/// PSNR of images in `[0, 1]` (`N×…`): 10·log10(1/MSE) per image, averaged; MSE = 0 gives 100 dB.
pub fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Double);
    let mse = Vec::<f64>::try_from(&mse).expect("double");
    mse.iter()
        .map(|&m| {
            if m == 0.0 {
                100.0
            } else {
                10.0 * (1.0 / m).log10()
            }
        })
        .sum::<f64>()
        / mse.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_of_a_mean() {
        // The mean of 400 values 0..399: the 95 % interval is about ± 1.96·σ/√n = ± 11.3
        // around 199.5 (σ = 115.5).
        let v: Vec<f64> = (0..400).map(f64::from).collect();
        let (lo, hi) = bootstrap_interval(400, 2000, 3, 0.95, |idx| {
            idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64
        });
        assert!((hi - lo - 22.6).abs() < 3.0, "{lo} {hi}");
        assert!((0.5 * (lo + hi) - 199.5).abs() < 3.0, "{lo} {hi}");
        // Seeded: the same seed gives the same interval; a constant statistic a point.
        let again = bootstrap_interval(400, 2000, 3, 0.95, |idx| {
            idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64
        });
        assert_eq!((lo, hi), again);
        assert_eq!(bootstrap_interval(10, 50, 0, 0.95, |_| 1.5), (1.5, 1.5));
        assert!(bootstrap_interval(0, 50, 0, 0.95, |_| 1.5).0.is_nan());
    }

    #[test]
    fn calibration_by_hand() {
        // Two rows, both predicted class 0 with confidence e²/(e²+1) = 0.881; one is right.
        let logits = Tensor::from_slice(&[2.0f64, 0.0, 2.0, 0.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let c = calibration(&logits, &y, 10);
        let p = 2f64.exp() / (2f64.exp() + 1.0);
        assert!((c.acc - 0.5).abs() < 1e-12);
        assert!((c.conf_minus_acc - (p - 0.5)).abs() < 1e-12);
        assert!((c.ece - (p - 0.5)).abs() < 1e-12);
        assert!((c.nll - 0.5 * (-(p.ln()) - (1.0 - p).ln())).abs() < 1e-9);
    }

    #[test]
    fn accuracy_and_nll_by_hand() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0i64, 0]);
        assert_eq!(accuracy(&logits, &y), 0.5);
        // -(log σ(2) + log σ(-1)) / 2 with σ the logistic function.
        let want = -((1.0 / (1.0 + (-2f64).exp())).ln() + (1.0 / (1.0 + 1f64.exp())).ln()) / 2.0;
        assert!((nll(&logits, &y) - want).abs() < 1e-9);
    }

    #[test]
    fn ece_by_hand() {
        // Two bins: (0, .5] holds 0.3 (wrong); (.5, 1] holds 0.9 (right) and 0.7 (wrong).
        let (e, bins) = ece_from(&[0.3, 0.9, 0.7], &[false, true, false], 2);
        let want = (1.0 / 3.0) * 0.3 + (2.0 / 3.0) * (0.5f64 - 0.8).abs();
        assert!((e - want).abs() < 1e-12, "{e} vs {want}");
        assert_eq!(bins[1].count, 2);
        // A confidence exactly on an edge goes to the lower bin (lo < conf <= hi).
        let (_, bins) = ece_from(&[0.5], &[true], 2);
        assert_eq!(bins[0].count, 1);
    }

    #[test]
    fn top_k_by_hand() {
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 0.0, 1.0, 2.0]).view([2, 3]);
        let y = Tensor::from_slice(&[1i64, 0]);
        assert_eq!(top_k_counts(&logits, &y, &[1, 2, 3]), vec![0, 1, 2]);
        // k beyond the classes counts every row.
        assert_eq!(top_k_counts(&logits, &y, &[5]), vec![2]);
    }

    #[test]
    fn auroc_matches_sklearn_examples() {
        // roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert!((auroc(&[0.35, 0.8], &[0.1, 0.4]) - 0.75).abs() < 1e-12);
        // All tied: 0.5. Perfect: 1. Reversed: 0.
        assert_eq!(auroc(&[1.0, 1.0], &[1.0, 1.0, 1.0]), 0.5);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auroc(&[0.0], &[1.0]), 0.0);
        // roc_auc_score([1, 0, 1, 0, 1], [0.5, 0.5, 0.9, 0.1, 0.5]) == 0.8333...
        assert!((auroc(&[0.5, 0.9, 0.5], &[0.5, 0.1]) - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn frechet_distance_closed_forms() {
        tch::manual_seed(0);
        let a = Tensor::randn([400, 3], (Kind::Double, tch::Device::Cpu));
        assert!(frechet_distance(&a, &a).abs() < 1e-8);
        // Exact sample moments: a has mean 0 and covariance diag(2/3, 2/3); b = a·(2, 1) + 1 has
        // mean (1, 1) and covariance diag(8/3, 2/3). FD = 2 + 4/3 + 10/3 − 2·(4/3 + 2/3) = 8/3.
        let a = Tensor::from_slice(&[1.0f64, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0]).view([4, 2]);
        let b = &a * Tensor::from_slice(&[2.0f64, 1.0]) + 1.0;
        assert!((frechet_distance(&a, &b) - 8.0 / 3.0).abs() < 1e-12);
        // Non-commuting covariances, against tr sqrtm(Σ₁Σ₂) from numpy's general eigenvalues
        // (the route pytorch-fid takes through scipy), on a_ij = sin(3i + j), b_ij = cos(2i + 5j) + 0.3j.
        let a = Tensor::from_slice(
            &(0..150)
                .map(|k| ((k / 3 * 3 + k % 3) as f64).sin())
                .collect::<Vec<_>>(),
        )
        .view([50, 3]);
        let b = Tensor::from_slice(
            &(0..180)
                .map(|k| (((k / 3) * 2 + (k % 3) * 5) as f64).cos() + 0.3 * (k % 3) as f64)
                .collect::<Vec<_>>(),
        )
        .view([60, 3]);
        assert!(
            (frechet_distance(&a, &b) - 0.518978805121701).abs() < 1e-7,
            "{}",
            frechet_distance(&a, &b)
        );
    }

    #[test]
    fn miou_and_psnr_by_hand() {
        let t = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let p = Tensor::from_slice(&[0i64, 1, 1, 1]);
        let (acc, miou) = pixel_acc_miou(&p, &t, 3);
        assert!((acc - 0.75).abs() < 1e-12);
        // IoU(0) = 1/2, IoU(1) = 2/3; class 2 is absent from both and left out.
        assert!((miou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let a = Tensor::zeros([2, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
        let b = a.copy();
        let _ = b.get(1).fill_(0.1);
        // Image 0: identical → 100 dB; image 1: MSE 0.01 → 20 dB.
        assert!((psnr(&a, &b) - 60.0).abs() < 1e-4, "{}", psnr(&a, &b));
    }
}
