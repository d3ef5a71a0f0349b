//! Reference tensors stored as safetensors files (the equivalence fixtures that
//! `scripts/make_official_fixtures.py` writes from the papers' official code), and the
//! comparison the tests make with them.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A fixture file's tensors by name.
pub struct Fixture {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
}

impl Fixture {
    /// Reads a safetensors file.
    pub fn open(path: &Path) -> Result<Fixture> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| Error::Corrupt(path.to_path_buf(), e.to_string()))?
            .into_iter()
            .collect();
        Ok(Fixture {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor `name`; panics (a test helper) when it is absent.
    pub fn get(&self, name: &str) -> Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.path.display()))
            .shallow_clone()
    }

    /// The names under `prefix` with the prefix removed, in order.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }
}

/// The largest absolute difference of `got` and `want`, relative to the largest |want| (at
/// least 1e-6): the tolerance the equivalence tests state (1e-5 for float32).
pub fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "shapes differ");
    let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let scale = w.abs().max().double_value(&[]).max(1e-6);
    (g - w).abs().max().double_value(&[]) / scale
}

/// Asserts `relative_error(got, want) <= tol`, naming `what`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let e = relative_error(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Deterministic stand-in weights for a network whose real weights are a large download
/// (pytorch-fid's Inception-v3, ImageNet VGG-19), the same as `scripts/make_official_fixtures.py`
/// `formula_weight` computes: t_k = 2·((k + 1)·48271·(s + 1) mod (2³¹ − 1))/(2³¹ − 1) − 1 over
/// the flat index k, s = Σ (i + 1)·byte_i mod 997 of `name`; running variances 0.5 + |t|/2,
/// running means and biases t/10, batch-norm weights 1 + t/10, other weights t·√(gain/fan_in).
/// Exact integer arithmetic, so both sides get the same numbers.
pub fn formula_weight(name: &str, shape: &[i64], gain: f64) -> Tensor {
    let s: i64 = (name
        .bytes()
        .enumerate()
        .map(|(i, b)| (i as u64 + 1) * u64::from(b))
        .sum::<u64>()
        % 997) as i64;
    let n: i64 = shape.iter().product();
    let k = Tensor::arange_start(1, n + 1, (Kind::Int64, tch::Device::Cpu));
    let t = (k * (48271 * (s + 1)))
        .remainder(2147483647)
        .to_kind(Kind::Double)
        / 2147483647.0
        * 2.0
        - 1.0;
    let v = if name.ends_with("running_var") {
        t.abs() * 0.5 + 0.5
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        t * 0.1
    } else if name.ends_with("bn.weight") {
        t * 0.1 + 1.0
    } else {
        t * (gain / (n / shape[0]) as f64).sqrt()
    };
    v.reshape(shape).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_by_the_reference() {
        let w = Tensor::from_slice(&[100.0f32, -200.0, 0.0]);
        let g = Tensor::from_slice(&[100.0f32, -200.0, 0.002]);
        assert!((relative_error(&g, &w) - 1e-5).abs() < 1e-9);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.safetensors");
        Tensor::write_safetensors(&[("a/b", &w)], &p).unwrap();
        let f = Fixture::open(&p).unwrap();
        assert!(f.get("a/b").equal(&w));
        assert_eq!(f.names_under("a/"), vec!["b".to_string()]);
    }
}
