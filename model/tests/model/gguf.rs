//! GGUF input without the real model: the tiny LLaMA fixture written as a GGUF file the way
//! llama.cpp writes one (its metadata keys and tensor names, q/k rows permuted for interleaved
//! RoPE) gives exactly the logits of the HF checkpoint it came from; every supported storage type
//! dequantises; bad files are refused with a message.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use gqla_model::hf::Checkpoint;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf/llama/checkpoint")
}

/// Write the HF checkpoint at `src` as a llama.cpp GGUF file at `dst`, matrices in `dtype`.
fn write_gguf(src: &Path, dst: &Path, arch: &str, dtype: GgmlDType) {
    write_gguf_with(src, dst, arch, dtype, true)
}

/// [`write_gguf`], with or without llama.cpp's q/k permutation.
fn write_gguf_with(src: &Path, dst: &Path, arch: &str, dtype: GgmlDType, permute_qk: bool) {
    let permute = |v: &[f32], heads: usize, rows: usize, cols: usize| {
        if permute_qk {
            gqla_model::hf::gguf::permute(v, heads, rows, cols)
        } else {
            v.to_vec()
        }
    };
    let ckpt = Checkpoint::open(src).unwrap();
    let c = &ckpt.config;
    let gqla_model::hf::config::AttentionConfig::Gqa(a) = &c.attention else {
        panic!("a GQA fixture")
    };
    let (heads, kv) = (a.dims.h(), a.dims.kv());
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for hf in ckpt.store.names().map(String::from).collect::<Vec<_>>() {
        let shape = ckpt.store.shape(&hf).unwrap();
        let values: Vec<f32> = ckpt.store.get(&hf, &shape).unwrap().iter().map(|&v| v as f32).collect();
        let (name, values) = match hf.as_str() {
            "model.embed_tokens.weight" => ("token_embd.weight".to_string(), values),
            "model.norm.weight" => ("output_norm.weight".to_string(), values),
            "lm_head.weight" => ("output.weight".to_string(), values),
            other => {
                let rest = other.strip_prefix("model.layers.").unwrap();
                let (i, what) = rest.split_once('.').unwrap();
                let (g, values) = match what {
                    "input_layernorm.weight" => ("attn_norm.weight", values),
                    "self_attn.q_proj.weight" => ("attn_q.weight", permute(&values, heads, shape[0], shape[1])),
                    "self_attn.k_proj.weight" => ("attn_k.weight", permute(&values, kv, shape[0], shape[1])),
                    "self_attn.v_proj.weight" => ("attn_v.weight", values),
                    "self_attn.o_proj.weight" => ("attn_output.weight", values),
                    "post_attention_layernorm.weight" => ("ffn_norm.weight", values),
                    "mlp.gate_proj.weight" => ("ffn_gate.weight", values),
                    "mlp.up_proj.weight" => ("ffn_up.weight", values),
                    "mlp.down_proj.weight" => ("ffn_down.weight", values),
                    w => panic!("unmapped tensor {w}"),
                };
                (format!("blk.{i}.{g}"), values)
            }
        };
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
        let q = if shape.len() == 2 { dtype } else { GgmlDType::F32 };
        tensors.push((name, QTensor::quantize(&t, q).unwrap()));
    }
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.embedding_length"), u(c.hidden_size)),
        (format!("{arch}.block_count"), u(c.num_layers)),
        (format!("{arch}.feed_forward_length"), u(c.intermediate_size)),
        (format!("{arch}.attention.head_count"), u(heads)),
        (format!("{arch}.attention.head_count_kv"), u(kv)),
        (format!("{arch}.attention.key_length"), u(a.dims.d())),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(a.rope.theta as f32)),
        (format!("{arch}.context_length"), u(64)),
        (format!("{arch}.vocab_size"), u(c.vocab_size)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn a_gguf_file_runs_exactly_as_the_hf_checkpoint_it_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("llama.gguf");
    write_gguf(&fixture(), &gguf, "llama", GgmlDType::F32);
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 64).collect();
    let want = Checkpoint::open(&fixture()).unwrap().logits(&ids).unwrap();
    let ckpt = Checkpoint::open(&gguf).unwrap();
    assert!(!ckpt.config.tie_word_embeddings);
    let got = ckpt.logits(&ids).unwrap();
    // bf16 weights are exact in f32, and both runs are the same f64 computation.
    let diff = (&got - &want).iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(diff <= 1e-12, "max |GGUF − HF| = {diff:e}");
    // The permutation matters: a file written in HF's row order reads as a different model.
    let unpermuted = tmp.path().join("hf-order.gguf");
    write_gguf_with(&fixture(), &unpermuted, "llama", GgmlDType::F32, false);
    let other = Checkpoint::open(&unpermuted).unwrap().logits(&ids).unwrap();
    let diff = (&other - &want).iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(diff > 1e-3, "q/k order made no difference ({diff:e})");
}

#[test]
fn every_supported_storage_type_dequantises() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, cols) = (8, 64);
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7).collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    for (dtype, tolerance) in [
        (GgmlDType::F32, 0.0),
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 1e-2),
        (GgmlDType::Q8_0, 1e-2),
        (GgmlDType::Q4_0, 0.2),
        (GgmlDType::Q4_1, 0.2),
    ] {
        let t = Tensor::from_vec(values.clone(), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let path = tmp.path().join(format!("{dtype:?}.gguf"));
        let meta = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.embedding_length", Value::U32(cols as u32)),
            ("llama.block_count", Value::U32(1)),
            ("llama.feed_forward_length", Value::U32(16)),
            ("llama.attention.head_count", Value::U32(1)),
            ("llama.vocab_size", Value::U32(rows as u32)),
            ("llama.context_length", Value::U32(16)),
        ];
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &meta_refs, &[("token_embd.weight", &q)]).unwrap();
        let m = gqla_model::hf::gguf::GgufModel::open(&path).unwrap();
        let got = m.read("model.embed_tokens.weight").unwrap();
        let err = got.iter().zip(&values).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt() / norm;
        assert!(err <= tolerance, "{dtype:?}: relative error {err}");
    }
}

#[test]
fn bad_gguf_files_are_refused_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("gpt2.gguf");
    write_gguf(&fixture(), &gguf, "gpt2", GgmlDType::F32);
    let e = Checkpoint::open(&gguf).err().unwrap().to_string();
    assert!(e.contains("gpt2.gguf") && e.contains("architecture `gpt2` is not supported"), "{e}");

    let good = tmp.path().join("llama.gguf");
    write_gguf(&fixture(), &good, "llama", GgmlDType::F32);
    let bytes = std::fs::read(&good).unwrap();
    // Truncated inside the tensor data: the header reads, the tensors do not.
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    let e = match Checkpoint::open(&cut) {
        Err(e) => e.to_string(),
        Ok(c) => c.logits(&[1, 2, 3]).unwrap_err().to_string(),
    };
    assert!(e.contains("cut.gguf"), "{e}");
    // Truncated inside the header.
    std::fs::write(&cut, &bytes[..200]).unwrap();
    let e = Checkpoint::open(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.gguf") && e.contains("not a GGUF file we can read"), "{e}");
    // An unknown storage type: the first tensor's type field set to 99.
    let mut unknown = bytes.clone();
    let name = b"token_embd.weight";
    let at = unknown.windows(name.len()).position(|w| w == name).expect("tensor info");
    let dims_at = at + name.len();
    let n_dims = u32::from_le_bytes(unknown[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    let type_at = dims_at + 4 + 8 * n_dims;
    unknown[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let bad = tmp.path().join("unknown.gguf");
    std::fs::write(&bad, &unknown).unwrap();
    let e = Checkpoint::open(&bad).err().unwrap().to_string();
    assert!(e.contains("unknown.gguf") && e.contains("not a GGUF file we can read"), "{e}");
}
