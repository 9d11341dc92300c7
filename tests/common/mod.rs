//! Running the binary and reading its outputs.

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (fixtures are found from here).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a run of `gqla` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run `gqla` with `args` from the repository root.
pub fn gqla(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_gqla"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run gqla");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Read a tensor of a safetensors file as f64 (F64 or F32 only).
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{} has no tensor {name}", path.display()));
    let v = match t.dtype() {
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    (t.shape().to_vec(), v)
}

/// ‖a − b‖ / ‖b‖, infinite if anything is non-finite.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

pub use gqla_files::tensors::RawTensor;

/// All tensors of a safetensors file, by name.
pub fn read_all(path: &Path) -> std::collections::BTreeMap<String, RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                RawTensor {
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    bytes: t.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Overwrite `path` with `tensors` (in place, unlike the program: tests want exact bytes).
pub fn write_all(path: &Path, tensors: &std::collections::BTreeMap<String, RawTensor>) {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.clone(), t)), None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Write a random bf16 LLaMA checkpoint to `dir` (see `gqla_model::hf::synthetic`).
#[allow(clippy::too_many_arguments)]
pub fn write_random_llama(
    dir: &Path,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
    layers: usize,
    seed: u64,
) {
    use gqla_model::hf::synthetic::{write_random_llama, LlamaGeometry};
    write_random_llama(
        dir,
        LlamaGeometry {
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            vocab,
            layers,
        },
        seed,
    )
    .unwrap();
}

/// `gqla forward` on `checkpoint`'s layer `layer` with hidden states `input`, writing `output`.
pub fn forward(checkpoint: &Path, layer: &str, input: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "forward",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--layer",
        layer,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    gqla(&args)
}

/// Report a skipped check on the terminal: written straight to stderr, so that libtest's output
/// capture (which only sees `eprintln!`) cannot hide it. For what no CI machine has (a GPU).
pub fn skipped(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
}

/// What a test needs from outside the repository that CI installs: there, a skip is a failure.
#[derive(Clone, Copy, Debug)]
pub enum Needs {
    /// The SmolLM2-135M GGUF file (`.ci/run` fetches it; CI sets `GQLA_REQUIRE_SMOLLM2=1`).
    SmolLm2,
    /// A Python with the packages the examples import (`.ci/run` installs them into target/py
    /// and sets `GQLA_PYTHON` and `GQLA_REQUIRE_PYTHON=1`).
    Python,
}

impl Needs {
    fn variable(self) -> &'static str {
        match self {
            Needs::SmolLm2 => "GQLA_REQUIRE_SMOLLM2",
            Needs::Python => "GQLA_REQUIRE_PYTHON",
        }
    }
}

/// Skip for want of `needs`: SKIPPED on the terminal, or a failure where it is required.
pub fn skip(needs: Needs, message: &str) {
    let var = needs.variable();
    assert!(
        std::env::var(var).map_or(true, |v| v != "1"),
        "{message}; {var}=1 makes this a failure, not a skip"
    );
    skipped(message);
}

/// The SmolLM2-135M-Instruct GGUF file where `.ci/run` puts it, or None after [`skip`].
pub fn smollm2_gguf(test: &str) -> Option<PathBuf> {
    let gguf = root().join("target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        return Some(gguf);
    }
    skip(Needs::SmolLm2, &format!("{test}: no {} (`.ci/run` downloads it)", gguf.display()));
    None
}

/// The Python that runs the examples (`GQLA_PYTHON`, default `python3`) if it can run `probe`,
/// or None after [`skip`].
pub fn python(test: &str, probe: &str) -> Option<String> {
    let python = std::env::var("GQLA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ran = Command::new(&python).args(["-c", probe]).output();
    if ran.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let why = ran.map_or_else(
        |e| e.to_string(),
        |o| String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
    );
    skip(
        Needs::Python,
        &format!("{test}: {python} cannot run `{probe}` ({why}; set GQLA_PYTHON)"),
    );
    None
}
