//! Views of candle's CPU storage as f32 slices, without copying.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 values a contiguous tensor covers; `op` names the kernel in the error.
pub fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: expected a contiguous f32 tensor"),
    }
}

/// Mutable form of [`f32_slice`].
pub fn f32_slice_mut<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: expected a contiguous f32 tensor"),
    }
}

/// The values of a 2-D f32 tensor whose rows are contiguous but may lie further apart than their
/// length (a padded weight, [`crate::nn::padded`]): from the first row's start, and the
/// distance between rows.
pub fn f32_rows<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
    let (rows, cols) = l.shape().dims2()?;
    let stride = l.stride();
    let row_stride = if rows <= 1 { cols } else { stride[0] };
    match s {
        CpuStorage::F32(v) if (cols <= 1 || stride[1] == 1) && row_stride >= cols => {
            let start = l.start_offset();
            let len = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * row_stride + cols };
            Ok((&v[start..start + len], row_stride))
        }
        _ => candle_core::bail!("{op}: expected an f32 matrix with contiguous rows"),
    }
}

/// The CPU storage behind a tensor's, or an error naming `op`.
fn on_cpu<'a>(op: &str, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("{op}: expected a CPU tensor"),
    }
}

/// Runs `f` on the rows of a 2-D f32 CPU tensor as [`f32_rows`] gives them, without copying.
pub fn with_f32_rows<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (v, row_stride) = f32_rows(op, on_cpu(op, &storage)?, layout)?;
    Ok(f(v, row_stride))
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, without copying them.
pub fn with_f32<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    Ok(f(f32_slice(op, on_cpu(op, &storage)?, layout)?))
}

/// [`with_f32_rows`] over several tensors at once: `f` gets each one's values and row distance.
pub fn with_f32_rows_all<R>(op: &str, tensors: &[&Tensor], f: impl FnOnce(&[(&[f32], usize)]) -> R) -> Result<R> {
    let held: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let rows = held.iter().map(|(s, l)| f32_rows(op, on_cpu(op, s)?, l)).collect::<Result<Vec<_>>>()?;
    Ok(f(&rows))
}
