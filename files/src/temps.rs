//! Temporary outputs in flight. A signal handler cannot run destructors, so every temporary
//! file or directory the writer creates is listed here until it is renamed into place or
//! removed; [`remove_all`] deletes what is listed. The lock is held across creation and
//! registration, and across the final rename and deregistration, so a signal handler that takes
//! it sees either the temporary (and removes it: no output appears) or the finished output.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registry, locked. A poisoned lock still holds valid paths.
pub(crate) fn lock() -> MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn forget(list: &mut Vec<PathBuf>, path: &Path) {
    list.retain(|p| p != path);
}

/// Remove every temporary output in flight and keep the lock, so that nothing new is created
/// or renamed into place before the process exits. For signal handlers.
pub fn remove_all() -> MutexGuard<'static, Vec<PathBuf>> {
    let mut list = lock();
    for p in list.drain(..) {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&p);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
    list
}

/// How many temporary outputs are in flight (for tests).
pub fn count() -> usize {
    lock().len()
}
