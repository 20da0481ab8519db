//! The reference checks: every place where tinytune's numbers are held to a library people
//! trust (transformers, PEFT, TRL, mergekit, bitsandbytes, PyTorch, DeepSpeed, tokenizers),
//! declared once and run by three callers — `cargo test` (one test per group in
//! `tests/tests/fixtures.rs`), `tinytune verify` on any backend, and the page's "How we
//! know" view in the worker on the reader's own device.
//!
//! A [`Check`] names its reference library (whose version is read from the fixture's own
//! metadata, written by the script that made it), the fixture files it reads, a tolerance
//! and the function that measures the difference. Fixtures come through the [`Fixtures`]
//! trait: a folder natively (the CLI's and the tests' own, since core reads no files),
//! files fetched on demand in the page ([`Files`]).
//! [`run`] lets a check read only the files it lists, so the page, which fetches exactly
//! those, can never lack one that the CLI had.
//!
//! Adding a check: write its measuring function beside its kin in one of the submodules and
//! push a [`Check`] in that submodule's `checks` (see ARCHITECTURE.md, "Add a reference
//! check").

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use burn::tensor::Device;
use serde::Serialize;

mod families;
mod gguf;
mod merging;
mod numerics;
mod peft;
mod training;

/// Where the fixtures come from.
pub trait Fixtures {
    /// The bytes of `path` (relative to the fixtures folder, `/`-separated), or a sentence
    /// naming the file and how to get it.
    fn read(&self, path: &str) -> Result<Vec<u8>, String>;
}

/// Fixture files held in memory (the page fetches a check's files and passes them here).
#[derive(Default)]
pub struct Files(pub BTreeMap<String, Vec<u8>>);

impl Fixtures for Files {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0.get(path).cloned().ok_or_else(|| format!("{path}: this fixture was not loaded"))
    }
}

/// Lets a check read only the files it declares.
struct Only<'a> {
    inner: &'a dyn Fixtures,
    files: &'a [String],
}

impl Fixtures for Only<'_> {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        if !self.files.iter().any(|f| f == path) {
            return Err(format!("{path}: read by a check that does not list it among its files (a bug in tinytune's check registry)"));
        }
        self.inner.read(path)
    }
}

/// Where a fixture records the versions of the libraries that made it.
#[derive(Clone, Debug)]
pub enum Source {
    /// A JSON file; `pointer` (RFC 6901) leads to an object of library → version, or a
    /// string "lib version, lib version" (or a bare version of the check's library).
    Json { file: String, pointer: &'static str },
    /// A safetensors file's `__metadata__`, whose keys are library names.
    Metadata { file: String },
}

impl Source {
    fn json(file: impl Into<String>, pointer: &'static str) -> Self {
        Source::Json { file: file.into(), pointer }
    }
    fn metadata(file: impl Into<String>) -> Self {
        Source::Metadata { file: file.into() }
    }
    /// The file the versions are read from.
    pub fn file(&self) -> &str {
        match self {
            Source::Json { file, .. } | Source::Metadata { file } => file,
        }
    }
}

/// How far a measured difference may be from the reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub value: f64,
    /// What the difference is measured in, e.g. "|Δ logit|" or "relative".
    pub unit: &'static str,
}

impl Tolerance {
    pub const fn abs(value: f64, unit: &'static str) -> Self {
        Tolerance { value, unit }
    }
    /// Equal: the difference must be exactly zero.
    pub const fn exact(unit: &'static str) -> Self {
        Tolerance { value: 0.0, unit }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value == 0.0 { write!(f, "exact ({})", self.unit) } else { write!(f, "{} ≤ {:.0e}", self.unit, self.value) }
    }
}

/// Where a check computes: `device` (the backend being verified) for the computation held to
/// the reference, `host` (a CPU device) for the parts that read weights back synchronously
/// (saving files), which a browser's WebGPU cannot do.
pub struct Target {
    pub device: Device,
    pub host: Device,
}

/// What a check's measuring function returns.
pub type MeasureFuture<'a> = Pin<Box<dyn Future<Output = Result<Measured, String>> + 'a>>;

type Measure = dyn for<'a> Fn(&'a dyn Fixtures, &'a Target) -> MeasureFuture<'a> + Send + Sync;

/// One reference check.
#[derive(Clone)]
pub struct Check {
    /// `group/name`, e.g. `peft/lora`; the group is the reference's area.
    pub name: String,
    /// One line: what is compared with what.
    pub what: String,
    /// The reference library, as its version metadata names it (e.g. "transformers").
    pub library: &'static str,
    pub source: Source,
    /// Every fixture file the check reads (the page fetches exactly these).
    pub files: Vec<String>,
    pub tolerance: Tolerance,
    /// The script that made the fixture, relative to the repository root.
    pub script: &'static str,
    /// Whether the check computes on the chosen device (false: host arithmetic, the same on
    /// every backend).
    pub on_device: bool,
    /// None in a [`catalog`] check.
    measure: Option<Arc<Measure>>,
}

impl Check {
    /// A check; with `MEASURE` false its measurement is left out (see [`catalog`]).
    #[allow(clippy::too_many_arguments)]
    fn new<const MEASURE: bool, F>(
        name: impl Into<String>,
        what: impl Into<String>,
        library: &'static str,
        source: Source,
        files: Vec<String>,
        tolerance: Tolerance,
        script: &'static str,
        measure: F,
    ) -> Self
    where
        F: for<'a> Fn(&'a dyn Fixtures, &'a Target) -> MeasureFuture<'a> + Send + Sync + 'static,
    {
        // A constant condition: in `catalog`'s instance the closure is never stored, so the
        // optimiser drops it and everything only it reaches.
        let measure: Option<Arc<Measure>> = if MEASURE { Some(Arc::new(measure)) } else { None };
        Check { name: name.into(), what: what.into(), library, source, files, tolerance, script, on_device: true, measure }
    }

    /// Marks a check that computes on the host only.
    fn on_host(mut self) -> Self {
        self.on_device = false;
        self
    }

    pub fn group(&self) -> &str {
        self.name.split('/').next().unwrap_or(&self.name)
    }

    /// The library versions the fixture records, e.g. {"peft": "0.21.2", "torch": ...}.
    pub fn versions(&self, fixtures: &dyn Fixtures) -> Result<BTreeMap<String, String>, String> {
        let fx = Only { inner: fixtures, files: &self.files };
        match &self.source {
            Source::Json { file, pointer } => {
                let v = json(&fx, file)?;
                let at = v.pointer(pointer).ok_or_else(|| format!("{file}: no `{pointer}` (the library versions the script records)"))?;
                match at {
                    serde_json::Value::Object(map) => Ok(map
                        .iter()
                        .filter(|(k, _)| KNOWN_LIBRARIES.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()),
                    serde_json::Value::String(s) if s.contains(' ') => {
                        Ok(s.split(',').filter_map(|part| part.trim().split_once(' ')).map(|(lib, version)| (lib.to_string(), version.to_string())).collect())
                    }
                    serde_json::Value::String(s) => Ok(BTreeMap::from([(self.library.to_string(), s.clone())])),
                    _ => Err(format!("{file}: `{pointer}` is not a version record")),
                }
            }
            Source::Metadata { file } => {
                let bytes = fx.read(file)?;
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format!("{file}: {e}"))?;
                Ok(meta.metadata().clone().unwrap_or_default().into_iter().filter(|(k, _)| KNOWN_LIBRARIES.contains(&k.as_str())).collect())
            }
        }
    }
}

/// Libraries a fixture may record (other metadata keys are the fixture's own).
const KNOWN_LIBRARIES: &[&str] =
    &["bitsandbytes", "deepspeed", "mergekit", "peft", "safetensors", "tokenizers", "torch", "transformers", "trl", "gguf", "llama-cpp-python"];

/// What a check measured: the largest difference (in its tolerance's unit) and a note.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub worst: f64,
    pub detail: String,
}

impl Measured {
    fn new(worst: impl Into<f64>, detail: impl Into<String>) -> Self {
        Measured { worst: worst.into(), detail: detail.into() }
    }
}

/// One check's result, as the CLI prints it and the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Outcome {
    pub name: String,
    pub what: String,
    /// e.g. "transformers 5.23.0".
    pub reference: String,
    pub versions: BTreeMap<String, String>,
    /// The largest difference allowed, in `tolerance_text`'s unit.
    pub tolerance: f64,
    pub tolerance_text: String,
    /// The measured largest difference; None when the check could not measure.
    pub worst: Option<f64>,
    pub passed: bool,
    /// Why it failed, or what it measured besides the largest difference.
    pub detail: String,
    pub script: String,
    /// "device" (the backend being verified) or "host" (arithmetic on the CPU).
    pub ran_on: String,
    pub seconds: f64,
}

impl Outcome {
    /// The measured difference as the table prints it: "0", a whole count, or 1.2e-7.
    pub fn measured(&self) -> String {
        match self.worst {
            None => "—".into(),
            Some(w) if w.abs() >= 1.0 && w.fract() == 0.0 => format!("{w:.0}"),
            Some(w) => {
                if w == 0.0 {
                    "0".into()
                } else {
                    format!("{w:.1e}")
                }
            }
        }
    }
}

/// Runs one check (natively: a CPU backend's reads finish at once, a GPU backend's are
/// waited for), reading only the files it lists.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(check: &Check, fixtures: &dyn Fixtures, target: &Target) -> Outcome {
    block_on(run_async(check, fixtures, target))
}

/// Runs one check, reading results back asynchronously (the page's worker).
pub async fn run_async(check: &Check, fixtures: &dyn Fixtures, target: &Target) -> Outcome {
    let start = web_time::Instant::now();
    let fx = Only { inner: fixtures, files: &check.files };
    let versions = check.versions(fixtures);
    let reference = match &versions {
        Ok(v) => match v.get(check.library) {
            Some(version) => format!("{} {version}", check.library),
            None => format!("{} (version not recorded)", check.library),
        },
        Err(_) => check.library.to_string(),
    };
    let measured = match &versions {
        Ok(_) => match &check.measure {
            Some(measure) => measure(&fx, target).await,
            None => Err(format!(
                "{}: this check comes from verify::catalog, which lists checks without their measurements; take it from verify::checks()",
                check.name
            )),
        },
        Err(e) => Err(e.clone()),
    };
    let (worst, passed, detail) = match measured {
        Ok(m) => (Some(m.worst), m.worst.is_finite() && m.worst <= check.tolerance.value, m.detail),
        Err(e) => (None, false, e),
    };
    Outcome {
        name: check.name.clone(),
        what: check.what.clone(),
        reference,
        versions: versions.unwrap_or_default(),
        tolerance: check.tolerance.value,
        tolerance_text: check.tolerance.to_string(),
        worst,
        passed,
        detail,
        script: check.script.to_string(),
        ran_on: if check.on_device { "device".to_string() } else { "host".to_string() },
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Every reference check, in the order the table lists them.
pub fn checks() -> Vec<Check> {
    registry::<true>()
}

/// The same checks as [`checks`], in the same order, without their measurements: what a
/// program that only lists them links (the browser page, which leaves running them to its
/// worker). A catalog check that is run fails with a message saying so.
pub fn catalog() -> Vec<Check> {
    registry::<false>()
}

fn registry<const MEASURE: bool>() -> Vec<Check> {
    let mut all = Vec::new();
    all.extend(families::checks::<MEASURE>());
    all.extend(gguf::checks::<MEASURE>());
    all.extend(peft::checks::<MEASURE>());
    all.extend(numerics::checks::<MEASURE>());
    all.extend(merging::checks::<MEASURE>());
    all.extend(training::checks::<MEASURE>());
    all
}

/// The checks whose name equals or starts with one of `filters` (`peft` matches
/// `peft/lora`), all of them when `filters` is empty; an error names a filter that matches
/// nothing.
pub fn select(filters: &[String]) -> Result<Vec<Check>, String> {
    pick(checks(), filters)
}

/// [`select`] over the [`catalog`]: the checks a filter names, without their measurements.
pub fn select_catalog(filters: &[String]) -> Result<Vec<Check>, String> {
    pick(catalog(), filters)
}

fn pick(all: Vec<Check>, filters: &[String]) -> Result<Vec<Check>, String> {
    if filters.is_empty() {
        return Ok(all);
    }
    let matches = |c: &Check, f: &str| c.name == f || c.name.starts_with(&format!("{}/", f.trim_end_matches('/')));
    for f in filters {
        if !all.iter().any(|c| matches(c, f)) {
            let groups: std::collections::BTreeSet<&str> = all.iter().map(|c| c.group()).collect();
            return Err(format!("--check {f}: no check is called that; the groups are {}", groups.into_iter().collect::<Vec<_>>().join(", ")));
        }
    }
    Ok(all.into_iter().filter(|c| filters.iter().any(|f| matches(c, f))).collect())
}

// ---- helpers shared by the checks ----

pub(crate) fn s<E: fmt::Display>(e: E) -> String {
    e.to_string()
}

fn text(fx: &dyn Fixtures, path: &str) -> Result<String, String> {
    String::from_utf8(fx.read(path)?).map_err(|_| format!("{path}: not UTF-8 text"))
}

fn json(fx: &dyn Fixtures, path: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&text(fx, path)?).map_err(|e| format!("{path}: {e}"))
}

/// A JSON array of numbers.
fn floats(v: &serde_json::Value, what: &str) -> Result<Vec<f32>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: not an array"))?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| format!("{what}: not a number")))
        .collect()
}

/// A JSON array of token ids.
fn ids(v: &serde_json::Value, what: &str) -> Result<Vec<u32>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: not an array"))?
        .iter()
        .map(|x| x.as_u64().map(|i| i as u32).ok_or_else(|| format!("{what}: not an id")))
        .collect()
}

/// The largest |a − b|; an error when the lengths differ.
fn worst(a: &[f32], b: &[f32], what: &str) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("{what}: {} values here, {} in the reference", a.len(), b.len()));
    }
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) }))
}

fn values(d: &burn::tensor::TensorData) -> Result<Vec<f32>, String> {
    d.clone().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))
}

/// The tensors of a safetensors fixture by name.
fn tensors(fx: &dyn Fixtures, path: &str) -> Result<std::collections::HashMap<String, burn::tensor::TensorData>, String> {
    crate::checkpoint::from_safetensors(&fx.read(path)?, &path.into()).map_err(s)
}

/// A Hugging Face model folder among the fixtures.
fn load(fx: &dyn Fixtures, dir: &str, device: &Device) -> Result<crate::checkpoint::LoadedModel, String> {
    let config = text(fx, &format!("{dir}/config.json"))?;
    let tokenizer = text(fx, &format!("{dir}/tokenizer.json"))?;
    let weights = fx.read(&format!("{dir}/model.safetensors"))?;
    crate::checkpoint::load_parts(dir, &config, &tokenizer, &weights, device).map_err(s)
}

/// Logits at every position for one prompt, on the model's device.
async fn all_logits(model: &crate::Gpt, ids: &[u32], device: &Device) -> Result<Vec<f32>, String> {
    use burn::tensor::{Int, Tensor, TensorData};
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]), device);
    read(model.forward(x)).await
}

/// A tensor's values, read back from its device.
async fn read<const D: usize>(x: burn::tensor::Tensor<D>) -> Result<Vec<f32>, String> {
    values(&x.into_data_async().await.map_err(|e| format!("reading back from the device failed: {e:?}"))?)
}

/// Polls a future to completion (native callers of [`run`]). A CPU backend's reads are
/// ready at once; a native GPU backend's finish on the driver's side, so polling again
/// until they do is all it takes.
#[cfg(not(target_arch = "wasm32"))]
fn block_on<F: Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

/// Fails with `message` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_grouped_and_list_their_files() {
        let all = checks();
        let mut names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "check names are unique");
        for c in &all {
            assert!(c.name.contains('/'), "{}: group/name", c.name);
            assert!(!c.files.is_empty(), "{}: lists its files", c.name);
            assert!(c.files.iter().any(|f| f == c.source.file()), "{}: its version source is among its files", c.name);
        }
    }

    #[test]
    fn the_catalog_lists_the_checks_without_their_measurements() {
        let (all, listed) = (checks(), catalog());
        assert_eq!(all.len(), listed.len());
        for (c, l) in all.iter().zip(&listed) {
            assert_eq!((&c.name, &c.what, c.library, &c.files, c.script, c.on_device), (&l.name, &l.what, l.library, &l.files, l.script, l.on_device));
            assert_eq!(c.tolerance, l.tolerance, "{}", c.name);
            assert!(c.measure.is_some() && l.measure.is_none(), "{}", c.name);
        }
        assert_eq!(select_catalog(&["peft".into()]).unwrap().len(), select(&["peft".into()]).unwrap().len());
        // A catalog check that is run says where the measurement is, whatever its files hold.
        let check = &listed[0];
        let files =
            Files(check.files.iter().map(|f| (f.clone(), std::fs::read(format!("{}/../tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap())).collect());
        let target = Target { device: Device::flex(), host: Device::flex() };
        let out = run(check, &files, &target);
        assert!(!out.passed && out.detail.contains("verify::catalog"), "{}", out.detail);
    }

    #[test]
    fn a_check_cannot_read_a_file_it_does_not_list() {
        let files = Files(BTreeMap::from([("a.json".to_string(), b"{}".to_vec()), ("b.json".to_string(), b"{}".to_vec())]));
        let listed = ["a.json".to_string()];
        let only = Only { inner: &files, files: &listed };
        assert!(only.read("a.json").is_ok());
        assert!(only.read("b.json").unwrap_err().contains("does not list it"));
    }

    #[test]
    fn a_filter_selects_a_group_or_one_check_and_names_what_matches_nothing() {
        let peft = select(&["peft".into()]).unwrap();
        assert!(!peft.is_empty() && peft.iter().all(|c| c.group() == "peft"));
        assert_eq!(select(&["peft/lora".into()]).unwrap().len(), 1);
        assert!(select(&["nope".into()]).err().unwrap().contains("--check nope"));
    }
}
