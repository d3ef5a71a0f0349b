//! A data-parallel optimizer step: two Gloo ranks (threads here), each on its rows of a batch
//! that does not split evenly ([`Parallel::shard_batch`]), end their steps with the weights one
//! process's step on the whole batch gives; the optimizer averages the gradients itself
//! ([`Optimizer::data_parallel`]).

use reprise_core::optim::{Group, Optimizer, Rule};
use reprise_core::parallel::Parallel;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const ROWS: i64 = 7;

/// A linear model's weights, after `steps` Adam steps on the mean squared error of the batch
/// `(x, t)` (this rank's rows of it), trained by the ranks of `par`.
fn train(par: Arc<Parallel>, x: &Tensor, t: &Tensor, steps: usize) -> Tensor {
    let w = Tensor::from_slice(&[0.5f32, -0.25, 1.0])
        .view([3, 1])
        .set_requires_grad(true);
    let mut opt = Optimizer::new(
        Rule::adam(),
        vec![Group {
            params: vec![("w".into(), w.shallow_clone())],
            lr_mult: 1.0,
            weight_decay: 0.0,
        }],
    )
    .data_parallel(par.clone());
    for _ in 0..steps {
        let shard = par.shard_batch([x, t]).unwrap();
        let [x, t] = &shard.rows;
        let loss = shard.weigh((x.matmul(&w) - t).square().mean(Kind::Float));
        opt.zero_grad();
        loss.backward();
        opt.step(0.1).unwrap();
    }
    w.detach()
}

fn batch() -> (Tensor, Tensor) {
    let x = Tensor::arange(ROWS * 3, (Kind::Float, Device::Cpu)).view([ROWS, 3]) / 10.0;
    let t = Tensor::arange(ROWS, (Kind::Float, Device::Cpu))
        .view([ROWS, 1])
        .cos();
    (x, t)
}

#[test]
fn two_ranks_on_an_uneven_batch_take_the_one_process_steps() {
    let (x, t) = batch();
    let want = train(Arc::new(Parallel::single()), &x, &t, 3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ranks: Vec<_> = (0..2usize)
        .map(|rank| {
            std::thread::spawn(move || {
                let launch = dist::Launch::local(rank, 2, port);
                let group = dist::ProcessGroup::join(&launch, Duration::from_secs(30)).unwrap();
                let (x, t) = batch();
                let par = Arc::new(Parallel::of(group));
                // The group goes back to the test, which drops the ranks' groups only once
                // every rank has ended: a rank's group torn down while the other (a thread of
                // the same process) still reads from it is not a state a real run has.
                (train(par.clone(), &x, &t, 3), par)
            })
        })
        .collect();
    let ended: Vec<(Tensor, Arc<Parallel>)> =
        ranks.into_iter().map(|h| h.join().unwrap()).collect();
    for (got, _) in &ended {
        // Rows 0..4 and 4..7, weighed 8/7 and 6/7: the same gradient up to float rounding.
        let d = (got - &want).abs().max().double_value(&[]);
        assert!(
            d < 1e-6,
            "rank's weights differ from one process's by {d}: {got} {want}"
        );
        assert!(
            (got - Tensor::from_slice(&[0.5f32, -0.25, 1.0]).view([3, 1]))
                .abs()
                .max()
                .double_value(&[])
                > 0.1,
            "the steps moved the weights"
        );
    }
}

#[test]
fn without_the_weight_or_the_average_the_ranks_would_differ() {
    // The test above would pass for an optimizer that averaged nothing only if every rank's
    // gradient were the whole batch's; the halves' gradients differ, so it cannot.
    let (x, t) = batch();
    let one = Arc::new(Parallel::single());
    let first = train(one.clone(), &x.narrow(0, 0, 4), &t.narrow(0, 0, 4), 3);
    let whole = train(one, &x, &t, 3);
    assert!((&first - &whole).abs().max().double_value(&[]) > 1e-3);
}
