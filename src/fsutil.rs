//! Crash-safe writes: a reader never sees a half-written file or folder.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `path` with `suffix` added to its last component (`run` -> `run.tmp`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `data` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    // Named after this process and thread, so concurrent writers never share a temporary file.
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
    let tmp = sibling(path, &format!(".{}.{thread}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    f.write_all(data).and_then(|_| f.sync_all()).with_context(|| format!("{}: write failed", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Replaces folder `dir` by one that `fill` writes: it fills `dir.tmp`, then swaps it in.
/// If `fill` fails, `dir` stays as it was and `dir.tmp` is removed. If the process dies
/// mid-swap, [`recover_dir`] finds the previous complete folder.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let old = sibling(dir, ".old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("{}: cannot rename into place", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The names in folder `dir` that are not hidden and that `own` (what a command writes there)
/// does not claim, sorted; none when `dir` is missing. A folder that holds such names is a user's
/// folder (their photos, manifests), not a command's output.
pub fn foreign_entries(dir: &Path, own: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.') && !own(n)).collect();
    names.sort();
    names
}

/// `names` as a list for a message: the first five in backquotes, and how many more.
pub fn name_list(names: &[String]) -> String {
    let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
    format!("`{}`{more}", names[..names.len().min(5)].join("`, `"))
}

/// The complete version of a folder written by [`replace_dir`]: `dir`, or `dir.old` if the
/// process died between the two renames. `None` if neither exists.
pub fn recover_dir(dir: &Path) -> Option<PathBuf> {
    let old = sibling(dir, ".old");
    if dir.is_dir() {
        Some(dir.to_path_buf())
    } else if old.is_dir() {
        Some(old)
    } else {
        None
    }
}

/// `path` relative to the folder `base`, both absolute (`../cache` from `/d/runs` to `/d/cache`);
/// `path` itself when they share no root.
pub fn relative_path(path: &Path, base: &Path) -> PathBuf {
    use std::path::Component;
    let (p, b): (Vec<Component>, Vec<Component>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return path.to_path_buf();
    }
    let up = b[common..].iter().map(|_| Component::ParentDir);
    let rel: PathBuf = up.chain(p[common..].iter().copied()).collect();
    if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel }
}

/// Removes its folder when dropped if the folder is then empty: a command that created its
/// output folder and failed before writing anything leaves nothing behind.
#[derive(Debug)]
pub struct RemoveIfEmpty(pub PathBuf);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0); // fails, as wanted, unless empty
    }
}

/// Reads and parses a JSON file; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unexpected content", path.display()))
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use std::path::Path;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        let rel = |p: &str, b: &str| relative_path(Path::new(p), Path::new(b)).display().to_string();
        assert_eq!(rel("/d/cache", "/d/runs/r1"), "../../cache");
        assert_eq!(rel("/d/runs/r1/cache", "/d/runs/r1"), "cache");
        assert_eq!(rel("/d", "/d"), ".");
        assert_eq!(rel("/a/x", "/b/y"), "../../a/x");
    }
}
