//! A run's record of its finished stages, kept in the run folder so that a resumed run redoes
//! only what is unfinished: a [`Ledger`] of named stages and their results (a JSON object,
//! rewritten atomically after each stage), a [`Journal`] of results appended one JSON line
//! at a time, or a [`Record`], one stage's result in a file of its own. Data-parallel, each
//! opens rank 0's copy on every rank, so the ranks skip and redo the same stages.

use crate::checkpoint::{write_atomic, Checkpoint};
use crate::error::{Error, Result};
use crate::run::RunContext;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// JSON text of a value with its keys sorted, as every file of a run folder is written.
pub fn sorted_json<T: Serialize>(v: &T, pretty: bool) -> Result<String> {
    let v = serde_json::to_value(v).map_err(|e| Error::msg(e.to_string()))?;
    let text = if pretty {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    };
    text.map_err(|e| Error::msg(e.to_string()))
}

/// The JSON file at `path` as a `T`; `None` where it is absent or does not read as one.
fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    crate::checkpoint::read_record(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Finished stages by name, each with its result.
#[derive(Debug)]
pub struct Ledger<T> {
    path: PathBuf,
    done: BTreeMap<String, T>,
    /// What the stages were done for ([`Ledger::read_for`]).
    key: Option<String>,
}

/// The file of a ledger kept for a key: the key beside the stages.
#[derive(serde::Deserialize)]
struct Keyed<T> {
    key: String,
    done: BTreeMap<String, T>,
}

impl<T: Serialize + DeserializeOwned> Ledger<T> {
    /// The ledger `file` of the run folder (rank 0's, data-parallel). A file that is absent, or
    /// does not read as this ledger, is an empty ledger: every stage runs again.
    pub fn open(ctx: &RunContext, file: &str) -> Result<Ledger<T>> {
        ctx.share_files(&[file])?;
        Ok(Ledger::read(&ctx.dir().join(file)))
    }

    /// The ledger at `path`, outside a run (an empty one where the file is absent or unreadable).
    pub fn read(path: &Path) -> Ledger<T> {
        let done = read_json(path).unwrap_or_default();
        Ledger {
            path: path.to_path_buf(),
            done,
            key: None,
        }
    }

    /// The ledger at `path` for the work named by `key` (a fingerprint of what the stages'
    /// results depend on: the weights they evaluate, their settings): the stages recorded for
    /// the same key, or none where the file was written for another (a run that trained
    /// further, or evaluates otherwise, since), which the first record replaces. Read by the
    /// process that calls it alone (rank 0's evaluation), not shared among ranks.
    pub fn read_for(path: &Path, key: &str) -> Ledger<T> {
        let done = read_json::<Keyed<T>>(path)
            .filter(|k| k.key == key)
            .map(|k| k.done)
            .unwrap_or_default();
        Ledger {
            path: path.to_path_buf(),
            done,
            key: Some(key.to_string()),
        }
    }

    /// A finished stage's result.
    pub fn get(&self, stage: &str) -> Option<&T> {
        self.done.get(stage)
    }

    /// Records a finished stage, and writes the ledger atomically.
    pub fn record(&mut self, stage: &str, result: T) -> Result<()> {
        self.done.insert(stage.to_string(), result);
        let text = match &self.key {
            Some(key) => sorted_json(&serde_json::json!({ "key": key, "done": &self.done }), true)?,
            None => sorted_json(&self.done, true)?,
        };
        write_atomic(&self.path, text.as_bytes())
    }

    /// `stage`'s result: recorded earlier, or computed by `run` now and recorded.
    pub fn stage(&mut self, stage: &str, run: impl FnOnce() -> Result<T>) -> Result<&T> {
        if !self.done.contains_key(stage) {
            let result = run()?;
            self.record(stage, result)?;
        }
        Ok(&self.done[stage])
    }

    /// Every finished stage, by name.
    pub fn into_done(self) -> BTreeMap<String, T> {
        self.done
    }
}

/// One stage whose result is a file of its own (robust-transfer's `source.json`): absent until
/// the stage finishes, then its result as JSON, written atomically.
#[derive(Debug)]
pub struct Record<T> {
    path: PathBuf,
    value: Option<T>,
}

impl<T: Serialize + DeserializeOwned> Record<T> {
    /// The record `file` of the run folder (rank 0's, data-parallel).
    pub fn open(ctx: &RunContext, file: &str) -> Result<Record<T>> {
        ctx.share_files(&[file])?;
        Ok(Record::read(&ctx.dir().join(file)))
    }

    /// The record at `path`, outside a run (unfinished where the file is absent, or does not
    /// read as this record: the stage runs again).
    pub fn read(path: &Path) -> Record<T> {
        Record {
            path: path.to_path_buf(),
            value: read_json(path),
        }
    }

    /// The stage's result, if it finished.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The stage's result: recorded earlier, or computed by `run` now and recorded.
    pub fn stage(&mut self, run: impl FnOnce() -> Result<T>) -> Result<&T> {
        if self.value.is_none() {
            let v = run()?;
            write_atomic(&self.path, sorted_json(&v, true)?.as_bytes())?;
            self.value = Some(v);
        }
        Ok(self.value.as_ref().expect("recorded above"))
    }

    /// The result, if the stage finished.
    pub fn into_value(self) -> Option<T> {
        self.value
    }
}

/// Finished stages' results in the order they finished, one JSON line each, appended and synced
/// as each finishes; a last line torn by a kill is dropped (and the file rewritten without it).
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    records: Vec<T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// The journal `file` of the run folder (rank 0's, data-parallel).
    pub fn open(ctx: &RunContext, file: &str) -> Result<Journal<T>> {
        ctx.share_files(&[file])?;
        Journal::read(&ctx.dir().join(file))
    }

    /// The journal at `path` (empty where the file is absent).
    pub fn read(path: &Path) -> Result<Journal<T>> {
        let mut records = Vec::new();
        if let Some(text) = crate::checkpoint::read_record(path)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            let mut kept = String::new();
            for l in text.split_inclusive('\n') {
                if let (true, Ok(r)) = (l.ends_with('\n'), serde_json::from_str::<T>(l)) {
                    kept.push_str(l);
                    records.push(r);
                }
            }
            if kept.len() != text.len() {
                tracing::warn!("{}: dropped an unfinished line", path.display());
                write_atomic(path, kept.as_bytes())?;
            }
        }
        Ok(Journal {
            path: path.to_path_buf(),
            records,
        })
    }

    /// The results so far.
    pub fn records(&self) -> &[T] {
        &self.records
    }

    /// Appends a finished stage's result, synced to disk before it returns.
    pub fn append(&mut self, result: T) -> Result<()> {
        let line = serde_json::to_string(&result).map_err(|e| Error::msg(e.to_string()))? + "\n";
        let mut f = crate::checkpoint::open_append(&self.path)?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::Io(self.path.clone(), e))?;
        self.records.push(result);
        Ok(())
    }

    /// Every result, in the order they finished.
    pub fn into_records(self) -> Vec<T> {
        self.records
    }
}

/// One phase of a [`Phases`] plan: its name and its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The phase's name, unique in its plan.
    pub name: String,
    /// The phase's steps.
    pub steps: u64,
}

/// What entering a phase found ([`Phases::enter`]).
pub enum Entered {
    /// The run resumed from a checkpoint of a later phase: this one is done.
    Done,
    /// The phase starts at its first step.
    Fresh,
    /// The run resumes inside this phase: after its step `local`, from `checkpoint`.
    Resume {
        /// The phase's steps done.
        local: u64,
        /// The checkpoint to restore the phase's state from.
        checkpoint: Checkpoint,
    },
}

/// A run as a plan of named phases, each of a known number of steps, checkpointed inside a
/// phase (deepthin's convolutional run: the teacher, then each arm's stages). The run's step of
/// a phase's step `s` is `s` plus the steps of the phases before it: its metrics and
/// checkpoints are numbered so, and a checkpoint records the phase (`phase`, `phase_name`) and
/// its step in it (`local`), so that a resumed run skips the phases done and continues inside
/// the one it stopped in.
pub struct Phases {
    plan: Vec<Phase>,
    offsets: Vec<u64>,
    resume: Option<(usize, u64, Checkpoint)>,
}

impl Phases {
    /// The plan of the run of `ctx`, resuming from its newest checkpoint that is a position in
    /// this plan and passes `fits` (the caller's own keys; rank 0's checkpoint on every rank);
    /// prepares the metrics log for the run's step there ([`RunContext::begin`]).
    pub fn open(
        ctx: &mut RunContext,
        plan: Vec<Phase>,
        fits: impl Fn(&Checkpoint) -> Result<()>,
    ) -> Result<Phases> {
        let mut offsets = Vec::with_capacity(plan.len());
        let mut g = 0;
        for ph in &plan {
            offsets.push(g);
            g += ph.steps;
        }
        let position = |ck: &Checkpoint| -> Result<(usize, u64)> {
            let phase: usize = ck.get("phase")?;
            let local: u64 = ck.get("local")?;
            ck.get::<String>("phase_name")?;
            if phase >= plan.len() {
                return Err(Error::msg(format!(
                    "phase {phase} is beyond the plan's {} phases",
                    plan.len()
                )));
            }
            Ok((phase, local))
        };
        let resume = match ctx.resume_point(|ck| {
            position(ck)?;
            fits(ck)
        })? {
            Some((_, ck)) => {
                let (phase, local) = position(&ck)?;
                Some((phase, local, ck))
            }
            None => None,
        };
        ctx.begin(
            resume
                .as_ref()
                .map_or(0, |(i, local, _)| offsets[*i] + local),
        )?;
        Ok(Phases {
            plan,
            offsets,
            resume,
        })
    }

    fn index(&self, name: &str) -> usize {
        self.plan
            .iter()
            .position(|p| p.name == name)
            .expect("phases are looked up by the names the plan was built with")
    }

    /// The steps of phase `name`.
    pub fn steps(&self, name: &str) -> u64 {
        self.plan[self.index(name)].steps
    }

    /// The run's step before phase `name`'s first.
    pub fn offset(&self, name: &str) -> u64 {
        self.offsets[self.index(name)]
    }

    /// Enters phase `name` (phases are entered in the plan's order): done, fresh, or the
    /// checkpoint to resume it from (handed out once). An error when the checkpoint's phase at
    /// this position has another name (the plan changed since it was written).
    pub fn enter(&mut self, name: &str) -> Result<Entered> {
        let i = self.index(name);
        match &self.resume {
            None => return Ok(Entered::Fresh),
            Some((p, _, _)) if *p > i => return Ok(Entered::Done),
            Some((p, _, _)) if *p < i => return Ok(Entered::Fresh),
            Some(_) => {}
        }
        let (_, local, checkpoint) = self.resume.take().expect("matched above");
        let got: String = checkpoint.get("phase_name")?;
        if got != name {
            return Err(Error::msg(format!(
                "the checkpoint is of phase `{got}`, the plan has `{name}` there: the plan changed since it was written"
            )));
        }
        Ok(Entered::Resume { local, checkpoint })
    }

    /// Saves `ck` as phase `name`'s checkpoint after its step `local` (at the run's step),
    /// with the phase's position in the plan.
    pub fn save(&self, ctx: &RunContext, name: &str, local: u64, mut ck: Checkpoint) -> Result<()> {
        let i = self.index(name);
        ck.set("phase", i);
        ck.set("phase_name", name);
        ck.set("local", local);
        ctx.checkpoints().save(self.offsets[i] + local, &ck)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_runs_each_stage_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stages.json");
        let mut l: Ledger<f64> = Ledger::read(&path);
        let mut runs = 0;
        for _ in 0..2 {
            let v = *l
                .stage("a", || {
                    runs += 1;
                    Ok(1.5)
                })
                .unwrap();
            assert_eq!(v, 1.5);
        }
        assert_eq!(runs, 1);
        l.record("b", f64::NAN).unwrap();
        let again: Ledger<Option<f64>> = Ledger::read(&path);
        assert_eq!(again.get("a"), Some(&Some(1.5)));
        assert_eq!(again.get("b"), Some(&None), "NaN is null in JSON");
        // A stage that fails records nothing.
        let mut l: Ledger<f64> = Ledger::read(&path);
        assert!(l.stage("c", || Err(Error::msg("no"))).is_err());
        assert!(l.get("c").is_none());
        // A file that is not a ledger is an empty one.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ledger::<f64>::read(&path).into_done().is_empty());
    }

    #[test]
    fn a_keyed_ledger_keeps_only_the_stages_done_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.json");
        let mut l: Ledger<f64> = Ledger::read_for(&path, "weights-a");
        l.record("acc", 0.5).unwrap();
        l.record("pgd", 0.25).unwrap();
        let again: Ledger<f64> = Ledger::read_for(&path, "weights-a");
        assert_eq!(
            (again.get("acc"), again.get("pgd")),
            (Some(&0.5), Some(&0.25))
        );
        // Other weights: nothing is done, and the first record replaces the old stages.
        let mut other: Ledger<f64> = Ledger::read_for(&path, "weights-b");
        assert!(other.get("acc").is_none());
        other.record("acc", 0.75).unwrap();
        let a: Ledger<f64> = Ledger::read_for(&path, "weights-a");
        assert!(a.get("acc").is_none() && a.get("pgd").is_none());
        let b: Ledger<f64> = Ledger::read_for(&path, "weights-b");
        assert_eq!((b.get("acc"), b.get("pgd")), (Some(&0.75), None));
        // A plain ledger's file is not a keyed one.
        let plain = dir.path().join("plain.json");
        Ledger::<f64>::read(&plain).record("acc", 1.0).unwrap();
        assert!(Ledger::<f64>::read_for(&plain, "weights-a")
            .get("acc")
            .is_none());
    }

    #[test]
    fn a_record_runs_its_stage_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source.json");
        let mut r: Record<BTreeMap<String, f64>> = Record::read(&path);
        assert!(r.get().is_none());
        assert!(r.stage(|| Err(Error::msg("no"))).is_err());
        assert!(!path.exists(), "a failed stage writes nothing");
        let mut runs = 0;
        for _ in 0..2 {
            r.stage(|| {
                runs += 1;
                Ok(BTreeMap::from([
                    ("b".to_string(), 2.0),
                    ("a".to_string(), 1.0),
                ]))
            })
            .unwrap();
        }
        assert_eq!(runs, 1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\n  \"a\": 1.0,\n  \"b\": 2.0\n}"
        );
        let again: Record<BTreeMap<String, f64>> = Record::read(&path);
        assert_eq!(again.into_value().unwrap()["b"], 2.0);
        std::fs::write(&path, b"[1, 2]").unwrap();
        assert!(Record::<BTreeMap<String, f64>>::read(&path).get().is_none());
    }

    #[test]
    fn a_journal_drops_a_torn_last_line_and_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("done.jsonl");
        let mut j: Journal<(String, u32)> = Journal::read(&path).unwrap();
        j.append(("a".into(), 1)).unwrap();
        j.append(("b".into(), 2)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"[\"c\", 3").unwrap();
        let mut j: Journal<(String, u32)> = Journal::read(&path).unwrap();
        assert_eq!(j.records().len(), 2);
        j.append(("d".into(), 4)).unwrap();
        let j: Journal<(String, u32)> = Journal::read(&path).unwrap();
        let names: Vec<&str> = j.records().iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
    }
}
