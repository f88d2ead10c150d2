//! Token features: per row, the encoders' tokens before pooling, in f16 (see the folder's docs).

use anyhow::{Result, bail, ensure};
use half::f16;
use half::slice::HalfFloatSliceExt;
use safetensors::{Dtype, SafeTensors};

/// Token features of every row of a split: `data` [N, len, dim] row-major in f16, and which
/// positions are real tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub data: Vec<f16>,
    /// Tokens per row (T; the padded length for text).
    pub len: usize,
    /// Width of each token (D).
    pub dim: usize,
    /// [N, len], 1 = real token, 0 = padding; `None`: every token is real.
    pub mask: Option<Vec<u8>>,
}

impl Tokens {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.data.len() / (self.len * self.dim).max(1)
    }

    /// Rows `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Tokens {
        let row = self.len * self.dim;
        let mut data = Vec::with_capacity(idx.len() * row);
        for &i in idx {
            data.extend_from_slice(&self.data[i * row..(i + 1) * row]);
        }
        let mask = self.mask.as_ref().map(|m| idx.iter().flat_map(|&i| m[i * self.len..(i + 1) * self.len].iter().copied()).collect());
        Tokens { data, len: self.len, dim: self.dim, mask }
    }

    /// Rows `idx` as f32 [idx.len(), len, dim], row-major (a training batch).
    pub fn gather_f32(&self, idx: &[usize]) -> Vec<f32> {
        let row = self.len * self.dim;
        let mut out = vec![0f32; idx.len() * row];
        for (o, &i) in out.chunks_exact_mut(row.max(1)).zip(idx) {
            self.data[i * row..(i + 1) * row].convert_to_f32_slice(o);
        }
        out
    }

    /// The mask of rows `idx` as f32 [idx.len(), len] (all ones without a mask).
    pub fn gather_mask_f32(&self, idx: &[usize]) -> Vec<f32> {
        match &self.mask {
            Some(m) => idx.iter().flat_map(|&i| m[i * self.len..(i + 1) * self.len].iter().map(|&b| b as f32)).collect(),
            None => vec![1.0; idx.len() * self.len],
        }
    }

    /// The same rows padded with zero tokens (mask 0) to `len` tokens each.
    pub fn padded_to(&self, len: usize) -> Tokens {
        if len == self.len {
            return self.clone();
        }
        assert!(len > self.len, "padded_to: {len} < {}", self.len);
        let (n, d) = (self.rows(), self.dim);
        let mut data = vec![f16::ZERO; n * len * d];
        let mut mask = vec![0u8; n * len];
        let own = self.mask.clone().unwrap_or_else(|| vec![1; n * self.len]);
        for r in 0..n {
            data[r * len * d..(r * len + self.len) * d].copy_from_slice(&self.data[r * self.len * d..(r + 1) * self.len * d]);
            mask[r * len..r * len + self.len].copy_from_slice(&own[r * self.len..(r + 1) * self.len]);
        }
        Tokens { data, len, dim: d, mask: Some(mask) }
    }

    /// Rows of `parts` in order, padded to the longest part's length; `None` unless every part
    /// has tokens (a part without them drops them from the result).
    pub(super) fn concat(parts: &[Option<&Tokens>]) -> Result<Option<Tokens>> {
        let Some(parts) = parts.iter().copied().collect::<Option<Vec<&Tokens>>>() else { return Ok(None) };
        let Some(first) = parts.first() else { return Ok(None) };
        ensure!(parts.iter().all(|p| p.dim == first.dim), "token widths differ between the parts");
        let len = parts.iter().map(|p| p.len).max().unwrap();
        let masked = parts.iter().any(|p| p.mask.is_some() || p.len != len);
        let mut out = Tokens { data: vec![], len, dim: first.dim, mask: masked.then(Vec::new) };
        for p in parts {
            let p = if masked { p.padded_to(len) } else { (*p).clone() };
            out.data.extend_from_slice(&p.data);
            if let Some(m) = out.mask.as_mut() {
                let rows = p.rows();
                m.extend(p.mask.unwrap_or_else(|| vec![1; rows * len]));
            }
        }
        Ok(Some(out))
    }
}

/// `{kind}_tokens` f16 [N, T, D] and its mask `{kind}_mask` u8 [N, T], if stored. `mask_required`:
/// tokens without a mask are an error (padded text); else a missing mask means all real.
pub(super) fn read_tokens(st: &SafeTensors, kind: &str, n: usize, mask_required: bool) -> Result<Option<Tokens>> {
    let (name, mask_name) = (format!("{kind}_tokens"), format!("{kind}_mask"));
    let names = st.names();
    let has = |x: &str| names.contains(&x);
    if !has(&name) {
        ensure!(!has(&mask_name), "tensor `{mask_name}` is present but `{name}` is missing");
        return Ok(None);
    }
    let t = st.tensor(&name)?;
    ensure!(t.dtype() == Dtype::F16, "tensor `{name}` has dtype {:?}, expected F16", t.dtype());
    let shape = t.shape();
    ensure!(shape.len() == 3, "tensor `{name}` has shape {shape:?}, expected [N, T, D]");
    ensure!(shape[0] == n, "row-count mismatch: `visual` has {n} rows but `{name}` has {}", shape[0]);
    let (len, dim) = (shape[1], shape[2]);
    ensure!(len > 0 && dim > 0, "tensor `{name}` has shape {shape:?}: no tokens or zero width");
    let data: Vec<f16> = t.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
    if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
        let (row, rest) = (pos / (len * dim), pos % (len * dim));
        bail!("tensor `{name}` has a non-finite value ({}) at row {row}, token {}, column {}", data[pos], rest / dim, rest % dim);
    }
    let mask = if has(&mask_name) {
        let m = st.tensor(&mask_name)?;
        ensure!(m.dtype() == Dtype::U8, "tensor `{mask_name}` has dtype {:?}, expected U8", m.dtype());
        ensure!(m.shape() == [n, len], "tensor `{mask_name}` has shape {:?}, expected [{n}, {len}] as `{name}`", m.shape());
        let m = m.data().to_vec();
        if let Some(pos) = m.iter().position(|&b| b > 1) {
            bail!("tensor `{mask_name}` has value {} at row {}, token {}; expected 0 or 1", m[pos], pos / len, pos % len);
        }
        if let Some(row) = m.chunks_exact(len).position(|r| r.iter().all(|&b| b == 0)) {
            bail!("tensor `{mask_name}`: row {row} has no real token");
        }
        Some(m)
    } else {
        ensure!(!mask_required, "tensor `{name}` needs its mask `{mask_name}` (u8 [N, T], 1 = real token)");
        None
    };
    Ok(Some(Tokens { data, len, dim, mask }))
}
