//! A data-parallel TSIT step: two Gloo ranks (threads here), each on half of the batch with
//! FADE's BatchNorm synchronised over both, compute the gradients and the BatchNorm running
//! statistics one process computes on the whole batch.

use reprise_core::parallel::Parallel;
use std::sync::Mutex;
use std::time::Duration;
use tch::{Device, Tensor};
use tsit::data::Batch;
use tsit::train::{bench_setup, draw_noise, Gan};

/// Builds are serialised: they seed and draw from LibTorch's one global generator.
static BUILD: Mutex<()> = Mutex::new(());

fn build() -> (Gan, tsit::config::Config, [Tensor; 2]) {
    let _one = BUILD.lock().unwrap();
    bench_setup(false, Device::Cpu)
}

/// The gradients of the trainable variables, and the BatchNorm running statistics, by name.
fn state(gan: &Gan) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (prefix, vs) in [("g", gan.g.vs()), ("d", &gan.d.vs)] {
        for (name, t) in vs.variables() {
            if t.requires_grad() {
                out.push((format!("{prefix}.{name}.grad"), t.grad().copy()));
            } else if name.contains("running") {
                out.push((format!("{prefix}.{name}"), t.copy()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn two_ranks_with_synchronised_batch_norm_take_the_one_process_step() {
    let (mut gan, c, [x, s]) = build();
    let n = x.size()[0];
    tch::manual_seed(1);
    let z = [
        draw_noise(&c, n, Device::Cpu).unwrap(),
        draw_noise(&c, n, Device::Cpu).unwrap(),
    ];
    // Learning rates 0: the update leaves the weights as they were, so the discriminator's
    // pass (on a fake from the updated generator) is comparable too.
    let mut k = 0;
    gan.step_with(
        &c,
        &Batch::style_transfer(&x, &s),
        (0.0, 0.0),
        &Parallel::single(),
        &mut |_| {
            k += 1;
            Some(z[k - 1].copy())
        },
    )
    .unwrap();
    let want = state(&gan);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let half = n / 2;
    let ranks: Vec<_> = (0..2usize)
        .map(|rank| {
            let part = |t: &Tensor| t.narrow(0, rank as i64 * half, half).copy();
            let (xr, sr) = (part(&x), part(&s));
            let zr = [part(&z[0]), part(&z[1])];
            std::thread::spawn(move || {
                let launch = dist::Launch::local(rank, 2, port);
                let group = dist::ProcessGroup::join(&launch, Duration::from_secs(30)).unwrap();
                let par = std::sync::Arc::new(Parallel::of(group));
                let (gan, c, _) = build();
                let mut gan = gan.data_parallel(&par);
                let mut k = 0;
                gan.step_with(
                    &c,
                    &Batch::style_transfer(&xr, &sr),
                    (0.0, 0.0),
                    &par,
                    &mut |_| {
                        k += 1;
                        Some(zr[k - 1].copy())
                    },
                )
                .unwrap();
                state(&gan)
            })
        })
        .collect();
    let got: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    // Differences relative to the largest gradient of the network (or the largest statistic):
    // a bias that feeds a normalisation has no gradient in exact arithmetic, and what is
    // computed for it is rounding residue (about 1e-7 here) in either run.
    let scale = |prefix: &str, grad: bool| {
        want.iter()
            .filter(|(n, _)| n.starts_with(prefix) && n.ends_with(".grad") == grad)
            .map(|(_, t)| t.abs().max().double_value(&[]))
            .fold(0.0f64, f64::max)
    };
    let (mut worst_grad, mut worst_stat) = (0.0f64, 0.0f64);
    for r in &got {
        assert_eq!(r.len(), want.len());
        for ((name, a), (name_b, b)) in want.iter().zip(r) {
            assert_eq!(name, name_b);
            let d = (a - b).abs().max().double_value(&[]);
            if name.ends_with(".grad") {
                worst_grad = worst_grad.max(d / scale(&name[..2], true));
            } else {
                worst_stat = worst_stat.max(d / scale(&name[..2], false));
            }
        }
    }
    eprintln!(
        "2 ranks against one process: gradients {worst_grad:.1e}, running statistics {worst_stat:.1e} (of the largest)"
    );
    assert!(worst_grad < 1e-5, "gradients {worst_grad:.2e} apart");
    assert!(
        worst_stat < 1e-6,
        "running statistics {worst_stat:.2e} apart"
    );
}
