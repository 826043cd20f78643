//! The findings log: one JSON object per line per finding, written and
//! flushed at once (findings are few, and an operator tails them), reopened on
//! SIGHUP. `api-guard report` reads it back. The daemon builds each line; no
//! line holds a credential (the detectors keep fingerprints only).

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub struct FindingsLog {
    path: PathBuf,
    file: std::fs::File,
    /// Lines written since start.
    pub lines: u64,
}

fn open(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open the findings log {}", path.display()))
}

impl FindingsLog {
    /// Opens `path` to append to (created 0640).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            file: open(path)?,
            path: path.to_path_buf(),
            lines: 0,
        })
    }

    /// Writes one finding as one line, in one write(2).
    pub fn write(&mut self, finding: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(finding)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }

    /// Opens the file again by name (after logrotate moved it).
    pub fn reopen(&mut self) -> Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }
}

/// The findings in a log, oldest first; lines that are not JSON objects
/// (a line cut by a crash) are counted, not fatal.
pub fn read(path: &Path) -> Result<(Vec<serde_json::Value>, usize)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the findings log {}", path.display()))?;
    let mut out = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v.is_object() => out.push(v),
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_whole_and_read_back_past_a_torn_one() {
        let dir = std::env::temp_dir().join(format!(
            "api-guard-findings-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("findings.log");
        let mut log = FindingsLog::open(&path).unwrap();
        log.write(&serde_json::json!({"detector": "bola"})).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"detec")
            .unwrap();
        let (found, bad) = read(&path).unwrap();
        assert_eq!((found.len(), bad), (1, 1));
        assert!(read(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
