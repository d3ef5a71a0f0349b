//! A run's loops over a run folder: `train::Steps` (in a process of its own: its test reads
//! LibTorch's global generator, which the library's unit tests, running in parallel threads,
//! draw from) and `plan::Phases`.

use reprise_core::checkpoint::Checkpoint;
use reprise_core::plan::{Entered, Phase, Phases};
use reprise_core::run::{Provenance, RunContext, RunInfo};
use reprise_core::spec::SpecTree;
use reprise_core::train::Steps;

fn draw() -> f64 {
    tch::Tensor::rand([1], (tch::Kind::Double, tch::Device::Cpu)).double_value(&[0])
}

/// A run context in the empty folder `dir`.
fn run_folder(dir: &std::path::Path) -> RunContext {
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
        world: None,
    };
    RunContext::create(dir, spec, info, tch::Device::Cpu).unwrap()
}

#[test]
fn a_loop_seeds_each_step_and_a_phase_leaves_the_generator_alone() {
    let d = tempfile::tempdir().unwrap();
    let mut ctx = run_folder(d.path());
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

#[test]
fn a_plan_of_phases_resumes_inside_the_phase_it_stopped_in() {
    let d = tempfile::tempdir().unwrap();
    let plan = || {
        vec![
            Phase {
                name: "a".into(),
                steps: 3,
            },
            Phase {
                name: "b".into(),
                steps: 4,
            },
            Phase {
                name: "c".into(),
                steps: 2,
            },
        ]
    };
    let mut ctx = run_folder(d.path());
    let mut phases = Phases::open(&mut ctx, plan(), |_| Ok(())).unwrap();
    assert!(matches!(phases.enter("a").unwrap(), Entered::Fresh));
    assert_eq!((phases.offset("b"), phases.steps("b")), (3, 4));
    let mut ck = Checkpoint::new();
    ck.put("w", &tch::Tensor::from_slice(&[2.5f32]));
    phases.save(&ctx, "b", 2, ck).unwrap();
    // Saved at the run's step 3 + 2, with its place in the plan.
    let steps: Vec<u64> = ctx.checkpoints().steps().iter().map(|s| s.0).collect();
    assert_eq!(steps, [5]);
    // Reopened: phase a is done, b resumes after its step 2, c starts fresh.
    let mut again = Phases::open(&mut ctx, plan(), |_| Ok(())).unwrap();
    assert!(matches!(again.enter("a").unwrap(), Entered::Done));
    match again.enter("b").unwrap() {
        Entered::Resume { local, checkpoint } => {
            assert_eq!(local, 2);
            assert_eq!(checkpoint.tensor("w").unwrap().double_value(&[0]), 2.5);
        }
        _ => panic!("b resumes"),
    }
    assert!(matches!(again.enter("c").unwrap(), Entered::Fresh));
    // A checkpoint the caller's check refuses is not resumed from (the run would not start
    // over silently: it is an error).
    assert!(Phases::open(&mut ctx, plan(), |ck| ck.get::<String>("log").map(|_| ())).is_err());
    // A plan whose phase at that place has another name is refused on entering it.
    let renamed = vec![
        Phase {
            name: "a".into(),
            steps: 3,
        },
        Phase {
            name: "x".into(),
            steps: 4,
        },
    ];
    let mut other = Phases::open(&mut ctx, renamed, |_| Ok(())).unwrap();
    assert!(matches!(other.enter("a").unwrap(), Entered::Done));
    let e = other
        .enter("x")
        .err()
        .expect("another phase's checkpoint")
        .to_string();
    assert!(e.contains("the checkpoint is of phase `b`"), "{e}");
}
