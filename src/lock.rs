//! One writer per output folder: `train`, `ablate`/`compare`, `extract` and `export` hold
//! [`OutLock`] on their `--out` while they write there, so a second command started on the same
//! folder stops at once, naming the first, instead of both writing a mix of two runs.
//!
//! The lock is a file in the folder ([`LOCK_FILE`]) created exclusively, holding the owner's
//! host, process id and start time; it is removed when the command ends, however it ends short
//! of a kill. A lock left by a process that no longer runs on this host is taken over; one from
//! another host (a shared file system) is respected until removed by hand.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock's file name inside the folder.
pub const LOCK_FILE: &str = ".marnet-lock";

/// Who holds a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Owner {
    host: String,
    pid: u32,
    /// The process's start time in clock ticks since boot (Linux; 0 elsewhere): a reused pid
    /// is not mistaken for the owner.
    start: u64,
    command: String,
}

impl Owner {
    fn me(command: &str) -> Self {
        let pid = std::process::id();
        Owner { host: host(), pid, start: start_time(pid).unwrap_or(0), command: command.to_string() }
    }

    /// Whether this owner is known to have ended: same host, and its process is gone or is
    /// another process under the same id. Unknown (another host, no /proc) counts as running.
    fn ended(&self) -> bool {
        if self.host != host() || !Path::new("/proc/self/stat").exists() {
            return false;
        }
        match start_time(self.pid) {
            None => true,
            Some(now) => self.start != 0 && now != self.start,
        }
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok()).map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Field 22 of `/proc/<pid>/stat` (after the command name, which may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Held while a command writes into its output folder; dropping it removes the lock file.
#[derive(Debug)]
#[must_use = "the folder is locked only while this is alive"]
pub struct OutLock {
    path: PathBuf,
    /// The folder, when this lock created it: removed on release if nothing else was written.
    created: Option<PathBuf>,
}

impl OutLock {
    /// Locks `dir` (created if missing) for `command` (`train`, ...), or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<OutLock> {
        let created = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let me = Owner::me(command);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let text = serde_json::to_string(&me)?;
                    f.write_all(text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))?;
                    return Ok(OutLock { path, created });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<Owner> = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
                    match owner {
                        Some(o) if o.ended() => {
                            // Left by a run that was killed: taken over.
                            let _ = std::fs::remove_file(&path);
                        }
                        Some(o) => bail!(
                            "{}: another marnet is writing here (`{}`, process {} on host {}); wait for it to end or choose another --out \
                             (if it no longer runs, remove {})",
                            dir.display(),
                            o.command,
                            o.pid,
                            if o.host.is_empty() { "?" } else { &o.host },
                            path.display()
                        ),
                        // Being written this instant by another command, or unreadable.
                        None => bail!(
                            "{}: another marnet is starting to write here; wait for it to end or choose another --out (if none runs, remove {})",
                            dir.display(),
                            path.display()
                        ),
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("{}: cannot create", path.display())),
            }
        }
        bail!("{}: cannot take the folder's lock {}", dir.display(), path.display())
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created {
            let _ = std::fs::remove_dir(dir); // fails, as wanted, unless empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second writer is refused while the first holds the folder, and gets it once released;
    /// a lock left by a process that ended is taken over.
    #[test]
    fn one_writer_per_folder() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("marnet-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = OutLock::acquire(&dir, "train")?;
        let err = OutLock::acquire(&dir, "ablate").unwrap_err().to_string();
        assert!(err.contains("another marnet is writing here (`train`, process") && err.contains(LOCK_FILE), "{err}");
        drop(first);
        assert!(!dir.exists(), "a folder the lock created and nothing filled is removed");
        std::fs::create_dir_all(&dir)?;
        drop(OutLock::acquire(&dir, "ablate")?);
        assert!(dir.is_dir() && !dir.join(LOCK_FILE).exists(), "a folder that was there stays");
        if Path::new("/proc/self/stat").exists() {
            // The same pid with another start time: a process that ended (its pid reused).
            let stale = Owner { start: start_time(std::process::id()).unwrap() + 1, ..Owner::me("train") };
            std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&stale)?)?;
            drop(OutLock::acquire(&dir, "train")?);
            // Another host's lock is respected.
            let remote = Owner { host: format!("{}-other", host()), ..Owner::me("train") };
            std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&remote)?)?;
            assert!(OutLock::acquire(&dir, "train").is_err());
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
