//! pytorch-fid's Inception-v3 (`pytorch_fid.inception.InceptionV3`, the FID blocks) and
//! Fréchet distance (`pytorch_fid.fid_score.calculate_frechet_distance`) against reprise's
//! `inception::FidInception` and `metrics::frechet_distance`, on
//! `tests/fixtures/pytorch-fid.safetensors` (written by `scripts/make_official_fixtures.py
//! --fid`). The network's real weights are a 100 MB download; both sides fill it with the same
//! deterministic weights instead (a function of each tensor's torchvision name and shape), so
//! every layer, pool and branch is exercised. Pool features agree to 1e-5 relative.

use reprise_core::fixture::{assert_close, formula_weight, Fixture};
use reprise_core::inception::FidInception;
use tch::Device;

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
            v.copy_(&formula_weight(&name, &v.size(), 3.0));
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
