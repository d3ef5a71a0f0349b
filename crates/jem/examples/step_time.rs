//! Median milliseconds of one JEM training iteration, for side-by-side timing with
//! `bench/pytorch/jem_step.py` (same model, shapes, K and thread count).
//!
//! usage: cargo run --release -p jem --example step_time -- [cnn|mlp|wrn] [K] [ITERS] [THREADS] [BATCH] [iter|sgld|fwdbwd]
//! (`sgld` times one SGLD step alone: a forward and an input-only backward; `fwdbwd` the same
//! forward with a full backward, to the input and every parameter, which is what the SGLD step
//! would cost if it also computed parameter gradients).

use jem::model::Classifier;
use jem::sampler::ReplayBuffer;
use jem::{train_step, Config};
use reprise_core::data::Rng;
use reprise_core::optim::{Optimizer, Rule};
use tch::{Kind, Tensor};

fn main() {
    reprise_core::memory::keep_freed_memory();
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).map_or("cnn", String::as_str);
    let k: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let iters: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: i32 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let batch: i64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(64);
    let what = a.get(6).map_or("iter", String::as_str);
    tch::set_num_threads(threads);
    let (model, shape): (&str, Vec<i64>) = match arch {
        "mlp" => ("{ mlp: { width: 256, depth: 2 } }", vec![1, 8, 8]),
        "wrn" => ("{ wrn: { depth: 28, widen: 10, classes: 10 } }", vec![3, 32, 32]),
        _ => ("{ cnn: { in_channels: 1, size: 28, convs: [[16, 1], [32, 2], [32, 2]], fc: [64], classes: 10 } }", vec![1, 28, 28]),
    };
    let yaml = format!(
        "model: {model}\narm: jem\niterations: 1\nsgld: {{ steps: {k} }}\nbuffer: {{ size: 2000 }}\n\
         optim: {{ lr: 1.0e-4, batch: {batch} }}\neval: {{ every: 1 }}\n"
    );
    let v: serde_norway::Value = serde_norway::from_str(&yaml).expect("config");
    let c: Config = serde_json::from_value(reprise_core::spec::to_json(&v)).expect("config types");
    let dev = reprise_core::timing::device_from_env();
    let m = Classifier::new(&c.model, &shape, 10, dev, 0);
    let mut opt = Optimizer::for_vars(Rule::adam(), &m.vs, 0.0);
    let mut buf = ReplayBuffer::new(2000, &shape, 10, 1);
    let mut dims = vec![batch];
    dims.extend_from_slice(&shape);
    let x = Tensor::rand(dims.as_slice(), (Kind::Float, dev)) * 2.0 - 1.0;
    let y = Tensor::randint(10, [batch], (Kind::Int64, dev));
    let mut rng = Rng::new(0);
    let params = m.vs.trainable_variables();
    let ms = reprise_core::timing::median_ms(dev, 3, iters, || {
        if what == "sgld" {
            let f = |t: &Tensor| m.forward_t(t, false);
            let _ = jem::sampler::sgld(&f, &x, None, &c.sgld, 1);
        } else if what == "fwdbwd" {
            let xg = x.detach().set_requires_grad(true);
            let e = m
                .forward_t(&xg, false)
                .logsumexp([1], false)
                .sum(Kind::Float);
            let mut wrt: Vec<&Tensor> = vec![&xg];
            wrt.extend(params.iter());
            let _ = Tensor::run_backward(&[e], &wrt, false, false);
        } else {
            train_step(
                &m,
                &mut opt,
                Some(&mut buf),
                &c,
                &jem::StepBatch {
                    weights: (1.0, 0.0),
                    labelled: (&x, &y),
                    data: Some(&x),
                    lr: 1e-4,
                },
                (&mut rng, &mut jem::sampler::gaussian),
                &reprise_core::parallel::Parallel::single(),
            )
            .expect("step");
        }
    });
    println!("{ms:.2}");
}
