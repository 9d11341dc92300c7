//! The one reader: regular files only, bounded, and confined where a name comes from a file.

use gqla_reference::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The most bytes a file of one kind may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub u64);

impl Limit {
    /// config.json, profiles, plan files: small JSON.
    pub const CONFIG: Limit = Limit(16 << 20);
    /// model.safetensors.index.json: one entry per tensor.
    pub const INDEX: Limit = Limit(256 << 20);
}

/// Open `path` for reading without blocking on a FIFO or device, and check that what was opened
/// is a regular file. Returns the file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| Error::file(path, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(Error::file(path, "not a regular file (a FIFO, device or directory is refused)"));
    }
    super::write::note_input(&meta, path);
    Ok((file, meta.len()))
}

/// The bytes of the regular file `path`, at most `limit` of them (checked before reading, and
/// again while reading, in case the file grows).
pub fn read_file(path: &Path, limit: Limit) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > limit.0 {
        return Err(Error::file(
            path,
            format!("{len} bytes, more than the {} allowed for this kind of file", limit.0),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit.0 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit.0 {
        return Err(Error::file(
            path,
            format!("grew past the {} bytes allowed while being read", limit.0),
        ));
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: Limit) -> Result<String> {
    String::from_utf8(read_file(path, limit)?).map_err(|e| Error::file(path, format!("not UTF-8 text: {e}")))
}

/// `rel`, a name found inside a file (an index's shard, a manifest's entry), resolved inside
/// `root`: a plain relative path whose real location (symlinks followed) lies inside the real
/// `root`. `None` when nothing of that name exists (a dangling symlink counts as nothing).
pub fn resolve_in(root: &Path, rel: &str) -> Result<Option<PathBuf>> {
    resolve_within(root, rel, root)
}

/// [`resolve_in`] for a name in `dir` whose real location may lie anywhere inside `confine` (a
/// directory holding `dir`).
pub fn resolve_within(dir: &Path, rel: &str, confine: &Path) -> Result<Option<PathBuf>> {
    let shown = dir.join(rel);
    if rel.is_empty() || !Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::file(
            &shown,
            "must be a plain relative file name inside the directory (no `..`, no absolute path)",
        ));
    }
    let real_root = confine
        .canonicalize()
        .map_err(|e| Error::file(confine, format!("cannot open the directory: {e}")))?;
    let real = match shown.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(&shown, e.to_string())),
    };
    if !real.starts_with(&real_root) {
        return Err(Error::file(
            &shown,
            format!("leads outside {} (to {})", confine.display(), real.display()),
        ));
    }
    Ok(Some(real))
}

/// The bytes of `rel` inside `root` (see [`resolve_in`]), or `None` when it does not exist.
/// Errors name `root/rel`, the path as the user sees it.
pub fn read_in(root: &Path, rel: &str, limit: Limit) -> Result<Option<Vec<u8>>> {
    let Some(real) = resolve_in(root, rel)? else {
        return Ok(None);
    };
    let shown = root.join(rel);
    read_file(&real, limit).map(Some).map_err(|e| match e {
        Error::File { message, .. } => Error::file(&shown, message),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_refuse_what_is_not_a_small_regular_file_inside_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("ckpt"), tmp.path().join("secret"));
        std::fs::create_dir(&root).unwrap();
        std::fs::write(&outside, "secret").unwrap();
        std::fs::write(root.join("ok"), "fine").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("ok"), root.join("inner")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        assert_eq!(read_in(&root, "ok", Limit(10)).unwrap().unwrap(), b"fine");
        assert_eq!(read_in(&root, "inner", Limit(10)).unwrap().unwrap(), b"fine");
        assert_eq!(read_in(&root, "missing", Limit(10)).unwrap(), None);
        for (rel, why) in [
            ("../secret", "plain relative"),
            (outside.to_str().unwrap(), "plain relative"),
            ("link", "leads outside"),
            ("dir", "not a regular file"),
            ("", "plain relative"),
        ] {
            let e = read_in(&root, rel, Limit(10)).unwrap_err().to_string();
            assert!(e.contains(why), "{rel}: {e}");
        }
        let e = read_file(&root.join("zero"), Limit(10)).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_file(&root.join("ok"), Limit(3)).unwrap_err().to_string();
        assert!(e.contains("more than the 3 allowed"), "{e}");
        let fifo = root.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_file(&fifo, Limit(10)).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
