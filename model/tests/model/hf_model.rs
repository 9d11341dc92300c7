//! Whole-model parity: embedding, every decoder layer (RMSNorm, attention, SwiGLU, residual) and the
//! LM head reproduce HF transformers' logits (fixtures/make_hf_fixtures.py).

use gqla_model::hf::{Checkpoint, TensorStore};
use gqla_model::transformer::embed;
use gqla_reference::real::rel_err;
use rstest::rstest;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf").join(name)
}

#[rstest]
#[case("llama")]
#[case("llama_mha_bias")]
#[case("llama31_rope")]
#[case("qwen2")]
#[case("mistral")]
#[case("deepseek_v2_yarn")]
#[case("deepseek_v3")]
#[case("deepseek_v3_plain_rope")]
#[case("deepseek_v3_yarn")]
#[case("gqla_g2")]
#[case("deepseek_v3_moe")]
#[case("deepseek_v2_moe")]
#[case("glm4_moe_lite")]
fn logits_match_hf(#[case] name: &str) {
    let dir = fixture(name);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap()).unwrap();
    let ids: Vec<u32> = meta["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let ckpt = Checkpoint::open(&dir.join("checkpoint")).unwrap();
    let mut h = embed(&ckpt.embedding().unwrap(), &ids);
    for layer in 0..ckpt.config.num_layers {
        h = ckpt.decoder_layer(layer).unwrap().forward(h.view()).unwrap().output;
    }
    let logits = ckpt.head().unwrap().logits(h.view());
    let (_, want) = TensorStore::open(&dir.join("logits.safetensors"))
        .unwrap()
        .get_any2("logits")
        .unwrap();
    let e = rel_err(&logits, &want);
    assert!(e <= 1e-10, "{name}: logits rel err {e:e}");
}
