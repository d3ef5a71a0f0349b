//! Equivalence with the official code of the robustness library (MadryLab/robustness) and the
//! transfer code (microsoft/robust-models-transfer), on fixtures that
//! `scripts/make_official_fixtures.py` wrote from them: PGD (L2 and L∞, with and without a
//! random start, use-best or the final iterate) on the library's ResNet (BasicBlocks at base
//! width 8, one block a stage, 32² inputs), one adversarial training step, one fixed-feature
//! and one full-network transfer step (to 1e-5 relative), and the ImageNet and CIFAR train
//! and test transforms on fixed images (the colour jitter and lighting to 1e-5 against
//! torchvision's tensor functions; crops and resizes against PIL, which rounds to 8 bits: measured
//! 1.00/255 apart (one 8-bit step), asserted at most 1.5/255; the jitter through PIL's path,
//! which rounds after each of its three operations, measured 2.90/255, asserted at most 3.5/255);
//! and how the augmentations draw their random parameters, against many draws of torchvision's
//! and the library's transforms, by two-sample tests.

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

/// The paper-scale source's Bottleneck ResNet-50, narrowed as the fixture's is (base width 8,
/// one block a stage).
const BOTTLENECK: ModelConfig = ModelConfig::Resnet {
    arch: ResnetArch::Resnet50,
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
    network_of(&MODEL, fx, prefix, n, classes, head)
}

/// [`network`] of another architecture.
fn network_of(
    model: &ModelConfig,
    fx: &Fixture,
    prefix: &str,
    n: &NormSpec,
    classes: i64,
    head: Option<&str>,
) -> Net {
    let net = Net::new(model, n, classes, InitKind::Torch, Device::Cpu, 0);
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
    adversarial_step(&MODEL, "official-robustness.safetensors");
}

#[test]
fn the_bottleneck_resnet_s_forward_adversarial_step_and_transfer_match_the_official_code() {
    // The library's imagenet_models.resnet with Bottlenecks (stride in the 3x3 convolution, as
    // its resnet50 builds them): the eval-mode logits, then the steps.
    let fx = fixture("official-bottleneck.safetensors");
    let net = network_of(&BOTTLENECK, &fx, "source", &imagenet(), 10, None);
    let logits = tch::no_grad(|| net.forward_t(&fx.get("x"), false));
    assert_close("Bottleneck logits", &logits, &fx.get("source/logits"), TOL);
    adversarial_step(&BOTTLENECK, "official-bottleneck.safetensors");
    transfer_steps(
        &BOTTLENECK,
        "official-bottleneck.safetensors",
        &[(Mode::Full, "full")],
    );
}

/// One adversarial training step of `model` against the fixture `file`'s official step.
fn adversarial_step(model: &ModelConfig, file: &str) {
    let fx = fixture(file);
    let net = network_of(model, &fx, "source", &imagenet(), 10, None);
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
    transfer_steps(
        &MODEL,
        "official-robustness.safetensors",
        &[(Mode::Fixed, "fixed"), (Mode::Full, "full")],
    );
}

/// The transfer steps `modes` of `model` against the fixture `file`'s official ones.
fn transfer_steps(model: &ModelConfig, file: &str, modes: &[(Mode, &str)]) {
    let fx = fixture(file);
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
    for &(mode, tag) in modes {
        let net = network_of(model, &fx, "source", &cifar, 5, Some("target"));
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

/// The two-sample Kolmogorov–Smirnov statistic: the largest distance between the empirical
/// distribution functions of `a` and `b`.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

/// The KS statistic's critical value at level 0.001 for samples of `n` and `m`
/// (c(α) = sqrt(-ln(α/2)/2) = 1.949; conservative for discrete values).
fn ks_bound(n: usize, m: usize) -> f64 {
    1.949 * (((n + m) as f64) / ((n * m) as f64)).sqrt()
}

/// The chi-square statistic of homogeneity of two samples of categories of equal size, and
/// its degrees of freedom (the categories seen, less one).
fn chi2(a: &[i64], b: &[i64]) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let mut counts = std::collections::BTreeMap::<i64, (f64, f64)>::new();
    for &x in a {
        counts.entry(x).or_default().0 += 1.0;
    }
    for &x in b {
        counts.entry(x).or_default().1 += 1.0;
    }
    let s = counts
        .values()
        .map(|(p, q)| (p - q) * (p - q) / (p + q))
        .sum();
    (s, counts.len() - 1)
}

/// The chi-square distribution's critical value at level 0.001 for `df` degrees of freedom
/// (tables; Wilson–Hilferty above 10).
fn chi2_bound(df: usize) -> f64 {
    const T: [f64; 10] = [
        10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59,
    ];
    if df <= 10 {
        return T[df - 1];
    }
    let k = df as f64;
    k * (1.0 - 2.0 / (9.0 * k) + 3.090 * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Column `c` of an `n`×`k` fixture tensor, as floats.
fn column(t: &Tensor, c: i64) -> Vec<f64> {
    Vec::<f64>::try_from(t.select(1, c).to_kind(Kind::Double)).unwrap()
}

#[test]
fn the_augmentations_draw_their_parameters_as_torchvision_and_the_library_do() {
    use reprise_core::data::augment::Augment;
    use reprise_core::data::Rng;
    let fx = fixture("official-draws.safetensors");
    let n = fx.get("flip/flipped").size()[0] as usize;
    let draw = |aug: Augment, (h, w): (i64, i64), seed: u64| {
        aug.draw(n as i64, (h, w), &mut Rng::new(seed))
    };
    let ks_ok = |what: &str, ours: &[f64], theirs: &[f64]| {
        let (d, bound) = (ks(ours, theirs), ks_bound(ours.len(), theirs.len()));
        eprintln!("{what}: KS {d:.4} (bound {bound:.4})");
        assert!(
            d < bound,
            "{what}: KS distance {d:.4} at or above {bound:.4}"
        );
    };
    // RandomResizedCrop(224)'s box (torchvision's get_params, scale 0.08-1, ratio 3/4-4/3) on an
    // ImageNet-sized and a CIFAR image: each coordinate, the area and the aspect.
    for (name, (h, w)) in [("imagenet", (375i64, 500i64)), ("cifar", (32, 32))] {
        let theirs = fx.get(&format!("rrc/{name}"));
        let ours: Vec<(i64, i64, i64, i64)> = draw(
            Augment {
                resized_crop: 224,
                ..Default::default()
            },
            (h, w),
            11,
        )
        .iter()
        .map(|d| d.crop.unwrap())
        .collect();
        let pick = |f: fn(&(i64, i64, i64, i64)) -> f64| ours.iter().map(f).collect::<Vec<_>>();
        let (ti, tj, th, tw) = (
            column(&theirs, 0),
            column(&theirs, 1),
            column(&theirs, 2),
            column(&theirs, 3),
        );
        ks_ok(&format!("{name} crop top"), &pick(|b| b.0 as f64), &ti);
        ks_ok(&format!("{name} crop left"), &pick(|b| b.1 as f64), &tj);
        ks_ok(&format!("{name} crop height"), &pick(|b| b.2 as f64), &th);
        ks_ok(&format!("{name} crop width"), &pick(|b| b.3 as f64), &tw);
        let area: Vec<f64> = th.iter().zip(&tw).map(|(a, b)| a * b).collect();
        ks_ok(
            &format!("{name} crop area"),
            &pick(|b| (b.2 * b.3) as f64),
            &area,
        );
        let aspect: Vec<f64> = th.iter().zip(&tw).map(|(a, b)| (b / a).ln()).collect();
        ks_ok(
            &format!("{name} crop aspect"),
            &pick(|b| (b.3 as f64 / b.2 as f64).ln()),
            &aspect,
        );
    }
    // ColorJitter(0.1, 0.1, 0.1): each factor's distribution and the order of the three.
    let jitter = |amount: f64, seed: u64| -> Vec<([f64; 3], [usize; 3])> {
        draw(
            Augment {
                jitter: amount,
                ..Default::default()
            },
            (4, 4),
            seed,
        )
        .iter()
        .map(|d| d.jitter.unwrap())
        .collect()
    };
    let ours = jitter(0.1, 12);
    let tf = fx.get("jitter/factors");
    for (k, what) in ["brightness", "contrast", "saturation"].iter().enumerate() {
        let mine: Vec<f64> = ours.iter().map(|d| d.0[k]).collect();
        ks_ok(&format!("jitter {what}"), &mine, &column(&tf, k as i64));
    }
    let code = |o: [usize; 3]| (o[0] * 9 + o[1] * 3 + o[2]) as i64;
    let to = fx.get("jitter/order");
    let theirs: Vec<i64> = (0..n as i64)
        .map(|i| {
            let r = Vec::<i64>::try_from(to.get(i)).unwrap();
            code([r[0] as usize, r[1] as usize, r[2] as usize])
        })
        .collect();
    let mine: Vec<i64> = ours.iter().map(|d| code(d.1)).collect();
    let (s, df) = chi2(&mine, &theirs);
    eprintln!(
        "jitter order: chi2 {s:.1} on {df} df (bound {:.1})",
        chi2_bound(df)
    );
    assert_eq!(df, 5, "all six orders drawn on both sides");
    assert!(s < chi2_bound(df), "jitter order: chi2 {s:.1}");
    // The tests see a deliberate change: the order fixed, or the range halved.
    let fixed: Vec<i64> = vec![code([0, 1, 2]); n];
    let (s, df) = chi2(&fixed, &theirs);
    assert!(s > chi2_bound(df), "a fixed order passes: chi2 {s:.1}");
    let halved: Vec<f64> = jitter(0.05, 12).iter().map(|d| d.0[0]).collect();
    let d = ks(&halved, &column(&tf, 0));
    assert!(
        d > ks_bound(n, n),
        "a halved jitter range passes: KS {d:.4}"
    );
    // Lighting(0.05)'s PCA weights (the library's class).
    let tl = fx.get("lighting/alpha");
    let ours: Vec<[f64; 3]> = draw(
        Augment {
            lighting: 0.05,
            ..Default::default()
        },
        (4, 4),
        13,
    )
    .iter()
    .map(|d| d.lighting.unwrap())
    .collect();
    for k in 0..3 {
        let mine: Vec<f64> = ours.iter().map(|a| a[k]).collect();
        ks_ok(
            &format!("lighting alpha {k}"),
            &mine,
            &column(&tl, k as i64),
        );
    }
    // RandomCrop(32, padding=4)'s offsets, and the flip's coin.
    let tp = fx.get("pad/offset");
    let ours: Vec<(i64, i64)> = draw(
        Augment {
            pad_crop: 4,
            ..Default::default()
        },
        (32, 32),
        14,
    )
    .iter()
    .map(|d| d.pad.unwrap())
    .collect();
    for (k, what) in ["down", "right"].iter().enumerate() {
        let mine: Vec<i64> = ours
            .iter()
            .map(|p| if k == 0 { p.0 } else { p.1 })
            .collect();
        let theirs: Vec<i64> = column(&tp, k as i64).iter().map(|&v| v as i64).collect();
        let (s, df) = chi2(&mine, &theirs);
        eprintln!("pad offset {what}: chi2 {s:.1} on {df} df");
        assert_eq!(df, 8, "offsets 0-8 on both sides");
        assert!(s < chi2_bound(df), "pad offset {what}: chi2 {s:.1}");
    }
    let theirs = Vec::<i64>::try_from(fx.get("flip/flipped").to_kind(Kind::Int64)).unwrap();
    let mine: Vec<i64> = draw(
        Augment {
            hflip: true,
            ..Default::default()
        },
        (4, 4),
        15,
    )
    .iter()
    .map(|d| i64::from(d.flip))
    .collect();
    let (s, df) = chi2(&mine, &theirs);
    eprintln!("flip: chi2 {s:.2} on {df} df");
    assert!(s < chi2_bound(df), "flip: chi2 {s:.2}");
}
