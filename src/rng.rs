//! Seeded randomness. candle's CPU backend ignores `set_seed`, so every random number that
//! matters (initial weights, shuffles, diffusion steps and noise) is drawn here, on the host,
//! from a ChaCha12 stream derived from the run's seed. Same seed, same bits.

use crate::nn::padded;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarMap, init::NormalOrUniform, var_builder::SimpleBackend};
use rand::{Rng, SeedableRng};
use rand_distr::{StandardNormal, Uniform};
use std::sync::Mutex;

/// The generator behind every stream: ChaCha12, the algorithm of rand's `StdRng`, named
/// explicitly so that a stream's position can be saved and restored (`get_word_pos`).
pub type SeededRng = rand_chacha::ChaCha12Rng;

/// The inference noise of one image: keyed on its bytes ([`content_key`]), so that `eval` (on
/// its extracted features), `predict` and `serve` give an image the same answer in any batch; in
/// a cache without image keys, `eval` keys a row on its number. The one place these streams are
/// made.
pub fn image_noise(seed: u64, key: u64) -> SeededRng {
    stream(seed, "image", key)
}

/// An independent stream for `(seed, purpose, index)`, e.g. the shuffle of epoch 3.
pub fn stream(seed: u64, purpose: &str, index: u64) -> SeededRng {
    // FNV-1a of the purpose, mixed with seed and index (splitmix64 finaliser).
    let h = fnv1a(purpose.bytes());
    let mut z = seed ^ h.rotate_left(17) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    SeededRng::seed_from_u64(z ^ (z >> 31))
}

/// `n` draws from N(0, 1).
pub fn normal_vec(rng: &mut SeededRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
}

/// A tensor of N(0, 1) draws.
pub fn randn(rng: &mut SeededRng, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    Tensor::from_vec(normal_vec(rng, shape.elem_count()), shape, dev)
}

/// Where inference draws its Gaussian noise from.
pub enum Noise<'a> {
    /// One stream for the whole batch: a row's draws depend on its place in the batch.
    Shared(&'a mut SeededRng),
    /// One stream per row (keyed on the image's bytes, or in `eval` of a cache without image
    /// keys on the row's number): a row gets the same draws, and so the same prediction, in any
    /// batch (`eval`, `predict`, `serve`).
    PerRow(&'a mut [SeededRng]),
}

impl Noise<'_> {
    /// A [rows, cols] tensor of N(0, 1) draws.
    pub fn randn(&mut self, rows: usize, cols: usize, dev: &Device) -> Result<Tensor> {
        match self {
            Noise::Shared(rng) => randn(rng, (rows, cols), dev),
            Noise::PerRow(rngs) => {
                if rngs.len() != rows {
                    candle_core::bail!("{} noise streams for {rows} rows", rngs.len());
                }
                // Rows draw from their own streams, so they can be drawn in parallel.
                use rayon::prelude::*;
                let draws: Vec<Vec<f32>> = rngs.par_iter_mut().map(|r| normal_vec(r, cols)).collect();
                let v: Vec<f32> = draws.concat();
                Tensor::from_vec(v, (rows, cols), dev)
            }
        }
    }
}

/// FNV-1a's offset basis and prime (64-bit).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x100_0000_01b3;

/// The 64-bit FNV-1a hash of a byte sequence.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv1a_continue(FNV_OFFSET, bytes)
}

/// FNV-1a from state `h`, so that a long input can be hashed in pieces.
pub fn fnv1a_continue(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(h, |h, b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// FNV-1a of an image file's bytes: the key of its noise stream.
pub fn content_key(bytes: &[u8]) -> u64 {
    fnv1a(bytes.iter().copied())
}

/// The Fisher-Yates permutation of `0..n`.
pub fn permutation(rng: &mut SeededRng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.random_range(0..=i));
    }
    p
}

/// A `VarMap` backend whose new variables are initialised from a seeded stream, in the order
/// the model's constructor asks for them. `VarBuilder::from_backend(Box::new(SeededInit::new(..)))`.
pub struct SeededInit {
    map: VarMap,
    rng: Mutex<SeededRng>,
}

impl SeededInit {
    pub fn new(map: VarMap, seed: u64) -> Self {
        Self { map, rng: Mutex::new(stream(seed, "init", 0)) }
    }

    fn draw(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let mut rng = self.rng.lock().unwrap();
        let n = shape.elem_count();
        let uniform = |rng: &mut SeededRng, lo: f64, up: f64| -> Vec<f32> {
            let u = Uniform::new(lo as f32, up as f32).expect("bounds");
            (0..n).map(|_| rng.sample(u)).collect()
        };
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => normal_vec(&mut rng, n).into_iter().map(|x| mean as f32 + stdev as f32 * x).collect(),
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Kaiming { dist, fan, non_linearity } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => uniform(&mut rng, -3f64.sqrt() * std, 3f64.sqrt() * std),
                    NormalOrUniform::Normal => normal_vec(&mut rng, n).into_iter().map(|x| std as f32 * x).collect(),
                }
            }
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().unwrap();
        if let Some(v) = data.get(name) {
            if padded::logical_dims(v.as_tensor()) != s.dims() {
                candle_core::bail!("{name}: shape {:?} differs from {:?}", padded::logical_dims(v.as_tensor()), s);
            }
            return padded::offer(v, name);
        }
        let t = Tensor::from_vec(self.draw(&s, h), s.clone(), dev)?.to_dtype(dtype)?;
        let (var, view) = match padded::wanted(s.dims(), dev) {
            true => padded::padded_var(&t)?,
            false => {
                let var = Var::from_tensor(&t)?;
                (var.clone(), var.as_tensor().clone())
            }
        };
        data.insert(name.to_string(), var);
        Ok(view)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.map.data().lock().unwrap().get(name) {
            Some(v) => padded::offer(v, name),
            None => candle_core::bail!("{name}: no such variable"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.data().lock().unwrap().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rng_is_std_rng_and_its_position_restores() {
        let mut a = SeededRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!((0..8).map(|_| a.random::<u64>()).collect::<Vec<_>>(), (0..8).map(|_| b.random::<u64>()).collect::<Vec<_>>());
        let pos = a.get_word_pos();
        let next: u64 = a.random();
        let mut c = SeededRng::seed_from_u64(7);
        c.set_word_pos(pos);
        assert_eq!(c.random::<u64>(), next);
    }
}
