//! Every validation error of the feature cache, produced on a crafted bad file: an error that
//! names the file and the problem, never a panic.

mod common;
use marnet::features::{FeatureCache, FeatureSplit};
use safetensors::{Dtype, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)).to_vec() }
}

struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32s(name: &'static str, n: usize, d: usize, v: f32) -> T {
    T { name, dtype: Dtype::F32, shape: vec![n, d], data: bytes(&vec![v; n * d]) }
}

fn labels(v: &[i64]) -> T {
    T { name: "label", dtype: Dtype::I64, shape: vec![v.len()], data: bytes(v) }
}

fn write(path: &Path, tensors: Vec<T>, classes: usize) {
    write_with_ids(path, tensors, classes, None);
}

fn write_with_ids(path: &Path, tensors: Vec<T>, classes: usize, ids: Option<&[&str]>) {
    let views: Vec<(&str, TensorView)> = tensors.iter().map(|t| (t.name, TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    let names: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
    let mut md = HashMap::from([("classes".to_string(), serde_json::to_string(&names).unwrap())]);
    if let Some(ids) = ids {
        md.insert("ids".to_string(), serde_json::to_string(ids).unwrap());
    }
    std::fs::write(path, safetensors::serialize(views, Some(md)).unwrap()).unwrap();
}

/// Writes `tensors` as a train split and returns the error message of opening the cache.
fn open_err(tensors: Vec<T>, classes: usize) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train.safetensors");
    write(&path, tensors, classes);
    let err = FeatureCache::open(tmp.path()).expect_err("bad file accepted");
    (format!("{err:#}"), path.display().to_string())
}

fn assert_err(tensors: Vec<T>, classes: usize, want: &str) {
    let (msg, path) = open_err(tensors, classes);
    assert!(msg.contains(&path), "message does not name the file: {msg}");
    assert!(msg.contains(want), "expected `{want}` in: {msg}");
}

#[test]
fn missing_tensor() {
    assert_err(vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0)], 2, "tensor `label` is missing");
    assert_err(vec![f32s("text", 3, 2, 0.0), labels(&[0, 1, 0])], 2, "tensor `visual` is missing");
    assert_err(vec![f32s("visual", 3, 4, 0.0), labels(&[0, 1, 0])], 2, "tensor `text` is missing");
}

#[test]
fn wrong_dtype() {
    let v = T { name: "visual", dtype: Dtype::F64, shape: vec![3, 4], data: bytes(&[0f64; 12]) };
    assert_err(vec![v, f32s("text", 3, 2, 0.0), labels(&[0, 1, 0])], 2, "dtype F64, expected F32");
    let l = T { name: "label", dtype: Dtype::I32, shape: vec![3], data: bytes(&[0i32; 3]) };
    assert_err(vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0), l], 2, "dtype I32, expected I64");
}

#[test]
fn row_count_mismatch() {
    assert_err(vec![f32s("visual", 3, 4, 0.0), f32s("text", 2, 2, 0.0), labels(&[0, 1, 0])], 2, "row-count mismatch");
    assert_err(vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0), labels(&[0, 1])], 2, "row-count mismatch");
}

#[test]
fn label_out_of_range() {
    let t = || vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0)];
    let mut a = t();
    a.push(labels(&[0, 5, 1]));
    assert_err(a, 2, "row 1 has label 5 but there are only 2 classes");
    let mut b = t();
    b.push(labels(&[0, -1, 1]));
    assert_err(b, 2, "row 1 has label -1");
}

#[test]
fn label_without_class_names_is_bounded() {
    // A damaged label (up to 2^32) in a file without class names must not make billions of names.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train.safetensors");
    let ts = [f32s("visual", 3, 4, 0.0), labels(&[0, 4_000_000_000, 1])];
    let views: Vec<(&str, TensorView)> = ts.iter().map(|t| (t.name, TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let msg = format!("{:#}", FeatureSplit::read(&path).unwrap_err());
    assert!(msg.contains(&path.display().to_string()) && msg.contains("label 4000000000 but no metadata `classes`"), "{msg}");
    let ts = [f32s("visual", 3, 4, 0.0), labels(&[0, 2, 1])];
    let views: Vec<(&str, TensorView)> = ts.iter().map(|t| (t.name, TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap())).collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    assert_eq!(FeatureSplit::read(&path).unwrap().meta.classes, ["class_0", "class_1", "class_2"]);
}

#[test]
fn non_finite_values() {
    let mut v = f32s("visual", 3, 4, 0.0);
    v.data = bytes(&[0., 0., 0., 0., 0., 0., f32::NAN, 0., 0., 0., 0., 0.]);
    assert_err(vec![v, f32s("text", 3, 2, 0.0), labels(&[0, 1, 0])], 2, "non-finite value (NaN) at row 1, column 2");
    assert_err(
        vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, f32::INFINITY), labels(&[0, 1, 0])],
        2,
        "tensor `text` has a non-finite value (inf) at row 0",
    );
}

#[test]
fn empty_split() {
    assert_err(vec![f32s("visual", 0, 4, 0.0), f32s("text", 0, 2, 0.0), labels(&[])], 2, "split is empty");
}

#[test]
fn not_a_safetensors_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let msg = format!("{:#}", FeatureSplit::read(&path).unwrap_err());
    assert!(msg.contains(&path.display().to_string()) && msg.contains("not a safetensors file"), "{msg}");
    let missing = format!("{:#}", FeatureCache::open(&tmp.path().join("nope")).unwrap_err());
    assert!(missing.contains("feature cache folder not found"), "{missing}");
}

#[test]
fn mismatched_dims_between_splits() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("train.safetensors"), vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0), labels(&[0, 1, 0])], 2);
    let test = tmp.path().join("test.safetensors");
    write(&test, vec![f32s("visual", 2, 5, 0.0), labels(&[0, 1])], 2);
    let msg = format!("{:#}", FeatureCache::open(tmp.path()).unwrap_err());
    assert!(msg.contains(&test.display().to_string()) && msg.contains("visual dim 5 differs from train's 4"), "{msg}");
}

#[test]
fn round_trip_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::synth_config("--classes 3 --dv 4 --ds 5 --n-train 7 --n-val 0 --n-test 2 --text-rank 2 --vis-noise 1.0 --bg-scale 1.0 --n-bg 2 --seed 1");
    let written = marnet::synth::write(&cfg, tmp.path()).unwrap();
    let read = FeatureCache::open(tmp.path()).unwrap();
    assert_eq!(read.train, written.train);
    assert_eq!(read.test, written.test);
    assert!(read.val.is_none());
}

#[test]
fn duplicate_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train.safetensors");
    let t = vec![f32s("visual", 3, 4, 0.0), f32s("text", 3, 2, 0.0), labels(&[0, 1, 0])];
    write_with_ids(&path, t, 2, Some(&["a.jpg", "b.jpg", "a.jpg"]));
    let msg = format!("{:#}", FeatureCache::open(tmp.path()).unwrap_err());
    assert!(msg.contains(&path.display().to_string()) && msg.contains("duplicate sample id `a.jpg` at rows 0 and 2"), "{msg}");
}
