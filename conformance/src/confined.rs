//! Reading files a kernel author hands us (manifests, kernel.json, outputs) as hostile input,
//! through the reference crate's one reader ([`gqla_files`]): confined to one
//! directory (no `..`, no absolute paths, no symlink leading out), regular files only (a FIFO
//! would hang the reader, a device would never end), and a size limit checked before reading and
//! enforced while reading.

use gqla_files::{self as files, Limit};
use std::path::Path;

/// A file that may not be read, and why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{path}: {why}")]
pub struct ConfinedError {
    pub path: String,
    pub why: String,
}

fn err(path: impl AsRef<Path>, why: impl Into<String>) -> ConfinedError {
    ConfinedError {
        path: path.as_ref().display().to_string(),
        why: why.into(),
    }
}

/// The reference crate's reader error, as a confined read's.
fn from_reader(e: gqla_reference::Error) -> ConfinedError {
    match e {
        gqla_reference::Error::File { path, message } => err(path, message),
        other => err("", other.to_string()),
    }
}

/// The bytes of `rel` inside `root`, at most `limit` of them, or `None` when nothing of that name
/// is there (a dangling symlink counts as nothing; one leading out is an error).
pub fn read_if_present(root: &Path, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, ConfinedError> {
    files::read_in(root, rel, Limit(limit)).map_err(from_reader)
}

/// The bytes of `rel` inside `root`, at most `limit` of them.
pub fn read(root: &Path, rel: &str, limit: u64) -> Result<Vec<u8>, ConfinedError> {
    read_if_present(root, rel, limit)?.ok_or_else(|| err(root.join(rel), "No such file or directory"))
}

/// The bytes of a regular file, at most `limit` of them (no confinement: for paths the user
/// names on the command line).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ConfinedError> {
    files::read_file(path, Limit(limit)).map_err(from_reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader's own tests (gqla_files::read) cover FIFOs, devices and limits;
    /// here: its refusals arrive as confined errors naming the path as given.
    #[test]
    fn refusals_name_the_path_inside_the_pack() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pack");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("secret"), "secret").unwrap();
        std::fs::write(root.join("ok"), "fine").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("link")).unwrap();
        assert_eq!(read(&root, "ok", 10).unwrap(), b"fine");
        assert_eq!(read_if_present(&root, "missing", 10).unwrap(), None);
        let e = read(&root, "missing", 10).unwrap_err();
        assert!(e.path.ends_with("pack/missing") && e.why.contains("No such file"), "{e}");
        let e = read(&root, "link", 10).unwrap_err();
        assert!(e.path.ends_with("pack/link") && e.why.contains("leads outside"), "{e}");
        assert!(read(&root, "../secret", 10).unwrap_err().why.contains("plain relative"));
        assert!(read_regular(&root.join("ok"), 3).unwrap_err().why.contains("more than"));
    }
}
