//! Reading files a kernel author hands us (manifests, kernel.json, outputs) as hostile input,
//! through the reference crate's one reader ([`gqla_reference::files`]): confined to one
//! directory (no `..`, no absolute paths, no symlink leading out), regular files only (a FIFO
//! would hang the reader, a device would never end), and a size limit checked before reading and
//! enforced while reading.

use gqla_reference::files::{self, Limit};
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

    #[test]
    fn reads_stay_inside_and_refuse_what_is_not_a_small_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("pack"), tmp.path().join("secret"));
        std::fs::create_dir(&root).unwrap();
        std::fs::write(&outside, "secret").unwrap();
        std::fs::write(root.join("ok"), "fine").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("ok"), root.join("inner")).unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        assert_eq!(read(&root, "ok", 10).unwrap(), b"fine");
        assert_eq!(read(&root, "inner", 10).unwrap(), b"fine");
        for (rel, why) in [
            ("../secret", "plain relative"),
            (outside.to_str().unwrap(), "plain relative"),
            ("link", "leads outside"),
            ("dir", "not a regular file"),
            ("missing", "No such file"),
            ("", "plain relative"),
        ] {
            let e = read(&root, rel, 10).unwrap_err();
            assert!(e.why.contains(why), "{rel}: {e}");
        }
        assert!(read(&root, "ok", 3).unwrap_err().why.contains("more than the 3 allowed"));
        let fifo = root.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read(&root, "fifo", 10).unwrap_err().why.contains("not a regular file"));
        assert_eq!(read_if_present(&root, "missing", 10).unwrap(), None);
        assert_eq!(read_if_present(&root, "ok", 10).unwrap().unwrap(), b"fine");
        assert!(read_if_present(&root, "link", 10).is_err());
    }
}
