//! `train::Steps`, in a process of its own: the test reads LibTorch's global generator, which
//! the library's unit tests, running in parallel threads, draw from.

use reprise_core::run::{Provenance, RunContext, RunInfo};
use reprise_core::spec::SpecTree;
use reprise_core::train::Steps;

fn draw() -> f64 {
    tch::Tensor::rand([1], (tch::Kind::Double, tch::Device::Cpu)).double_value(&[0])
}

#[test]
fn a_loop_seeds_each_step_and_a_phase_leaves_the_generator_alone() {
    let d = tempfile::tempdir().unwrap();
    let spec = SpecTree::from_str(
        "s.yaml",
        "name: t\npaper: p\ndescription: d\nseed: 5\ndata: { dataset: digits }\np: {}\n",
    )
    .unwrap();
    let info = RunInfo {
        smoke: false,
        smoke_iterations: None,
        device: "cpu".into(),
        threads: 1,
        versions: Default::default(),
        started: "now".into(),
        id: "steps-test".into(),
        provenance: Provenance::default(),
        status: None,
        ended: None,
        error: None,
    };
    let mut ctx = RunContext::create(d.path(), spec, info, tch::Device::Cpu).unwrap();
    let seed = ctx.seed();
    // A run's loop, resumed after step 1: each step seeds the generator from (seed, step).
    let mut steps = Steps::begin(&mut ctx, 3, 1, &[]).unwrap();
    let mut drawn = Vec::new();
    while steps.start_next() {
        drawn.push(draw());
        steps.end_step("");
    }
    assert_eq!((steps.ran(), steps.at_end()), (2, true));
    for (i, step) in (1..3).enumerate() {
        reprise_core::seed::seed_torch_for_step(seed, step);
        assert_eq!(drawn[i], draw());
    }
    // A phase runs its own steps from `from` and draws on from wherever the generator is.
    let mut phase = Steps::phase(&ctx, 5, 3, 100);
    tch::manual_seed(7);
    let want = [draw(), draw()];
    tch::manual_seed(7);
    let mut got = Vec::new();
    while phase.start_next() {
        got.push((phase.step(), draw()));
        phase.end_step("");
    }
    assert_eq!(got, vec![(3, want[0]), (4, want[1])]);
    assert_eq!((phase.ran(), phase.total()), (2, 5));
}
