//! Finding experiment specs by path or by name under `experiments/`, and checking them.

use anyhow::{bail, Result};
use reprise_core::spec::{SpecError, SpecTree};
use std::path::{Path, PathBuf};

/// The experiments folder: `$REPRISE_EXPERIMENTS`, else `experiments/` here, else the one in
/// the source tree the runner was built from.
pub fn experiments_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REPRISE_EXPERIMENTS") {
        return PathBuf::from(d);
    }
    let here = PathBuf::from("experiments");
    if here.is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

/// The deepest folder under `experiments/` that [`all`] looks into.
const MAX_DEPTH: usize = 8;

/// Every experiment file (bases, whose names start with `_`, left out), sorted. Each folder is
/// entered once however many links lead to it (a link to `.` neither loops nor lists a spec
/// twice), and no deeper than [`MAX_DEPTH`].
pub fn all() -> Vec<PathBuf> {
    fn walk(
        d: &Path,
        depth: usize,
        seen: &mut std::collections::HashSet<PathBuf>,
        out: &mut Vec<PathBuf>,
    ) {
        let Ok(real) = d.canonicalize() else {
            return;
        };
        if depth > MAX_DEPTH || !seen.insert(real) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        // Sorted, so that of two paths to one folder the same one is listed every time.
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, depth + 1, seen, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('_'))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    walk(&experiments_dir(), 0, &mut seen, &mut out);
    // A file linked under two names is one experiment.
    let mut files = std::collections::HashSet::new();
    out.retain(|p| p.canonicalize().map_or(true, |r| files.insert(r)));
    out.sort();
    out
}

/// The name of an experiment file (`jem/mnist-small`).
pub fn name_of(p: &Path) -> String {
    let dir = experiments_dir();
    p.strip_prefix(&dir)
        .unwrap_or(p)
        .with_extension("")
        .to_string_lossy()
        .into_owned()
}

/// Resolves `<experiment>`: an existing file, or a name under `experiments/`.
pub fn resolve(arg: &str) -> Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.is_file() {
        return Ok(p);
    }
    if p.is_dir() && p.join("spec.yaml").is_file() {
        return Ok(p.join("spec.yaml"));
    }
    let dir = experiments_dir();
    for cand in [
        dir.join(format!("{arg}.yaml")),
        dir.join(format!("{arg}.yml")),
        dir.join(arg),
    ] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    let names: Vec<String> = all().iter().map(|p| name_of(p)).collect();
    let close = suggestions(arg, &names);
    if close.is_empty() {
        bail!(
            "no experiment `{arg}`: not a file, and not a name under {} (see `runner list`)",
            dir.display()
        )
    }
    bail!(
        "no experiment `{arg}`; did you mean {}?",
        close
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The known names `arg` is probably a misspelling of, closest first: those within a few
/// edits of it (a quarter of its length, at least 2), then those whose last part contains
/// its last part or the other way round.
pub fn suggestions<'a>(arg: &str, names: &'a [String]) -> Vec<&'a str> {
    fn last(s: &str) -> &str {
        s.rsplit('/').next().unwrap_or(s)
    }
    let budget = (arg.chars().count() / 4).max(2);
    let mut close: Vec<(usize, &str)> = names
        .iter()
        .filter_map(|n| {
            let d = edit_distance(arg, n).min(edit_distance(last(arg), last(n)));
            let contains = !last(arg).is_empty()
                && (last(n).contains(last(arg)) || last(arg).contains(last(n)));
            (d <= budget || contains).then_some((d, n.as_str()))
        })
        .collect();
    close.sort();
    close.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = (prev + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = here;
        }
    }
    row[b.len()]
}

/// Loads a spec, applies the smoke overrides (if asked) and the command line's overrides.
pub fn load(file: &Path, smoke: bool, overrides: &[String]) -> Result<SpecTree, SpecError> {
    let mut tree = SpecTree::load(file)?;
    if smoke {
        let header = tree.header()?;
        for (k, v) in &header.smoke.set {
            tree.set(k, v.clone()).map_err(|e| {
                tree.locate_error(SpecError {
                    path: format!("smoke.set.{k}"),
                    ..e
                })
            })?;
        }
    }
    for o in overrides {
        tree.apply_override(o)?;
    }
    Ok(tree)
}

/// Checks a spec fully: header, paper section, and every run of its sweep.
pub fn check(tree: &SpecTree) -> Result<Vec<(String, SpecTree)>> {
    let header = tree.header()?;
    let paper = crate::paper(&header.paper).map_err(|e| {
        let located = tree.locate_error(SpecError::at("paper", e.to_string()));
        anyhow::anyhow!("{located}")
    })?;
    let runs = tree.expand()?;
    for (_, r) in &runs {
        (paper.validate)(r)?;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_names_get_the_closest_suggestions() {
        let names: Vec<String> = [
            "jem/digits-calibration",
            "jem/mnist-small",
            "robust-transfer/mnist-eps-sweep",
            "tsit/scenes-sis",
            "tsit/scenes-ast",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggestions("jem/mnist-smal", &names),
            vec!["jem/mnist-small"]
        );
        assert_eq!(
            suggestions("jem/digit-calibration", &names),
            vec!["jem/digits-calibration"]
        );
        // The paper folder left out, or the wrong one given.
        assert_eq!(
            suggestions("mnist-eps-swep", &names),
            vec!["robust-transfer/mnist-eps-sweep"]
        );
        assert_eq!(suggestions("tsit/scenes-sys", &names)[0], "tsit/scenes-sis");
        assert!(suggestions("imagenet", &names).is_empty());
    }
}
