//! `runner export RUN_DIR --out DIR`: a run's trained networks as plain PyTorch state dicts.

use anyhow::{bail, Context, Result};
use reprise_core::spec::SpecTree;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// The name a tensor gets in the state dict: without a `model.` prefix (so that the dict
/// loads into the model itself, e.g. torchvision's `resnet50()` for a robust-transfer source).
pub fn exported_name(name: &str) -> &str {
    name.strip_prefix("model.").unwrap_or(name)
}

/// Writes each model file of the run folder `run` as `<out>/<stem>.pt` (a state dict that
/// `torch.load` reads) and `<out>/config.json` (the experiment, its paper config with every
/// default, the input normalisation where the model has one, the provenance, and how to load).
pub fn export(run: &Path, out: &Path) -> Result<()> {
    if !run.join("spec.yaml").is_file() {
        bail!(
            "{} is not a run folder (no spec.yaml); give one run of a sweep",
            run.display()
        );
    }
    let spec = SpecTree::load(&run.join("spec.yaml"))?;
    let header = spec.header()?;
    let paper = crate::paper(&header.paper)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let finished = reprise_core::run::is_finished(run);
    let newest = reprise_core::run::final_checkpoint(run).ok();
    if !finished {
        match &newest {
            Some((step, _)) => reprise_core::note!(
                "warning: {} has not finished: exporting its networks as they were at its last checkpoint (step {step})",
                run.display()
            ),
            None => reprise_core::note!("warning: {} has not finished", run.display()),
        }
    }
    let step = newest.as_ref().map(|(s, _)| *s);
    let newest = newest.map(|(_, ck)| ck);
    let mut inputs = Map::new();
    let mut files = Map::new();
    let mut normalize = Map::new();
    for e in paper.exports {
        let (from, tensors): (String, Vec<(String, tch::Tensor)>) =
            match e.file.map(|f| run.join(f)).filter(|p| p.is_file()) {
                Some(path) => (
                    e.file.unwrap_or_default().to_string(),
                    tch::Tensor::read_safetensors(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => {
                    let Some(ck) = &newest else { continue };
                    let pre = format!("{}.", e.prefix);
                    let picked: Vec<(String, tch::Tensor)> = ck
                        .tensors
                        .iter()
                        .filter_map(|(k, t)| {
                            k.strip_prefix(&pre)
                                .map(|n| (n.to_string(), t.shallow_clone()))
                        })
                        .collect();
                    let step = ck.meta.get("step").cloned().unwrap_or_default();
                    (format!("checkpoints, step {step}, {pre}*"), picked)
                }
            };
        if tensors.is_empty() {
            continue;
        }
        let mut dict = Vec::new();
        for (name, t) in tensors {
            // The input normaliser is data, not a layer of the torchvision network.
            if let Some(which) = name.strip_prefix("normalizer.") {
                let v = Vec::<f64>::try_from(t.flatten(0, -1).to_kind(tch::Kind::Double))?;
                normalize.insert(which.to_string(), json!(v));
                continue;
            }
            dict.push((exported_name(&name).to_string(), t));
        }
        // PyTorch's BatchNorm also holds `num_batches_tracked`, which reprise does not keep (it
        // only matters with momentum=None): a zero, so that `load_state_dict` is strict-clean.
        let bns: Vec<String> = dict
            .iter()
            .filter_map(|(k, _)| k.strip_suffix(".running_var").map(str::to_string))
            .collect();
        for bn in bns {
            let key = format!("{bn}.num_batches_tracked");
            if !dict.iter().any(|(k, _)| *k == key) {
                dict.push((key, tch::Tensor::from(0i64)));
            }
        }
        dict.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(i) = e.inputs {
            inputs.insert(format!("{}.pt", e.name), json!(i));
        }
        let dest = out.join(format!("{}.pt", e.name));
        reprise_core::torch_save::write_state_dict(&dest, &dict)?;
        files.insert(
            format!("{}.pt", e.name),
            json!({ "from": from, "tensors": dict.len() }),
        );
        reprise_core::note!(
            "wrote {} ({} tensors, from {from})",
            dest.display(),
            dict.len()
        );
    }
    if files.is_empty() {
        let named: Vec<&str> = paper.exports.iter().filter_map(|e| e.file).collect();
        if paper.exports.is_empty() {
            bail!("{} exports no network", paper.name);
        }
        bail!(
            "{} holds no trained network ({}no step checkpoint)",
            run.display(),
            if named.is_empty() {
                String::new()
            } else {
                format!("no {}, and ", named.join(", "))
            }
        );
    }
    let info: Json = reprise_core::checkpoint::read_record(&run.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Json::Null);
    let config = json!({
        "experiment": header.name,
        "paper": paper.name,
        "title": paper.title,
        "run": run.display().to_string(),
        "provenance": info.get("provenance").cloned().unwrap_or(Json::Null),
        "config": (paper.config)(&spec)?,
        "data": serde_json::to_value(&header.data)?,
        "normalize": if normalize.is_empty() { Json::Null } else { Json::Object(normalize) },
        "inputs": inputs,
        "finished": finished,
        "step": step,
        "files": files,
        "load": "state = torch.load(\"<file>.pt\"); model.load_state_dict(state)",
    });
    reprise_core::checkpoint::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    reprise_core::note!("wrote {}", out.join("config.json").display());
    Ok(())
}
