//! Linear weights stored with padded rows.
//!
//! A weight [in, out] is stored row-major, so a product reads its rows `out` floats apart. When
//! that distance is a multiple of 4 KiB (out = 1024, 2048, ...: the denoiser's hidden layers),
//! every row of a column block falls into the same few sets of the L1 cache (and of L2): the
//! matmul crate, reading the weight in place (the 64-row training products, serving's 8-row
//! ones), ran the 1024 -> 1024 layer 12-19% slower on the Zen 5 than with rows 1040 floats
//! apart, its input gradient 21-31% (BENCHMARKS.md, 2026-12-05; `marnet bench
//! --extraction-only` shows both). So the variable behind such a
//! layer's weight holds [in, out + PAD], each row followed by PAD zeros, and the layer reads the
//! [in, out] view of it. The padding keeps its zeros through training: its gradient is zero, and
//! so is AdamW's update of a zero weight with zero moments. The backward products read the
//! layer's output gradient and input across their rows too: they get padded copies
//! ([`rows_apart`]). Products give the same bits either way; checkpoints and optimiser state hold
//! the [in, out] values, as before.
//!
//! `MARNET_PAD_WEIGHTS=0` turns it off (to compare).

use candle_core::{Device, Result, Tensor, TensorId, Var};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Floats of padding after each row (64 bytes: one cache line).
pub const PAD: usize = 16;

/// Row lengths, in floats, whose multiples get padded (4 KiB).
const ALIASING_FLOATS: usize = 1024;

const ENV: &str = "MARNET_PAD_WEIGHTS";

/// Padded variables: their logical number of columns.
static PADDED: Mutex<Option<HashMap<TensorId, usize>>> = Mutex::new(None);

thread_local! {
    /// Set by [`linear_weight`] while a layer asks for its weight: the padded variable made.
    static REQUEST: RefCell<Option<Option<Tensor>>> = const { RefCell::new(None) };
    /// A thread's override of `MARNET_PAD_WEIGHTS` (tests compare both ways).
    static OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

fn enabled() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    OVERRIDE.get().unwrap_or_else(|| *FROM_ENV.get_or_init(|| std::env::var(ENV).map_or(true, |v| v != "0")))
}

/// Whether rows of `cols` floats are padded: a multiple of 4 KiB apart otherwise.
pub fn aliasing(cols: usize) -> bool {
    cols > 0 && cols.is_multiple_of(ALIASING_FLOATS) && enabled()
}

/// `values`, rows of `cols` floats, copied into rows `cols + PAD` apart when [`aliasing`] says
/// so (a layer's input and output gradient, which its backward products read across rows); with
/// the distance between rows.
pub fn rows_apart(values: &[f32], cols: usize) -> (Cow<'_, [f32]>, usize) {
    if !aliasing(cols) {
        return (Cow::Borrowed(values), cols);
    }
    let ld = cols + PAD;
    let mut out = vec![0f32; values.len() / cols * ld];
    out.chunks_exact_mut(ld).zip(values.chunks_exact(cols)).for_each(|(o, v)| o[..cols].copy_from_slice(v));
    (Cow::Owned(out), ld)
}

/// [`rows_apart`] for a contiguous 2-D tensor: `t` itself, or the [rows, cols] view of a padded
/// copy, for readers that take rows apart ([`crate::nn::cpu::with_f32_rows`]).
pub fn rows_apart_tensor(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if !aliasing(cols) {
        return Ok(t.clone());
    }
    let (values, ld) = crate::nn::cpu::with_f32("padded", t, |v| {
        let (v, ld) = rows_apart(v, cols);
        (v.into_owned(), ld)
    })?;
    Tensor::from_vec(values, (rows, ld), t.device())?.narrow(1, 0, cols)
}

fn with_registry<R>(f: impl FnOnce(&mut HashMap<TensorId, usize>) -> R) -> R {
    f(PADDED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default())
}

/// Turns padding on or off on this thread, whatever the environment says (tests).
#[cfg(test)]
fn set_on_this_thread(on: bool) {
    OVERRIDE.set(Some(on));
}

/// A linear layer's weight from `get` (a `VarBuilder` call), and the padded variable behind it
/// when the builder made one ([`crate::rng::SeededInit`] does, for shapes that need it).
pub(crate) fn linear_weight(get: impl FnOnce() -> Result<Tensor>) -> Result<(Tensor, Option<Tensor>)> {
    /// Puts the request that was pending back, even if `get` panics.
    struct Restore(Option<Option<Option<Tensor>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(before) = self.0.take() {
                REQUEST.set(before);
            }
        }
    }
    let mut restore = Restore(Some(REQUEST.replace(Some(None))));
    let weight = get();
    let made = REQUEST.replace(restore.0.take().expect("set above")).flatten();
    Ok((weight?, made))
}

/// For a variable builder: whether a new variable of `shape` is a linear layer's weight to pad.
pub fn wanted(shape: &[usize], dev: &Device) -> bool {
    let asked = REQUEST.with_borrow(|r| r.is_some());
    asked && dev.is_cpu() && matches!(shape, [_, out] if aliasing(*out))
}

/// For a variable builder: the variable holding `values` [in, out] in padded rows, and the
/// [in, out] view the layer reads; the layer that asked ([`linear_weight`]) gets the variable.
pub fn padded_var(values: &Tensor) -> Result<(Var, Tensor)> {
    let cols = values.dim(1)?;
    let var = Var::from_tensor(&values.pad_with_zeros(1, 0, PAD)?)?;
    with_registry(|r| r.insert(var.id(), cols));
    Ok((var.clone(), offer(&var, "a new variable")?))
}

/// A variable's view as a layer reads it: itself, or the [in, out] view of a padded one, then
/// offered to the linear layer that asked ([`linear_weight`]). The view is detached (candle's
/// backward pass would expect a gradient for it): the layer hands its gradient to the variable,
/// so a padded variable `name` asked for by anything else is an error.
pub fn offer(var: &Var, name: &str) -> Result<Tensor> {
    let Some(cols) = logical_cols(var) else { return Ok(var.as_tensor().clone()) };
    let asked = REQUEST.with_borrow_mut(|r| r.as_mut().map(|slot| *slot = Some(var.as_tensor().clone())).is_some());
    if !asked {
        candle_core::bail!("{name}: a padded linear weight, asked for by something other than a linear layer");
    }
    Ok(var.as_tensor().narrow(1, 0, cols)?.detach())
}

/// The number of columns a padded variable stands for; `None` for any other.
pub fn logical_cols(var: &Tensor) -> Option<usize> {
    with_registry(|r| r.get(&var.id()).copied())
}

/// The shape a variable stands for: its own, less any padding.
pub fn logical_dims(var: &Tensor) -> Vec<usize> {
    let mut dims = var.dims().to_vec();
    if let Some(cols) = logical_cols(var) {
        dims[1] = cols;
    }
    dims
}

/// `t`, which has a variable's storage shape (the variable itself, or an optimiser moment), as
/// the values the variable stands for: a contiguous copy without the padding.
pub fn logical(var: &Tensor, t: &Tensor) -> Result<Tensor> {
    match logical_cols(var) {
        Some(cols) => t.narrow(1, 0, cols)?.contiguous(),
        None => Ok(t.clone()),
    }
}

/// `values` of [`logical_dims`] in the variable's storage shape (zeros in the padding).
pub fn storage_form(var: &Tensor, values: &Tensor) -> Result<Tensor> {
    match logical_cols(var) {
        Some(cols) => values.pad_with_zeros(1, 0, var.dim(1)? - cols),
        None => Ok(values.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LoadedModel;
    use crate::model::marnet::{MarnetConfig, Variant};
    use crate::optim::{AdamW, AdamWConfig};
    use crate::rng::{randn, stream};

    /// Values by name, as bits.
    type Bits = Vec<(String, Vec<u32>)>;

    /// What a training run leaves, as a checkpoint stores it (every variable's values and the
    /// optimiser's moments), and how many of its variables are padded.
    fn train(pad: bool, clip_grad: f64, in_backward: bool) -> anyhow::Result<(Bits, usize)> {
        let dev = Device::Cpu;
        let cfg = MarnetConfig { hidden: 1024, temb: 8, ..MarnetConfig::new(Variant::Marnet, 12, 10, 5) };
        // Every thread of the run pads, or none does (the backward products' operands too).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).start_handler(move |_| set_on_this_thread(pad)).build()?;
        let model = pool.install(|| LoadedModel::init(&cfg, 1, &dev))?;
        let vars = model.trainable_vars();
        let padded = vars.iter().filter(|(_, v)| logical_cols(v).is_some()).count();
        let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: 0.01, ..Default::default() })?;
        opt.set_update_in_backward(in_backward);
        let mut rng = stream(3, "test", 0);
        let (xv, xs) = (randn(&mut rng, (16, 12), &dev)?, randn(&mut rng, (16, 10), &dev)?);
        let y = Tensor::from_vec((0..16u32).map(|i| i % 5).collect::<Vec<_>>(), 16, &dev)?;
        for _ in 0..3 {
            pool.install(|| crate::train::step(&model.model, &mut opt, &xv, &xs, None, &y, &mut rng, clip_grad))?;
        }
        for (name, v) in &vars {
            if let Some(cols) = logical_cols(v) {
                let tail = v.as_tensor().narrow(1, cols, PAD)?.flatten_all()?.to_vec1::<f32>()?;
                assert!(tail.iter().all(|&x| x == 0.0), "{name}: the padding moved");
            }
        }
        let mut out = Vec::new();
        for (name, v) in model.named_vars() {
            out.push((name, logical(&v, &v)?));
        }
        out.extend(opt.state()?);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let bits = out.into_iter().map(|(k, t)| Ok((k, t.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect()))).collect::<Result<_>>()?;
        Ok((bits, padded))
    }

    /// The denoiser's 1024-wide layers get padded weights, which train to the same bits as
    /// unpadded ones with no padded copies in the backward pass either (with and without
    /// gradient clipping, whose norm skips the padding; with updates in the backward pass, by
    /// rows, and after it), keep their padding at zero, and are stored without it.
    #[test]
    fn padded_weights_train_to_the_same_bits() -> anyhow::Result<()> {
        let (by_rows, _) = train(true, 0.0, true)?;
        let (after, _) = train(true, 0.0, false)?;
        assert!(by_rows == after, "updates in the backward pass differ from those after it");
        for clip_grad in [0.0, 0.5] {
            let (on, padded) = train(true, clip_grad, true)?;
            let (off, none) = train(false, clip_grad, true)?;
            assert_eq!((padded, none), (3, 0), "padded weights with padding on and off");
            assert_eq!(on.len(), off.len());
            for ((name, a), (_, b)) in on.iter().zip(&off) {
                assert!(a == b, "{name} differs (clip {clip_grad})");
            }
        }
        Ok(())
    }

    /// Checkpoint values go into a padded model's variables and come back out unchanged; the
    /// layer that asked gets the variable.
    #[test]
    fn values_round_trip_through_a_padded_variable() -> Result<()> {
        let dev = Device::Cpu;
        let values = randn(&mut stream(4, "test", 0), (3, 1024), &dev)?;
        let mut made = None;
        let (view, offered) = linear_weight(|| {
            let (var, view) = padded_var(&values)?;
            made = Some(var);
            Ok(view)
        })?;
        let var = made.expect("made");
        assert_eq!(offered.map(|t| t.id()), Some(var.id()), "the layer gets the variable");
        // Asked for by anything but a linear layer, it is an error: that reader would get no gradient.
        assert!(offer(&var, "w").is_err());
        assert_eq!((var.dims(), view.dims(), logical_dims(&var)), (&[3, 1024 + PAD][..], &[3, 1024][..], vec![3, 1024]));
        let back = logical(&var, &var)?;
        assert_eq!((&back - &values)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        var.set(&storage_form(&var, &(&values * 2.0)?)?)?;
        assert_eq!((view - (&values * 2.0)?)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
