//! Process set-up shared by the binary, the tests and library users: the allocator and its
//! tuning, the CPU thread pools, Ctrl-C handling and the compute device.

use anyhow::{Context, Result};
use candle_core::Device;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Read by candle when its elementwise thread pool starts.
const BARRIER_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Tunes the process before any work starts; call it first (the thread pools read their
/// settings when they start). `threads`: worker threads for CPU math (default: all cores).
pub fn init(threads: Option<usize>) {
    crate::interrupt::install();
    init_embedded(threads);
    // The pool that runs the encoders, heads and training, its threads named (`top -H`;
    // `scripts/bench-serve` counts their CPU time apart from serve's other threads). Built here,
    // not in `init_embedded`: a host process may have built rayon's global pool its own way.
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("marnet-pool-{i}")).build_global();
}

/// [`init`] without the Ctrl-C handler and the named pool, for a host process that owns its
/// signals (Python: the module polls the host's signals and calls [`crate::interrupt::request`]).
pub fn init_embedded(threads: Option<usize>) {
    // Keep freed memory mapped: training frees and reallocates the same activation-sized blocks
    // every step, and returning them to the OS made every step page-fault and zero them again
    // (a third of inference time in `perf`).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if std::env::var_os(BARRIER_SPIN_ENV).is_none() {
        // candle's pool for elementwise ops spins 25,000 rounds after each op before it sleeps;
        // with 2 cores the spinning thread takes a core from the matrix products (measured:
        // training steps 2-3 ms faster at 200 rounds; BENCHMARKS.md). A value the user set wins.
        unsafe { std::env::set_var(BARRIER_SPIN_ENV, "200") };
    }
    // The matmul crate copies ("packs") the left operand of a product whose right one has more
    // than 8 x 6 columns when it runs on one thread. The linear layers' forward products (one
    // single-threaded block per thread, 64 rows: after the crate's transpose, the weight block
    // times 64 columns) then copied the whole weight every step; at 16 x 6 they read it in
    // place: 0.2 ms of a 10 ms training step (BENCHMARKS.md). Larger products still pack.
    gemm::set_lhs_packing_threshold_single_thread(gemm::DEFAULT_LHS_PACKING_THRESHOLD_MULTI_THREAD);
    if let Some(n) = threads {
        // Read by candle's gemm and rayon pools on first use; nothing has started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// `cpu`, or `cuda` / `cuda:N` (built with the `cuda` feature).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda") => {
            let ordinal = s.strip_prefix("cuda:").map(str::parse).transpose().context("--device cuda:N")?;
            Ok(Device::new_cuda(ordinal.unwrap_or(0))?)
        }
        other => anyhow::bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
    }
}
