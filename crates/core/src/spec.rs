//! Experiment specs: strict YAML with `extends`, dotted overrides, sweeps and seeds.
//!
//! A spec is a YAML mapping with a common [`Header`] and one paper section whose key is the
//! paper's name (`jem:`, `deepthin:`, ...). Loading goes in four steps:
//!
//! 1. [`SpecTree::load`] reads the file and, recursively, the files it `extends`
//!    (deep merge; the child wins);
//! 2. [`SpecTree::apply_override`] sets `key.sub=value` pairs, each value parsed as YAML;
//! 3. [`SpecTree::expand`] turns `sweep:` and `seeds:` into one [`SpecTree`] per run;
//! 4. [`SpecTree::typed`] deserializes a part of the tree into a config struct whose
//!    `deny_unknown_fields` catches unknown keys.
//!
//! Every error is a [`SpecError`] that names the file, the dotted key path and the line
//! (or the override that caused it).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a spec: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The file the problem is in, when it is in a file.
    pub file: Option<PathBuf>,
    /// The 1-based line in `file`, when it could be found.
    pub line: Option<usize>,
    /// The dotted key path (`jem.sgld.steps`), empty for the whole spec.
    pub path: String,
    /// The override (`key=value`) the problem comes from, if any.
    pub from_override: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl SpecError {
    /// An error at a dotted key path, not yet placed in a file (see [`SpecTree::locate_error`]).
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(path, message)
    }

    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            file: None,
            line: None,
            path: path.into(),
            from_override: None,
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.from_override {
            write!(f, "override `{o}`: ")?;
        } else if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SpecError {}

/// The device a run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 if CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{s}` (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// The tch device this resolves to on this machine; an error if CUDA is asked for and absent.
    pub fn resolve(self) -> Result<tch::Device, String> {
        match self {
            DeviceSpec::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if i < n {
                    Ok(tch::Device::Cuda(i))
                } else if n == 0 {
                    Err(format!(
                        "device cuda:{i} asked for, but CUDA is not available here"
                    ))
                } else {
                    Err(format!(
                        "device cuda:{i} asked for, but only {n} CUDA device(s) exist"
                    ))
                }
            }
        }
    }
}

fn yes() -> bool {
    true
}

/// What an experiment needs at its full size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Requires {
    /// Sized for a CPU (the small-scale experiments): runs anywhere.
    #[default]
    Cpu,
    /// Paper scale: needs a CUDA GPU.
    Gpu,
}

impl Requires {
    /// Why a full (not `--smoke`) run of `name` on `device` must not start, if it must not:
    /// a GPU-scale experiment whose device is not forced to the CPU, on a machine without CUDA.
    pub fn refusal(
        self,
        name: &str,
        device: DeviceSpec,
        cuda: bool,
        expected_minutes: Option<f64>,
    ) -> Option<String> {
        if self != Requires::Gpu || cuda || device == DeviceSpec::Cpu {
            return None;
        }
        let time = expected_minutes.map_or(String::new(), |m| {
            format!(
                " (about {:.0} V100-hours, as the spec derives them)",
                m / 60.0
            )
        });
        Some(format!(
            "`{name}` is a paper-scale experiment that needs a CUDA GPU{time}, and CUDA is not \
             available here; `--smoke` runs its few-iteration check on the CPU, and the override \
             `device=cpu` (or --device cpu) runs all of it on the CPU if you mean to"
        ))
    }
}

/// Which dataset an experiment reads and how it is split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Dataset name (`digits`, `mnist-5k`, `synthetic`, ...) understood by `reprise_core::data`.
    pub dataset: String,
    /// A folder or file for datasets a user provides (IDX, CIFAR binary, ImageFolder).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Sizes of the train / validation / test splits, drawn with the spec's seed.
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Keep class proportions in every split.
    #[serde(default)]
    pub stratified: bool,
    /// Seed of the split, independent of the run's seed so every run sees the same data.
    #[serde(default)]
    pub split_seed: u64,
    /// K-fold cross-validation in place of `split`: the test set is one fold of the dataset,
    /// the training set the other folds (stratified with `stratified`, drawn with `split_seed`).
    #[serde(default)]
    pub cv: Option<CvSpec>,
    /// Size images of an ImageFolder dataset are brought to.
    #[serde(default)]
    pub image_size: Option<crate::data::formats::ImageSize>,
    /// Decode an ImageFolder's images batch by batch instead of loading them all (for datasets
    /// larger than memory; honoured by the paper crates that say so).
    #[serde(default)]
    pub stream: bool,
    /// Threads decoding a streamed batch (a `DataLoader`'s `num_workers`); default: this
    /// node's cores shared among its data-parallel ranks. Changes no number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Training batches prepared ahead of the step (a `DataLoader`'s `prefetch_factor`);
    /// default 2. Changes no number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
}

impl DataSpec {
    /// The decoding threads of one rank of `ranks` on this node: `workers`, or the cores
    /// divided among the ranks (torchrun's `LOCAL_WORLD_SIZE` where set), at least 1.
    pub fn workers_per_rank(&self, ranks: usize) -> usize {
        if let Some(w) = self.workers.filter(|&w| w > 0) {
            return w;
        }
        let local = std::env::var("LOCAL_WORLD_SIZE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&l| l > 0)
            .unwrap_or(ranks.max(1));
        (std::thread::available_parallelism().map_or(1, |n| n.get()) / local).max(1)
    }

    /// The training batches made ahead of the step: `prefetch`, default 2 (at least 1).
    pub fn prefetch_depth(&self) -> usize {
        self.prefetch.unwrap_or(2).max(1)
    }
}

/// Sizes of the splits of a dataset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Training examples.
    pub train: usize,
    /// Validation examples.
    #[serde(default)]
    pub val: usize,
    /// Test examples.
    pub test: usize,
}

/// K-fold cross-validation: which fold of how many is the test set.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CvSpec {
    /// Number of folds (at least 2).
    pub folds: usize,
    /// The test fold, `0..folds`. Absent, the run's seed names it (seed k tests fold k), so a
    /// spec with `seeds: [0, 1, …, folds − 1]` runs the whole cross-validation; [`SpecTree::header`]
    /// fills it in.
    #[serde(default)]
    pub fold: Option<usize>,
}

/// The most folds a cross-validation may have.
pub const MAX_FOLDS: usize = 1000;

impl SplitSpec {
    /// Train + validation + test examples (the sizes are bounded by [`MAX_SPLIT`] when the
    /// header is checked, so the sum cannot overflow).
    pub fn total(&self) -> usize {
        self.train + self.val + self.test
    }
}

/// The most examples one part of a split may ask for.
pub const MAX_SPLIT: usize = 1 << 32;

/// What `--smoke` runs: a few iterations, and overrides that shrink the experiment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SmokeSpec {
    /// Training iterations of a smoke run.
    #[serde(default)]
    pub iterations: Option<u64>,
    /// Dotted overrides applied in a smoke run (`{ "jem.model.width": 4 }`).
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

/// The common header of every spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Experiment name; the run folder is `runs/<name>/...`.
    pub name: String,
    /// The paper crate that runs it (`jem`, `robust-transfer`, `deepthin`, `tsit`).
    pub paper: String,
    /// One line on what it reproduces.
    pub description: String,
    /// Expected wall time in minutes on the machine the spec targets: the 2-core CPU for the
    /// small-scale specs, one V100 for the paper-scale ones (each derives its figure in a comment
    /// from a cited measurement).
    #[serde(default)]
    pub expected_minutes: Option<f64>,
    /// Seed of the run.
    #[serde(default)]
    pub seed: u64,
    /// Device.
    #[serde(default)]
    pub device: DeviceSpec,
    /// What the experiment needs to run at its full size: `gpu` for the paper-scale specs,
    /// which the runner then refuses to start on a machine without CUDA unless the device is
    /// forced (`device=cpu`); `--smoke` runs are exempt.
    #[serde(default)]
    pub requires: Requires,
    /// Data.
    pub data: DataSpec,
    /// The `--smoke` budget.
    #[serde(default)]
    pub smoke: SmokeSpec,
    /// Write TensorBoard event files (`tensorboard/` in each run folder: the logged metrics
    /// and, at the end, the figures); `tensorboard=false` turns them off.
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// A grid over dotted keys; each point is one run.
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<Value>>,
    /// Seeds; each is one run of every sweep point.
    #[serde(default)]
    pub seeds: Vec<u64>,
}

/// One YAML source a tree came from, kept to find lines for errors.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    text: String,
}

/// A spec as a YAML tree, with the files it came from and the overrides applied to it.
#[derive(Debug, Clone)]
pub struct SpecTree {
    value: Value,
    sources: std::sync::Arc<Vec<Source>>,
    overrides: Vec<(String, String)>,
    /// The tree as the files gave it, before the first override (for examples in errors).
    before_overrides: Option<std::sync::Arc<Value>>,
}

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Deep merge: mappings merge key by key, anything else in `child` replaces `base`.
pub fn merge(base: &mut Value, child: Value) {
    match (base, child) {
        (Value::Mapping(b), Value::Mapping(c)) => {
            for (k, v) in c {
                match b.get_mut(&k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, c) => *b = c,
    }
}

/// The most bytes a spec file may have.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// The most values (scalars, lists and mappings) a spec may hold once its YAML aliases are
/// expanded: an anchored list aliased N times would otherwise cost N² values.
pub const MAX_SPEC_VALUES: usize = 20_000;

/// The most values all the runs of a spec may hold together (runs × values per run).
pub const MAX_EXPANDED_VALUES: usize = 10_000_000;

/// Counts the values of YAML text as a deserializer walks it, aliases expanded, without
/// building them; stops with an error past the budget.
struct CountValues<'a>(&'a std::cell::Cell<usize>);

impl<'de> serde::de::DeserializeSeed<'de> for CountValues<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountValues<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(CountValues(self.0), d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        self.tick()?;
        while a.next_element_seed(CountValues(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        self.tick()?;
        while a.next_key_seed(CountValues(self.0))?.is_some() {
            a.next_value_seed(CountValues(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.tick()?;
        let ((), v) = a.variant_seed(CountValues(self.0))?;
        v.newtype_variant_seed(CountValues(self.0))
    }
}

impl CountValues<'_> {
    fn tick<E: serde::de::Error>(&self) -> Result<(), E> {
        self.0.set(self.0.get() + 1);
        if self.0.get() > MAX_SPEC_VALUES {
            return Err(E::custom(format!(
                "more than {MAX_SPEC_VALUES} values once its aliases are expanded"
            )));
        }
        Ok(())
    }
}

/// Parses YAML text into a value, refusing text whose aliases expand beyond
/// [`MAX_SPEC_VALUES`] values before any is built.
fn bounded_yaml(text: &str) -> Result<Value, serde_norway::Error> {
    use serde::de::DeserializeSeed;
    if let Some(line) = too_deep(text) {
        return Err(<serde_norway::Error as serde::de::Error>::custom(format!(
            "brackets nested more than {MAX_FLOW_DEPTH} deep (line {line}); a spec needs a few"
        )));
    }
    let n = std::cell::Cell::new(0);
    if let Some(doc) = serde_norway::Deserializer::from_str(text).next() {
        CountValues(&n).deserialize(doc)?;
    }
    serde_norway::from_str(text)
}

/// The deepest nesting of flow collections (`[`, `{`) a spec may have. The YAML scanner's time
/// grows with the square of the nesting, so deeper text is refused before it is parsed.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The line at which `text` nests `[` and `{` more than [`MAX_FLOW_DEPTH`] deep, if it does:
/// one pass over the text, passing over quoted strings and comments (a bracket inside a plain
/// scalar counts, which can only make a pathological spec fail sooner).
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut prev = '\n';
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            comment = false;
        }
        if comment {
            prev = c;
            continue;
        }
        if let Some(q) = quote {
            if c == '\\' && q == '"' {
                chars.next();
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' | '\'' if matches!(prev, ' ' | '\t' | '\n' | '[' | '{' | ',' | ':') => {
                    quote = Some(c)
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(line);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    None
}

/// The dotted path of the first number in the tree that is infinite or NaN (`1e400` reads as
/// infinity), which the typed configs would otherwise report as a string of the wrong type.
fn non_finite(v: &Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Number(n) => (n.as_i64().is_none()
            && n.as_u64().is_none()
            && !n.as_f64().is_some_and(f64::is_finite))
        .then(|| path.to_string()),
        Value::Sequence(xs) => xs
            .iter()
            .enumerate()
            .find_map(|(i, x)| non_finite(x, &join(&i.to_string()))),
        Value::Mapping(m) => m
            .iter()
            .find_map(|(k, x)| non_finite(x, &join(&scalar_text(k)))),
        Value::Tagged(t) => non_finite(&t.value, path),
        _ => None,
    }
}

/// For serde's `invalid type: string "1e400", expected f64`: YAML reads a number beyond the
/// range of a 64-bit float as a string; say what it is.
fn beyond_f64(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("invalid type: string \"")?;
    let (text, _) = rest.split_once("\", expected ")?;
    let v: f64 = text.trim().parse().ok()?;
    (!v.is_finite())
        .then(|| format!("{text} is not a finite number (beyond the range of a 64-bit float)"))
}

/// How many values a tree holds.
fn count_values(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(xs) => xs.iter().map(count_values).sum(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| count_values(k) + count_values(v))
            .sum(),
        Value::Tagged(t) => count_values(&t.value),
        _ => 0,
    }
}

fn parse_yaml(file: &Path, text: &str) -> Result<Value, SpecError> {
    if text.starts_with('\u{feff}') {
        return Err(SpecError::new(
            "",
            "the file starts with a UTF-8 byte-order mark: save it without one",
        )
        .in_file(file));
    }
    let value: Value = bounded_yaml(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let mut msg = e.to_string();
        // serde_norway appends " at line L column C"; the line is printed in front already.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        SpecError {
            line,
            ..SpecError::new("", format!("invalid YAML: {msg}")).in_file(file)
        }
    })?;
    match value {
        Value::Mapping(_) => Ok(value),
        Value::Null => Err(SpecError::new("", "the spec is empty").in_file(file)),
        _ => {
            Err(SpecError::new("", "a spec must be a YAML mapping of keys to values").in_file(file))
        }
    }
}

impl SpecTree {
    /// Reads a spec file and the files it `extends`, merged.
    pub fn load(file: &Path) -> Result<SpecTree, SpecError> {
        let mut chain = Vec::new();
        Self::load_chain(file, &mut chain)
    }

    fn load_chain(file: &Path, chain: &mut Vec<PathBuf>) -> Result<SpecTree, SpecError> {
        let canonical = file
            .canonicalize()
            .map_err(|e| SpecError::new("", format!("cannot read the spec: {e}")).in_file(file))?;
        if chain.contains(&canonical) {
            return Err(SpecError::new("extends", "`extends` forms a cycle").in_file(file));
        }
        chain.push(canonical);
        let bytes = crate::checkpoint::read_bounded(file, MAX_SPEC_BYTES).map_err(|e| {
            let why = match e {
                crate::Error::Corrupt(_, why) => why,
                crate::Error::Io(_, e) => e.to_string(),
                other => other.to_string(),
            };
            SpecError::new("", format!("cannot read the spec: {why}")).in_file(file)
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            SpecError::new("", "cannot read the spec: it is not UTF-8 text").in_file(file)
        })?;
        let mut value = parse_yaml(file, &text)?;
        let me = Source {
            file: file.to_path_buf(),
            text,
        };
        let extends = value
            .as_mapping_mut()
            .and_then(|m| m.remove(key("extends")));
        let Some(extends) = extends else {
            return Ok(SpecTree {
                value,
                sources: std::sync::Arc::new(vec![me]),
                overrides: vec![],
                before_overrides: None,
            });
        };
        let Value::String(base) = extends else {
            let line = locate(&me.text, &["extends".to_string()]);
            return Err(SpecError {
                line,
                ..SpecError::new("extends", "expected a file name").in_file(file)
            });
        };
        let base_path = file.parent().unwrap_or(Path::new(".")).join(&base);
        let mut tree = Self::load_chain(&base_path, chain).map_err(|e| {
            if e.file.as_deref() == Some(base_path.as_path()) && e.line.is_none() {
                SpecError {
                    line: locate(&me.text, &["extends".to_string()]),
                    ..SpecError::new("extends", e.message).in_file(file)
                }
            } else {
                e
            }
        })?;
        merge(&mut tree.value, value);
        std::sync::Arc::make_mut(&mut tree.sources).insert(0, me);
        Ok(tree)
    }

    /// A tree from YAML text (for tests and for specs built in code).
    pub fn from_str(name: &str, text: &str) -> Result<SpecTree, SpecError> {
        let file = PathBuf::from(name);
        let value = parse_yaml(&file, text)?;
        Ok(SpecTree {
            value,
            sources: std::sync::Arc::new(vec![Source {
                file,
                text: text.to_string(),
            }]),
            overrides: vec![],
            before_overrides: None,
        })
    }

    /// The whole tree.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The file the spec was read from.
    pub fn file(&self) -> Option<&Path> {
        self.sources.first().map(|s| s.file.as_path())
    }

    /// Applies a `key.sub=value` override; the value is parsed as YAML.
    pub fn apply_override(&mut self, arg: &str) -> Result<(), SpecError> {
        let (k, v) = arg.split_once('=').ok_or_else(|| SpecError {
            from_override: Some(arg.to_string()),
            ..SpecError::new("", "expected key=value (e.g. jem.optim.lr=0.001)")
        })?;
        let k = k.trim();
        if self.before_overrides.is_none() {
            self.before_overrides = Some(std::sync::Arc::new(self.value.clone()));
        }
        let parsed: Value = if v.trim().is_empty() {
            Value::Null
        } else {
            bounded_yaml(v).map_err(|e| SpecError {
                from_override: Some(arg.to_string()),
                ..SpecError::new(k, format!("the value is not valid YAML: {e}"))
            })?
        };
        self.set(k, parsed).map_err(|mut e| {
            e.from_override = Some(arg.to_string());
            e
        })?;
        self.overrides.push((k.to_string(), arg.to_string()));
        Ok(())
    }

    /// Applies a command-line sweep `key.sub=a,b,c` (or `key.sub=[a, b, c]`, for values that
    /// hold commas): the run is repeated for each value, as a `sweep:` entry in the spec
    /// would (and replacing one for the same key).
    pub fn apply_sweep(&mut self, arg: &str) -> Result<(), SpecError> {
        let fail = |path: &str, msg: String| SpecError {
            from_override: Some(format!("--sweep {arg}")),
            ..SpecError::new(path, msg)
        };
        let (k, v) = arg.split_once('=').ok_or_else(|| {
            fail(
                "sweep",
                "expected key=a,b (e.g. --sweep jem.arm=jem,base)".into(),
            )
        })?;
        let k = k.trim();
        if k.is_empty() || k.split('.').any(str::is_empty) || k == "seed" {
            return Err(fail(
                "sweep",
                format!("`{k}` is not a key to sweep (seeds are swept with `seeds=[0, 1, 2]`)"),
            ));
        }
        let values: Vec<Value> = if v.trim_start().starts_with('[') {
            match bounded_yaml(v) {
                Ok(Value::Sequence(s)) => s,
                Ok(_) => return Err(fail(k, "expected a list `[a, b]`".into())),
                Err(e) => return Err(fail(k, format!("the values are not valid YAML: {e}"))),
            }
        } else {
            v.split(',')
                .map(|x| {
                    bounded_yaml(x.trim())
                        .map_err(|e| fail(k, format!("`{x}` is not valid YAML: {e}")))
                })
                .collect::<Result<_, _>>()?
        };
        if values.is_empty() || values.iter().any(Value::is_null) {
            return Err(fail(
                k,
                "expected one or more values, none of them empty".into(),
            ));
        }
        let root = self
            .value
            .as_mapping_mut()
            .ok_or_else(|| fail("", "the spec is not a mapping".into()))?;
        let sweep = root
            .entry(key("sweep"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if sweep.is_null() {
            *sweep = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = sweep else {
            return Err(fail("sweep", "is not a mapping of keys to lists".into()));
        };
        m.insert(key(k), Value::Sequence(values));
        self.overrides
            .push((format!("sweep.{k}"), format!("--sweep {arg}")));
        Ok(())
    }

    /// Sets the value at a dotted path, creating mappings on the way; a number indexes an
    /// existing sequence (`transfer.targets.0.data`).
    pub fn set(&mut self, dotted: &str, v: Value) -> Result<(), SpecError> {
        let parts: Vec<&str> = dotted.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(SpecError::new(dotted, "empty key in a dotted path"));
        }
        if parts[0] == "extends" {
            return Err(SpecError::new(dotted, "`extends` cannot be overridden"));
        }
        let mut cur = &mut self.value;
        for (i, p) in parts.iter().enumerate() {
            let here = parts[..i].join(".");
            if let Value::Sequence(seq) = cur {
                let len = seq.len();
                let slot = p
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| seq.get_mut(n))
                    .ok_or_else(|| {
                        SpecError::new(
                            here.clone(),
                            format!("is a list of {len}; `{p}` is not an index into it"),
                        )
                    })?;
                if i + 1 == parts.len() {
                    *slot = v;
                    return Ok(());
                }
                cur = slot;
                continue;
            }
            let map = match cur {
                Value::Mapping(m) => m,
                Value::Null => {
                    *cur = Value::Mapping(Mapping::new());
                    cur.as_mapping_mut().expect("just made a mapping")
                }
                _ => {
                    return Err(SpecError::new(
                        here,
                        format!("is not a mapping, so it has no key `{p}`"),
                    ))
                }
            };
            if i + 1 == parts.len() {
                map.insert(key(p), v);
                return Ok(());
            }
            cur = map.entry(key(p)).or_insert(Value::Null);
        }
        unreachable!("the loop returns at the last part")
    }

    /// The value at a dotted path.
    pub fn get(&self, dotted: &str) -> Option<&Value> {
        dotted.split('.').try_fold(&self.value, |cur, p| match cur {
            Value::Sequence(s) => s.get(p.parse::<usize>().ok()?),
            _ => cur.as_mapping()?.get(key(p)),
        })
    }

    /// Removes the value at a top-level key.
    fn remove_top(&mut self, k: &str) -> Option<Value> {
        self.value.as_mapping_mut()?.remove(key(k))
    }

    /// Deserializes the part of the tree at `dotted` (the whole tree if empty) into `T`,
    /// with errors that point at the file and line, or at the override, responsible.
    pub fn typed<T: DeserializeOwned>(&self, dotted: &str) -> Result<T, SpecError> {
        let part = if dotted.is_empty() {
            self.value.clone()
        } else {
            self.get(dotted)
                .cloned()
                .ok_or_else(|| self.locate_error(SpecError::new(dotted, "missing section")))?
        };
        serde_path_to_error::deserialize(to_json(&part)).map_err(|e| {
            let inner = e.path().to_string();
            let path = match (dotted.is_empty(), inner.as_str()) {
                (_, ".") => dotted.to_string(),
                (true, p) => p.to_string(),
                (false, p) => format!("{dotted}.{p}"),
            };
            let msg = e.into_inner().to_string();
            let msg = match msg.find(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            let msg = beyond_f64(&msg).unwrap_or_else(|| self.shape_hint(&path, msg));
            self.locate_error(SpecError::new(path, msg))
        })
    }

    /// Says in YAML words what serde calls `expected struct ImageSize` or `expected string or
    /// map`, with the value the spec itself gives at `path` (before any override) as an
    /// example of the shape.
    fn shape_hint(&self, path: &str, msg: String) -> String {
        let Some((head, expected)) = msg.split_once(", expected ") else {
            return msg;
        };
        let shape = if expected.starts_with("struct ") || expected == "a map" {
            "a mapping of keys to values (`{ key: value, ... }`)"
        } else if expected == "string or map" {
            "a name, or a mapping of one name to its settings (`{ name: ... }`)"
        } else if expected == "a sequence" || expected.starts_with("tuple") {
            "a list (`[a, b, ...]`)"
        } else {
            return msg;
        };
        let example = self
            .before_overrides
            .as_deref()
            .unwrap_or(&self.value)
            .clone();
        let example = path
            .split('.')
            .filter(|p| !p.is_empty())
            .try_fold(&example, |cur, p| match cur {
                Value::Sequence(s) => s.get(p.parse::<usize>().ok()?),
                _ => cur.as_mapping()?.get(key(p)),
            })
            .filter(|v| matches!(v, Value::Mapping(_) | Value::Sequence(_)))
            .map(|v| format!("; the spec has `{}`", flow_yaml(v)))
            .unwrap_or_default();
        format!("{head}, expected {shape}{example}")
    }

    /// The header of the spec, checked (the paper section and sweep keys are left to others).
    pub fn header(&self) -> Result<Header, SpecError> {
        if let Some(path) = non_finite(&self.value, "") {
            return Err(self.locate_error(SpecError::new(
                path,
                "is not a finite number (beyond the range of a 64-bit float, or .inf/.nan)",
            )));
        }
        let mut head = self.clone();
        let paper = head
            .get("paper")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if let Some(p) = paper {
            if p.is_empty() || p.contains('.') || head.remove_top(&p).is_none() {
                return Err(self.locate_error(SpecError::new(
                    "paper",
                    format!("the spec has no `{p}:` section for its paper"),
                )));
            }
        }
        let mut header: Header = head.typed("")?;
        if let Some(s) = header.data.split {
            if s.test == 0 && !crate::data::has_own_test_set(&header.data.dataset) {
                return Err(self.locate_error(SpecError::new(
                    "data.split.test",
                    "must be at least 1: the test set would be empty",
                )));
            }
            for (k, v) in [("train", s.train), ("val", s.val), ("test", s.test)] {
                if v > MAX_SPLIT {
                    return Err(self.locate_error(SpecError::new(
                        format!("data.split.{k}"),
                        format!("{v} examples: more than the {MAX_SPLIT} a split may have"),
                    )));
                }
            }
        }
        if let Err(why) = check_name(&header.name) {
            return Err(self.locate_error(SpecError::new("name", why)));
        }
        if let Err(why) = run_count(&header) {
            return Err(self.locate_error(SpecError::new("sweep", why)));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = header.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(self.locate_error(SpecError::new(
                "seeds",
                format!("seed {dup} is listed twice (each seed is one run)"),
            )));
        }
        if let Some(cv) = header.data.cv.as_mut() {
            if header.data.split.is_some() {
                return Err(self.locate_error(SpecError::new(
                    "data.cv",
                    "give either `data.split` (sizes) or `data.cv` (folds), not both",
                )));
            }
            if !(2..=MAX_FOLDS).contains(&cv.folds) {
                return Err(self.locate_error(SpecError::new(
                    "data.cv.folds",
                    format!("must be between 2 and {MAX_FOLDS}"),
                )));
            }
            match cv.fold {
                Some(f) if f >= cv.folds => {
                    return Err(self.locate_error(SpecError::new(
                        "data.cv.fold",
                        format!("must be below data.cv.folds ({})", cv.folds),
                    )))
                }
                Some(f) if header.seeds.len() > 1 => {
                    return Err(self.locate_error(SpecError::new(
                        "data.cv.fold",
                        format!(
                            "fixes the test fold to {f}, so the {} seeds would all test the same fold and their \
                             predictions could not be pooled into a cross-validation: leave `data.cv.fold` out \
                             (seed k then tests fold k) or give one seed",
                            header.seeds.len()
                        ),
                    )))
                }
                Some(_) => {}
                None if header.seeds.len() > 1 && header.sweep.contains_key("data.cv.fold") => {
                    return Err(self.locate_error(SpecError::new(
                        "sweep.data.cv.fold",
                        format!(
                            "a sweep over the test fold with {} seeds tests each fold once per seed, and \
                             their predictions could not be pooled: sweep the folds with one seed, or leave \
                             `data.cv.fold` out (seed k then tests fold k)",
                            header.seeds.len()
                        ),
                    )))
                }
                None => {
                    // Seed k tests fold k: every seed the spec runs must name a fold.
                    let (path, seeds) = if header.seeds.is_empty() {
                        ("seed", vec![header.seed])
                    } else {
                        ("seeds", header.seeds.clone())
                    };
                    if let Some(bad) = seeds.iter().find(|&&s| s >= cv.folds as u64) {
                        return Err(self.locate_error(SpecError::new(
                            path,
                            format!(
                                "seed {bad} names no fold: without `data.cv.fold`, seed k tests fold k, \
                                 so seeds must be below data.cv.folds ({})",
                                cv.folds
                            ),
                        )));
                    }
                    cv.fold = Some(header.seed as usize);
                }
            }
        }
        for (k, vals) in &header.sweep {
            if vals.is_empty() {
                return Err(self.locate_error(SpecError::new(
                    format!("sweep.{k}"),
                    "a sweep key needs at least one value",
                )));
            }
            if k == "seed" || k.starts_with("sweep") || k.starts_with("seeds") {
                return Err(self.locate_error(SpecError::new(
                    format!("sweep.{k}"),
                    "use `seeds:` for seeds; sweep keys name config values",
                )));
            }
        }
        Ok(header)
    }

    /// `Ok` when `ok`, else the error `message` at the dotted `path`, placed in the file.
    pub fn require(&self, path: &str, ok: bool, message: &str) -> Result<(), SpecError> {
        if ok {
            Ok(())
        } else {
            Err(self.locate_error(SpecError::at(path, message)))
        }
    }

    /// `Ok` when every `(path, value, lo, hi)` has `lo <= value <= hi`, else the error at the
    /// first path that does not. The bounds a paper puts on its sizes keep what a spec can make
    /// it allocate (a width, a batch, a depth) within what a machine can hold.
    pub fn require_ranges<P: AsRef<str>>(
        &self,
        checks: &[(P, i128, i128, i128)],
    ) -> Result<(), SpecError> {
        for (path, v, lo, hi) in checks {
            let (path, v, lo, hi) = (path.as_ref(), *v, *lo, *hi);
            if v < lo || v > hi {
                let msg = if hi == i128::MAX {
                    format!("is {v}: must be at least {lo}")
                } else {
                    format!("is {v}: must be between {lo} and {hi}")
                };
                return Err(self.locate_error(SpecError::at(path, msg)));
            }
        }
        Ok(())
    }

    /// Adds the file and line (or the override) to an error about a dotted path.
    pub fn locate_error(&self, mut e: SpecError) -> SpecError {
        if let Some((_, arg)) = self.overrides.iter().rev().find(|(k, _)| {
            // A command-line sweep (`sweep.jem.width`) sets the values of `jem.width`.
            path_overlaps(k, &e.path)
                || k.strip_prefix("sweep.")
                    .is_some_and(|swept| path_overlaps(swept, &e.path))
        }) {
            e.from_override = Some(arg.clone());
            return e;
        }
        let parts: Vec<String> = if e.path.is_empty() {
            vec![]
        } else {
            e.path.split('.').map(str::to_string).collect()
        };
        // An error at a key no override touched can still come from an override (a smaller
        // split making the batch too large): say which ones were applied.
        if !self.overrides.is_empty() {
            let applied: Vec<&str> = self.overrides.iter().map(|(_, a)| a.as_str()).collect();
            e.message = format!(
                "{} (after the override(s) `{}`)",
                e.message,
                applied.join("`, `")
            );
        }
        // The deepest prefix of the path found in any source, child first.
        for n in (1..=parts.len()).rev() {
            for s in self.sources.iter() {
                if let Some(line) = locate(&s.text, &parts[..n]) {
                    e.file = Some(s.file.clone());
                    e.line = Some(line);
                    return e;
                }
            }
        }
        e.file = self.file().map(Path::to_path_buf);
        e
    }

    /// Expands `sweep:` and `seeds:` into one tree per run, each with a folder-safe name.
    ///
    /// Without either the result is the tree itself, unnamed. The returned trees hold no
    /// `sweep` or `seeds` key and have `seed` set, so each replays exactly one run.
    ///
    /// An override of a swept key (`jem.arm=jem`), or of `seed` when `seeds` is given,
    /// narrows that dimension of the sweep to the overriding value, which must be one of the
    /// listed ones (a sweep over other values is `--sweep key=a,b`, see
    /// [`SpecTree::apply_sweep`]).
    pub fn expand(&self) -> Result<Vec<(String, SpecTree)>, SpecError> {
        let header = self.narrowed_header()?;
        self.expand_header(&header)
    }

    /// The tree with the narrowing of [`SpecTree::expand`] written into its `sweep:` and
    /// `seeds:` (a swept key overridden to one value is swept over that value alone), so that
    /// the text a sweep folder keeps (`sweep.yaml`) expands to exactly the runs it was started
    /// with, not to the whole sweep of the spec file.
    pub fn narrowed(&self) -> Result<SpecTree, SpecError> {
        let header = self.narrowed_header()?;
        let mut t = self.clone();
        if let Some(root) = t.value.as_mapping_mut() {
            if let Some(Value::Mapping(m)) = root.get_mut(key("sweep")) {
                for (k, vals) in &header.sweep {
                    m.insert(key(k), Value::Sequence(vals.clone()));
                }
            }
            if root.contains_key(key("seeds")) {
                let seeds = header.seeds.iter().map(|&s| Value::Number(s.into()));
                root.insert(key("seeds"), Value::Sequence(seeds.collect()));
            }
        }
        Ok(t)
    }

    /// The header with each swept dimension (and `seeds`) an override pins narrowed to it.
    fn narrowed_header(&self) -> Result<Header, SpecError> {
        let mut header = self.header()?;
        for (k, arg) in &self.overrides {
            let narrowed = |listed: &[Value]| -> Result<Value, SpecError> {
                let v = self.get(k).cloned().unwrap_or(Value::Null);
                if listed.iter().any(|x| same_value(x, &v)) {
                    return Ok(v);
                }
                let listed: Vec<String> = listed.iter().map(scalar_text).collect();
                Err(SpecError {
                    from_override: Some(arg.clone()),
                    ..SpecError::new(
                        k.as_str(),
                        format!(
                            "the sweep runs it over [{}]; `{}` is not one of them (an override \
                             of a swept key picks one of its values; to sweep others give \
                             `--sweep {k}=a,b`)",
                            listed.join(", "),
                            scalar_text(&v)
                        ),
                    )
                })
            };
            if let Some(vals) = header.sweep.get(k) {
                let v = narrowed(vals)?;
                header.sweep.insert(k.clone(), vec![v]);
            } else if k == "seed" && !header.seeds.is_empty() {
                let listed: Vec<Value> = header
                    .seeds
                    .iter()
                    .map(|&s| Value::Number(s.into()))
                    .collect();
                narrowed(&listed)?;
                header.seeds = vec![header.seed];
            }
        }
        Ok(header)
    }

    /// [`SpecTree::expand`] over the (narrowed) sweep and seeds of `header`.
    fn expand_header(&self, header: &Header) -> Result<Vec<(String, SpecTree)>, SpecError> {
        let mut base = self.clone();
        base.remove_top("sweep");
        base.remove_top("seeds");
        if header.sweep.is_empty() && header.seeds.is_empty() {
            return Ok(vec![(String::new(), base)]);
        }
        let seeds = if header.seeds.is_empty() {
            vec![header.seed]
        } else {
            header.seeds.clone()
        };
        // Cartesian product over the sweep keys in order.
        let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
        for (k, vals) in &header.sweep {
            let mut next = Vec::new();
            for p in &points {
                for v in vals {
                    let mut q = p.clone();
                    q.push((k.clone(), v.clone()));
                    next.push(q);
                }
            }
            points = next;
        }
        let per_run = count_values(&base.value);
        if per_run.saturating_mul(points.len() * seeds.len()) > MAX_EXPANDED_VALUES {
            return Err(self.locate_error(SpecError::new(
                "sweep",
                format!(
                    "{} runs of {per_run} values each are more than the {MAX_EXPANDED_VALUES} values one sweep may hold",
                    points.len() * seeds.len()
                ),
            )));
        }
        let mut out: Vec<(String, SpecTree)> = Vec::new();
        let mut folders: BTreeMap<String, String> = BTreeMap::new();
        for p in &points {
            for &seed in &seeds {
                let mut t = base.clone();
                let mut name_parts = Vec::new();
                for (k, v) in p {
                    t.set(k, v.clone()).map_err(|e| {
                        self.locate_error(SpecError::new(format!("sweep.{k}"), e.message))
                    })?;
                    let short = k.rsplit('.').next().unwrap_or(k);
                    name_parts.push(format!("{short}={}", scalar_text(v)));
                }
                t.set("seed", Value::Number(seed.into()))?;
                name_parts.push(format!("seed={seed}"));
                let joined = name_parts.join(",");
                let folder = sanitize(&joined);
                if let Some(other) = folders.insert(folder.clone(), joined.clone()) {
                    return Err(self.locate_error(SpecError::new(
                        "sweep",
                        format!(
                            "the runs `{other}` and `{joined}` would share the folder `{folder}`: \
                             give sweep values that differ in letters, digits or `=,._-+`"
                        ),
                    )));
                }
                out.push((folder, t));
            }
        }
        Ok(out)
    }

    /// The tree as YAML text (the resolved spec written into a run folder).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.value).expect("a YAML value always serializes")
    }
}

/// Converts YAML to JSON for typed deserialization: enums then read in their map form
/// (`act: { leaky_relu: 0.2 }`) as well as YAML tags (`act: !leaky_relu 0.2`).
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| J::String(n.to_string()), J::Number)
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::Sequence(xs) => J::Array(xs.iter().map(to_json).collect()),
        Value::Mapping(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => s.clone(),
                        other => scalar_text(other),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
        Value::Tagged(t) => {
            let tag = t.tag.to_string();
            let mut m = serde_json::Map::new();
            m.insert(tag.trim_start_matches('!').to_string(), to_json(&t.value));
            J::Object(m)
        }
    }
}

fn path_overlaps(override_key: &str, path: &str) -> bool {
    let starts = |a: &str, b: &str| {
        a == b || a.starts_with(&format!("{b}.")) || a.starts_with(&format!("{b}["))
    };
    !path.is_empty() && (starts(path, override_key) || starts(override_key, path))
}

/// A scalar as the text a folder name or a message shows it with (`0.1`, `jem`, `true`).
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// A YAML value on one line, in flow style (`{resize: 256, crop: 224}`).
fn flow_yaml(v: &Value) -> String {
    match v {
        Value::Mapping(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", scalar_text(k), flow_yaml(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Sequence(s) => {
            let items: Vec<String> = s.iter().map(flow_yaml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Tagged(t) => format!("!{} {}", t.tag, flow_yaml(&t.value)),
        other => scalar_text(other),
    }
}

/// Whether two YAML values are the same sweep value (numbers compared as numbers, so that an
/// override `lr=1e-3` picks the listed `0.001`).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The most runs one spec may expand to (sweep points × seeds).
pub const MAX_RUNS: usize = 10_000;

/// The longest experiment name (it names a folder).
pub const MAX_NAME_LEN: usize = 128;

/// An experiment name names the folder `<out>/<name>`: it must be one plain folder name, so a
/// run cannot be written outside `--out` (no separators, `..`, absolute paths or NUL).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the experiment name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains(['/', '\\', '\0']) || name.contains("..") || name.starts_with('.') {
        return Err(format!(
            "`{}` is not a plain folder name: no `/`, `\\`, `..`, NUL or leading `.`",
            name.escape_default()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(())
}

/// How many runs a header's sweep and seeds expand to, counted without overflow; an error
/// beyond [`MAX_RUNS`].
pub fn run_count(h: &Header) -> Result<usize, String> {
    let seeds = h.seeds.len().max(1);
    let mut sizes: Vec<String> = Vec::new();
    let mut n = Some(seeds);
    for (k, v) in &h.sweep {
        n = n.and_then(|n| n.checked_mul(v.len()));
        sizes.push(format!("{} ({k})", v.len()));
    }
    match n {
        Some(n) if n <= MAX_RUNS => Ok(n),
        _ => {
            sizes.push(format!("{seeds} (seeds)"));
            Err(format!(
                "expands to {} runs ({}), more than the {MAX_RUNS} one spec may have",
                n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                sizes.join(" × ")
            ))
        }
    }
}

/// Replaces characters that do not belong in a folder name.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=,._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Finds the 1-based line of a dotted key path in block-style YAML text.
///
/// Walks the keys in order, each at a deeper indentation than its parent; numeric
/// segments (sequence indices) are skipped. Returns `None` when a key is not found.
pub fn locate(text: &str, path: &[String]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for seg in path {
        if seg.parse::<usize>().is_ok() {
            continue;
        }
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let body = l.trim_start_matches([' ', '-']);
            let indent = l.len() - body.len();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            if let Some(pi) = parent_indent {
                if indent <= pi && i > start {
                    break;
                }
            }
            // `seg:` as a block key, or `seg:` inside a flow mapping on this line.
            let key_here = body.starts_with(&format!("{seg}:"))
                || body.starts_with(&format!("\"{seg}\":"))
                || body.contains(&format!("{{ {seg}:"))
                || body.contains(&format!(", {seg}:"))
                || body.contains(&format!("{{{seg}:"));
            if key_here {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some(i + 1);
        start = i;
        parent_indent = Some(indent);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_brackets_are_refused_at_once_whatever_the_size() {
        for n in [MAX_FLOW_DEPTH + 1, 200_000, (MAX_SPEC_BYTES as usize) - 10] {
            let text = format!("name: x\nv: {}", "[".repeat(n));
            let t = std::time::Instant::now();
            let e = SpecTree::from_str("deep.yaml", &text).unwrap_err();
            assert!(e.message.contains("nested more than 64"), "{e}");
            assert!(t.elapsed().as_secs_f64() < 2.0, "{n}: {:?}", t.elapsed());
        }
        // Nesting within the bound, brackets in quoted strings and comments: parsed.
        let ok = format!(
            "name: x\nv: {}{}\ns: \"{}\"\nq: '[[[[' # {}\n",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH),
            "[".repeat(100),
            "{".repeat(100)
        );
        SpecTree::from_str("ok.yaml", &ok).unwrap();
        let mut t = SpecTree::from_str("ok.yaml", "name: x\n").unwrap();
        let deep = format!("v={}", "[".repeat(100_000));
        assert!(t.apply_override(&deep).is_err());
    }

    const BASE: &str = "name: demo
paper: jem
description: a demo
seed: 3
data:
  dataset: digits
  split: { train: 100, test: 50 }
jem:
  width: 8
  optim:
    lr: 0.1
";

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Optim {
        lr: f64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Jem {
        width: u32,
        optim: Optim,
    }

    #[test]
    fn a_gpu_scale_spec_is_refused_without_cuda_unless_forced_to_the_cpu() {
        let t = SpecTree::from_str(
            "x.yaml",
            &format!("{BASE}requires: gpu\nexpected_minutes: 600\n"),
        )
        .unwrap();
        let h = t.header().unwrap();
        assert_eq!(h.requires, Requires::Gpu);
        let why = h
            .requires
            .refusal("demo", h.device, false, h.expected_minutes)
            .unwrap();
        assert!(
            why.contains("device=cpu") && why.contains("10 V100-hours"),
            "{why}"
        );
        assert!(h.requires.refusal("demo", h.device, true, None).is_none());
        assert!(h
            .requires
            .refusal("demo", DeviceSpec::Cpu, false, None)
            .is_none());
        assert!(h
            .requires
            .refusal("demo", DeviceSpec::Cuda(0), false, None)
            .is_some());
        let plain = SpecTree::from_str("x.yaml", BASE)
            .unwrap()
            .header()
            .unwrap();
        assert!(plain
            .requires
            .refusal("demo", plain.device, false, None)
            .is_none());
        let bad = SpecTree::from_str("x.yaml", &format!("{BASE}requires: tpu\n")).unwrap();
        assert_eq!(bad.header().unwrap_err().path, "requires");
    }

    #[test]
    fn header_and_section_parse() {
        let t = SpecTree::from_str("x.yaml", BASE).unwrap();
        let h = t.header().unwrap();
        assert_eq!(h.seed, 3);
        assert_eq!(h.data.split.unwrap().train, 100);
        let j: Jem = t.typed("jem").unwrap();
        assert_eq!(j.width, 8);
    }

    #[test]
    fn names_must_be_plain_folder_names() {
        let spec = |name: &str| {
            format!(
                "name: {name}\npaper: p\ndescription: d\ndata: {{ dataset: digits }}\np: {{}}\n"
            )
        };
        for bad in [
            "../../../escaped",
            "/tmp/abs",
            "a/b",
            "'a\\b'",
            "'..'",
            "'.hidden'",
            "''",
            "\"a\\0b\"",
        ] {
            let t = SpecTree::from_str("t.yaml", &spec(bad)).unwrap();
            let e = t.header().unwrap_err();
            assert_eq!(e.path, "name", "{bad}: {e}");
        }
        let mut t = SpecTree::from_str("t.yaml", &spec("fine-name_1")).unwrap();
        t.header().unwrap();
        // An override is checked the same way, and blamed on the override.
        t.apply_override("name=../up").unwrap();
        let e = t.header().unwrap_err();
        assert_eq!(e.from_override.as_deref(), Some("name=../up"), "{e}");
    }

    #[test]
    fn expansion_is_bounded_and_never_merges_runs() {
        let head =
            "name: t\npaper: p\ndescription: d\ndata: { dataset: digits }\np: { a: 1, b: 1 }\n";
        // 64 keys of 2 values: 2^64 runs, counted without wrapping.
        let keys: String = (0..64).map(|i| format!("  p.k{i}: [0, 1]\n")).collect();
        let t = SpecTree::from_str("t.yaml", &format!("{head}sweep:\n{keys}")).unwrap();
        let e = t.header().unwrap_err().to_string();
        assert!(e.contains("more than 2^64") && e.contains("10000"), "{e}");
        let seeds: Vec<String> = (0..12_000).map(|i| i.to_string()).collect();
        let t =
            SpecTree::from_str("t.yaml", &format!("{head}seeds: [{}]\n", seeds.join(","))).unwrap();
        assert!(t.header().unwrap_err().to_string().contains("12000 runs"));
        let t = SpecTree::from_str("t.yaml", &format!("{head}seeds: [1, 2, 1]\n")).unwrap();
        assert!(t
            .header()
            .unwrap_err()
            .to_string()
            .contains("seed 1 is listed twice"));
        // `a/b` and `a?b` both become the folder `a_b`.
        let t = SpecTree::from_str("t.yaml", &format!("{head}sweep:\n  p.a: ['a/b', 'a?b']\n"))
            .unwrap();
        let e = t.expand().unwrap_err().to_string();
        assert!(e.contains("would share the folder"), "{e}");
        let t = SpecTree::from_str(
            "t.yaml",
            &format!("{head}sweep:\n  p.a: [1, 2]\nseeds: [0, 1]\n"),
        )
        .unwrap();
        assert_eq!(run_count(&t.header().unwrap()), Ok(4));
        assert_eq!(t.expand().unwrap().len(), 4);
    }

    #[test]
    fn cv_fold_follows_the_seed_and_is_checked() {
        let base = "name: t\npaper: p\ndescription: d\ndata: { dataset: digits, cv: { folds: 5 } }\np: {}\n";
        let t = SpecTree::from_str("t.yaml", &format!("{base}seeds: [0, 1, 2, 3, 4]\n")).unwrap();
        let runs = t.expand().unwrap();
        let folds: Vec<usize> = runs
            .iter()
            .map(|(_, r)| r.header().unwrap().data.cv.unwrap().fold.unwrap())
            .collect();
        assert_eq!(folds, vec![0, 1, 2, 3, 4]);
        let e = SpecTree::from_str("t.yaml", &format!("{base}seeds: [0, 5]\n"))
            .unwrap()
            .header()
            .unwrap_err();
        assert!(e.to_string().contains("seed 5 names no fold"), "{e}");
        let fixed = base.replace("folds: 5", "folds: 5, fold: 3");
        let h = SpecTree::from_str("t.yaml", &format!("{fixed}seeds: [7]\n"))
            .unwrap()
            .header()
            .unwrap();
        assert_eq!(
            h.data.cv.unwrap().fold,
            Some(3),
            "an explicit fold ignores the seed"
        );
        for (bad, says) in [
            ("folds: 5, fold: 5", "must be below data.cv.folds"),
            ("folds: 1", "between 2 and"),
        ] {
            let e = SpecTree::from_str("t.yaml", &base.replace("folds: 5", bad))
                .unwrap()
                .header()
                .unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let both = base.replace("cv:", "split: { train: 10, test: 5 }, cv:");
        let e = SpecTree::from_str("t.yaml", &both)
            .unwrap()
            .header()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = BASE.replace("    lr: 0.1", "    lr: 0.1\n    momentum: 0.9");
        let t = SpecTree::from_str("x.yaml", &text).unwrap();
        let e = t.typed::<Jem>("jem").unwrap_err();
        assert_eq!(e.path, "jem.optim.momentum");
        assert_eq!(e.line, Some(12));
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(
            e.to_string().starts_with("x.yaml:12: jem.optim.momentum: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_path_and_line() {
        let text = BASE.replace("width: 8", "width: wide");
        let t = SpecTree::from_str("x.yaml", &text).unwrap();
        let e = t.typed::<Jem>("jem").unwrap_err();
        assert_eq!(e.path, "jem.width");
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn missing_field_is_named() {
        let text = BASE.replace("description: a demo\n", "");
        let t = SpecTree::from_str("x.yaml", &text).unwrap();
        let e = t.header().unwrap_err();
        assert!(e.message.contains("missing field `description`"), "{e}");
    }

    #[test]
    fn bad_yaml_names_line() {
        let t = SpecTree::from_str("x.yaml", "name: a\n  b: : c\n");
        let e = t.unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn overrides_are_yaml_and_type_checked() {
        let mut t = SpecTree::from_str("x.yaml", BASE).unwrap();
        t.apply_override("jem.optim.lr=1e-3").unwrap();
        let j: Jem = t.typed("jem").unwrap();
        assert_eq!(j.optim.lr, 1e-3);
        t.apply_override("jem.width=abc").unwrap();
        let e = t.typed::<Jem>("jem").unwrap_err();
        assert_eq!(e.from_override.as_deref(), Some("jem.width=abc"));
        assert!(e
            .to_string()
            .starts_with("override `jem.width=abc`: jem.width: invalid type"));
    }

    #[test]
    fn dotted_paths_index_lists() {
        let mut t = SpecTree::from_str("x.yaml", "a:\n  - { n: 1 }\n  - { n: 2 }\n").unwrap();
        t.set("a.1.n", Value::from(5)).unwrap();
        assert_eq!(t.get("a.1.n"), Some(&Value::from(5)));
        assert_eq!(t.get("a.0.n"), Some(&Value::from(1)));
        t.set("a.0", Value::from("x")).unwrap();
        assert_eq!(t.get("a.0"), Some(&Value::from("x")));
        for bad in ["a.2.n", "a.x.n", "a.-1"] {
            let e = t.set(bad, Value::from(0)).unwrap_err();
            assert!(e.message.contains("is a list of 2"), "{bad}: {e}");
        }
    }

    #[test]
    fn override_of_unknown_key_is_an_error() {
        let mut t = SpecTree::from_str("x.yaml", BASE).unwrap();
        t.apply_override("jem.optim.lrr=1").unwrap();
        let e = t.typed::<Jem>("jem").unwrap_err();
        assert_eq!(e.path, "jem.optim.lrr");
        assert_eq!(e.from_override.as_deref(), Some("jem.optim.lrr=1"));
        let mut t = SpecTree::from_str("x.yaml", BASE).unwrap();
        t.apply_override("colour=red").unwrap();
        assert!(t
            .header()
            .unwrap_err()
            .message
            .contains("unknown field `colour`"));
        assert!(t.apply_override("no-equals-sign").is_err());
        assert!(t.apply_override("jem.width.deeper=1").is_err());
    }

    #[test]
    fn extends_deep_merges_child_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
        std::fs::write(
            dir.path().join("child.yaml"),
            "extends: base.yaml\nname: child\njem:\n  optim:\n    lr: 0.5\n",
        )
        .unwrap();
        let t = SpecTree::load(&dir.path().join("child.yaml")).unwrap();
        assert_eq!(t.header().unwrap().name, "child");
        let j: Jem = t.typed("jem").unwrap();
        assert_eq!((j.width, j.optim.lr), (8, 0.5));
        assert!(t.get("extends").is_none());
        // An error in a key the base holds points into the base file.
        let mut bad = t.clone();
        bad.set("jem.width", Value::String("x".into())).unwrap();
        let e = bad.typed::<Jem>("jem").unwrap_err();
        assert_eq!(
            e.file.as_deref(),
            Some(dir.path().join("base.yaml").as_path())
        );
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn extends_cycle_and_missing_base_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "extends: b.yaml\nname: a\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "extends: a.yaml\nname: b\n").unwrap();
        let e = SpecTree::load(&dir.path().join("a.yaml")).unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
        std::fs::write(dir.path().join("c.yaml"), "extends: nope.yaml\nname: c\n").unwrap();
        let e = SpecTree::load(&dir.path().join("c.yaml")).unwrap_err();
        assert!(e.message.contains("cannot read"), "{e}");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn sweep_and_seeds_expand_to_the_grid() {
        let text = format!("{BASE}sweep:\n  jem.width: [4, 8]\n  jem.optim.lr: [0.1, 0.01, 0.001]\nseeds: [0, 1]\n");
        let t = SpecTree::from_str("x.yaml", &text).unwrap();
        let runs = t.expand().unwrap();
        assert_eq!(runs.len(), 12);
        let names: Vec<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"lr=0.01,width=8,seed=1"), "{names:?}");
        let mut uniq = names.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 12);
        for (_, r) in &runs {
            assert!(r.get("sweep").is_none() && r.get("seeds").is_none());
            let h = r.header().unwrap();
            assert!(h.sweep.is_empty() && h.seeds.is_empty());
            let _: Jem = r.typed("jem").unwrap();
        }
        let (_, r) = runs
            .iter()
            .find(|(n, _)| n == "lr=0.01,width=8,seed=1")
            .unwrap();
        assert_eq!(r.header().unwrap().seed, 1);
        let j: Jem = r.typed("jem").unwrap();
        assert_eq!((j.width, j.optim.lr), (8, 0.01));
    }

    #[test]
    fn an_override_of_a_swept_key_narrows_the_sweep_to_it() {
        let text = format!(
            "{BASE}sweep:\n  jem.width: [4, 8]\n  jem.optim.lr: [0.1, 0.001]\nseeds: [0, 1, 2]\n"
        );
        let names = |overrides: &[&str]| -> Result<Vec<String>, SpecError> {
            let mut t = SpecTree::from_str("x.yaml", &text).unwrap();
            for o in overrides {
                t.apply_override(o)?;
            }
            Ok(t.expand()?.into_iter().map(|(n, _)| n).collect())
        };
        assert_eq!(names(&[]).unwrap().len(), 12);
        let n = names(&["jem.width=8"]).unwrap();
        assert_eq!(n.len(), 6);
        assert!(n.iter().all(|n| n.contains("width=8")), "{n:?}");
        // 1e-3 is the listed 0.001.
        let n = names(&["jem.width=4", "jem.optim.lr=1e-3", "seed=2"]).unwrap();
        assert_eq!(n, vec!["lr=0.001,width=4,seed=2".to_string()]);
        let e = names(&["jem.width=16"]).unwrap_err();
        assert_eq!(e.path, "jem.width");
        assert_eq!(e.from_override.as_deref(), Some("jem.width=16"));
        assert!(
            e.message.contains("[4, 8]") && e.message.contains("--sweep"),
            "{e}"
        );
        let e = names(&["seed=7"]).unwrap_err();
        assert!(e.message.contains("[0, 1, 2]"), "{e}");
        // Removing the sweep runs the spec's own values, once per seed.
        assert_eq!(names(&["sweep={}"]).unwrap().len(), 3);
        assert_eq!(
            names(&["sweep={}", "seeds=[]"]).unwrap(),
            vec![String::new()]
        );
    }

    #[test]
    fn a_command_line_sweep_adds_or_replaces_a_sweep_key() {
        let text = format!("{BASE}sweep:\n  jem.width: [4, 8]\n");
        let mut t = SpecTree::from_str("x.yaml", &text).unwrap();
        t.apply_sweep("jem.width=2,16,32").unwrap();
        t.apply_sweep("jem.optim.lr=[0.1, 0.2]").unwrap();
        let runs = t.expand().unwrap();
        assert_eq!(runs.len(), 6);
        let j: Jem = runs[0].1.typed("jem").unwrap();
        assert_eq!((j.width, j.optim.lr), (2, 0.1));
        t.apply_override("jem.width=16").unwrap();
        assert_eq!(t.expand().unwrap().len(), 2);
        let mut plain = SpecTree::from_str("x.yaml", BASE).unwrap();
        plain.apply_sweep("jem.width=1,2").unwrap();
        assert_eq!(plain.expand().unwrap().len(), 2);
        for bad in [
            "jem.width",
            "jem.width=",
            "=1,2",
            "seed=1,2",
            "jem..w=1",
            "jem.width=[1",
        ] {
            let e = plain.clone().apply_sweep(bad).unwrap_err();
            assert_eq!(
                e.from_override.as_deref(),
                Some(&*format!("--sweep {bad}")),
                "{bad}"
            );
        }
        // A type error in a swept value is located at the command line.
        let mut t = SpecTree::from_str("x.yaml", BASE).unwrap();
        t.apply_sweep("jem.width=4,wide").unwrap();
        let runs = t.expand().unwrap();
        let e = runs[1].1.typed::<Jem>("jem").unwrap_err();
        assert_eq!(
            e.from_override.as_deref(),
            Some("--sweep jem.width=4,wide"),
            "{e}"
        );
    }

    #[test]
    fn a_structured_value_of_the_wrong_shape_says_the_shape_not_a_type_name() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Size {
            resize: u32,
            crop: u32,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Jem {
            width: u32,
            size: Size,
        }
        let mut t = SpecTree::from_str(
            "x.yaml",
            &BASE.replace("  width: 8", "  width: 8\n  size: { resize: 6, crop: 4 }"),
        )
        .unwrap();
        assert!(t.typed::<Jem>("jem").is_ok());
        t.apply_override("jem.size=28").unwrap();
        let e = t.typed::<Jem>("jem").unwrap_err();
        assert!(!e.message.contains("struct"), "{e}");
        assert!(
            e.message.contains("a mapping of keys") && e.message.contains("{resize: 6, crop: 4}"),
            "{e}"
        );
        assert_eq!(e.from_override.as_deref(), Some("jem.size=28"));
    }

    #[test]
    fn plain_spec_expands_to_itself() {
        let t = SpecTree::from_str("x.yaml", BASE).unwrap();
        let runs = t.expand().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, "");
    }

    #[test]
    fn empty_sweep_list_is_an_error() {
        let text = format!("{BASE}sweep:\n  jem.width: []\n");
        let e = SpecTree::from_str("x.yaml", &text)
            .unwrap()
            .expand()
            .unwrap_err();
        assert_eq!(e.path, "sweep.jem.width");
    }

    #[test]
    fn resolved_yaml_round_trips() {
        let mut t = SpecTree::from_str("x.yaml", BASE).unwrap();
        t.apply_override("jem.optim.lr=0.25").unwrap();
        let again = SpecTree::from_str("spec.yaml", &t.to_yaml()).unwrap();
        let j: Jem = again.typed("jem").unwrap();
        assert_eq!(j.optim.lr, 0.25);
        assert_eq!(again.header().unwrap(), t.header().unwrap());
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cuda:2".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(2)));
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        let text = BASE.replace("seed: 3", "seed: 3\ndevice: gpu");
        let e = SpecTree::from_str("x.yaml", &text)
            .unwrap()
            .header()
            .unwrap_err();
        assert_eq!((e.path.as_str(), e.line), ("device", Some(5)));
    }

    #[test]
    fn missing_paper_section_is_an_error() {
        let text = BASE.replace("paper: jem", "paper: tsit");
        let e = SpecTree::from_str("x.yaml", &text)
            .unwrap()
            .header()
            .unwrap_err();
        assert!(e.message.contains("`tsit:`"), "{e}");
    }
}
