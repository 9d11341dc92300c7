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

pub use gqla_reference::hf::tensors::RawTensor;

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

/// Write a random LLaMA checkpoint (bf16) to `dir`: `layers` decoder layers of the given geometry.
#[allow(clippy::too_many_arguments)]
pub fn write_random_llama(
    dir: &Path,
    hidden: usize,
    heads: usize,
    kv: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    layers: usize,
    seed: u64,
) {
    use gqla_reference::hf::config::StorageDtype;
    use gqla_reference::hf::tensors::write_tensors;
    use gqla_reference::random::Sampler;
    std::fs::create_dir_all(dir).unwrap();
    let mut s = Sampler::new(seed);
    let mut tensors: Vec<(String, RawTensor)> = Vec::new();
    let mut mat = |name: String, rows: usize, cols: usize, gain: f64| {
        let w = s.normal((rows, cols), gain / (cols as f64).sqrt());
        tensors.push((name, RawTensor::encode(StorageDtype::Bf16, vec![rows, cols], w.iter().copied())));
    };
    mat("model.embed_tokens.weight".into(), vocab, hidden, (hidden as f64).sqrt());
    mat("lm_head.weight".into(), vocab, hidden, 1.0);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        mat(format!("{p}.self_attn.q_proj.weight"), heads * head_dim, hidden, 3.0);
        mat(format!("{p}.self_attn.k_proj.weight"), kv * head_dim, hidden, 1.0);
        mat(format!("{p}.self_attn.v_proj.weight"), kv * head_dim, hidden, 1.0);
        mat(format!("{p}.self_attn.o_proj.weight"), hidden, heads * head_dim, 1.0);
        mat(format!("{p}.mlp.gate_proj.weight"), inter, hidden, 1.0);
        mat(format!("{p}.mlp.up_proj.weight"), inter, hidden, 1.0);
        mat(format!("{p}.mlp.down_proj.weight"), hidden, inter, 1.0);
    }
    let ones = |n: usize| RawTensor::encode(StorageDtype::Bf16, vec![n], std::iter::repeat_n(1.0, n));
    tensors.push(("model.norm.weight".into(), ones(hidden)));
    for l in 0..layers {
        tensors.push((format!("model.layers.{l}.input_layernorm.weight"), ones(hidden)));
        tensors.push((format!("model.layers.{l}.post_attention_layernorm.weight"), ones(hidden)));
    }
    write_tensors(&dir.join("model.safetensors"), tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
        "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}
