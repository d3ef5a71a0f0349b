//! Equivalence with the official code of the robustness library (MadryLab/robustness) and the
//! transfer code (microsoft/robust-models-transfer), on fixtures that
//! `scripts/make_official_fixtures.py` wrote from them: PGD (L2 and L∞, with and without a
//! random start, use-best or the final iterate) on the library's ResNet (BasicBlocks at base
//! width 8, one block a stage, 32² inputs), one adversarial training step, one fixed-feature
//! and one full-network transfer step (to 1e-5 relative), and the ImageNet and CIFAR train
//! and test transforms on fixed images (the colour jitter and lighting to 1e-5 against
//! torchvision's tensor functions; crops and resizes against PIL, which rounds to 8 bits: measured
//! 1.00/255 apart (one 8-bit step), asserted at most 1.5/255; the jitter through PIL's path,
//! which rounds after each of its three operations, measured 2.90/255, asserted at most 3.5/255).

use reprise_core::attack::{Norm, Pgd};
use reprise_core::data::augment::{color_jitter, lighting, resized_crop};
use reprise_core::data::formats::{crop_resize, resize_center_crop, ImageSize};
use reprise_core::data::Dataset;
use reprise_core::fixture::{assert_close, relative_error, Fixture};
use robust_transfer::config::{
    Arm, AttackConfig, InitKind, ModelConfig, NormSpec, ResnetArch, SgdConfig, Target, Transform,
};
use robust_transfer::model::Net;
use robust_transfer::transfer::{train_net, Mode};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn fixture(name: &str) -> Fixture {
    Fixture::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

const MODEL: ModelConfig = ModelConfig::Resnet {
    arch: ResnetArch::Resnet18,
    base: Some(8),
    blocks: Some([1, 1, 1, 1]),
};

fn norm(mean: [f64; 3], std: [f64; 3]) -> NormSpec {
    NormSpec {
        mean: mean.to_vec(),
        std: std.to_vec(),
    }
}

fn imagenet() -> NormSpec {
    norm([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
}

/// A network with `classes` outputs holding the fixture's `{prefix}/<torchvision name>`
/// tensors (the normaliser comes from `n`).
fn network(fx: &Fixture, prefix: &str, n: &NormSpec, classes: i64, head: Option<&str>) -> Net {
    let net = Net::new(&MODEL, n, classes, InitKind::Torch, Device::Cpu, 0);
    tch::no_grad(|| {
        for (name, mut v) in net.vs.variables() {
            if name.starts_with("normalizer.") {
                continue;
            }
            let src = match head {
                Some(h) if name.starts_with("fc.") => fx.get(&format!("{h}/{name}")),
                _ => fx.get(&format!("{prefix}/{name}")),
            };
            v.copy_(&src);
        }
    });
    net
}

fn compare_all(fx: &Fixture, net: &Net, prefix: &str) {
    for (name, v) in net.vs.variables() {
        if !name.starts_with("normalizer.") {
            assert_close(
                &format!("{prefix} {name}"),
                &v,
                &fx.get(&format!("{prefix}/{name}")),
                TOL,
            );
        }
    }
}

#[test]
fn pgd_matches_the_official_attacker() {
    let fx = fixture("official-robustness.safetensors");
    let net = network(&fx, "source", &imagenet(), 10, None);
    let (x, y) = (fx.get("x"), fx.get("y"));
    let f = |z: &Tensor| net.forward_t(z, false);
    let cases = [
        ("l2", Norm::L2, 0.5, 2.5 * 0.5 / 3.0, 3, false, true),
        ("l2_start", Norm::L2, 0.5, 0.25, 3, true, true),
        (
            "linf_start_final",
            Norm::Linf,
            8.0 / 255.0,
            2.0 / 255.0,
            3,
            true,
            false,
        ),
        ("linf", Norm::Linf, 4.0 / 255.0, 1.0 / 255.0, 5, false, true),
    ];
    for (name, norm, eps, step, steps, random_start, use_best) in cases {
        let pgd = Pgd {
            norm,
            eps,
            step,
            steps,
            random_start,
            use_best,
            targeted: false,
        };
        let start = fx.get(&format!("pgd/{name}/start"));
        let adv = pgd.run_with(&f, &x, &y, &|_: &Tensor| start.shallow_clone());
        assert_close(
            &format!("{name}: x_adv"),
            &adv,
            &fx.get(&format!("pgd/{name}/adv")),
            TOL,
        );
        let logits = tch::no_grad(|| f(&adv));
        assert_close(
            &format!("{name}: logits"),
            &logits,
            &fx.get(&format!("pgd/{name}/logits")),
            TOL,
        );
    }
}

#[test]
fn an_adversarial_training_step_matches_the_official_loop() {
    let fx = fixture("official-robustness.safetensors");
    let net = network(&fx, "source", &imagenet(), 10, None);
    let (x, y) = (fx.get("x"), fx.get("y"));
    let a: AttackConfig = serde_json::from_value(serde_json::json!({
        "steps": 3, "step_ratio": 2.0 / 3.0, "random_start": false, "use_best": true,
    }))
    .unwrap();
    let arm = Arm::Adv(Norm::L2, 0.5);
    let adv = robust_transfer::train::training_inputs(&net, arm, 0.5, &a, &x, &y);
    assert_close("adversarial inputs", &adv, &fx.get("adv_step/adv"), TOL);
    let mut opt = robust_transfer::train::sgd(net.params(true), 0.9, 1e-4);
    let loss = robust_transfer::train::train_step(
        &net,
        &mut opt,
        (arm, 0.5, &a),
        (&x, &y),
        (0.1, reprise_core::amp::Amp::None),
        &reprise_core::parallel::Parallel::single(),
    )
    .unwrap();
    assert_close(
        "loss",
        &Tensor::from_slice(&[loss as f32]),
        &fx.get("adv_step/loss"),
        TOL,
    );
    // Parameters after SGD and the running statistics of the train-mode forward.
    compare_all(&fx, &net, "adv_step/after");
}

#[test]
fn fixed_feature_and_full_network_transfer_steps_match_the_official_code() {
    let fx = fixture("official-robustness.safetensors");
    let cifar = norm([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]);
    let target: Target = serde_json::from_value(serde_json::json!({
        "name": "t", "data": { "dataset": "cifar10" },
    }))
    .unwrap();
    let sgd: SgdConfig = serde_json::from_value(serde_json::json!({
        "steps": 1, "batch": 4, "lr": [0.1], "momentum": 0.9, "weight_decay": 5.0e-2,
    }))
    .unwrap();
    let train = Dataset {
        x: fx.get("target/x"),
        y: fx.get("target/y"),
        classes: 5,
    };
    for (mode, tag) in [(Mode::Fixed, "fixed"), (Mode::Full, "full")] {
        let net = network(&fx, "source", &cifar, 5, Some("target"));
        let one = std::sync::Arc::new(reprise_core::parallel::Parallel::single());
        let ctl = robust_transfer::transfer::Control {
            stop: &|| false,
            par: &one,
        };
        let fit = robust_transfer::transfer::Fit {
            target: &target,
            mode,
            sgd: &sgd,
            ctl,
        };
        let net = train_net(net, fit, &train, 0.1, 0).unwrap();
        compare_all(&fx, &net, &format!("{tag}/after"));
    }
}

/// An 8-bit HWC image of the fixture as an `image` buffer.
fn rgb(t: &Tensor) -> image::RgbImage {
    let s = t.size();
    let bytes = Vec::<u8>::try_from(t.flatten(0, -1)).unwrap();
    image::RgbImage::from_raw(s[1] as u32, s[0] as u32, bytes).unwrap()
}

/// An `image` buffer as a CHW float tensor in [0, 1].
fn chw(img: &image::RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// An 8-bit HWC fixture image as CHW floats.
fn float(t: &Tensor) -> Tensor {
    t.permute([2, 0, 1]).to_kind(Kind::Float) / 255.0
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn the_imagenet_and_cifar_transforms_match_the_official_pipelines() {
    let fx = fixture("official-transforms.safetensors");
    let big = rgb(&fx.get("imagenet/image"));
    let b = Vec::<i64>::try_from(fx.get("imagenet/box")).unwrap();
    // RandomResizedCrop(224) of the whole image and Resize(256) → CenterCrop(224), against
    // PIL's antialiased bilinear resize in 8 bits.
    let crop = chw(&crop_resize(&big, (b[0], b[1], b[2], b[3]), 224));
    let d = max_diff(&crop, &float(&fx.get("imagenet/train_crop")));
    eprintln!("ImageNet train crop against PIL: {:.3}/255", d * 255.0);
    assert!(
        d <= 1.5 / 255.0,
        "ImageNet train crop: {:.2}/255",
        d * 255.0
    );
    let size = ImageSize {
        resize: 256,
        crop: 224,
    };
    let eval = chw(&resize_center_crop(&big, size));
    let d = max_diff(&eval, &float(&fx.get("imagenet/eval")));
    eprintln!("ImageNet eval against PIL: {:.3}/255", d * 255.0);
    assert!(d <= 1.5 / 255.0, "ImageNet eval: {:.2}/255", d * 255.0);
    // ColorJitter with given factors and order, against torchvision's tensor functions
    // (exact) and its PIL path (8 bits after each operation); then the official Lighting.
    let input = fx.get("jitter/input");
    let f = Vec::<f32>::try_from(fx.get("jitter/factors")).unwrap();
    let o = Vec::<i64>::try_from(fx.get("jitter/order")).unwrap();
    let jit = color_jitter(
        &input,
        [f[0] as f64, f[1] as f64, f[2] as f64],
        [o[0] as usize, o[1] as usize, o[2] as usize],
    );
    assert_close("colour jitter", &jit, &fx.get("jitter/tensor"), TOL);
    let d = max_diff(&jit, &fx.get("jitter/pil"));
    eprintln!("colour jitter against PIL: {:.3}/255", d * 255.0);
    assert!(
        d <= 3.5 / 255.0,
        "colour jitter against PIL: {:.2}/255",
        d * 255.0
    );
    let a = Vec::<f32>::try_from(fx.get("lighting/alpha")).unwrap();
    let lit = lighting(&jit, [a[0] as f64, a[1] as f64, a[2] as f64]);
    assert_close("lighting", &lit, &fx.get("lighting/out"), TOL);
    // CIFAR: RandomResizedCrop(224) of the 32² image; test Resize(256) → CenterCrop(224).
    let small = float(&fx.get("cifar/image")).unsqueeze(0);
    let c = Vec::<i64>::try_from(fx.get("cifar/box")).unwrap();
    let up = resized_crop(&small, (c[0], c[1], c[2], c[3]), 224).squeeze_dim(0);
    let d = max_diff(&up, &float(&fx.get("cifar/train_crop")));
    eprintln!("CIFAR train crop against PIL: {:.3}/255", d * 255.0);
    assert!(d <= 1.5 / 255.0, "CIFAR train crop: {:.2}/255", d * 255.0);
    let test = robust_transfer::data::transform(
        &small,
        &[Transform::Bilinear(256), Transform::CenterCrop(224)],
    )
    .squeeze_dim(0);
    let d = max_diff(&test, &float(&fx.get("cifar/test")));
    eprintln!("CIFAR test against PIL: {:.3}/255", d * 255.0);
    assert!(d <= 1.5 / 255.0, "CIFAR test: {:.2}/255", d * 255.0);
    assert!(relative_error(&test, &float(&fx.get("cifar/test"))) < 0.01);
}
