//! The Python module `marnet._marnet`: each function a thin call into the library, with the
//! command line's option names and defaults (keyword arguments are parsed by the same clap
//! declarations), numpy in and out, long calls without the GIL and stopped by Ctrl-C.

mod cache;
mod predictor;
mod runs;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The library's error, with its whole chain, as a Python exception (Ctrl-C: KeyboardInterrupt).
fn err(e: anyhow::Error) -> PyErr {
    if e.downcast_ref::<marnet::interrupt::Interrupted>().is_some() {
        return PyKeyboardInterrupt::new_err(format!("{e:#}"));
    }
    PyRuntimeError::new_err(format!("{e:#}"))
}

/// `{"epochs": 3, "align_weight": 0.5}` as `--epochs 3 --align-weight 0.5`; True is the flag
/// alone, False and None leave it out, a list is joined with commas.
fn flags(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
    let mut out = vec![];
    for (k, v) in kwargs.into_iter().flat_map(|d| d.iter()) {
        let flag = format!("--{}", k.extract::<String>()?.replace('_', "-"));
        if v.is_none() {
            continue;
        }
        if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
            if b.is_true() {
                out.push(flag);
            }
            continue;
        }
        let value = match v.cast::<PyList>() {
            Ok(list) => list.iter().map(|x| x.str().map(|s| s.to_string())).collect::<PyResult<Vec<_>>>()?.join(","),
            Err(_) => v.str()?.to_string(),
        };
        // One token, so that a negative value is not read as a flag.
        out.push(format!("{flag}={value}"));
    }
    Ok(out)
}

/// The options struct `T` from keyword arguments (unknown names and bad values: ValueError with
/// clap's message, which names the option as the command line spells it).
fn options<T: clap::Args + clap::FromArgMatches>(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<T> {
    let args = flags(kwargs)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    marnet::options::parse(&args).map_err(|e| PyValueError::new_err(option_error(&format!("{e:#}"))))
}

/// clap's message without what only a command line can use (`Usage:`, `try '--help'`).
fn option_error(message: &str) -> String {
    let first = message.split("\n\nUsage:").next().unwrap_or(message);
    let first = first.split("\n\nFor more information").next().unwrap_or(first);
    first.trim().trim_start_matches("error: ").to_string()
}

/// Runs `work` on its own thread while this one, without the GIL, polls Python's signals: Ctrl-C
/// asks the library to stop (it finishes the step, saves what it has, and returns Interrupted).
fn interruptible<T: Send>(py: Python<'_>, work: impl FnOnce() -> anyhow::Result<T> + Send) -> PyResult<T> {
    marnet::interrupt::clear();
    std::thread::scope(|s| {
        let job = s.spawn(work);
        let mut asked = false;
        while !job.is_finished() {
            py.detach(|| std::thread::sleep(std::time::Duration::from_millis(20)));
            if !asked && py.check_signals().is_err() {
                marnet::interrupt::request();
                asked = true;
            }
        }
        job.join().map_err(|_| PyRuntimeError::new_err("marnet panicked (see the message above)"))?.map_err(err)
    })
}

/// A serde value as the Python object `json.loads` gives for it.
fn to_python(py: Python<'_>, v: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

#[pymodule]
fn _marnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    marnet::runtime::init_embedded(None);
    m.add_class::<cache::FeatureCache>()?;
    m.add_class::<cache::FeatureSplit>()?;
    m.add_class::<runs::Run>()?;
    m.add_class::<runs::Table>()?;
    m.add_class::<predictor::Predictor>()?;
    m.add_function(wrap_pyfunction!(runs::train, m)?)?;
    m.add_function(wrap_pyfunction!(runs::ablate, m)?)?;
    m.add_function(wrap_pyfunction!(runs::compare, m)?)?;
    m.add_function(wrap_pyfunction!(runs::extract, m)?)?;
    Ok(())
}
