//! Two ranks in one process (a thread each) through LibTorch's TCPStore and Gloo.

use dist::{Launch, ProcessGroup};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_ranks_average_gradients_broadcast_and_meet_at_a_barrier() {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut pg =
                    ProcessGroup::join(&Launch::local(rank, 2, port), Duration::from_secs(30))
                        .expect("join");
                assert_eq!((pg.rank(), pg.world()), (rank, 2));
                let r = rank as f64;
                // Two "gradients" of different shapes, one bucket; and a double in its own.
                let g = [
                    Tensor::full([3, 2], 1.0 + r, (Kind::Float, tch::Device::Cpu)),
                    Tensor::arange(5, (Kind::Float, tch::Device::Cpu)) * (r + 1.0),
                    Tensor::full([2], 10.0 * r, (Kind::Double, tch::Device::Cpu)),
                ];
                pg.all_reduce_mean(&g).unwrap();
                // The parameters rank 0 holds, broadcast to rank 1.
                let p = Tensor::full([4], r + 7.0, (Kind::Float, tch::Device::Cpu));
                pg.broadcast(std::slice::from_ref(&p), 0).unwrap();
                pg.barrier().unwrap();
                let total = pg.sum_scalar(r + 1.0).unwrap();
                (g, p, total)
            })
        })
        .collect();
    for h in handles {
        let (g, p, total) = h.join().unwrap();
        // Means over the ranks: (1 + 2)/2, arange·(1 + 2)/2, (0 + 10)/2.
        assert!(g[0].allclose(
            &Tensor::full([3, 2], 1.5, (Kind::Float, tch::Device::Cpu)),
            0.0,
            0.0,
            false
        ));
        let want = Tensor::arange(5, (Kind::Float, tch::Device::Cpu)) * 1.5;
        assert!(g[1].allclose(&want, 0.0, 0.0, false), "{:?}", g[1]);
        assert_eq!(Vec::<f64>::try_from(&g[2]).unwrap(), vec![5.0, 5.0]);
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![7.0; 4]);
        assert_eq!(total, 3.0);
    }
}

#[test]
fn a_rank_that_cannot_reach_the_store_fails_clearly_within_its_timeout() {
    // Nobody serves this port: rank 1 waits for rank 0's store, then gives up.
    let port = free_port();
    let t0 = Instant::now();
    let e = match ProcessGroup::join(&Launch::local(1, 2, port), Duration::from_secs(2)) {
        Ok(_) => panic!("joined a group nobody serves"),
        Err(e) => e.to_string(),
    };
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        e.contains("rank 1 of 2") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    eprintln!("after {took:?}: {e}");
}

#[test]
fn rank_0_alone_fails_after_the_join_timeout_not_the_collective_one() {
    // The realistic trigger: a plain run inside a 2-task allocation, or a rank that never
    // started. Rank 0 serves the store, and the collectives' timeout is long: the join
    // timeout must end the wait, and the message say how many ranks came.
    let port = free_port();
    let t0 = Instant::now();
    let r = ProcessGroup::join_with(
        &Launch::local(0, 2, port),
        Duration::from_secs(2),
        Duration::from_secs(1800),
        None,
    );
    let took = t0.elapsed();
    let e = match r {
        Ok(_) => panic!("a group of 2 formed with one rank"),
        Err(e) => e.to_string(),
    };
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        e.contains("rank 0 of 2") && e.contains("only 1 of the 2 ranks came") && e.contains("2s"),
        "{e}"
    );
}

/// One SGD step of a two-layer network (no BatchNorm) on a batch, the gradients averaged over
/// the ranks first when a group is given; returns the weights after it.
fn step(pg: Option<&mut ProcessGroup>, init: &[Tensor], x: &Tensor, y: &Tensor) -> Vec<Tensor> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let net = tch::nn::seq()
        .add(tch::nn::linear(&root / "a", 6, 8, Default::default()))
        .add_fn(|t| t.tanh())
        .add(tch::nn::linear(&root / "b", 8, 3, Default::default()));
    let params: Vec<Tensor> = {
        let mut v = vs.variables().into_iter().collect::<Vec<_>>();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t).collect()
    };
    // Every rank starts from the given weights except rank 1, which starts from zeros: the
    // broadcast from rank 0 must bring it to them.
    let rank = pg.as_ref().map_or(0, |g| g.rank());
    tch::no_grad(|| {
        for (p, v) in params.iter().zip(init) {
            let mut p = p.shallow_clone();
            p.copy_(&if rank == 1 {
                v.zeros_like()
            } else {
                v.shallow_clone()
            });
        }
    });
    let mut pg = pg;
    if let Some(g) = pg.as_deref_mut() {
        g.broadcast(&params, 0).unwrap();
    }
    let loss = tch::nn::Module::forward(&net, x).cross_entropy_for_logits(y);
    loss.backward();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
    if let Some(g) = pg {
        g.all_reduce_mean(&grads).unwrap();
    }
    tch::no_grad(|| {
        for (p, g) in params.iter().zip(&grads) {
            let mut p = p.shallow_clone();
            let _ = p.f_sub_(&(g * 0.5)).unwrap();
        }
    });
    params.iter().map(|p| p.detach().copy()).collect()
}

#[test]
fn two_ranks_with_half_batches_take_the_single_process_full_batch_step() {
    tch::manual_seed(1);
    let x = Tensor::randn([8, 6], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 2, 1]);
    // The weights, in the order `step` sorts them (a.bias, a.weight, b.bias, b.weight).
    let init = vec![
        Tensor::randn([8], (Kind::Float, tch::Device::Cpu)) * 0.1,
        Tensor::randn([8, 6], (Kind::Float, tch::Device::Cpu)) * 0.4,
        Tensor::randn([3], (Kind::Float, tch::Device::Cpu)) * 0.1,
        Tensor::randn([3, 8], (Kind::Float, tch::Device::Cpu)) * 0.4,
    ];
    let single = step(None, &init, &x, &y);
    let port = free_port();
    let handles: Vec<_> = (0..2i64)
        .map(|rank| {
            let (xs, ys) = (
                x.narrow(0, 4 * rank, 4).copy(),
                y.narrow(0, 4 * rank, 4).copy(),
            );
            let init: Vec<Tensor> = init.iter().map(Tensor::copy).collect();
            std::thread::spawn(move || {
                let mut pg = ProcessGroup::join(
                    &Launch::local(rank as usize, 2, port),
                    Duration::from_secs(30),
                )
                .unwrap();
                step(Some(&mut pg), &init, &xs, &ys)
            })
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        for (a, b) in got.iter().zip(&single) {
            let diff = (a - b).abs().max().double_value(&[]);
            // Float rounding of a sum taken in another order: well under 1e-6.
            assert!(
                diff < 1e-6,
                "rank weights differ from the single-process step by {diff}"
            );
        }
    }
}

#[test]
fn an_nccl_backend_serves_cuda_tensors_or_its_absence_is_said() {
    let l = Launch::local(0, 1, free_port());
    let t = Duration::from_secs(30);
    let joined = ProcessGroup::join_with(&l, t, t, Some(0));
    if tch::Cuda::is_available() && dist::HAS_NCCL {
        // One rank: a sum over the group leaves the tensor as it was, reduced on its GPU.
        let mut pg = joined.expect("join with NCCL");
        assert!(pg.nccl());
        let g = Tensor::arange(6, (Kind::Float, tch::Device::Cuda(0)));
        pg.all_reduce_sum(std::slice::from_ref(&g)).unwrap();
        pg.broadcast(std::slice::from_ref(&g), 0).unwrap();
        let want = Tensor::arange(6, (Kind::Float, tch::Device::Cuda(0)));
        assert!(g.allclose(&want, 0.0, 0.0, false));
        // DDP's Reducer over CUDA parameters on that NCCL backend: at one rank the averaged
        // gradients are the gradients.
        let w = mlp_weights()
            .into_iter()
            .map(|t| {
                t.detach()
                    .to_device(tch::Device::Cuda(0))
                    .set_requires_grad(true)
            })
            .collect::<Vec<_>>();
        let plain: Vec<Tensor> = {
            let loss = mlp_loss(&w, 0..8);
            let g = Tensor::run_backward(&[loss], &w, false, false);
            g.iter().map(Tensor::copy).collect()
        };
        let mut red = pg.reducer(&w, dist::ReducerOptions::default()).unwrap();
        for _ in 0..2 {
            for p in &w {
                let _ = p.grad().f_zero_();
            }
            let loss = mlp_loss(&w, 0..8);
            red.prepare(&[&loss]).unwrap();
            loss.backward();
            for (p, g) in w.iter().zip(&plain) {
                assert!(p.grad().allclose(g, 1e-6, 1e-6, false));
            }
        }
        return;
    }
    let err = joined
        .err()
        .expect("no NCCL backend without a GPU")
        .to_string();
    let reason = if dist::HAS_NCCL {
        "GPU"
    } else {
        "no NCCL backend"
    };
    assert!(err.contains(reason), "{err}");
    // Without a CUDA device the same group is plain Gloo.
    let pg = ProcessGroup::join_with(&l, t, t, None).unwrap();
    assert!(!pg.nccl());
}

#[test]
fn synchronised_batch_norm_over_two_ranks_is_batch_norm_over_the_whole_batch() {
    // One process: BatchNorm over 6 rows, a loss that is the mean over rows of y·w.
    tch::manual_seed(7);
    let x = Tensor::randn([6, 3, 4, 5], (Kind::Float, tch::Device::Cpu)) * 2.0 + 0.5;
    let w = Tensor::randn([6, 3, 4, 5], (Kind::Float, tch::Device::Cpu));
    let (rm, rv) = (
        Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        Tensor::ones([3], (Kind::Float, tch::Device::Cpu)),
    );
    let xs = x.copy().set_requires_grad(true);
    let y = xs.batch_norm(
        None::<&Tensor>,
        None::<&Tensor>,
        Some(&rm),
        Some(&rv),
        true,
        0.1,
        1e-5,
        false,
    );
    let per_row = |y: &Tensor, w: &Tensor| {
        (y * w).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float)
    };
    per_row(&y, &w).mean(Kind::Float).backward();
    let (y_one, g_one) = (y.detach(), xs.grad());
    // Two ranks: 4 rows and 2 rows (an uneven split), each loss the mean over its own rows
    // weighted as a data-parallel step weighs them (rows·world/n), gradients then averaged.
    let port = free_port();
    let parts = [(0i64, 4i64), (4, 2)];
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (start, len) = parts[rank];
            let (xr, wr) = (
                x.narrow(0, start, len).copy(),
                w.narrow(0, start, len).copy(),
            );
            std::thread::spawn(move || {
                let mut pg =
                    ProcessGroup::join(&Launch::local(rank, 2, port), Duration::from_secs(30))
                        .unwrap();
                let (rm, rv) = (
                    Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
                    Tensor::ones([3], (Kind::Float, tch::Device::Cpu)),
                );
                let xr = xr.set_requires_grad(true);
                let y = pg
                    .sync_batch_norm(&xr, Some((&rm, &rv)), 0.1, 1e-5)
                    .unwrap();
                let weight = len as f64 * 2.0 / 6.0;
                let loss = per_row(&y, &wr).mean(Kind::Float) * weight;
                loss.backward();
                // Rank r's input gradient is that of the sum of the ranks' losses; the
                // parameters' average over the ranks divides it by the world.
                (y.detach(), xr.grad() / 2.0, rm, rv)
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let cat = |i: usize| {
        Tensor::cat(
            &outs
                .iter()
                .map(|o| [&o.0, &o.1][i].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        )
    };
    let dist = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    eprintln!(
        "sync batch norm against one process: outputs {:.1e}, input gradients {:.1e}",
        dist(&cat(0), &y_one),
        dist(&cat(1), &g_one)
    );
    assert!(
        dist(&cat(0), &y_one) < 1e-5,
        "outputs {}",
        dist(&cat(0), &y_one)
    );
    assert!(
        dist(&cat(1), &g_one) < 1e-6,
        "input gradients {}",
        dist(&cat(1), &g_one)
    );
    for o in &outs {
        assert!(
            dist(&o.2, &rm) < 1e-6 && dist(&o.3, &rv) < 1e-6,
            "running statistics"
        );
    }
}

/// A small two-layer network's loss on rows `rows` of a fixed batch, with the weights given.
fn mlp_loss(w: &[Tensor], rows: std::ops::Range<i64>) -> Tensor {
    // Fixed values, not the global generator (which the tests' threads share).
    let dev = w[0].device();
    let x = Tensor::arange(48, (Kind::Float, dev)).sin().view([8, 6]);
    let y = Tensor::arange(16, (Kind::Float, dev)).cos().view([8, 2]);
    let (x, y) = (
        x.narrow(0, rows.start, rows.end - rows.start),
        y.narrow(0, rows.start, rows.end - rows.start),
    );
    let h = x.matmul(&w[0]).relu();
    (h.matmul(&w[1]) - y).square().mean(Kind::Float)
}

fn mlp_weights() -> Vec<Tensor> {
    let w = |n: i64, shape: [i64; 2]| {
        (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.7)
            .sin()
            .view(shape)
            .set_requires_grad(true)
    };
    vec![w(96, [6, 16]), w(32, [16, 2])]
}

#[test]
fn ddps_reducer_averages_the_gradients_during_the_backward() {
    // One process on the whole batch: the reference gradients, three steps of plain SGD.
    let solo = mlp_weights();
    let mut want = Vec::new();
    for _ in 0..3 {
        for w in &solo {
            w.grad().defined().then(|| w.grad().zero_());
        }
        mlp_loss(&solo, 0..8).backward();
        want.push(solo.iter().map(|w| w.grad().copy()).collect::<Vec<_>>());
        tch::no_grad(|| {
            for w in &solo {
                let _ = w.shallow_clone().g_sub_(&(w.grad() * 0.1));
            }
        });
    }
    let port = free_port();
    let handles: Vec<_> = (0..2i64)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut pg = ProcessGroup::join(
                    &Launch::local(rank as usize, 2, port),
                    Duration::from_secs(30),
                )
                .expect("join");
                let w = mlp_weights();
                // Caps small enough that the rebuilt buckets hold one parameter each.
                let opts = dist::ReducerOptions {
                    bucket_bytes: 256,
                    first_bucket_bytes: 64,
                    ..Default::default()
                };
                let mut red = pg.reducer(&w, opts).expect("reducer");
                assert_eq!(red.buckets(), 1, "one bucket before the first backward");
                let mut got = Vec::new();
                for _ in 0..3 {
                    for p in &w {
                        p.grad().defined().then(|| p.grad().zero_());
                    }
                    let loss = mlp_loss(&w, rank * 4..rank * 4 + 4);
                    red.prepare(&[&loss]).unwrap();
                    loss.backward();
                    got.push(w.iter().map(|p| p.grad().copy()).collect::<Vec<_>>());
                    tch::no_grad(|| {
                        for p in &w {
                            let _ = p.shallow_clone().g_sub_(&(p.grad() * 0.1));
                        }
                    });
                }
                assert_eq!(
                    red.buckets(),
                    2,
                    "rebuilt in gradient order after the first"
                );
                // The Reducer and the group go back to the test, which drops them only once
                // both ranks (threads of one process) have ended.
                (got, red, pg)
            })
        })
        .collect();
    let ended: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (got, _, _) in &ended {
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            for (a, b) in g.iter().zip(w) {
                // Float rounding: two half-batch means averaged against the whole batch's mean.
                let d = (a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]);
                assert!(
                    d <= 1e-6 * scale,
                    "step {step}: gradient off by {d} of {scale}"
                );
            }
        }
    }
}

/// Rank `rank` of a 2-rank group at `port` with a heartbeat whose silence handler sends its
/// sentence to `tx`, the group, and the heartbeat.
fn beating(
    rank: usize,
    port: u16,
    silence: Duration,
    tx: std::sync::mpsc::Sender<(usize, String)>,
) -> (ProcessGroup, dist::Heartbeat) {
    let launch = Launch::local(rank, 2, port);
    let pg = ProcessGroup::join(&launch, Duration::from_secs(30)).expect("join");
    let hb = dist::Heartbeat::start(&launch, silence, move |why| {
        let _ = tx.send((rank, why));
    })
    .expect("heartbeat");
    (pg, hb)
}

/// A 2-rank group on a fresh port, each rank with a heartbeat of silence `silence` whose reports
/// go to the returned receiver: rank 0's group and heartbeat, then rank 1's.
#[allow(clippy::type_complexity)]
fn beating_pair(
    silence: Duration,
) -> (
    std::sync::mpsc::Receiver<(usize, String)>,
    (ProcessGroup, dist::Heartbeat),
    (ProcessGroup, dist::Heartbeat),
) {
    let port = free_port();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx1 = tx.clone();
    let r1 = std::thread::spawn(move || beating(1, port, silence, tx1));
    let zero = beating(0, port, silence, tx);
    (rx, zero, r1.join().unwrap())
}

#[test]
fn a_silent_rank_or_store_is_reported_within_the_silence_and_a_rank_that_left_is_not() {
    let silence = Duration::from_millis(800);
    // Rank 1 stops beating without leaving (frozen): rank 0 hears of it within the silence
    // period and a few beats, naming it.
    let (rx, (pg0, hb0), (pg1, hb1)) = beating_pair(silence);
    // Both alive: nothing for a while.
    assert!(rx.recv_timeout(silence * 2).is_err());
    let t0 = Instant::now();
    drop(hb1);
    let (who, why) = rx
        .recv_timeout(silence * 4)
        .expect("rank 1's silence reported");
    assert_eq!(who, 0);
    assert!(why.contains("rank 1 of 2 has not beaten"), "{why}");
    assert!(t0.elapsed() >= silence / 2, "{:?}", t0.elapsed());
    drop((hb0, pg0, pg1));

    // Rank 1 leaves (its part of the run is over): rank 0 goes on alone undisturbed.
    let (rx, (pg0, hb0), (pg1, hb1)) = beating_pair(silence);
    hb1.leave();
    drop(pg1);
    assert!(
        rx.recv_timeout(silence * 3).is_err(),
        "a rank that left was reported"
    );

    // Rank 0's store goes (its group and heartbeat end without leaving): rank 1 hears of it.
    let (rx, (pg0b, hb0b), (pg1b, hb1b)) = beating_pair(silence);
    drop((hb0b, pg0b));
    let (who, why) = rx
        .recv_timeout(silence * 4)
        .expect("the store's silence reported");
    assert_eq!(who, 1);
    assert!(
        why.contains("rank 0 of 2 has not beaten") || why.contains("store at 127.0.0.1"),
        "{why}"
    );
    drop((hb1b, pg1b, hb0, pg0));
}
