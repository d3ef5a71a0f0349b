//! Equivalence with the official JEM code (wgrathwohl/JEM): the Wide-ResNet forward with each
//! norm, the energy, one SGLD chain from replay-buffer samples with given noise, the JEM loss,
//! its parameter gradients and one Adam update, on `tests/fixtures/official-jem.safetensors`
//! (written by `scripts/make_official_fixtures.py` from the official `train_wrn_ebm.py`; WRN-10-1
//! at 32², 4 images, a 20-step chain). Everything agrees to 1e-5 relative, or, for the step's
//! quantities, to three times the official code's own float32 rounding of each where that is
//! larger (the fixture stores it, from the same iteration in float64).

use jem::model::Classifier;
use jem::sampler::{score, ReplayBuffer};
use jem::Config;
use reprise_core::data::Rng;
use reprise_core::fixture::{assert_close, Fixture};
use reprise_core::models::{WrnConfig, WrnNorm};
use reprise_core::nn::Activation;
use reprise_core::optim::{Optimizer, Rule};
use tch::{Device, Tensor};

const TOL: f64 = 1e-5;

fn fixture() -> Fixture {
    Fixture::open(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/official-jem.safetensors"),
    )
    .unwrap()
}

fn wrn(norm: WrnNorm) -> WrnConfig {
    WrnConfig {
        depth: 10,
        widen: 1,
        norm,
        dropout: 0.0,
        act: Activation::LeakyRelu(0.2),
        in_channels: 3,
        classes: 10,
        // The official get_norm builds BatchNorm2d(momentum=0.9).
        bn_momentum: 0.9,
    }
}

/// The official name of one of reprise's variables: the backbone lives under `f.` there.
fn official(name: &str) -> String {
    if name.starts_with("class_output") || name.starts_with("energy_output") {
        name.to_string()
    } else {
        format!("f.{name}")
    }
}

/// A classifier with the fixture's weights: convolutions and heads from `step/`, norm
/// parameters and running statistics from `{tag}/`.
fn classifier(fx: &Fixture, norm: WrnNorm, tag: &str) -> Classifier {
    let m = Classifier::new(
        &jem::config::ModelConfig::Wrn(wrn(norm)),
        &[3, 32, 32],
        10,
        Device::Cpu,
        0,
    );
    tch::no_grad(|| {
        for (name, mut v) in m.vs.variables() {
            let key = official(&name);
            let src = if key.contains("bn") {
                fx.get(&format!("{tag}/{key}"))
            } else {
                fx.get(&format!("step/{key}"))
            };
            v.copy_(&src);
        }
    });
    m
}

#[test]
fn the_wide_resnet_forward_and_energy_match_the_official_network() {
    let fx = fixture();
    let (x, y) = (fx.get("x"), fx.get("y"));
    for (norm, tag) in [
        (WrnNorm::None, "none"),
        (WrnNorm::Batch, "batch"),
        (WrnNorm::Instance, "instance"),
    ] {
        let m = classifier(&fx, norm, tag);
        // The official order: a train-mode pass (updating the running statistics with
        // momentum 0.9), then an eval-mode pass.
        let train = tch::no_grad(|| m.forward_t(&x, true));
        assert_close(
            &format!("{tag} train logits"),
            &train,
            &fx.get(&format!("{tag}/logits_train")),
            TOL,
        );
        let eval = tch::no_grad(|| m.forward_t(&x, false));
        assert_close(
            &format!("{tag} eval logits"),
            &eval,
            &fx.get(&format!("{tag}/logits_eval")),
            TOL,
        );
        if tag == "none" {
            assert_close("LSE energy", &score(&eval, None), &fx.get("none/lse"), TOL);
            assert_close(
                "f(x)[y]",
                &score(&eval, Some(&y)),
                &fx.get("none/f_xy"),
                TOL,
            );
        }
    }
}

fn config() -> Config {
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../experiments/jem/cifar10-wrn28-10.yaml"
    ))
    .unwrap();
    let v: serde_json::Value = serde_norway::from_str(&spec).unwrap();
    let mut j = v["jem"].clone();
    j["model"] = serde_json::json!({ "wrn": serde_json::to_value(wrn(WrnNorm::None)).unwrap() });
    j["sgld"] = serde_json::json!({ "steps": 20, "step_size": 1.0, "noise": 0.01 });
    j["buffer"] = serde_json::json!({ "size": 10, "reinit": 0.0 });
    serde_json::from_value(j).unwrap()
}

#[test]
fn one_jem_iteration_matches_the_official_sampler_loss_and_adam_step() {
    let fx = fixture();
    let c = config();
    assert_eq!((c.p_x_weight, c.ce_weight, c.p_xy_weight), (1.0, 1.0, 0.0));
    let m = classifier(&fx, WrnNorm::None, "none");
    // Our buffer draws its slots with its own generator: put the official chains' starting
    // points (buffer[inds]) where it will look.
    let (official_buffer, inds) = (fx.get("step/buffer"), fx.get("step/inds"));
    let mut buf = ReplayBuffer::new(10, &[3, 32, 32], 10, 0);
    let seed = (0..)
        .find(|&s| {
            let (slots, _) = buf.draw(4, None, 0.0, &mut Rng::new(s));
            let mut d = slots.clone();
            d.sort_unstable();
            d.dedup();
            d.len() == 4
        })
        .unwrap();
    let (slots, _) = buf.draw(4, None, 0.0, &mut Rng::new(seed));
    let slots_t = Tensor::from_slice(&slots);
    let starts = official_buffer.index_select(0, &inds);
    buf.write(&slots, &starts);
    let noise = fx.get("step/noise");
    let mut k = 0;
    let mut draw = |_: &Tensor| {
        k += 1;
        noise.get(k - 1)
    };
    let mut opt = Optimizer::for_vars(Rule::adam(), &m.vs, 0.0);
    let st = jem::train_step(
        &m,
        &mut opt,
        Some(&mut buf),
        &c,
        &jem::StepBatch {
            weights: (1.0, 0.0),
            labelled: (&fx.get("step/x_lab"), &fx.get("step/y_lab")),
            data: Some(&fx.get("step/x_data")),
            lr: 1e-3,
        },
        (&mut Rng::new(seed), &mut draw),
        &reprise_core::parallel::Parallel::single(),
    )
    .unwrap();
    assert_eq!(k, 20, "twenty SGLD steps, one noise draw each");
    // Each quantity at 1e-5, or at three times the official code's own float32 rounding of it
    // where that is larger (its distance to the same iteration in float64, which the fixture
    // stores): Adam's first step, lr·g/(|g| + ε), turns the rounding of a small gradient into up
    // to 1.7e-4 of a weight's scale, and a float32 code on another CPU lands elsewhere in it.
    let tol = |key: &str| {
        let s = fx.get(&format!("step/spread/{key}")).double_value(&[0]);
        TOL.max(3.0 * s)
    };
    // The chains' end points went back into the buffer where they came from.
    let x_q = fx.get("step/x_q");
    assert_close(
        "SGLD samples",
        &buf.data.index_select(0, &slots_t),
        &x_q,
        tol("x_q"),
    );
    let one = |name: &str| Tensor::from_slice(&[st_value(&st, name) as f32]);
    assert_close(
        "mean LSE on data",
        &one("fd"),
        &fx.get("step/fp"),
        tol("fp"),
    );
    assert_close(
        "mean LSE on samples",
        &one("fq"),
        &fx.get("step/fq"),
        tol("fq"),
    );
    assert_close("JEM loss", &one("loss"), &fx.get("step/loss"), tol("loss"));
    for (name, v) in m.vs.variables() {
        let key = official(&name);
        if key.starts_with("energy_output") {
            // The energy head takes no part in the classifier's energy: no gradient, no update.
            assert!(!v.grad().defined() || v.grad().abs().max().double_value(&[]) == 0.0);
            continue;
        }
        assert_close(
            &format!("gradient of {key}"),
            &v.grad(),
            &fx.get(&format!("step/grad/{key}")),
            tol(&format!("grad/{key}")),
        );
        assert_close(
            &format!("{key} after Adam"),
            &v,
            &fx.get(&format!("step/after/{key}")),
            tol(&format!("after/{key}")),
        );
    }
}

fn st_value(st: &jem::StepStats, name: &str) -> f64 {
    match name {
        "fd" => st.f_data,
        "fq" => st.f_q,
        _ => st.loss,
    }
}
