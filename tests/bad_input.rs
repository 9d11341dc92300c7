//! Malformed input: exit code 2, a message naming the file, tensor and expectation, no panic, and
//! no output file left behind.

use crate::common::{gqla, read_all, write_all, RawTensor, Run};
use std::path::{Path, PathBuf};

const FIXTURE: &str = "fixtures/hf/llama_mha_bias";
const Q: &str = "model.layers.1.self_attn.q_proj.weight";
const K: &str = "model.layers.1.self_attn.k_proj.weight";

/// A writable copy of a fixture: checkpoint/ and its layer-1 input.
struct Scratch {
    _tmp: tempfile::TempDir,
    ckpt: PathBuf,
    input: PathBuf,
    out: PathBuf,
}

fn scratch(fixture: &str) -> Scratch {
    let tmp = tempfile::tempdir().unwrap();
    let src = crate::common::root().join(fixture);
    let ckpt = tmp.path().join("checkpoint");
    std::fs::create_dir(&ckpt).unwrap();
    for e in std::fs::read_dir(src.join("checkpoint")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
    }
    let input = tmp.path().join("x.safetensors");
    std::fs::copy(src.join("layer1.safetensors"), &input).unwrap();
    let out = tmp.path().join("out").join("y.safetensors");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    Scratch {
        _tmp: tmp,
        ckpt,
        input,
        out,
    }
}

impl Scratch {
    fn forward(&self) -> Run {
        crate::common::forward(&self.ckpt, "1", &self.input, &self.out, &[])
    }
    fn weights(&self) -> PathBuf {
        self.ckpt.join("model.safetensors")
    }
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.ckpt.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    }
    fn edit_weights(&self, f: impl FnOnce(&mut std::collections::BTreeMap<String, RawTensor>)) {
        let mut t = read_all(&self.weights());
        f(&mut t);
        write_all(&self.weights(), &t);
    }
}

/// Exit 2, every `needles` in stderr, no panic, no output.
fn assert_rejected(r: &Run, out: &Path, needles: &[&str]) {
    assert_eq!(r.code, 2, "expected exit 2, got {}: {}", r.code, r.stderr);
    assert!(!r.stderr.contains("panicked"), "panicked: {}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}: {}", r.stderr);
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert!(leftovers.is_empty(), "output directory not empty: {leftovers:?}");
}

#[test]
fn heads_not_divisible_by_groups() {
    let s = scratch(FIXTURE);
    s.edit_config(|v| v["num_key_value_heads"] = 3.into());
    assert_rejected(&s.forward(), &s.out, &["config.json", "H=4", "divisible", "KV=3"]);
}

#[test]
fn gqla_groups_not_dividing_heads() {
    let s = scratch("fixtures/hf/gqla_g2");
    s.edit_config(|v| v["num_key_value_heads"] = 4.into());
    assert_rejected(&s.forward(), &s.out, &["config.json", "H=6", "G=4", "divisible"]);
}

#[test]
fn missing_tensor() {
    let s = scratch(FIXTURE);
    s.edit_weights(|t| {
        t.remove(K);
    });
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", K, "missing", "[24, 32]"]);
}

#[test]
fn wrong_shape() {
    let s = scratch(FIXTURE);
    s.edit_weights(|t| {
        t.insert(K.into(), RawTensor::f64(vec![24, 31], vec![0.5; 24 * 31]));
    });
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", K, "[24, 31]", "expected [24, 32]"]);
}

#[test]
fn wrong_dtype() {
    let s = scratch(FIXTURE);
    s.edit_weights(|t| {
        let q = t.get_mut(Q).unwrap();
        q.dtype = safetensors::Dtype::I32;
    });
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", Q, "I32", "BF16, F16, F32, F64"]);
}

#[test]
fn truncated_safetensors() {
    let s = scratch(FIXTURE);
    let bytes = std::fs::read(s.weights()).unwrap();
    std::fs::write(s.weights(), &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn truncated_header() {
    let s = scratch(FIXTURE);
    std::fs::write(s.weights(), [7u8, 0, 0]).unwrap();
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn nan_in_weights() {
    let s = scratch(FIXTURE);
    s.edit_weights(|t| {
        let q = t.get_mut(Q).unwrap();
        q.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_rejected(&s.forward(), &s.out, &["model.safetensors", Q, "non-finite", "flat index 2"]);
}

#[test]
fn nan_in_input() {
    let s = scratch(FIXTURE);
    let mut t = read_all(&s.input);
    let x = t.get_mut("hidden_states").unwrap();
    x.bytes[80..88].copy_from_slice(&f64::NAN.to_le_bytes());
    write_all(&s.input, &t);
    assert_rejected(
        &s.forward(),
        &s.out,
        &["x.safetensors", "hidden_states", "non-finite", "flat index 10"],
    );
}

#[test]
fn input_of_wrong_width() {
    let s = scratch(FIXTURE);
    let mut t = read_all(&s.input);
    t.insert("hidden_states".into(), RawTensor::f64(vec![3, 31], vec![0.25; 93]));
    write_all(&s.input, &t);
    assert_rejected(
        &s.forward(),
        &s.out,
        &["x.safetensors", "hidden_states", "[3, 31]", "expected [3, 32]"],
    );
}

#[test]
fn missing_shard() {
    let s = scratch("fixtures/hf/llama");
    std::fs::remove_file(s.ckpt.join("model-00002-of-00002.safetensors")).unwrap();
    assert_rejected(&s.forward(), &s.out, &["model-00002-of-00002.safetensors", "missing"]);
}

#[test]
fn layer_out_of_range() {
    let s = scratch(FIXTURE);
    let r = crate::common::forward(&s.ckpt, "9", &s.input, &s.out, &[]);
    assert_rejected(&r, &s.out, &["config.json", "layer 9", "num_hidden_layers = 2"]);
}

#[test]
fn unsupported_model_type() {
    let s = scratch(FIXTURE);
    s.edit_config(|v| v["model_type"] = "gpt2".into());
    assert_rejected(&s.forward(), &s.out, &["config.json", "model_type", "gpt2", "llama"]);
}

#[test]
fn unsupported_rope_type() {
    let s = scratch(FIXTURE);
    s.edit_config(|v| v["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0}));
    assert_rejected(&s.forward(), &s.out, &["config.json", "longrope", "not supported"]);
}

#[test]
fn yarn_without_required_keys() {
    let s = scratch(FIXTURE);
    s.edit_config(|v| {
        v["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0});
    });
    assert_rejected(&s.forward(), &s.out, &["config.json", "rope_parameters.low_freq_factor", "llama3"]);
}

#[test]
fn malformed_config() {
    let s = scratch(FIXTURE);
    std::fs::write(s.ckpt.join("config.json"), "{ not json").unwrap();
    assert_rejected(&s.forward(), &s.out, &["config.json", "not valid JSON"]);
}

#[test]
fn cache_size_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("config.json");
    std::fs::write(&p, r#"{"model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}"#).unwrap();
    let r = gqla(&["cache-size", "--config", p.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("config.json") && r.stderr.contains("divisible"), "{}", r.stderr);
}
