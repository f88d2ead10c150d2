//! `FeatureCache` and `FeatureSplit`: numpy in (checked, one copy into the cache) and out (views
//! of the cache's own memory, read-only, no copy).

use crate::err;
use marnet::features::{FeatureCache as Cache, FeatureSplit as Split, SplitMeta};
use numpy::ndarray::ArrayView2;
use numpy::{PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A feature cache: a `train` split (visual and text features, labels) and optional `val` and
/// `test` splits (text optional), as `marnet extract` writes it.
#[pyclass(name = "FeatureCache", module = "marnet")]
pub struct FeatureCache {
    pub inner: Cache,
}

#[pymethods]
impl FeatureCache {
    /// Opens the cache folder `path` (as `marnet extract` or `FeatureCache.save` wrote it).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        Cache::open(&path).map(|inner| Self { inner }).map_err(err)
    }

    /// A cache from numpy arrays. Each split is a dict: `visual` float [N, Dv], `label` integer
    /// [N] in 0..len(classes), `text` float [N, Ds] (needed in `train`), and optionally `ids`
    /// (N strings; their first path component is a row's group for leave-one-out) or `group`
    /// (N strings). Features are stored as float32.
    #[staticmethod]
    #[pyo3(signature = (train, classes, val=None, test=None))]
    fn from_numpy(train: &Bound<'_, PyDict>, classes: Vec<String>, val: Option<&Bound<'_, PyDict>>, test: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        if let Some(dup) = classes.iter().enumerate().find_map(|(i, c)| classes[..i].contains(c).then_some(c)) {
            return Err(PyValueError::new_err(format!("classes: `{dup}` is given twice (class names must be distinct)")));
        }
        let train = split_from(train, &classes, "train")?;
        if train.text.is_none() {
            return Err(PyValueError::new_err("train: `text` is missing (the training split needs text features)"));
        }
        let val = val.map(|d| split_from(d, &classes, "val")).transpose()?;
        let test = test.map(|d| split_from(d, &classes, "test")).transpose()?;
        for (name, s) in [("val", &val), ("test", &test)] {
            if let Some(s) = s.as_ref().filter(|s| s.dv != train.dv) {
                return Err(PyValueError::new_err(format!("{name}: `visual` has {} columns, train's has {}", s.dv, train.dv)));
            }
        }
        Ok(Self { inner: Cache { dir: PathBuf::new(), train, val, test, fold: None } })
    }

    /// Writes the cache into the folder `path`; `marnet train --cache PATH` reads it. A folder
    /// that already holds files is refused unless `force=True` (then its cache files are replaced).
    #[pyo3(signature = (path, force=false))]
    fn save(&mut self, path: PathBuf, force: bool) -> PyResult<()> {
        let path = std::path::absolute(&path)?;
        if !force && path.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            return Err(PyValueError::new_err(format!(
                "{}: the folder is not empty (a cache or a run is kept there?): choose another, or save(path, force=True) to replace its cache",
                path.display()
            )));
        }
        self.inner.write(&path).map_err(err)?;
        self.inner.dir = path;
        Ok(())
    }

    /// The split `name` (`train`, `val` or `test`), or None when the cache has none.
    fn split(slf: Bound<'_, Self>, name: &str) -> PyResult<Option<FeatureSplit>> {
        let present = slf.borrow().inner.split(name).map_err(err)?.is_some();
        Ok(present.then(|| FeatureSplit { cache: slf.unbind(), name: name.to_string() }))
    }

    /// The class names, index order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.train.meta.classes.clone()
    }

    /// The folder it was loaded from or saved to (None: only in memory).
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        (!self.inner.dir.as_os_str().is_empty()).then(|| self.inner.dir.clone())
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        let n = |s: Option<&Split>| s.map_or("none".to_string(), |s| s.len().to_string());
        format!(
            "FeatureCache(train={}, val={}, test={}, visual={}-d, text={}-d, classes={})",
            c.train.len(),
            n(c.val.as_ref()),
            n(c.test.as_ref()),
            c.train.dv,
            c.train.ds,
            c.num_classes()
        )
    }
}

/// One split of a cache. Its arrays are read-only views of the cache's memory.
#[pyclass(name = "FeatureSplit", module = "marnet")]
pub struct FeatureSplit {
    cache: Py<FeatureCache>,
    name: String,
}

impl FeatureSplit {
    /// A read-only float32 [rows, cols] view of `data`, a field of this split in the cache.
    fn view<'py>(&self, py: Python<'py>, pick: impl Fn(&Split) -> Option<(&Vec<f32>, usize)>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        let owner = self.cache.bind(py);
        let cache = owner.borrow();
        let split = cache.inner.split(&self.name).map_err(err)?.expect("a FeatureSplit names a present split");
        let Some((data, cols)) = pick(split) else { return Ok(None) };
        let view = ArrayView2::from_shape((split.len(), cols), data).map_err(|e| PyValueError::new_err(e.to_string()))?;
        // SAFETY: the cache object is the array's base, so it outlives the array, and nothing
        // changes a split's vectors once the cache exists (`save` writes them out, and sets only
        // the folder).
        let array = unsafe { PyArray2::borrow_from_array(&view, owner.clone().into_any()) };
        array.readwrite().make_nonwriteable();
        Ok(Some(array))
    }
}

#[pymethods]
impl FeatureSplit {
    /// Visual features, float32 [N, Dv] (read-only, no copy).
    #[getter]
    fn visual<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        Ok(self.view(py, |s| Some((&s.visual, s.dv)))?.expect("every split has visual features"))
    }

    /// Text features, float32 [N, Ds] (read-only, no copy), or None.
    #[getter]
    fn text<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        self.view(py, |s| s.text.as_ref().map(|t| (t, s.ds)))
    }

    /// Labels, int64 [N] (a copy).
    #[getter]
    fn label<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        self.with(py, |s| PyArray1::from_iter(py, s.label.iter().map(|&l| l as i64)))
    }

    /// Row ids (`vendor/name` for the emoji datasets, the manifest's ids, `train/0`... from numpy).
    #[getter]
    fn ids(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |s| s.meta.ids.clone())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| s.len())
    }
}

impl FeatureSplit {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&Split) -> T) -> PyResult<T> {
        let cache = self.cache.bind(py).borrow();
        Ok(f(cache.inner.split(&self.name).map_err(err)?.expect("a FeatureSplit names a present split")))
    }
}

/// `d[key]` as a C-contiguous array (see [`as_array`]), or None when absent.
fn array<'py, T: numpy::Element>(
    d: &Bound<'py, PyDict>,
    split: &str,
    key: &str,
    ndim: usize,
    kinds: &str,
    what: &str,
) -> PyResult<Option<Bound<'py, numpy::PyArrayDyn<T>>>> {
    match d.get_item(key)?.filter(|v| !v.is_none()) {
        Some(v) => as_array(&v, &format!("{split}: `{key}`"), ndim, kinds, what).map(Some),
        None => Ok(None),
    }
}

/// `v` as a C-contiguous array of `T` with `ndim` dimensions (converted, e.g. float64 to
/// float32): TypeError for another kind of array (`kinds`: numpy's dtype kind letters),
/// ValueError for another number of dimensions. `name` says what `v` is in the messages.
pub fn as_array<'py, T: numpy::Element>(v: &Bound<'py, PyAny>, name: &str, ndim: usize, kinds: &str, what: &str) -> PyResult<Bound<'py, numpy::PyArrayDyn<T>>> {
    let np = v.py().import("numpy")?;
    let a = np.call_method1("asarray", (v,)).map_err(|_| PyTypeError::new_err(format!("{name} must be {what}")))?;
    let arr = a.cast::<PyUntypedArray>()?;
    let kind = arr.dtype().kind() as char;
    if !kinds.contains(kind) {
        return Err(PyTypeError::new_err(format!("{name} has dtype {}, expected {what}", arr.dtype())));
    }
    if arr.ndim() != ndim {
        return Err(PyValueError::new_err(format!("{name} has shape {:?}, expected {what}", arr.shape())));
    }
    let dtype = numpy::dtype::<T>(v.py());
    Ok(np.call_method1("ascontiguousarray", (a, dtype))?.cast_into::<numpy::PyArrayDyn<T>>()?)
}

/// The finite values of a float array, or a ValueError naming the first bad row.
fn finite_rows(a: &Bound<'_, numpy::PyArrayDyn<f32>>, split: &str, key: &str) -> PyResult<(Vec<f32>, usize, usize)> {
    let (n, cols) = (a.shape()[0], a.shape()[1]);
    let values = a.to_vec()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(format!("{split}: `{key}` row {} has a non-finite value ({})", i / cols.max(1), values[i])));
    }
    Ok((values, n, cols))
}

/// A split from a dict of numpy arrays (see [`FeatureCache::from_numpy`]).
fn split_from(d: &Bound<'_, PyDict>, classes: &[String], name: &str) -> PyResult<Split> {
    let missing = |k: &str| PyValueError::new_err(format!("{name}: `{k}` is missing"));
    for k in d.keys() {
        let k: String = k.extract()?;
        if !["visual", "text", "label", "ids", "group"].contains(&k.as_str()) {
            return Err(PyValueError::new_err(format!("{name}: unknown key `{k}` (expected visual, text, label, ids, group)")));
        }
    }
    let visual = array::<f32>(d, name, "visual", 2, "f", "a 2-D float array [N, Dv]")?.ok_or_else(|| missing("visual"))?;
    let (visual, n, dv) = finite_rows(&visual, name, "visual")?;
    let label = array::<i64>(d, name, "label", 1, "iu", "a 1-D integer array [N]")?.ok_or_else(|| missing("label"))?.to_vec()?;
    if label.len() != n {
        return Err(PyValueError::new_err(format!("{name}: `visual` has {n} rows but `label` has {}", label.len())));
    }
    if let Some((row, l)) = label.iter().enumerate().find(|&(_, &l)| l < 0 || l as usize >= classes.len()) {
        let n = classes.len();
        return Err(PyValueError::new_err(format!("{name}: row {row} has label {l}, not a class index 0 to {} ({n} class names given)", n.max(1) - 1)));
    }
    let (text, ds) = match array::<f32>(d, name, "text", 2, "f", "a 2-D float array [N, Ds]")? {
        Some(t) => {
            let (t, rows, ds) = finite_rows(&t, name, "text")?;
            if rows != n {
                return Err(PyValueError::new_err(format!("{name}: `visual` has {n} rows but `text` has {rows}")));
            }
            (Some(t), ds)
        }
        None => (None, 0),
    };
    let strings = |k: &str| -> PyResult<Option<Vec<String>>> {
        let Some(v) = d.get_item(k)?.filter(|v| !v.is_none()) else { return Ok(None) };
        let v: Vec<String> = v.extract().map_err(|_| PyTypeError::new_err(format!("{name}: `{k}` must be a list of strings")))?;
        if v.len() != n {
            return Err(PyValueError::new_err(format!("{name}: `visual` has {n} rows but `{k}` has {}", v.len())));
        }
        Ok(Some(v))
    };
    if n == 0 {
        return Err(PyValueError::new_err(format!("{name}: no rows (leave an empty split out)")));
    }
    let ids = strings("ids")?.unwrap_or_else(|| (0..n).map(|i| format!("{name}/{i}")).collect());
    let mut seen = std::collections::HashMap::new();
    for (row, id) in ids.iter().enumerate() {
        if let Some(first) = seen.insert(id, row) {
            return Err(PyValueError::new_err(format!("{name}: id `{id}` is given to rows {first} and {row} (ids must be distinct)")));
        }
    }
    let groups = strings("group")?.unwrap_or_default();
    Ok(Split {
        visual,
        dv,
        text,
        ds,
        label: label.into_iter().map(|l| l as u32).collect(),
        meta: SplitMeta { classes: classes.to_vec(), ids, groups, dataset: "numpy".into(), ..Default::default() },
        visual_tokens: None,
        text_tokens: None,
    })
}
