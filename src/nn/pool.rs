//! How the CPU encoders and heads use the thread pool: its workers kept awake through a run of
//! short parallel sections, and a batch's images spread over the threads ([`by_image`]).
//!
//! Between two matrix products of a training step the calling thread works alone for a while (a
//! loss term, a transpose); rayon's idle workers go to sleep meanwhile, and waking them took
//! 12-99 µs on the VM we measured (`rayon::broadcast` inside a step), against products of
//! 100-400 µs. Kept awake, the step took 3.5-6.5% less there (BENCHMARKS.md); sampling did not
//! change. A poller runs whatever work the pool has, another training's step on the same pool
//! included, and returns only after it.

use rayon::Yield;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// How long a poller waits for work before it goes back to rayon's own sleeping: longer than
/// the gaps between a step's parallel sections.
const MAX_IDLE: Duration = Duration::from_millis(1);

/// How long the caller waits for the pollers to start before it runs `f` without the rest.
const MAX_START: Duration = Duration::from_micros(200);

/// Runs `f` with the pool's other workers polling for work ([`rayon::yield_now`]) until `f`
/// returns, instead of sleeping between its parallel sections; a poller that finds no work for
/// [`MAX_IDLE`] sleeps again. `f` runs on this thread when it is a worker of a pool, else on a
/// worker of rayon's global pool. Only which thread runs a piece of work changes: marnet's
/// kernels split work by the thread count and add partial results in a fixed order, so results
/// are the same bits.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    // Pollers started so far, or -1 once `f` has begun: a poller that starts later could be
    // picked up by a thread waiting inside one of `f`'s jobs, and hold that job back while it
    // polls, so it returns at once instead.
    let started = AtomicIsize::new(0);
    rayon::scope(|s| {
        let pollers = rayon::current_num_threads() as isize - 1;
        let (stop, started) = (&stop, &started);
        for _ in 0..pollers {
            s.spawn(move |_| {
                // Late, e.g. popped by the caller itself while it waits in one of `f`'s joins.
                if started.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n >= 0).then_some(n + 1)).is_err() {
                    return;
                }
                let mut idle_since = None;
                while !stop.load(Ordering::Relaxed) {
                    if rayon::yield_now() == Some(Yield::Executed) {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() > MAX_IDLE {
                        return;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let t = Instant::now();
        while started.load(Ordering::Acquire) < pollers && t.elapsed() < MAX_START {
            std::hint::spin_loop();
        }
        started.store(-1, Ordering::Release);
        // Set when `f` returns or panics: a poller left spinning would hold the scope until idle.
        let _stop = StopOnDrop(stop);
        f()
    })
}

/// [`with_workers_awake`] where `dev` is the CPU; elsewhere `f` runs as it is.
pub fn awake_on<R: Send>(dev: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    match dev.is_cpu() {
        true => with_workers_awake(f),
        false => f(),
    }
}

/// `f` on each image of `x` `[N, ...]` alone, the images spread over the pool's threads (kept
/// awake, [`awake_on`]), the outputs joined again; `f(x)` where `x` is not on the CPU or has
/// fewer images than the pool has threads. Each thread then takes one image through all of `f`'s
/// layers, whose activations stay in its core's caches, where a pass of the whole batch sends
/// every layer's output through memory (EfficientNet-Lite0 at batch 8: 20-25% faster on a Zen 5,
/// BENCHMARKS.md, 2026-12-07, later). `f` must give an image the same bits alone as in a batch
/// (the convolutions of `nn::im2col` and `nn::depthwise` do), so that the result does not depend
/// on the batch.
pub fn by_image(
    x: &candle_core::Tensor,
    f: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> + Sync + Send,
) -> candle_core::Result<candle_core::Tensor> {
    use rayon::prelude::*;
    awake_on(x.device(), || {
        let n = x.dim(0)?;
        if !x.device().is_cpu() || n < 2 || n < rayon::current_num_threads() {
            return f(x);
        }
        let outputs = (0..n).into_par_iter().map(|i| f(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
        candle_core::Tensor::cat(&outputs, 0)
    })
}

/// Test support: `a(x)` and `b(x)` on a pool of two threads give the same shape and bits, not
/// all zero (a comparison that says something).
#[cfg(test)]
pub(crate) fn assert_same_bits_on_two_threads(
    x: &candle_core::Tensor,
    a: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> + Sync + Send,
    b: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> + Sync + Send,
) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (a, b) = pool.install(|| (a(x).unwrap(), b(x).unwrap()));
    let bits = |t: candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (bits(a), bits(b));
    assert!(a.iter().any(|&v| v != 0), "all zeros: the comparison says nothing");
    assert_eq!(a, b);
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Parallel work inside runs and finishes on pools of one, two and four threads, nested too.
    #[test]
    fn work_inside_completes_on_any_pool() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let sum = pool.install(|| {
                with_workers_awake(|| {
                    let inner: u64 = (0..1000u64).into_par_iter().map(|i| with_workers_awake(|| (0..i).into_par_iter().sum::<u64>())).sum();
                    inner + (0..10u64).into_par_iter().sum::<u64>()
                })
            });
            let want: u64 = (0..1000u64).map(|i| i * i.saturating_sub(1) / 2).sum::<u64>() + 45;
            assert_eq!(sum, want, "{threads} threads");
        }
    }

    /// A product split across the pool gives the same bits with the workers kept awake.
    #[test]
    fn products_inside_give_the_same_bits() {
        use crate::nn::cpu::{MatRef, matmul};
        let mut rng = crate::rng::stream(4, "test", 0);
        let (m, n, k) = (64, 300, 200);
        let (a, b) = (crate::rng::normal_vec(&mut rng, m * k), crate::rng::normal_vec(&mut rng, k * n));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let product = || matmul(m, n, k, MatRef::rows(&a, k), MatRef::rows(&b, n));
        let (plain, awake) = pool.install(|| (product(), with_workers_awake(product)));
        assert!(plain.iter().zip(&awake).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    /// Image by image, the output is the same bits as the batch's in one call, with more images
    /// than threads and fewer.
    #[test]
    fn by_image_gives_the_batch_s_bits() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::rng::stream(7, "test", 0);
        let w = crate::rng::randn(&mut rng, (6, 3, 3, 3), &dev).unwrap();
        let b = crate::rng::randn(&mut rng, 6, &dev).unwrap();
        let at = crate::nn::conv::Placement::symmetric(3, 2, 1, (9, 9)).unwrap();
        let f = |x: &candle_core::Tensor| crate::nn::conv::conv2d(x, &w, &b, at, None, crate::nn::conv::Then::Relu6)?.sqr();
        for n in [1, 2, 5] {
            let x = crate::rng::randn(&mut rng, (n, 3, 9, 9), &dev).unwrap();
            assert_same_bits_on_two_threads(&x, |x| by_image(x, f), f);
        }
    }

    /// A panic inside reaches the caller instead of leaving the pollers spinning.
    #[test]
    fn a_panic_inside_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let caught = pool.install(|| std::panic::catch_unwind(|| with_workers_awake(|| panic!("inside"))));
        assert!(caught.is_err());
    }
}
