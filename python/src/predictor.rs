//! `Predictor`: a bundle (`marnet export`) applied to images or to visual features.

use crate::{err, to_python};
use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;

/// A model bundle made by `marnet export`: its visual encoder, heads and class names.
#[pyclass(name = "Predictor", module = "marnet")]
pub struct Predictor {
    inner: marnet::bundle::Predictor,
}

#[pymethods]
impl Predictor {
    /// Loads the bundle folder `path` (a training run is refused with the `export` that makes one).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        py.detach(|| marnet::bundle::Predictor::load(&path, &candle_core::Device::Cpu)).map(|inner| Self { inner }).map_err(err)
    }

    /// The class names, index order (the columns of the probabilities).
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.config.classes.clone()
    }

    /// Class probabilities, float32 [N, C], of visual features [N, Dv] from the bundle's own
    /// encoder; a row's sampling noise follows its values, so it gets the same answer in any batch.
    fn predict_features<'py>(&self, py: Python<'py>, features: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let features = crate::cache::as_array::<f32>(features, "features", 2, "f", "a 2-D float array [N, Dv]")?;
        let shape = features.shape().to_vec();
        let values = features.to_vec()?;
        let probs = py
            .detach(|| {
                let xv = candle_core::Tensor::from_vec(values, (shape[0], shape[1]), &candle_core::Device::Cpu)?;
                self.inner.feature_probabilities(&xv)
            })
            .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        PyArray2::from_vec2(py, &probs).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// `marnet predict --format jsonl`: for each image file (or folder of them), a dict with its
    /// `path` and `top` (the `top_k` classes: `class`, `index`, `prob`), or `error` when it could
    /// not be read.
    #[pyo3(signature = (paths, top_k=5, batch=32, progress=true))]
    fn predict_images(&self, py: Python<'_>, paths: Vec<PathBuf>, top_k: usize, batch: usize, progress: bool) -> PyResult<Py<PyAny>> {
        let results = py
            .detach(|| {
                let files = marnet::predict::collect_inputs(&paths)?;
                marnet::predict::predict_files(&self.inner, &files, top_k, batch, progress)
            })
            .map_err(err)?;
        to_python(py, &results)
    }
}
