//! `gqla cache-size` on known models: measured from allocated caches, snapshotted.

use crate::common::gqla;
use rstest::rstest;

#[rstest]
#[case::llama_3_8b("llama-3-8b")]
#[case::llama_3_70b("llama-3-70b")]
#[case::qwen2_5_7b("qwen2.5-7b")]
#[case::mistral_7b("mistral-7b")]
#[case::deepseek_v2_lite("deepseek-v2-lite")]
#[case::deepseek_v3("deepseek-v3")]
#[case::glm_4_7_flash_like_g4("glm-4.7-flash-like-g4")]
fn cache_size_table(#[case] model: &str) {
    let path = format!("fixtures/configs/{model}.json");
    let r = gqla(&["cache-size", "--config", &path, "--kv-lora-rank", "512", "--rope-dim", "64"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(format!("cache_size_{model}"), r.stdout);
}

/// The paper's 28.125% for LLaMA-3-8B at d_c=512, d_r=64, and the canonical GQA path's 2112.
#[test]
fn llama_3_8b_absorb_is_28_125_percent() {
    let r = gqla(&["cache-size", "--config", "fixtures/configs/llama-3-8b.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let find = |name: &str| rows.iter().find(|r| r["cache"] == name).unwrap_or_else(|| panic!("no row {name}"));
    assert_eq!(find("source")["elements_per_token"], 2048);
    assert_eq!(find("absorb")["elements_per_token"], 576);
    assert_eq!(find("absorb")["percent_of_source"], 28.125);
    assert_eq!(find("gqa (rope once)")["elements_per_token"], 2112);
    assert_eq!(find("gqa (rope per group)")["elements_per_token"], 2560);
    assert_eq!(find("gqa per rank, TP=8")["bytes_per_token"], 640);
    assert_eq!(find("absorb per rank, TP=8")["bytes_per_token"], 1152);
}

#[test]
fn rank_too_large_is_rejected() {
    let r = gqla(&[
        "cache-size",
        "--config",
        "fixtures/configs/llama-3-8b.json",
        "--kv-lora-rank",
        "4097",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("4097") && r.stderr.contains("2048") || r.stderr.contains("exceeds"),
        "{}",
        r.stderr
    );
}
