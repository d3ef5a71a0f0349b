//! Median milliseconds of one PGD-k adversarial training step (L2, ε = 1, step 2ε/3, use-best;
//! attack in eval mode, update in train mode, SGD with momentum), for side-by-side timing with
//! `bench/pytorch/rt_step.py` (same network, shapes, k and thread count).
//!
//! usage: cargo run --release -p robust-transfer --example rt_step_time -- [small|r50] [K] [ITERS] [THREADS] [BATCH] [SIZE] [train|attack|fwdbwd]
//!
//! `attack` times the k-step attack alone (each step a forward and an input-only backward, then the
//! use-best forward); `fwdbwd` one forward of the attack's loss with a full backward, to the input
//! and every parameter, which is what each attack step would cost if it also computed parameter
//! gradients.

use reprise_core::attack::Norm;
use robust_transfer::config::{Arm, AttackConfig, InitKind, ModelConfig, NormSpec, ResnetArch};
use robust_transfer::model::Net;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

fn main() {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).map_or("small", String::as_str);
    let k: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let iters: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: i32 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let batch: i64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(32);
    tch::set_num_threads(threads);
    let dev = reprise_core::timing::device_from_env();
    let (model, norm, chans, default_size) = match arch {
        "r50" => (
            ModelConfig::Resnet {
                arch: ResnetArch::Resnet50,
                base: None,
                blocks: None,
            },
            NormSpec {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
            3,
            224,
        ),
        _ => (
            ModelConfig::SmallCnn { width: 1 },
            NormSpec {
                mean: vec![0.1307],
                std: vec![0.3081],
            },
            1,
            28,
        ),
    };
    let size: i64 = a
        .get(6)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_size);
    let classes = if arch == "r50" { 1000 } else { 5 };
    let net = Net::new(&model, &norm, classes, InitKind::HeNormal, dev, 0);
    let mut opt = robust_transfer::train::sgd(net.params(true), 0.9, 5e-4);
    let attack = AttackConfig {
        steps: k,
        step_ratio: 2.0 / 3.0,
        random_start: false,
        use_best: true,
        fgsm: false,
    };
    let x = Tensor::rand([batch, chans, size, size], (Kind::Float, dev));
    let y = Tensor::randint(classes, [batch], (Kind::Int64, dev));
    let arm = if k == 0 {
        Arm::Std
    } else {
        Arm::Adv(Norm::L2, 1.0)
    };
    let what = a.get(7).map_or("train", String::as_str);
    let params = net.vs.trainable_variables();
    let ms = reprise_core::timing::median_ms(dev, 3, iters, || match what {
        "attack" => {
            let _ = robust_transfer::train::training_inputs(&net, arm, arm.eps(), &attack, &x, &y);
        }
        "fwdbwd" => {
            let xg = x.detach().set_requires_grad(true);
            let loss = net.forward_t(&xg, false).cross_entropy_for_logits(&y);
            let mut wrt: Vec<&Tensor> = vec![&xg];
            wrt.extend(params.iter());
            let _ = Tensor::run_backward(&[loss], &wrt, false, false);
        }
        _ => {
            robust_transfer::train::train_step(
                &net,
                &mut opt,
                (arm, arm.eps(), &attack),
                (&x, &y),
                (0.01, reprise_core::amp::Amp::None),
                &reprise_core::parallel::Parallel::single(),
            )
            .expect("a training step");
        }
    });
    println!("{ms:.2}");
}
