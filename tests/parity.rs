//! `gqla forward` reproduces HF transformers' self-attention outputs (fixtures/make_hf_fixtures.py).

use crate::common::{forward, read_tensor, rel_err, root};
use rstest::rstest;

/// Each fixture, and whether it has the two GQLA paths (MLA/GQLA) or one (GQA).
#[rstest]
#[case::llama_bf16_sharded("llama", false)]
#[case::llama_mha_bias("llama_mha_bias", false)]
#[case::qwen2_qkv_bias("qwen2", false)]
#[case::mistral_sliding_window_f16("mistral", false)]
#[case::deepseek_v3_q_lora_interleaved("deepseek_v3", true)]
#[case::deepseek_v3_rotate_half_bias_bf16("deepseek_v3_plain_rope", true)]
#[case::gqla_g2("gqla_g2", true)]
#[case::llama31_rope_scaling("llama31_rope", false)]
#[case::deepseek_v3_yarn_mscale("deepseek_v3_yarn", true)]
#[case::deepseek_v2_complex_rope_yarn_bf16("deepseek_v2_yarn", true)]
fn forward_matches_hf(#[case] name: &str, #[case] latent: bool) {
    let dir = root().join("fixtures/hf").join(name);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap()).unwrap();
    let layer = meta["layer"].as_u64().unwrap().to_string();
    let io = dir.join(format!("layer{layer}.safetensors"));
    let (shape, want) = read_tensor(&io, "attn_output");
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = dir.join("checkpoint");
    let paths: &[Option<&str>] = if latent {
        &[None, Some("absorb"), Some("gqa")]
    } else {
        &[None, Some("gqa")]
    };
    for path in paths {
        for layout in ["once", "per-group"] {
            for (dtype, tol) in [("f64", 1e-10), ("f32", 1e-4)] {
                let out = tmp.path().join("y.safetensors");
                let mut extra = vec!["--dtype", dtype, "--layout", layout];
                if let Some(p) = path {
                    extra.extend(["--path", p]);
                }
                let r = forward(&ckpt, &layer, &io, &out, &extra);
                assert_eq!(r.code, 0, "{name} {path:?}: {}", r.stderr);
                let (got_shape, got) = read_tensor(&out, "attn_output");
                assert_eq!(got_shape, shape);
                let e = rel_err(&got, &want);
                assert!(e <= tol, "{name} path {path:?} layout {layout} {dtype}: rel err {e:e} > {tol:e}");
                let (lse_shape, lse) = read_tensor(&out, "lse");
                assert_eq!(lse_shape[0], shape[0]);
                assert!(lse.iter().all(|x| x.is_finite()));
            }
        }
    }
}

#[test]
fn gqa_checkpoint_has_no_absorb_path() {
    let dir = root().join("fixtures/hf/llama");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("y.safetensors");
    let r = forward(
        &dir.join("checkpoint"),
        "1",
        &dir.join("layer1.safetensors"),
        &out,
        &["--path", "absorb"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no absorb path"), "{}", r.stderr);
    assert!(!out.exists());
}
