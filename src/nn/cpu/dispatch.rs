//! Which kernel runs a product whose right operand has adjacent columns: marnet's own at AVX-512
//! ([`super::kernel`]); on CPUs with AVX2 but not AVX-512, serving's products of 2 to 8 rows on
//! [`super::few_rows`] (with the matmul crate's bits); every other on the matmul crate.
//! `MARNET_KERNEL=gemm` puts every product on the crate.

use super::kernel;

/// Whether an [m, n] product over k runs on [`product`]. At AVX-512 (k at most
/// [`kernel::MAX_K`]): one of at most [`kernel::MAX_ROWS`] rows (the heads' batches: each 64-column
/// panel of the right operand stays in L2 while the rows run over it), of at most
/// [`kernel::PANEL`] columns (one panel: the left operand is read once, in order; a training
/// batch's input gradients `W dy^T`), or whose left operand has at most [`kernel::MAX_LHS`]
/// elements (read again for each panel: a training batch's weight gradients `x^T dy`); at AVX2,
/// one the few-row kernel takes.
pub fn runs_here(m: usize, n: usize, k: usize) -> bool {
    if kernel::enabled() {
        (m <= kernel::MAX_ROWS || n <= kernel::PANEL || m * k <= kernel::MAX_LHS) && k <= kernel::MAX_K
    } else {
        few_rows_on() && few_rows_take(m, n, k)
    }
}

/// Whether a thread's [rows, cols] block of a product [`runs_here`] holds for runs on
/// [`product`] (else on the matmul crate): every block at AVX-512; at AVX2 the blocks the
/// few-row kernel takes (a block of one column runs on the crate: the crate's bits either way).
pub fn takes_block(rows: usize, cols: usize, k: usize) -> bool {
    kernel::enabled() || few_rows_take(rows, cols, k)
}

/// `c = a b` as [`kernel::product`] says, on the kernel [`runs_here`] chose.
///
/// # Safety
/// [`runs_here`] and [`takes_block`] must hold for the shape; as [`kernel::product`]'s otherwise.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(m: usize, n: usize, k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
    if kernel::enabled() {
        // SAFETY: as the caller promises; the CPU has AVX-512F.
        return unsafe { kernel::product(m, n, k, a, ars, acs, b, ldb, c, ldc) };
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises; `runs_here` found AVX2 and FMA.
    unsafe {
        super::few_rows::product(m, n, k, a, ars, acs, b, ldb, c, ldc)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("dispatch::product without a kernel: {m} {n} {k} {a:?} {ars} {acs} {b:?} {ldb} {c:?} {ldc}")
}

/// Whether the few-row kernel runs: AVX2 and FMA, no AVX-512 (marnet's own kernel then runs
/// these products), and `MARNET_KERNEL` not `gemm`.
fn few_rows_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    let cpu = || !std::arch::is_x86_feature_detected!("avx512f") && super::few_rows::available();
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = || false;
    *ON.get_or_init(|| cpu() && std::env::var("MARNET_KERNEL").as_deref() != Ok("gemm"))
}

fn few_rows_take(m: usize, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::few_rows::takes(m, n, k);
    #[cfg(not(target_arch = "x86_64"))]
    return {
        let _ = (m, n, k);
        false
    };
}
