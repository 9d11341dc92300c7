//! The one writer. An output is built in a temporary file (or directory) created exclusively,
//! with an unpredictable name, in the target's directory: a symlink planted there is never
//! followed. It is synced, then renamed into place, so nothing that looks finished is ever
//! half-written. Every file the reader opened is remembered, and an output that is one of them
//! (the same inode), or that would replace a file inside an input directory, is refused.

use super::temps;
use gqla_reference::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What this process has read: files by (device, inode), and input directories (checkpoints).
struct Inputs {
    files: Vec<((u64, u64), PathBuf)>,
    dirs: Vec<(PathBuf, PathBuf)>,
}

static INPUTS: Mutex<Inputs> = Mutex::new(Inputs {
    files: Vec::new(),
    dirs: Vec::new(),
});

fn inputs() -> std::sync::MutexGuard<'static, Inputs> {
    INPUTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remember a file the reader opened, so that no output of this process replaces it.
pub(crate) fn note_input(meta: &std::fs::Metadata, path: &Path) {
    let id = (meta.dev(), meta.ino());
    let mut i = inputs();
    // The latest path wins: an inode seen before may belong to a file since deleted.
    i.files.retain(|(k, _)| *k != id);
    i.files.push((id, path.to_path_buf()));
}

/// Remember an input directory (a checkpoint): no output may replace a file inside it.
pub fn note_input_dir(dir: &Path) {
    if let Ok(real) = dir.canonicalize() {
        let mut i = inputs();
        if !i.dirs.iter().any(|(r, _)| *r == real) {
            i.dirs.push((real, dir.to_path_buf()));
        }
    }
}

/// Forget every input noted so far: for a long-lived process (the Python package) whose next
/// operation has other inputs and may write where the last one read.
pub fn forget_inputs() {
    let mut i = inputs();
    i.files.clear();
    i.dirs.clear();
}

/// Refuse an output path that is an input of this process, or that lies inside an input
/// directory (a file added to a checkpoint changes it: a new `model.safetensors.index.json`
/// would take precedence over its weights).
pub fn check_output(path: &Path) -> Result<()> {
    let i = inputs();
    let inside = |location: &Path, how: &str| match i.dirs.iter().find(|(r, _)| location.starts_with(r)) {
        Some((_, input)) => Err(Error::file(
            path,
            format!(
                "{how} the input {}, which it would change; choose a path outside it",
                input.display()
            ),
        )),
        None => Ok(()),
    };
    // Where the output would land: its directory resolved, plus its name.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let (Ok(real_dir), Some(name)) = (dir.canonicalize(), path.file_name()) {
        inside(&real_dir.join(name), "lies inside")?;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // nothing there to replace
    };
    let id = (meta.dev(), meta.ino());
    // An input deleted since it was read may have left its inode to an unrelated file: only an
    // input still at its path counts.
    let still = |input: &Path| std::fs::metadata(input).is_ok_and(|m| (m.dev(), m.ino()) == id);
    if let Some((_, input)) = i.files.iter().find(|(k, input)| *k == id && still(input)) {
        return Err(Error::file(
            path,
            format!("is an input of this command ({}); choose another output path", input.display()),
        ));
    }
    match path.canonicalize() {
        Ok(real) => inside(&real, "leads inside"),
        Err(_) => Ok(()),
    }
}

/// Check, before any work, that `dir` can become an output directory: it is a directory or can
/// be created as one (no file in the way, at it or above it), it lies outside every input noted
/// so far, and a file can be created in it (or in its nearest existing ancestor). The probe file
/// is created exclusively and removed at once; nothing else is created.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if existing == dir => return Err(Error::file(dir, "exists and is not a directory: choose a directory for the output")),
            Ok(_) => {
                return Err(Error::file(
                    dir,
                    format!("cannot be created: {} is a file, not a directory", existing.display()),
                ))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                existing = match existing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => {
                return Err(Error::file(
                    dir,
                    format!("cannot be used as an output directory: {}: {e}", existing.display()),
                ))
            }
        }
    }
    // Inside an input? The nearest existing ancestor resolved, plus the part still to create.
    if let (Ok(real), Ok(rest)) = (existing.canonicalize(), dir.strip_prefix(existing)) {
        let i = inputs();
        if let Some((_, input)) = i.dirs.iter().find(|(r, _)| real.join(rest).starts_with(r)) {
            return Err(Error::file(
                dir,
                format!(
                    "lies inside the input {}, which it would change; choose a path outside it",
                    input.display()
                ),
            ));
        }
    }
    tempfile::Builder::new()
        .prefix(".gqla-write-probe.")
        .tempfile_in(existing)
        .map(drop)
        .map_err(|e| Error::file(dir, format!("cannot write output here ({}): {e}", existing.display())))
}

/// The directory and file name of an output path.
fn split(path: &Path) -> Result<(&Path, String)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "an output path must end in a file name"))?
        .to_string_lossy()
        .into_owned();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::file(
            path,
            format!("cannot write: the directory {} does not exist", dir.display()),
        ));
    }
    Ok((dir, name))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable; some filesystems refuse to sync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Write `bytes` to `path`: an exclusive temporary file beside it, synced, then renamed.
/// Errors name `path`, never the temporary name.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    check_output(path)?;
    let (dir, name) = split(path)?;
    let mut tmp = {
        let mut list = temps::lock();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| Error::file(path, format!("cannot create a temporary file beside it: {e}")))?;
        list.push(tmp.path().to_path_buf());
        tmp
    };
    let tmp_path = tmp.path().to_path_buf();
    if let Err(e) = tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()) {
        let mut list = temps::lock();
        drop(tmp); // removes the temporary file
        temps::forget(&mut list, &tmp_path);
        return Err(Error::file(path, format!("cannot write: {e}")));
    }
    let mut list = temps::lock();
    let persisted = tmp.persist(path);
    temps::forget(&mut list, &tmp_path);
    drop(list);
    persisted.map_err(|e| Error::file(path, format!("cannot move the finished file into place: {}", e.error)))?;
    sync_dir(dir);
    Ok(())
}

/// An output directory under construction: a temporary directory beside the target, renamed
/// into place by [`OutputDir::commit`], removed if dropped before.
#[derive(Debug)]
pub struct OutputDir {
    tmp: Option<PathBuf>,
    target: PathBuf,
}

impl OutputDir {
    /// Start building `target`, which must not exist (or, with `allow_empty`, be an empty
    /// directory).
    pub fn create(target: &Path, allow_empty: bool) -> Result<Self> {
        check_output(target)?;
        match std::fs::read_dir(target) {
            Ok(mut entries) => {
                if !allow_empty {
                    return Err(Error::file(target, "already exists; choose a new directory"));
                }
                if entries.next().is_some() {
                    return Err(Error::file(target, "is not empty; choose a new or empty directory"));
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                if std::fs::symlink_metadata(target).is_ok() {
                    return Err(Error::file(target, "is a dangling symlink; choose a new directory"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(Error::file(target, "already exists and is not a directory; choose a new directory"));
            }
            Err(e) => return Err(Error::file(target, format!("cannot use as an output directory: {e}"))),
        }
        let (dir, name) = split(target)?;
        let mut list = temps::lock();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(dir)
            .map_err(|e| Error::file(target, format!("cannot create a temporary directory beside it: {e}")))?
            .keep();
        list.push(tmp.clone());
        Ok(Self {
            tmp: Some(tmp),
            target: target.to_path_buf(),
        })
    }

    /// Where to write the directory's files until [`OutputDir::commit`].
    pub fn path(&self) -> &Path {
        self.tmp.as_deref().expect("present until commit")
    }

    /// The directory as the user named it (for messages).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Sync every file and rename the directory into place.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("present until commit");
        let entries = std::fs::read_dir(&tmp).map_err(|e| Error::file(&self.target, format!("cannot list the finished output: {e}")));
        let synced = entries.and_then(|entries| {
            for e in entries.flatten() {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    f.sync_all()
                        .map_err(|err| Error::file(self.target.join(e.file_name()), format!("cannot sync: {err}")))?;
                }
            }
            Ok(())
        });
        let mut list = temps::lock();
        let moved = synced.and_then(|()| {
            if self.target.is_dir() {
                std::fs::remove_dir(&self.target)
                    .map_err(|e| Error::file(&self.target, format!("cannot replace the empty directory: {e}")))?;
            }
            std::fs::rename(&tmp, &self.target)
                .map_err(|e| Error::file(&self.target, format!("cannot move the finished output into place: {e}")))
        });
        if moved.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        temps::forget(&mut list, &tmp);
        drop(list);
        if moved.is_ok() {
            if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent);
            }
        }
        moved
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let mut list = temps::lock();
            let _ = std::fs::remove_dir_all(&tmp);
            temps::forget(&mut list, &tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_follow_a_planted_symlink_and_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = tmp.path().join("out.bin");
        // Names an old writer would have used.
        for planted in [format!(".out.bin.tmp-{}", std::process::id()), ".out.bin.tmp".into()] {
            std::os::unix::fs::symlink(&victim, tmp.path().join(planted)).unwrap();
        }
        write_file(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 4, "{left:?}");
        let e = write_file(&tmp.path().join("no/such/dir/x"), b"").unwrap_err().to_string();
        assert!(e.contains("no/such/dir/x") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn an_output_never_replaces_an_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.bin");
        std::fs::write(&input, "data").unwrap();
        super::super::read::read_file(&input, super::super::Limit(100)).unwrap();
        let e = write_file(&input, b"x").unwrap_err().to_string();
        assert!(e.contains("is an input"), "{e}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(write_file(&link, b"x").unwrap_err().to_string().contains("is an input"));
        assert_eq!(std::fs::read(&input).unwrap(), b"data");
        let ckpt = tmp.path().join("ckpt");
        std::fs::create_dir(&ckpt).unwrap();
        std::fs::write(ckpt.join("config.json"), "{}").unwrap();
        note_input_dir(&ckpt);
        let e = write_file(&ckpt.join("config.json"), b"x").unwrap_err().to_string();
        assert!(e.contains("lies inside the input"), "{e}");
        let e = write_file(&ckpt.join("new.json"), b"x").unwrap_err().to_string();
        assert!(e.contains("lies inside the input"), "{e}");
    }

    #[test]
    fn an_output_directory_appears_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        {
            let d = OutputDir::create(&target, false).unwrap();
            std::fs::write(d.path().join("a"), "1").unwrap();
        } // dropped: nothing left
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let d = OutputDir::create(&target, false).unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert!(OutputDir::create(&target, true).unwrap_err().to_string().contains("not empty"));
        assert!(OutputDir::create(&target, false)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }
}
