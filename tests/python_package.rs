//! The `gqla` Python package (python/): its tests (python/tests, under pytest, the plugin's
//! included) run under the Python the examples use, against the native module this build produced
//! (the workspace builds it as a cdylib beside the test binaries; no second build).

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The native module cargo built for this test run: `lib_native.so` beside the test binary.
fn native_module() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's folder");
    let so = deps.join("lib_native.so");
    assert!(
        so.is_file(),
        "{}: the package's native module was not built (`cargo test` builds it with the tests: gqla-python is a dev-dependency)",
        so.display()
    );
    so
}

/// The package assembled as `pip install ./python` lays it out (gqla/*.py and the native
/// module) in a temporary directory, for PYTHONPATH.
pub fn assembled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("gqla");
    std::fs::create_dir_all(&pkg).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/gqla");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, pkg.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(native_module(), pkg.join("_native.abi3.so")).unwrap();
    dir
}

#[test]
fn python_package_tests_pass() {
    let Some(python) = common::python("python_package_tests_pass", "import numpy, ml_dtypes, pytest") else {
        return;
    };
    let dir = assembled();
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tests");
    let run = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::pytest.PytestUnraisableExceptionWarning",
        ])
        .args(["test_package.py", "test_plugin.py"])
        .current_dir(&tests)
        .env("PYTHONPATH", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the package's tests");
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "python/tests failed:\n{out}\n{err}");
    assert!(out.contains(" passed") && !out.contains("skipped"), "{out}");
}
