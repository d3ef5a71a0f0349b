//! pytorch-fid's Inception-v3 (`pytorch_fid.inception.InceptionV3`, the FID blocks) and
//! Fréchet distance (`pytorch_fid.fid_score.calculate_frechet_distance`) against reprise's
//! `inception::FidInception` and `metrics::frechet_distance`, on
//! `tests/fixtures/pytorch-fid.safetensors` (written by `scripts/make_official_fixtures.py
//! --fid`). The network's real weights are a 100 MB download; both sides fill it with the same
//! deterministic weights instead (a function of each tensor's torchvision name and shape), so
//! every layer, pool and branch is exercised. Pool features agree to 1e-5 relative.

use reprise_core::fixture::{assert_close, Fixture};
use reprise_core::inception::FidInception;
use tch::{Device, Kind, Tensor};

/// The weights of `make_official_fixtures.py`'s `formula_weight`.
fn formula_weight(name: &str, shape: &[i64]) -> Tensor {
    let s: u64 = name
        .bytes()
        .enumerate()
        .map(|(i, b)| (i as u64 + 1) * u64::from(b))
        .sum::<u64>()
        % 997;
    let n: i64 = shape.iter().product();
    let k = Tensor::arange_start(1, n + 1, (Kind::Int64, Device::Cpu));
    let t = (k * (48271 * (s as i64 + 1)))
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
        t * (3.0 / (n / shape[0]) as f64).sqrt()
    };
    v.reshape(shape).to_kind(Kind::Float)
}

#[test]
fn fid_inception_features_and_frechet_distance_match_pytorch_fid() {
    let fx = Fixture::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pytorch-fid.safetensors"),
    )
    .unwrap();
    let net = FidInception::new(Device::Cpu);
    let mut count = 0;
    tch::no_grad(|| {
        for (name, mut v) in net.vs.variables() {
            v.copy_(&formula_weight(&name, &v.size()));
            count += 1;
        }
    });
    // 94 BasicConv2d layers: a weight and four batch-norm tensors each.
    assert_eq!(count, 94 * 5);
    let f = net.features(&fx.get("x"));
    assert_eq!(f.size(), vec![2, 2048]);
    // The weights keep the two images apart (a network that forgot its input would pass
    // trivially).
    let apart = (f.get(0) - f.get(1)).abs().max().double_value(&[]);
    assert!(apart > 1e-3 * f.abs().max().double_value(&[]), "{apart}");
    assert_close("pool features", &f, &fx.get("features"), 1e-5);
    let d = reprise_core::metrics::frechet_distance(&fx.get("frechet/a"), &fx.get("frechet/b"));
    let want = fx.get("frechet/distance").double_value(&[0]);
    assert!(
        (d - want).abs() <= 1e-8 * want.abs().max(1.0),
        "Fréchet {d} vs pytorch-fid {want}"
    );
}
