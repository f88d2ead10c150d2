//! Ctrl-C (SIGINT, and SIGTERM). While a command that can stop cleanly runs (a [`StopGuard`] from
//! [`stop_at_safe_points`] is alive: `train` and `extract` save their progress, `serve` finishes
//! the requests in flight), Ctrl-C is a request to stop: the handler prints what the command will
//! do, long loops poll [`requested`] and return [`Interrupted`], and a second Ctrl-C exits at once
//! (one that comes within [`SAME_INTERRUPT`] of the first is the same one: `timeout -s INT` signals
//! both the command and its process group). Otherwise (`predict`, `eval`, `export`, ...: nothing to
//! save) Ctrl-C exits at once, with status 130.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// When the first Ctrl-C of this process came.
static FIRST: Mutex<Option<Instant>> = Mutex::new(None);

/// Signals this soon after the first are taken as the same interrupt, not a second Ctrl-C: GNU
/// `timeout -s INT` (and a terminal's job control) can deliver one to the process and one to its
/// group microseconds apart, which aborted runs without saving.
pub const SAME_INTERRUPT: Duration = Duration::from_millis(100);

/// What the running command does on Ctrl-C, as the handler says it ("stopping after the current
/// step"); `None`: nothing to finish, exit at once.
static ON_STOP: Mutex<Option<&'static str>> = Mutex::new(None);

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

fn on_stop() -> std::sync::MutexGuard<'static, Option<&'static str>> {
    ON_STOP.lock().unwrap_or_else(|e| e.into_inner())
}

/// While alive, Ctrl-C asks the command to stop at its next safe point, and the handler prints
/// `interrupt: {what}`; dropping it restores what was in force before (guards nest).
#[must_use = "Ctrl-C stops at safe points only while the guard is alive"]
pub struct StopGuard {
    before: Option<&'static str>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        *on_stop() = self.before;
    }
}

/// Makes Ctrl-C a request to stop (see [`StopGuard`]); `what` says what the command does then,
/// e.g. "stopping after the current step".
pub fn stop_at_safe_points(what: &'static str) -> StopGuard {
    StopGuard { before: on_stop().replace(what) }
}

/// What the handler says, and whether it exits, on a Ctrl-C: `second` when one came before,
/// `on_stop` what the running command does (see [`StopGuard`]).
fn reaction(second: bool, on_stop: Option<&str>) -> (String, bool) {
    match (second, on_stop) {
        (true, _) => ("second interrupt: exiting without saving".into(), true),
        (false, Some(what)) => (format!("interrupt: {what} (Ctrl-C or SIGTERM again to abort)"), false),
        (false, None) => ("interrupted".into(), true),
    }
}

/// One Ctrl-C at `now` on `flag` (`first`: when the first came): says what happens, then raises
/// the flag; true when the process is to exit. A repeat within [`SAME_INTERRUPT`] of the first is
/// ignored. The flag goes up only after the message is out: a command that sees it can finish and
/// exit before this thread runs again (a server with nothing in flight did, and its Ctrl-C
/// message was lost).
fn on_ctrl_c(flag: &AtomicBool, first: &Mutex<Option<Instant>>, now: Instant, on_stop: Option<&str>, say: impl FnOnce(&str)) -> bool {
    // Ctrl-C reactions run one at a time on ctrlc's thread; `request` (tests, embedding
    // programs, which install no handler) is the only other writer.
    let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
    let second = flag.load(Ordering::SeqCst);
    match *first {
        Some(t) if second && now.saturating_duration_since(t) < SAME_INTERRUPT => return false,
        None => *first = Some(now),
        Some(_) => {}
    }
    let (said, exit) = reaction(second, on_stop);
    say(&said);
    flag.store(true, Ordering::SeqCst);
    exit
}

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        let what = *on_stop();
        // Not `eprintln!`, which panics when stderr is a closed pipe (`serve 2>&1 | tee log`:
        // tee gets the same Ctrl-C): that would end ctrlc's thread with the flag still down,
        // and every later Ctrl-C and SIGTERM would go unheard.
        // On a terminal, after the `^C` it echoed.
        let lead = if std::io::stderr().is_terminal() { "\n" } else { "" };
        let say = |said: &str| drop(writeln!(std::io::stderr(), "{lead}{said}"));
        if on_ctrl_c(&REQUESTED, &FIRST, Instant::now(), what, say) {
            std::process::exit(130);
        }
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets an earlier request: an embedding program (the Python module) starts each call afresh.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
    *FIRST.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Requests a stop, as Ctrl-C does (for tests and embedding programs).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that stops cleanly says what it does; one with nothing to save exits; guards
    /// nest and restore what was in force.
    #[test]
    fn ctrl_c_says_what_the_running_command_does() {
        assert_eq!(reaction(false, None), ("interrupted".into(), true));
        assert_eq!(reaction(true, Some("x")), ("second interrupt: exiting without saving".into(), true));
        let before = *on_stop();
        {
            let _serve = stop_at_safe_points("stopping: finishing the requests in flight");
            let (said, exit) = reaction(false, *on_stop());
            assert_eq!((said.as_str(), exit), ("interrupt: stopping: finishing the requests in flight (Ctrl-C or SIGTERM again to abort)", false));
            {
                let _train = stop_at_safe_points("stopping after the current step");
                assert_eq!(*on_stop(), Some("stopping after the current step"));
            }
            assert_eq!(*on_stop(), Some("stopping: finishing the requests in flight"));
        }
        assert_eq!(*on_stop(), before);
    }

    /// The message is out before the stop is requested; a repeat within SAME_INTERRUPT of the
    /// first (`timeout -s INT`'s two signals) is the same interrupt, and a later Ctrl-C exits.
    #[test]
    fn ctrl_c_says_what_happens_before_the_command_can_stop() {
        let (flag, first, t0) = (AtomicBool::new(false), Mutex::new(None), Instant::now());
        let mut heard = Vec::new();
        let exit = on_ctrl_c(&flag, &first, t0, Some("stopping"), |said| heard.push((said.to_string(), flag.load(Ordering::SeqCst))));
        assert!(!exit && flag.load(Ordering::SeqCst));
        let echo = t0 + SAME_INTERRUPT / 10;
        assert!(!on_ctrl_c(&flag, &first, echo, Some("stopping"), |said| heard.push((said.to_string(), true))));
        assert_eq!(heard.len(), 1, "the repeat said nothing: {heard:?}");
        let later = t0 + SAME_INTERRUPT;
        assert!(on_ctrl_c(&flag, &first, later, Some("stopping"), |said| heard.push((said.to_string(), flag.load(Ordering::SeqCst)))));
        let raised_when_said: Vec<bool> = heard.iter().map(|h| h.1).collect();
        assert_eq!(raised_when_said, [false, true], "{heard:?}");
        assert_eq!(heard[1].0, "second interrupt: exiting without saving");
    }
}
