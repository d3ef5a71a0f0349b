//! Classification metrics: accuracy, NLL, expected calibration error and its reliability table.

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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
