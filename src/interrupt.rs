//! Ctrl-C (SIGINT, and SIGTERM) as a request to stop at the next safe point: long loops poll
//! [`requested`], save their progress and return [`Interrupted`]. A second Ctrl-C exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error a loop returns after it stopped on request and saved its progress.
#[derive(Debug)]
pub struct Interrupted {
    /// What was saved and how to continue, e.g. "rerun with --resume".
    pub resume_hint: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted; {}", self.resume_hint)
    }
}

impl std::error::Error for Interrupted {}

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current step (Ctrl-C again to abort)");
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Requests a stop, as Ctrl-C does (for tests and embedding programs).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}
