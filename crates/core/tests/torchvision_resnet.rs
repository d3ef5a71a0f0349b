//! deepthin's ImageNet networks (core's `ResNet` with Bottlenecks: the widened teacher, the
//! ResNet-50 and ResNet-101 students) against the definition deepthin's specs name,
//! torchvision's `ResNet` with its `Bottleneck` (deepthin has no official code), on a fixture
//! that `scripts/make_official_fixtures.py --torchvision` wrote from the installed torchvision:
//! each network narrowed 32-fold (base width 2, one block a stage, two in the second for the
//! deeper one), the train-mode logits on 64 px inputs, the cross-entropy, every parameter's
//! gradient, and the parameters and running statistics after one SGD step (momentum 0.9, weight
//! decay 1e-4), to 1e-5 relative (a gradient at three times torchvision's own float32 rounding
//! of it where that is larger, which the fixture stores).

use reprise_core::fixture::{assert_close, Fixture};
use reprise_core::models::{Block, ResNet, ResNetConfig, Stem};
use reprise_core::optim::{Optimizer, Rule};
use tch::nn::ModuleT;

const TOL: f64 = 1e-5;

#[test]
fn the_bottleneck_resnets_match_torchvision_forward_gradients_and_a_step() {
    let fx = Fixture::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/torchvision-resnet.safetensors"),
    )
    .unwrap();
    let (x, y) = (fx.get("x"), fx.get("y"));
    for (name, layers, width_factor) in [
        ("teacher", vec![1, 1, 1, 1], 4),
        ("r50", vec![1, 1, 1, 1], 1),
        ("deep", vec![1, 2, 1, 1], 1),
    ] {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = ResNet::new(
            &vs.root(),
            &ResNetConfig {
                block: Block::Bottleneck,
                layers,
                stem: Stem::Imagenet,
                base: 2,
                width_factor,
                in_channels: 3,
                classes: 10,
            },
        );
        let vars = vs.variables();
        tch::no_grad(|| {
            for (k, v) in &vars {
                v.shallow_clone()
                    .copy_(&fx.get(&format!("{name}/before/{k}")));
            }
        });
        let mut opt = Optimizer::for_vars(
            Rule::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            },
            &vs,
            1e-4,
        );
        let logits = net.forward_t(&x, true);
        assert_close(
            &format!("{name} logits"),
            &logits,
            &fx.get(&format!("{name}/logits")),
            TOL,
        );
        let loss = logits.cross_entropy_for_logits(&y);
        assert_close(
            &format!("{name} loss"),
            &loss.reshape([1]),
            &fx.get(&format!("{name}/loss")),
            TOL,
        );
        opt.zero_grad();
        opt.backward(&loss).unwrap();
        let mut compared = 0;
        for (k, v) in &vars {
            if v.requires_grad() {
                // Each gradient at 1e-5, or at three times torchvision's own float32 rounding of
                // it (its distance to the float64 gradient, up to 3.4e-5 for a batch-norm
                // parameter's sum over the batch): two float32 codes each that far from the
                // exact value may be twice as far apart.
                let spread = fx.get(&format!("{name}/spread/{k}")).double_value(&[0]);
                assert_close(
                    &format!("{name} gradient of {k} (rounding {spread:.1e})"),
                    &v.grad(),
                    &fx.get(&format!("{name}/grad/{k}")),
                    TOL.max(3.0 * spread),
                );
                compared += 1;
            }
        }
        assert!(compared > 40, "{name}: {compared} gradients");
        opt.step(0.1).unwrap();
        for (k, v) in &vars {
            assert_close(
                &format!("{name} {k} after the step"),
                v,
                &fx.get(&format!("{name}/after/{k}")),
                TOL,
            );
        }
    }
}
