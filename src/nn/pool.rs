//! Keeping the thread pool's workers awake through a run of short parallel sections.
//!
//! Between two matrix products of a training step the calling thread works alone for a while (a
//! loss term, a transpose); rayon's idle workers go to sleep meanwhile, and waking them took
//! 12-99 µs on the VM we measured (`rayon::broadcast` inside a step), against products of
//! 100-400 µs. Kept awake, the step took 6% less there (BENCHMARKS.md); sampling did not change.

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a poller waits for work before it goes back to rayon's own sleeping: longer than
/// the gaps between a step's parallel sections.
const MAX_IDLE: Duration = Duration::from_millis(1);

/// Runs `f` in the current rayon pool with its other workers polling for work
/// ([`rayon::yield_now`]) until `f` returns (or no work came for [`MAX_IDLE`]), instead of
/// sleeping between its parallel sections. Work is split and ordered as without it: results are
/// the same bits.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        let stop = &stop;
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| {
                // The caller itself may pop a poller while it waits in a join: it must not spin.
                if rayon::current_thread_index() == caller {
                    return;
                }
                let mut idle_since = None;
                while !stop.load(Ordering::Relaxed) {
                    if rayon::yield_now() == Some(Yield::Executed) {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() > MAX_IDLE {
                        // A poller that a waiting job's thread picked up would hold that job
                        // (and `f`) back until `stop`: giving up after a while bounds that wait.
                        return;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Set when `f` returns or panics: a poller left spinning would hold the scope forever.
        let _stop = StopOnDrop(stop);
        f()
    })
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

    /// A panic inside reaches the caller instead of leaving the pollers spinning.
    #[test]
    fn a_panic_inside_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let caught = pool.install(|| std::panic::catch_unwind(|| with_workers_awake(|| panic!("inside"))));
        assert!(caught.is_err());
    }
}
