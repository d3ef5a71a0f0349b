//! Specs and the command line end to end: bad specs, overrides and extends, refusals before a
//! folder is made, one clear line per mistake.

use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::*;

#[test]
fn bad_specs_give_one_clear_error() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "unknown.yaml",
        &TINY.replace("  noise_sigma: 0.03", "  noise_sigma: 0.03\n  colour: red"),
    );
    assert_clean_error(
        &runner(p, &["validate", "t/unknown"]),
        "unknown.yaml:16: jem.colour: unknown field `colour`",
    );
    write(p, "type.yaml", &TINY.replace("width: 16", "width: wide"));
    assert_clean_error(
        &runner(p, &["run", "t/type"]),
        "type.yaml:12: jem.model.mlp.width: invalid type",
    );
    write(p, "yaml.yaml", "name: [unclosed\n");
    assert_clean_error(&runner(p, &["run", "t/yaml"]), "invalid YAML");
    write(p, "neg.yaml", &TINY.replace("lr: 0.01", "lr: -0.01"));
    assert_clean_error(
        &runner(p, &["run", "t/neg"]),
        "jem.optim.lr: must be a positive number",
    );
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "jem.optim.batch=5000"]),
        "larger than the training split",
    );
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "jem.optim.lrr=1"]),
        "override `jem.optim.lrr=1`",
    );
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "jem.optim.lr=fast"]),
        "override `jem.optim.lr=fast`: jem.optim.lr: invalid type",
    );
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "--device", "tpu"]),
        "unknown device `tpu`",
    );
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "--shard", "2/2"]),
        "--shard 2/2",
    );
    assert_clean_error(&runner(p, &["run", "t/nope"]), "no experiment `t/nope`");
    assert_clean_error(
        &runner(p, &["run", "t/tiny", "paper=nope"]),
        "the spec has no `nope:` section",
    );
    write(p, "ext.yaml", "extends: missing.yaml\nname: x\n");
    assert_clean_error(
        &runner(p, &["validate", "t/ext"]),
        "ext.yaml:1: extends: cannot read the spec",
    );
    // validate with no names checks every file and fails if any is bad.
    assert_clean_error(&runner(p, &["validate"]), "invalid");
}

#[test]
fn print_config_applies_extends_and_overrides() {
    let d = setup();
    let p = d.path();
    write(p, "child.yaml", "extends: tiny.yaml\nname: child\njem:\n  optim:\n    lr: 0.5\nsweep:\n  jem.model.mlp.width: [8, 16]\nseeds: [1, 2]\n");
    let o = runner(
        p,
        &["run", "t/child", "--print-config", "jem.optim.batch=16"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("name: child") && t.contains("lr: 0.5") && t.contains("batch: 16"),
        "{t}"
    );
    assert!(
        t.contains("expands to 4 runs") && t.contains("width=16,seed=2"),
        "{t}"
    );
    let o = runner(p, &["list"]);
    assert!(
        text(&o).contains("t/child") && text(&o).contains("t/tiny"),
        "{}",
        text(&o)
    );
}

#[test]
fn overrides_of_swept_keys_narrow_and_command_line_sweeps_add() {
    let d = setup();
    let p = d.path();
    write(
        p,
        "sw.yaml",
        "extends: tiny.yaml\nname: sw\nsweep:\n  jem.model.mlp.width: [8, 16]\nseeds: [1, 2]\n",
    );
    let runs = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["run", "t/sw", "--print-config"];
        a.extend_from_slice(args);
        let o = runner(p, &a);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        t.lines()
            .filter_map(|l| l.strip_prefix("#   "))
            .filter(|l| l.contains("seed="))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(runs(&[]).len(), 4);
    assert_eq!(
        runs(&["jem.model.mlp.width=16"]),
        vec!["width=16,seed=1", "width=16,seed=2"]
    );
    assert_eq!(
        runs(&["jem.model.mlp.width=16", "seed=2"]),
        Vec::<String>::new(),
        "one run lists no names"
    );
    assert_eq!(
        runs(&["--sweep", "jem.optim.lr=0.1,0.2", "seeds=[5]"]),
        vec![
            "width=8,lr=0.1,seed=5",
            "width=8,lr=0.2,seed=5",
            "width=16,lr=0.1,seed=5",
            "width=16,lr=0.2,seed=5"
        ]
    );
    assert_clean_error(
        &runner(
            p,
            &["run", "t/sw", "--print-config", "jem.model.mlp.width=32"],
        ),
        "jem.model.mlp.width: the sweep runs it over [8, 16]; `32` is not one of them",
    );
    // Every default is printed (keys the spec leaves out), and the smoke budget.
    let o = runner(p, &["run", "t/sw", "--print-config", "--smoke"]);
    let t = text(&o);
    assert!(
        t.contains("--- # every key a run reads") && t.contains("ce_weight: 1.0"),
        "{t}"
    );
    assert!(t.contains("# --smoke:"), "{t}");
    // A misspelt name gets the closest one.
    assert_clean_error(&runner(p, &["run", "t/tinny"]), "did you mean `t/tiny`");
}

#[test]
fn a_gpu_scale_spec_without_cuda_is_refused_and_leaves_no_folder() {
    let d = setup();
    let p = d.path();
    if text(&runner(p, &["info"])).contains("cuda      available") {
        return; // the refusal is for machines without CUDA
    }
    write(
        p,
        "big.yaml",
        "extends: tiny.yaml\nname: big\ndevice: auto\nrequires: gpu\nexpected_minutes: 600\n",
    );
    let o = runner(p, &["run", "t/big", "--out", "out"]);
    assert_clean_error(
        &o,
        "needs a CUDA GPU (about 10 V100-hours, as the spec derives them)",
    );
    assert!(text(&o).contains("device=cpu"), "{}", text(&o));
    assert!(!p.join("out/big").exists(), "a refused run made a folder");
    let l = text(&runner(p, &["list"]));
    assert!(
        l.lines()
            .any(|r| r.starts_with("t/big") && r.contains(" GPU ")),
        "{l}"
    );
    assert!(
        l.lines()
            .any(|r| r.starts_with("t/tiny") && r.contains(" cpu ")),
        "{l}"
    );
    // Forced to the CPU it runs, and --smoke runs anywhere.
    for args in [&["device=cpu"][..], &["--smoke"]] {
        let mut a = vec!["run", "t/big", "--out", "out"];
        a.extend_from_slice(args);
        let o = runner(p, &a);
        assert!(o.status.success(), "{}", text(&o));
    }
    // run.json says how each ended.
    for run in runs_under(&p.join("out/big")) {
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(run.join("run.json")).unwrap()).unwrap();
        assert_eq!(info["status"], "finished", "{info}");
        assert!(info["ended"].is_string(), "{info}");
    }
}

#[test]
fn missing_inputs_are_named_before_a_folder_is_made_and_a_failed_run_says_why() {
    let d = setup();
    let p = d.path();
    write(p, "nodata.yaml", "extends: tiny.yaml\nname: nodata\ndata:\n  dataset: cifar10\n  path: cifar\n  split: { train: 100, test: 10 }\n");
    let o = runner(p, &["run", "t/nodata", "--out", "out"]);
    assert_clean_error(&o, "CIFAR-10 (binary version) not found");
    assert!(
        text(&o).contains("Point `data.path` elsewhere"),
        "{}",
        text(&o)
    );
    assert!(!p.join("out/nodata").exists());
    let o = runner(p, &["data", "--check", "t/nodata", "t/tiny"]);
    assert_clean_error(&o, "1 input(s) missing");
    let t = text(&o);
    assert!(
        t.contains("MISSING  data.path") && t.contains("cs.toronto.edu"),
        "{t}"
    );
    assert!(t.contains("t/tiny:\n  ok       data.dataset"), "{t}");
    // Files in place but not CIFAR: the run starts, fails inside, and run.json says why.
    fs::create_dir_all(p.join("cifar")).unwrap();
    for f in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        fs::write(p.join(format!("cifar/{f}.bin")), b"not cifar").unwrap();
    }
    assert!(runner(p, &["data", "--check", "t/nodata"]).status.success());
    let o = runner(p, &["run", "t/nodata", "--out", "out"]);
    assert!(!o.status.success());
    let run = &runs_under(&p.join("out/nodata"))[0];
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"].as_str().unwrap().contains("data_batch_1"),
        "{info}"
    );
}

#[test]
fn a_corpus_of_bad_specs_each_gives_one_clear_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-specs");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus holds {} specs", files.len());
    let d = setup();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("an # expect: line");
        let o = runner(d.path(), &["run", f.to_str().unwrap(), "--print-config"]);
        let lines = error_lines(&o);
        assert!(!o.status.success(), "{}: accepted", f.display());
        assert_eq!(lines.len(), 1, "{}: not one line: {lines:?}", f.display());
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{}: {:?} lacks {expect:?}",
            f.display(),
            lines[0]
        );
        assert!(!lines[0].contains("panicked"), "{}", f.display());
    }
}

#[test]
fn bad_overrides_each_give_one_clear_line() {
    let d = setup();
    let cases =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-overrides.txt"))
            .unwrap();
    let mut n = 0;
    for line in cases
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (args, expect) = line.split_once(" | ").expect("args | expectation");
        let mut a = vec!["run", "t/tiny", "--print-config"];
        a.extend(args.split_whitespace());
        let o = runner(d.path(), &a);
        let lines = error_lines(&o);
        assert!(!o.status.success(), "{args}: accepted");
        assert_eq!(lines.len(), 1, "{args}: {lines:?}");
        assert!(
            lines[0].contains(expect.trim()),
            "{args}: {:?} lacks {expect:?}",
            lines[0]
        );
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn an_out_folder_that_is_a_file_is_a_clear_error() {
    let d = setup();
    fs::write(d.path().join("out"), b"a file").unwrap();
    let o = runner(d.path(), &["run", "t/tiny", "--out", "out"]);
    let lines = error_lines(&o);
    assert!(!o.status.success());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("out"), "{lines:?}");
}

#[test]
fn tsit_semantic_synthesis_specs_train_the_official_number_of_iterations() {
    // The official training: `train_scripts/sis_{cityscapes,ade20k}.sh` (lines 18, 29, 30:
    // --batchSize 16 --niter 100 --niter_decay 100), an epoch of floor(N / 16) batches
    // (`data/__init__.py` line 47: drop_last=opt.isTrain), and the learning rate updated at
    // each epoch's end (`train.py` line 66), decaying over the last 100 of the 200 epochs.
    for (spec, images) in [("cityscapes-sis", 2975u64), ("ade20k-sis", 20210)] {
        let path = root().join(format!("experiments/tsit/{spec}.yaml"));
        let tree = reprise_core::spec::SpecTree::load(&path).unwrap();
        let batch: u64 = tree.typed("tsit.batch").unwrap();
        let iterations: u64 = tree.typed("tsit.iterations").unwrap();
        let decay_from: f64 = tree.typed("tsit.optim.decay_from").unwrap();
        assert_eq!(batch, 16, "{spec}");
        let per_epoch = images / batch;
        assert_eq!(
            iterations,
            200 * per_epoch,
            "{spec}: {per_epoch} iterations an epoch"
        );
        // The decay starts at an epoch boundary, the 100th.
        assert_eq!(
            (decay_from * iterations as f64).round() as u64,
            100 * per_epoch,
            "{spec}"
        );
    }
}

#[test]
fn robust_transfer_paper_specs_use_the_official_transforms() {
    let spec = |name: &str| {
        reprise_core::spec::SpecTree::load(
            &root().join(format!("experiments/robust-transfer/{name}.yaml")),
        )
        .unwrap()
    };
    let json = |t: &reprise_core::spec::SpecTree, key: &str| -> serde_json::Value {
        t.typed(key).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    // The ImageNet source, as the robustness library feeds it (`robustness/data_augmentation.py`):
    // TRAIN_TRANSFORMS_IMAGENET is RandomResizedCrop(224), RandomHorizontalFlip, ColorJitter(0.1,
    // 0.1, 0.1) and Lighting(0.05) of the whole image; TEST_TRANSFORMS_IMAGENET is Resize(256)
    // then CenterCrop(224) (not the 256² crop).
    let t = spec("imagenet-r50-l2-eps3");
    assert_eq!(
        json(&t, "data.image_size"),
        serde_json::json!({ "resize": 256, "crop": 224 })
    );
    let aug = json(&t, "robust-transfer.source.augment");
    assert_eq!(aug["resized_crop"], 224, "{aug}");
    assert_eq!(aug["hflip"], true, "{aug}");
    assert_eq!(aug["jitter"], 0.1, "{aug}");
    assert_eq!(aug["lighting"], 0.05, "{aug}");
    // The CIFAR targets, as the transfer code feeds them (microsoft/robust-models-transfer,
    // `src/utils/constants.py`): TRAIN_TRANSFORMS is RandomResizedCrop(224) of the 32² image and
    // RandomHorizontalFlip, TEST_TRANSFORMS Resize(256) then CenterCrop(224).
    for name in ["transfer-cifar10", "transfer-cifar100"] {
        let t = spec(name);
        let target = json(&t, "robust-transfer.transfer.targets.0");
        assert_eq!(target["transform"], serde_json::json!([]), "{name}");
        assert_eq!(
            target["test_transform"],
            serde_json::json!([{ "bilinear": 256 }, { "center_crop": 224 }]),
            "{name}"
        );
        for key in [
            "robust-transfer.transfer.fixed.solver.sgd.augment",
            "robust-transfer.transfer.full.sgd.augment",
        ] {
            let aug = json(&t, key);
            assert_eq!(aug["resized_crop"], 224, "{name} {key}: {aug}");
            assert_eq!(aug["hflip"], true, "{name} {key}: {aug}");
        }
    }
}
