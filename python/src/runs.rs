//! `train` (a `Run`), `Run.evaluate`, `ablate` and `compare` (a `Table`), and `extract`.

use crate::cache::FeatureCache;
use crate::{err, interruptible, to_python};
use marnet::config::{Inference, TrainConfig};
use marnet::experiments::TableOptions;
use marnet::model::marnet::{ModelOptions, Variant};
use marnet::train::{Resume, Verbosity};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// `train`'s options: the command line's, declared once (variant as `marnet train --variant`).
#[derive(clap::Parser)]
struct TrainOptions {
    #[arg(long, value_enum, default_value = "marnet")]
    variant: Variant,
    #[command(flatten)]
    train: TrainConfig,
    #[command(flatten)]
    model: ModelOptions,
}

/// A saved cache: the Python object's own (borrowed, not copied) or one opened from a folder.
enum SavedCache<'py> {
    Borrowed(PyRef<'py, FeatureCache>),
    Opened(Box<marnet::features::FeatureCache>),
}

impl std::ops::Deref for SavedCache<'_> {
    type Target = marnet::features::FeatureCache;
    fn deref(&self) -> &Self::Target {
        match self {
            SavedCache::Borrowed(c) => &c.inner,
            SavedCache::Opened(c) => c,
        }
    }
}

/// The saved cache behind `cache` (a FeatureCache or a folder): a run records its cache's folder,
/// so one made from numpy is saved first.
fn saved<'py>(py: Python<'py>, cache: &Bound<'py, PyAny>) -> PyResult<SavedCache<'py>> {
    if let Ok(c) = cache.cast::<FeatureCache>() {
        let c = c.borrow();
        if c.inner.dir.as_os_str().is_empty() {
            return Err(PyValueError::new_err("this cache is only in memory: save it first (cache.save(folder)), a run records the folder it was trained on"));
        }
        return Ok(SavedCache::Borrowed(c));
    }
    let dir: PathBuf = cache.extract().map_err(|_| PyValueError::new_err("`cache` must be a FeatureCache or a cache folder"))?;
    py.detach(|| marnet::features::FeatureCache::open(&dir)).map(|c| SavedCache::Opened(Box::new(c))).map_err(err)
}

fn verbosity(progress: bool) -> Verbosity {
    if progress { Verbosity::Progress } else { Verbosity::Quiet }
}

/// A training run folder (`marnet train --out`): its best checkpoint is `path/best`.
#[pyclass(name = "Run", module = "marnet")]
pub struct Run {
    /// The run folder.
    #[pyo3(get)]
    path: PathBuf,
    /// The epoch whose checkpoint is `best/` (chosen on val), and its val top-1 (0..1).
    #[pyo3(get)]
    best_epoch: Option<usize>,
    #[pyo3(get)]
    best_val_top1: f64,
    /// The best checkpoint's test metrics as `best/metrics.json` records them, or None.
    #[pyo3(get)]
    test: Option<Py<PyAny>>,
}

#[pymethods]
impl Run {
    /// `marnet eval --model RUN`: accuracy of every head on `split` of the run's own cache (or of
    /// the cache folder `cache`), as the dict `marnet eval --json` writes. Options: those of
    /// `marnet eval` (`sampler`, `steps`, `seed`, `eval_batch`).
    #[pyo3(signature = (split="test", cache=None, **options))]
    fn evaluate(&self, py: Python<'_>, split: &str, cache: Option<PathBuf>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let inference: Inference = crate::options(options)?;
        let req = marnet::eval::EvalRequest { model: self.path.clone(), cache, split: split.to_string(), inference };
        let report = py.detach(|| marnet::eval::run(&req, &candle_core::Device::Cpu)).map_err(err)?;
        to_python(py, &report)
    }

    fn __repr__(&self) -> String {
        let epoch = self.best_epoch.map_or("None".to_string(), |e| e.to_string());
        format!("Run('{}', best_epoch={epoch}, best_val_top1={:.4})", self.path.display(), self.best_val_top1)
    }
}

/// `marnet train`: trains a head on `cache` (a saved FeatureCache or a cache folder) into the run
/// folder `out`. Options: the command line's, as keywords (`epochs=30`, `align_weight=0.5`,
/// `variant="ema"`). An existing run in `out` is refused unless `resume=True` (continue it) or
/// `force=True` (start again); `resume=True` without `epochs=` trains on to the run's own (the
/// epochs it last trained with). Ctrl-C stops after the current step and keeps the run, which `resume=True`
/// continues; then KeyboardInterrupt is raised.
#[pyfunction]
#[pyo3(signature = (cache, out, resume=false, force=false, progress=true, **options))]
pub fn train(
    py: Python<'_>,
    cache: &Bound<'_, PyAny>,
    out: PathBuf,
    resume: bool,
    force: bool,
    progress: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Run> {
    let mut o: TrainOptions = crate::options(options)?;
    if resume && force {
        return Err(PyValueError::new_err("resume=True continues the run in `out`, force=True starts it again: give one"));
    }
    let out = std::path::absolute(&out)?;
    let epochs_given = options.and_then(|d| d.get_item("epochs").ok().flatten()).is_some_and(|v| !v.is_none());
    if resume && !epochs_given {
        // Resumed without epochs= (or with None): on to the run's own (the epochs it last trained with).
        o.train.epochs = marnet::train::saved_epochs(&out).unwrap_or(o.train.epochs);
    }
    let saved = saved(py, cache)?;
    let c: &marnet::features::FeatureCache = &saved;
    let cfg = o.model.config(o.variant, c.train.dv, c.train.ds, c.num_classes());
    let how = match (resume, force) {
        (true, _) => Resume::Strict,
        (false, true) => Resume::Never,
        _ => Resume::Refuse,
    };
    let state = interruptible(py, || marnet::train::train(c, &cfg, &o.train, &out, how, verbosity(progress), &candle_core::Device::Cpu))?;
    let test = state.test.as_ref().map(|t| to_python(py, t)).transpose()?;
    Ok(Run { path: out, best_epoch: state.best_epoch, best_val_top1: state.best_val_top1, test })
}

/// A results table (`OUT/ablation.json` or `OUT/comparison.json`).
#[pyclass(name = "Table", module = "marnet")]
pub struct Table {
    inner: marnet::experiments::Table,
    /// Its JSON file.
    #[pyo3(get)]
    path: PathBuf,
}

#[pymethods]
impl Table {
    /// One dict per row (mean and std of top-1 and top-5 over the runs, every run's value, the
    /// paired tests against the baseline and +EMA), as the JSON file has them.
    #[getter]
    fn rows(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_python(py, &self.inner.rows)
    }

    #[getter]
    fn title(&self) -> String {
        self.inner.title.clone()
    }

    /// The table as `marnet ablate` prints it.
    fn to_markdown(&self) -> String {
        self.inner.markdown()
    }

    fn __repr__(&self) -> String {
        self.inner.markdown()
    }
}

/// What `ablate` and `compare` share: the table's options, the runs, the table.
fn table(
    py: Python<'_>,
    cache: &Bound<'_, PyAny>,
    out: PathBuf,
    kind: (&str, &str, &str, Variant),
    arms: impl FnOnce(&marnet::model::marnet::MarnetConfig) -> Vec<marnet::experiments::Arm>,
    progress: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Table> {
    let (what, first_column, file, variant) = kind;
    let o: TableOptions = crate::options(options)?;
    if o.task.is_some() {
        return Err(PyValueError::new_err("`task` is for job arrays on the command line: a task's share writes no table"));
    }
    let saved = saved(py, cache)?;
    let c: &marnet::features::FeatureCache = &saved;
    let arms = arms(&o.base(c, variant));
    let command = format!("marnet.{file}(...) from Python");
    let spec = o.spec(&out, what, first_column, file, command).map_err(err)?;
    let inner = interruptible(py, || marnet::experiments::run_table(c, &arms, &spec, verbosity(progress), &candle_core::Device::Cpu))?;
    Ok(Table { inner, path: out.join(format!("{file}.json")) })
}

/// `marnet ablate`: the ablation (Table 2), each of `variants` (default: all five rows) trained
/// `seeds` times on `cache` into `out/<row>/seed<k>`; returns the table, also written to
/// `out/ablation.md` and `.json`. Options: the command line's (`seeds`, `leave_one_out`,
/// `epochs`, ...). Rerun with the same settings, it reuses the finished runs.
#[pyfunction]
#[pyo3(signature = (cache, out, variants=None, progress=true, **options))]
pub fn ablate(
    py: Python<'_>,
    cache: &Bound<'_, PyAny>,
    out: PathBuf,
    variants: Option<Vec<String>>,
    progress: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Table> {
    let variants: Vec<Variant> = parse_values(variants.unwrap_or_default(), "variants")?;
    table(
        py,
        cache,
        out,
        ("Ablation (Table 2)", "Module", "ablation", Variant::Marnet),
        |b| marnet::experiments::ablation_arms(b, &variants),
        progress,
        options,
    )
}

/// `marnet compare`: the alignment losses of Table 1 (`methods`, default the six on pooled
/// features), the visual baseline and MARNet, as `ablate` does; `out/comparison.md` and `.json`.
#[pyfunction]
#[pyo3(signature = (cache, out, methods=None, progress=true, **options))]
pub fn compare(
    py: Python<'_>,
    cache: &Bound<'_, PyAny>,
    out: PathBuf,
    methods: Option<Vec<String>>,
    progress: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Table> {
    let aligns: Vec<marnet::align::Alignment> = parse_values(methods.unwrap_or_default(), "methods")?;
    table(
        py,
        cache,
        out,
        ("Alignment methods (Table 1)", "Method", "comparison", Variant::Ema),
        |b| marnet::experiments::alignment_arms(b, &aligns),
        progress,
        options,
    )
}

/// Values of a clap `ValueEnum` by their command-line names.
fn parse_values<T: clap::ValueEnum>(names: Vec<String>, what: &str) -> PyResult<Vec<T>> {
    names
        .iter()
        .map(|n| {
            T::from_str(n, true).map_err(|_| {
                let known: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string())).collect();
                PyValueError::new_err(format!("{what}: unknown `{n}` (expected one of {})", known.join(", ")))
            })
        })
        .collect()
}

/// `marnet extract`: encodes a dataset into the feature cache folder `out` and returns it: your
/// own as a manifest file (JSON Lines: image, text, label, split; see `marnet extract --help`),
/// or with `manifest=None` a built-in one (`dataset="emoji-food"`, the default) or a published
/// layout (`dataset="vireo172", root=...`). Options are the command line's (`visual`, `text`,
/// `batch`, `skip_bad`...). A finished cache with the same settings in `out` is reused; other
/// settings are refused unless `force=True`.
#[pyfunction]
#[pyo3(signature = (manifest, out, progress=true, **options))]
pub fn extract(py: Python<'_>, manifest: Option<PathBuf>, out: PathBuf, progress: bool, options: Option<&Bound<'_, PyDict>>) -> PyResult<FeatureCache> {
    let kwargs = PyDict::new(py);
    if let Some(o) = options {
        kwargs.update(o.as_mapping())?;
    }
    if let Some(m) = manifest {
        if kwargs.contains("dataset")? || kwargs.contains("root")? {
            return Err(PyValueError::new_err("give a manifest, or manifest=None with `dataset` (and `root`), not both"));
        }
        kwargs.set_item("dataset", "manifest")?;
        kwargs.set_item("root", m)?;
    }
    kwargs.set_item("out", out)?;
    let settings: marnet::extract::ExtractSettings = crate::options(Some(&kwargs))?;
    let extracted = interruptible(py, || marnet::extract::run(&settings, progress, marnet::extract::Existing::ReuseOrRefuse, &candle_core::Device::Cpu))?;
    Ok(FeatureCache { inner: extracted.into_cache().map_err(err)? })
}
