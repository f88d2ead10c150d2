//! The problems found in an input file (a manifest), each with its line, reported together in
//! one error.

use anyhow::Result;
use std::path::Path;

/// Problems listed in one error at most; the rest are counted.
const MAX_PROBLEMS: usize = 50;

/// The problems found so far: line (0: the whole file) and message.
pub(super) struct Problems<'a> {
    pub(super) file: &'a Path,
    pub(super) list: Vec<(usize, String)>,
}

impl Problems<'_> {
    pub(super) fn at(&mut self, line: usize, msg: impl std::fmt::Display) {
        self.list.push((line, msg.to_string()));
    }

    pub(super) fn whole(&mut self, msg: impl std::fmt::Display) {
        self.at(0, msg);
    }

    /// `Err` listing every problem (up to [`MAX_PROBLEMS`]) in line order, each as
    /// `file:line: message`, if there is any.
    pub(super) fn into_result(mut self) -> Result<()> {
        let n = self.list.len();
        if n == 0 {
            return Ok(());
        }
        self.list.sort_by_key(|(line, _)| *line);
        let file = self.file.display();
        let mut msg = format!("{file} has {n} problem{}; nothing was extracted:", if n == 1 { "" } else { "s" });
        for (line, p) in self.list.iter().take(MAX_PROBLEMS) {
            msg += &match line {
                0 => format!("\n  {file}: {p}"),
                l => format!("\n  {file}:{l}: {p}"),
            };
        }
        if n > MAX_PROBLEMS {
            msg += &format!("\n  ... and {} more", n - MAX_PROBLEMS);
        }
        Err(anyhow::anyhow!(msg))
    }
}
