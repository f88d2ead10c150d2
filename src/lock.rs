//! One writer per output folder: `train`, `ablate`/`compare`, `extract` and `merge-shards` hold
//! [`OutLock`] on their `--out` while they write there, so a second command started on the same
//! folder stops at once, naming the first, instead of both writing a mix of two runs.
//!
//! The lock is the operating system's lock on a file in the folder ([`LOCK_FILE`], holding the
//! owner's command, process id and host for the message): it ends with its process however that
//! ends (a kill, a lost node: the file system's lease), so a rerun is never blocked by a lock
//! its predecessor left. The file is removed when the command ends normally.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock's file name inside the folder.
pub const LOCK_FILE: &str = ".marnet-lock";

/// Who holds a folder, as its lock file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Owner {
    command: String,
    pid: u32,
    host: String,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok()).map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Whether `file` is still the file at `path` (its holder may have removed it between our open
/// and our lock; then the lock is on a file nobody else will open).
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// Held while a command writes into its output folder; dropping it removes the lock file and
/// releases the lock.
#[derive(Debug)]
#[must_use = "the folder is locked only while this is alive"]
pub struct OutLock {
    path: PathBuf,
    /// The locked file: the lock lasts as long as it is open.
    _file: File,
    /// The folder, when this lock created it: removed on release (after the lock file, fields
    /// drop after `drop`) if nothing else was written.
    _created: Option<crate::fsutil::RemoveIfEmpty>,
}

impl OutLock {
    /// Locks `dir` (created if missing) for `command` (`train`, ...), or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<OutLock> {
        anyhow::ensure!(!dir.is_file(), "{}: --out is a file; name a folder", dir.display());
        let created = (!dir.exists()).then(|| crate::fsutil::RemoveIfEmpty(dir.to_path_buf()));
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        for _ in 0..8 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("{}: cannot create", path.display()))?;
            match file.try_lock() {
                Ok(()) if !still_at(&file, &path) => continue,
                Ok(()) => {
                    let me = Owner { command: command.to_string(), pid: std::process::id(), host: host() };
                    // Only for the message another command shows: a failed write leaves the lock as good.
                    let _ = file.set_len(0).and_then(|_| file.write_all(serde_json::to_string(&me)?.as_bytes()));
                    return Ok(OutLock { path, _file: file, _created: created });
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let owner: Option<Owner> = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
                    let who = match owner {
                        Some(o) => format!("`{}`, process {} on host {}", o.command, o.pid, if o.host.is_empty() { "?" } else { &o.host }),
                        None => "starting".to_string(),
                    };
                    bail!("{}: another marnet is writing here ({who}); wait for it to end, or choose another --out", dir.display())
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    // A file system without locks: work as before, unguarded.
                    eprintln!("note: {}: this file system does not lock files ({e}); nothing stops a second command writing here", path.display());
                    return Ok(OutLock { path, _file: file, _created: created });
                }
            }
        }
        bail!("{}: cannot take the folder's lock {}: its holders keep replacing it", dir.display(), path.display())
    }
}

impl Drop for OutLock {
    fn drop(&mut self) {
        // Removed while still locked; a command that opened it meanwhile sees it gone and retries.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second writer is refused while the first holds the folder and gets it once released; a
    /// lock file left behind (its process killed) does not block; a folder the lock created and
    /// nothing filled is removed again.
    #[test]
    fn one_writer_per_folder() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("run");
        let first = OutLock::acquire(&dir, "train")?;
        let err = OutLock::acquire(&dir, "ablate").unwrap_err().to_string();
        assert!(err.contains(&format!("another marnet is writing here (`train`, process {}", std::process::id())), "{err}");
        drop(first);
        assert!(!dir.exists(), "a folder the lock created and nothing filled is removed");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(LOCK_FILE), r#"{"command":"train","pid":1,"host":"gone"}"#)?;
        let second = OutLock::acquire(&dir, "ablate")?;
        assert!(std::fs::read_to_string(dir.join(LOCK_FILE))?.contains("ablate"));
        drop(second);
        assert!(dir.is_dir() && !dir.join(LOCK_FILE).exists(), "a folder that was there stays");
        Ok(())
    }
}
