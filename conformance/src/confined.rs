//! Reading files a kernel author hands us (manifests, kernel.json, outputs) as hostile input:
//! confined to one directory (no `..`, no absolute paths, no symlink leading out), regular files
//! only (a FIFO would hang the reader, a device would never end), and a size limit checked before
//! reading and enforced while reading.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

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

/// `rel` resolved inside `root`: a plain relative path whose real location (symlinks followed)
/// lies inside the real `root`.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, ConfinedError> {
    let shown = root.join(rel);
    resolve_if_present(root, rel)?.ok_or_else(|| err(&shown, "No such file or directory"))
}

/// [`resolve`], or `None` when nothing of that name is there (a dangling symlink counts as
/// nothing; one leading out is an error).
fn resolve_if_present(root: &Path, rel: &str) -> Result<Option<PathBuf>, ConfinedError> {
    let shown = root.join(rel);
    if rel.is_empty() || !Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(err(
            &shown,
            "must be a plain relative file name inside the directory (no `..`, no absolute path)",
        ));
    }
    let real_root = root
        .canonicalize()
        .map_err(|e| err(root, format!("cannot open the directory: {e}")))?;
    let real = match shown.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(&shown, e.to_string())),
    };
    if !real.starts_with(&real_root) {
        return Err(err(&shown, format!("leads outside {} (to {})", root.display(), real.display())));
    }
    Ok(Some(real))
}

/// The bytes of `rel` inside `root`, at most `limit` of them, or `None` when nothing of that name
/// is there (see [`resolve`]).
pub fn read_if_present(root: &Path, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, ConfinedError> {
    let Some(real) = resolve_if_present(root, rel)? else {
        return Ok(None);
    };
    read_regular(&real, limit).map(Some).map_err(|e| ConfinedError {
        path: root.join(rel).display().to_string(),
        why: e.why,
    })
}

/// The bytes of `rel` inside `root`, at most `limit` of them.
pub fn read(root: &Path, rel: &str, limit: u64) -> Result<Vec<u8>, ConfinedError> {
    let real = resolve(root, rel)?;
    read_regular(&real, limit).map_err(|e| ConfinedError {
        path: root.join(rel).display().to_string(),
        why: e.why,
    })
}

/// The bytes of a regular file, at most `limit` of them (no confinement: for paths the user
/// names on the command line).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ConfinedError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(err(path, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(err(path, format!("{} bytes, more than the {limit} allowed", meta.len())));
    }
    let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    // The file could have been swapped since the check: look again at what was opened.
    if !file.metadata().map_err(|e| err(path, e.to_string()))?.is_file() {
        return Err(err(path, "not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| err(path, e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(err(path, format!("grew past the {limit} bytes allowed while being read")));
    }
    Ok(bytes)
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
