//! An on-disk cache of NVRTC's PTX that no other user can plant.
//!
//! NVRTC takes about 20 s for the kernel source, and every process that opens a GPU (each
//! certificate, each sanitizer run) needs the module. PTX from the cache is loaded and run as our
//! kernels, so an entry is trusted only when it lies in a directory of ours that no one else can
//! write, is a regular file of ours that no one else can write, and is named by the SHA-256 of
//! exactly what produced it (source, options, NVRTC version; `DefaultHasher` is not stable across
//! Rust releases).

use crate::compile::{compile, function_names, nvrtc_version, options, SOURCE};
use crate::CudaError;
use cudarc::nvrtc::Ptx;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What [`compile_cached`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// The PTX came from a trusted, complete entry.
    Hit,
    /// Compiled, and stored for the next process when the directory allowed it.
    Compiled,
    /// Compiled; the cache was not used, for the reason given (e.g. a directory another user owns).
    Refused(String),
}

/// The cache directory: `GQLA_PTX_CACHE` (`0` or empty: no cache), else
/// `$XDG_CACHE_HOME/gqla/ptx`, else `$HOME/.cache/gqla/ptx`; None when none applies.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    match std::env::var_os("GQLA_PTX_CACHE") {
        Some(v) if v.is_empty() || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("gqla").join("ptx")),
    }
}

/// The entry's name: SHA-256 over the source, the options and NVRTC's version, each
/// length-prefixed so that no two different inputs give the same byte stream.
pub fn key(source: &str, options: &[String], nvrtc_version: &str) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(source.as_bytes());
    field(&(options.len() as u64).to_le_bytes());
    for o in options {
        field(o.as_bytes());
    }
    field(nvrtc_version.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file [`compile_cached`] uses in `dir` for `arch`.
pub fn entry_file(dir: &Path, arch: &str) -> Result<PathBuf, CudaError> {
    Ok(dir.join(format!("decode-{arch}-{}.ptx", key(SOURCE, &options(arch), &nvrtc_version()?))))
}

/// [`compile`] through the cache in `dir` (None: no cache). An entry is used only if it is
/// trusted (see the module comment) and exports every kernel [`function_names`] lists; anything
/// else is compiled afresh. New entries are written to a temporary file and renamed into place.
pub fn compile_cached(arch: &str, dir: Option<&Path>) -> Result<(Ptx, CacheUse), CudaError> {
    let Some(dir) = dir else {
        return compile(arch).map(|p| (p, CacheUse::Refused("no cache directory".into())));
    };
    if let Err(why) = private_dir(dir) {
        return compile(arch).map(|p| (p, CacheUse::Refused(why)));
    }
    let file = entry_file(dir, arch)?;
    let complete = |ptx: &str| function_names(arch).iter().all(|n| ptx.contains(&format!(".entry {n}(")));
    if trusted_file(&file).is_ok() {
        if let Ok(src) = std::fs::read_to_string(&file) {
            if complete(&src) {
                return Ok((Ptx::from_src(src), CacheUse::Hit));
            }
        }
    }
    let ptx = compile(arch)?;
    // A cache that cannot be written only costs the next process a compile.
    let written = tempfile::Builder::new()
        .prefix(".decode-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .and_then(|mut tmp| {
            std::io::Write::write_all(&mut tmp, ptx.to_src().as_bytes())?;
            tmp.persist(&file).map_err(|e| e.error)
        });
    Ok((
        ptx,
        if written.is_ok() {
            CacheUse::Compiled
        } else {
            CacheUse::Refused(format!("cannot write {}", file.display()))
        },
    ))
}

/// Create `dir` (mode 0700) if needed; Err(why) unless it is a real directory of ours that no
/// other user can write. A directory of ours with looser permissions is tightened to 0700.
#[cfg(unix)]
pub fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let shown = dir.display();
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(format!("cannot create {shown}: {e}"));
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !m.file_type().is_dir() {
        return Err(format!("{shown} is not a directory (a symlink is not followed)"));
    }
    let me = current_uid();
    if m.uid() != me {
        return Err(format!("{shown} belongs to uid {}, not to this user (uid {me})", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {shown} private (mode {:o}): {e}", m.mode() & 0o777))?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn private_dir(dir: &Path) -> Result<(), String> {
    Err(format!("{}: a private cache directory is only checked on Unix", dir.display()))
}

/// Ok when `file` is a regular file (not a symlink) of ours that no other user can write.
#[cfg(unix)]
pub fn trusted_file(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if !m.file_type().is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    if m.uid() != current_uid() {
        return Err(format!("{} belongs to uid {}", file.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by others (mode {:o})", file.display(), m.mode() & 0o777));
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn trusted_file(file: &Path) -> Result<(), String> {
    Err(format!("{}: ownership is only checked on Unix", file.display()))
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_sha256_of_every_input() {
        let opts = |a: &str| vec![format!("--gpu-architecture={a}"), "--std=c++17".to_string()];
        let k = key("src", &opts("compute_90"), "13.0");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, key("src", &opts("compute_90"), "13.0"), "deterministic");
        assert_ne!(k, key("src ", &opts("compute_90"), "13.0"), "source");
        assert_ne!(k, key("src", &opts("compute_80"), "13.0"), "options");
        assert_ne!(k, key("src", &opts("compute_90"), "13.1"), "NVRTC version");
        // Length prefixes: moving bytes between fields changes the key.
        assert_ne!(key("ab", &["c".into()], "d"), key("a", &["bc".into()], "d"));
    }

    #[test]
    fn the_directory_is_created_private_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("ptx");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let why = private_dir(&link).unwrap_err();
        assert!(why.contains("not a directory"), "{why}");
    }

    #[test]
    fn only_private_regular_files_are_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("decode.ptx");
        std::fs::write(&file, ".version 9.0").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        trusted_file(&file).unwrap();
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = trusted_file(&file).unwrap_err();
            assert!(why.contains("writable by others"), "{mode:o}: {why}");
        }
        let link = tmp.path().join("planted.ptx");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(trusted_file(&link).unwrap_err().contains("not a regular file"));
        assert!(trusted_file(&tmp.path().join("absent.ptx")).is_err());
    }

    #[test]
    fn another_users_directory_or_file_is_refused() {
        // Needs root to hand a path to another uid; elsewhere ownership is checked by the code
        // path the other tests take.
        if current_uid() != 0 {
            return;
        }
        use std::os::unix::fs::chown;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        chown(&dir, Some(65534), None).unwrap();
        assert!(private_dir(&dir).unwrap_err().contains("uid 65534"));
        let file = tmp.path().join("theirs.ptx");
        std::fs::write(&file, ".version 9.0").unwrap();
        chown(&file, Some(65534), None).unwrap();
        assert!(trusted_file(&file).unwrap_err().contains("uid 65534"));
    }
}
