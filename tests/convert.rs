//! `gqla convert` (TransGQLA): exact before truncation against HF's own outputs, regression
//! snapshots, the 28.125% cache measured on a converted LLaMA-3-8B-geometry checkpoint, bad input.

use crate::common::{forward, gqla, read_tensor, rel_err, root, write_random_llama, RawTensor};
use rstest::rstest;
use std::path::Path;

fn convert(input: &Path, output: &Path, extra: &[&str]) -> crate::common::Run {
    let mut args = vec!["convert", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()];
    args.extend_from_slice(extra);
    gqla(&args)
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("gqla_meta.json")).unwrap()).unwrap()
}

/// Exact conversion (GQA sources with no truncation; MLA sources with G = H): `gqla forward` on
/// the converted checkpoint, both paths, reproduces HF's attention output of the *source* model;
/// held-out logits and KL agree to rounding.
#[rstest]
#[case::llama_bf16("llama", &["--no-truncation"])]
#[case::llama_mha_bias("llama_mha_bias", &["--no-truncation"])]
#[case::qwen2_bias("qwen2", &["--no-truncation"])]
#[case::llama31_rope_scaling("llama31_rope", &["--no-truncation"])]
#[case::mistral_sliding_window_f16("mistral", &["--no-truncation"])]
#[case::mla_deepseek_v3_q_lora("deepseek_v3", &["--groups", "4"])]
#[case::mla_deepseek_v3_rotate_half_bias("deepseek_v3_plain_rope", &["--groups", "4"])]
#[case::mla_deepseek_v2_yarn("deepseek_v2_yarn", &["--groups", "4"])]
#[case::mla_moe_deepseek_v3("deepseek_v3_moe", &["--groups", "4"])]
#[case::mla_moe_deepseek_v2_group_limited("deepseek_v2_moe", &["--groups", "4"])]
#[case::mla_moe_glm4_moe_lite("glm4_moe_lite", &["--groups", "4"])]
fn exact_conversion_reproduces_hf(#[case] name: &str, #[case] args: &[&str]) {
    let fx = root().join("fixtures/hf").join(name);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let r = convert(&fx.join("checkpoint"), &out, &[args, &["--dtype", "f64"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_, want) = read_tensor(&fx.join("layer1.safetensors"), "attn_output");
    for path in ["absorb", "gqa"] {
        let y = tmp.path().join(format!("y_{path}.safetensors"));
        let f = forward(&out, "1", &fx.join("layer1.safetensors"), &y, &["--path", path]);
        assert_eq!(f.code, 0, "{}", f.stderr);
        let e = rel_err(&read_tensor(&y, "attn_output").1, &want);
        assert!(e <= 1e-9, "{name} converted, {path} path vs HF source: {e:e}");
    }
    let m = meta(&out);
    let report = &m["report"];
    assert!(report["held_out_kl"].as_f64().unwrap().abs() <= 1e-12, "{report}");
    assert!(report["held_out_logits_rel_err"].as_f64().unwrap() <= 1e-9, "{report}");
    for layer in report["layers"].as_array().unwrap() {
        assert!(layer["held_out_attention_rel_err"].as_f64().unwrap() <= 1e-9, "{layer}");
        // GQA sources: the rope-only stage is exact too; MLA sources have none.
        match layer["held_out_rope_only_rel_err"].as_f64() {
            Some(e) => assert!(e <= 1e-9, "{layer}"),
            None => assert_eq!(layer["method"], "group_pca", "{layer}"),
        }
    }
}

/// The per-layer loss split: with the full kv rank, the whole held-out error is the rope
/// truncation's (the rope-only stage and the output agree); with a smaller rank, the kv
/// truncation changes it.
#[test]
fn loss_splits_into_rope_and_kv_truncation() {
    let fx = root().join("fixtures/hf/llama/checkpoint");
    let tmp = tempfile::tempdir().unwrap();
    let layers = |rank: &str| -> Vec<(f64, f64)> {
        let out = tmp.path().join(format!("r{rank}"));
        let r = convert(&fx, &out, &["--rope-dim", "4", "--kv-lora-rank", rank, "--calib-precision", "f64"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("rope-only err"), "{}", r.stdout);
        meta(&out)["report"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["held_out_rope_only_rel_err"].as_f64().unwrap(),
                    l["held_out_attention_rel_err"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let full = layers("28");
    for &(rope_only, total) in &full {
        assert!(rope_only > 1e-3, "the rope truncation loses something: {rope_only:e}");
        assert!(
            (total - rope_only).abs() <= 1e-9 * rope_only,
            "full rank: {total:e} vs {rope_only:e}"
        );
    }
    // Errors of the two truncations need not add (on this fixture rank 4 lowers layer 1's), so
    // only the rope stage's independence of the rank is asserted.
    for ((r4, t4), (r28, t28)) in layers("4").into_iter().zip(full) {
        assert!((r4 - r28).abs() <= 1e-12, "the rope stage does not depend on the rank");
        assert!((t4 - t28).abs() > 1e-6, "rank 4 of 28 changes the output: {t4:e} vs {t28:e}");
    }
}

/// Round to 4 significant digits so snapshots are stable across platforms.
pub fn round_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap();
            let r = if x == 0.0 {
                0.0
            } else {
                let p = 10f64.powi(3 - x.abs().log10().floor() as i32);
                (x * p).round() / p
            };
            *v = serde_json::json!(r);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_floats),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// A truncating conversion of a fixture: config, tensor names/shapes/dtypes and the per-layer
/// figures. A change in conversion output shows up as a snapshot diff.
#[rstest]
#[case::llama_rope4_rank8("llama", &["--rope-dim", "4", "--kv-lora-rank", "8", "--calib-precision", "f64"])]
#[case::qwen2_rope4_rank12_freqfold3("qwen2", &["--rope-dim", "4", "--kv-lora-rank", "12", "--freqfold", "3", "--calib-precision", "f64"])]
#[case::mla_deepseek_v3_groups2("deepseek_v3", &["--groups", "2", "--calib-precision", "f64"])]
fn truncated_conversion_snapshot(#[case] name: &str, #[case] args: &[&str]) {
    let fx = root().join("fixtures/hf").join(name);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let r = convert(&fx.join("checkpoint"), &out, args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut tensors = serde_json::Map::new();
    for (tensor, shard) in index["weight_map"].as_object().unwrap() {
        let bytes = std::fs::read(out.join(shard.as_str().unwrap())).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(tensor).unwrap();
        tensors.insert(
            tensor.clone(),
            serde_json::json!(format!("{:?} {:?} in {}", t.dtype(), t.shape(), shard.as_str().unwrap())),
        );
    }
    let mut m = meta(&out);
    m["source"]["path"] = serde_json::json!("[fixture]");
    let mut snap = serde_json::json!({ "config": config, "tensors": tensors, "meta": m });
    round_floats(&mut snap);
    insta::assert_json_snapshot!(format!("convert_{name}"), snap);
}

/// The paper's 28.125%, measured: a random one-layer LLaMA-3-8B-geometry checkpoint (hidden 4096,
/// 32/8 heads, head dim 128) converted with d_c = 512, d_r = 64; caches allocated from the
/// converted config hold 576 elements per token per layer against the source's 2048.
#[test]
fn llama_3_8b_geometry_absorb_cache_is_28_125_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("gqla"));
    write_random_llama(&src, 4096, 32, 8, 128, 256, 64, 1, 7);
    let r = convert(
        &src,
        &out,
        &[
            "--kv-lora-rank",
            "512",
            "--rope-dim",
            "64",
            "--calib-sequences",
            "2",
            "--calib-tokens",
            "24",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let size = |config: &Path| -> serde_json::Value {
        let r = gqla(&["cache-size", "--config", config.to_str().unwrap(), "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str(&r.stdout).unwrap()
    };
    let (src_rows, out_rows) = (size(&src.join("config.json")), size(&out.join("config.json")));
    let elements = |rows: &serde_json::Value, cache: &str| {
        rows.as_array().unwrap().iter().find(|r| r["cache"] == cache).unwrap()["elements_per_token"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(elements(&src_rows, "source"), 2048);
    assert_eq!(elements(&out_rows, "absorb"), 576);
    assert_eq!(elements(&out_rows, "gqa (rope once)"), 2112);
    assert_eq!(elements(&out_rows, "absorb") as f64 / elements(&src_rows, "source") as f64, 0.28125);
    let report = &meta(&out)["report"];
    assert_eq!(
        (report["source_cache_elements"].as_u64(), report["absorb_cache_elements"].as_u64()),
        (Some(2048), Some(576))
    );
}

/// `--freqfold search` (the default) converts at 2, 4, … while the held-out KL falls and writes
/// the best: its trials equal separate conversions at each fold, its tensors equal the chosen
/// fold's conversion, and the losing candidate leaves nothing behind. `smallest` converts once.
#[test]
fn freqfold_search_writes_the_best_fold() {
    let fx = root().join("fixtures/hf/llama/checkpoint");
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "--rope-dim",
        "4",
        "--kv-lora-rank",
        "8",
        "--calib-precision",
        "f64",
        "--dtype",
        "f64",
    ];
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let r = convert(&fx, &out, &[&base[..], extra].concat());
        assert_eq!(r.code, 0, "{}", r.stderr);
        (out, meta(&tmp.path().join(name)), r.stdout)
    };
    // Each shard's metadata records the same options as gqla_meta.json.
    let shard_options = |dir: &Path| -> serde_json::Value {
        let bytes = std::fs::read(dir.join("model-00001-of-00003.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        serde_json::from_str(&header.metadata().as_ref().unwrap()["gqla_options"]).unwrap()
    };
    let (searched, m, stdout) = run("searched", &[]);
    assert_eq!(shard_options(&searched), m["options"]);
    let trials = m["report"]["freqfold_trials"].as_array().unwrap().clone();
    assert!(trials.len() >= 2, "{trials:?}");
    assert_eq!(m["options"]["freqfold_choice"], "search");
    let kl = |t: &serde_json::Value| t["held_out_kl"].as_f64().unwrap();
    let best = trials.iter().min_by(|a, b| kl(a).total_cmp(&kl(b))).unwrap()["freqfold"]
        .as_u64()
        .unwrap();
    assert_eq!(m["options"]["freqfold"].as_u64(), Some(best));
    assert!(
        stdout.contains(&format!("freqfold {best:>2}: held-out KL")) && stdout.contains("<- chosen"),
        "{stdout}"
    );
    for (i, t) in trials.iter().enumerate() {
        let f = t["freqfold"].as_u64().unwrap();
        assert_eq!(f, 2 << i, "folds double from the smallest valid one: {trials:?}");
        let (alone, m_alone, _) = run(&format!("fold{f}"), &["--freqfold", &f.to_string()]);
        assert_eq!(m_alone["options"]["freqfold_choice"], "given");
        assert_eq!(shard_options(&alone), m_alone["options"]);
        assert_eq!(m_alone["report"]["freqfold_trials"], serde_json::json!([]));
        let (a, b) = (kl(t), m_alone["report"]["held_out_kl"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-12 * b.abs(),
            "fold {f}: search scored {a}, a conversion at it {b}"
        );
        if f == best {
            assert_eq!(m["report"]["held_out_kl"], m_alone["report"]["held_out_kl"]);
            let index = |dir: &Path| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap()
            };
            for (tensor, shard) in index(&searched)["weight_map"].as_object().unwrap() {
                let read = |dir: &Path| read_tensor(&dir.join(shard.as_str().unwrap()), tensor).1;
                assert_eq!(read(&searched), read(&alone), "{tensor}");
            }
        }
    }
    // Only the outputs themselves: no candidate's temporary directory is left.
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want: Vec<String> = std::iter::once("searched".to_string())
        .chain(trials.iter().map(|t| format!("fold{}", t["freqfold"])))
        .collect();
    want.sort();
    assert_eq!(left, want);
    let (_, m_small, stdout) = run("smallest", &["--freqfold", "smallest"]);
    assert_eq!(
        (m_small["options"]["freqfold"].as_u64(), &m_small["options"]["freqfold_choice"]),
        (Some(2), &serde_json::json!("given"))
    );
    assert!(!stdout.contains("<- chosen"), "{stdout}");
}

/// Calibration from a token-id file is used (and not flagged weak).
#[test]
fn calibration_file_is_used() {
    let fx = root().join("fixtures/hf/llama/checkpoint");
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.safetensors");
    let t = RawTensor {
        dtype: safetensors::Dtype::I64,
        shape: vec![3, 10],
        bytes: (0..30i64).map(|i| (i * 7) % 64).flat_map(|i| i.to_le_bytes()).collect(),
    };
    gqla_files::tensors::write_tensors(&ids, [("input_ids", &t)], None).unwrap();
    let out = tmp.path().join("c");
    let r = convert(
        &fx,
        &out,
        &["--rope-dim", "4", "--kv-lora-rank", "8", "--calib", ids.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = meta(&out);
    assert_eq!(m["calibration"]["weak"], false);
    assert_eq!(
        (m["calibration"]["sequences"].as_u64(), m["calibration"]["held_out_tokens"].as_u64()),
        (Some(2), Some(10))
    );
    assert!(!r.stderr.contains("random token ids"));
}

mod bad_input {
    use super::*;

    /// Exit 2 with every needle in stderr, and nothing left in the output's parent directory.
    fn rejected(input: &Path, args: &[&str], needles: &[&str]) {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let r = convert(input, &out, args);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        for n in needles {
            assert!(r.stderr.contains(n), "stderr lacks {n:?}: {}", r.stderr);
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        root().join("fixtures/hf").join(name).join("checkpoint")
    }

    #[test]
    fn mla_source_without_groups() {
        rejected(&fixture("deepseek_v3"), &[], &["MLA → GQLA needs --groups", "4 query heads"]);
    }

    #[test]
    fn mla_groups_not_dividing_heads() {
        rejected(&fixture("deepseek_v3"), &["--groups", "3"], &["--groups 3 must divide", "H=4"]);
    }

    #[test]
    fn source_already_gqla() {
        rejected(
            &fixture("gqla_g2"),
            &["--groups", "1"],
            &["config.json", "already GQLA", "num_key_value_heads = 2"],
        );
    }

    #[test]
    fn unsupported_model_type() {
        let tmp = tempfile::tempdir().unwrap();
        let src = scratch_copy("llama", tmp.path());
        let p = src.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["model_type"] = "gemma2".into();
        std::fs::write(&p, v.to_string()).unwrap();
        rejected(&src, &[], &["config.json", "model_type", "gemma2"]);
    }

    #[test]
    fn groups_not_matching_kv_heads() {
        rejected(
            &fixture("llama"),
            &["--groups", "3", "--rope-dim", "4", "--kv-lora-rank", "8"],
            &["--groups must be 2", "got 3"],
        );
    }

    #[test]
    fn rank_larger_than_possible() {
        rejected(
            &fixture("llama"),
            &["--rope-dim", "4", "--kv-lora-rank", "10000"],
            &["--kv-lora-rank = 10000", "expected 1..=28"],
        );
    }

    #[test]
    fn freqfold_not_a_fold() {
        for bad in ["auto", "0", "two"] {
            let tmp = tempfile::tempdir().unwrap();
            let r = convert(&fixture("llama"), &tmp.path().join("out"), &["--freqfold", bad]);
            assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
            assert!(
                r.stderr.contains("--freqfold") && r.stderr.contains("`search`, `smallest` or a positive integer"),
                "{bad}: {}",
                r.stderr
            );
        }
    }

    #[test]
    fn rope_dim_larger_than_possible() {
        rejected(
            &fixture("llama"),
            &["--rope-dim", "40", "--kv-lora-rank", "8", "--freqfold", "1"],
            &["--rope-dim = 40", "2..=16"],
        );
    }

    fn scratch_copy(name: &str, tmp: &Path) -> std::path::PathBuf {
        let dst = tmp.join("src");
        std::fs::create_dir(&dst).unwrap();
        for e in std::fs::read_dir(fixture(name)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        dst
    }

    /// What the stock DeepSeek-V3 layout cannot express is refused before any work, naming why.
    #[test]
    fn emit_mla_refusals() {
        rejected(&fixture("qwen2"), &["--emit", "mla"], &["(emit mla)", "q_proj has a bias"]);
        rejected(&fixture("mistral"), &["--emit", "mla"], &["(emit mla)", "sliding window"]);
        rejected(&fixture("llama31_rope"), &["--emit", "mla"], &["(emit mla)", "RoPE scaling"]);
        rejected(
            &fixture("llama"),
            &["--emit", "mla", "--no-truncation"],
            &["(emit mla)", "give a rope dim"],
        );
        rejected(
            &fixture("llama"),
            &["--emit", "mla", "--rope-dim", "6", "--kv-lora-rank", "8", "--freqfold", "4"],
            &["(emit mla)", "not the stock rope_theta"],
        );
    }

    #[test]
    fn mla_source_with_gqa_budget_flags() {
        rejected(
            &fixture("deepseek_v3"),
            &["--groups", "2", "--kv-lora-rank", "8"],
            &["--kv-lora-rank apply to GQA sources"],
        );
    }

    #[test]
    fn missing_shard() {
        let tmp = tempfile::tempdir().unwrap();
        let src = scratch_copy("llama", tmp.path());
        std::fs::remove_file(src.join("model-00001-of-00002.safetensors")).unwrap();
        rejected(
            &src,
            &["--rope-dim", "4", "--kv-lora-rank", "8"],
            &["model-00001-of-00002.safetensors", "missing"],
        );
    }

    #[test]
    fn nan_weights() {
        let tmp = tempfile::tempdir().unwrap();
        let src = scratch_copy("llama_mha_bias", tmp.path());
        let mut t = crate::common::read_all(&src.join("model.safetensors"));
        let name = "model.layers.0.self_attn.v_proj.weight";
        t.get_mut(name).unwrap().bytes[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        crate::common::write_all(&src.join("model.safetensors"), &t);
        rejected(&src, &["--no-truncation"], &[name, "non-finite"]);
    }

    #[test]
    fn calibration_ids_outside_vocab() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("ids.safetensors");
        let t = RawTensor {
            dtype: safetensors::Dtype::I64,
            shape: vec![4],
            bytes: [1i64, 2, 999, 3].iter().flat_map(|i| i.to_le_bytes()).collect(),
        };
        gqla_files::tensors::write_tensors(&ids, [("input_ids", &t)], None).unwrap();
        rejected(
            &fixture("llama"),
            &["--no-truncation", "--calib", ids.to_str().unwrap()],
            &["ids.safetensors", "input_ids", "999", "vocabulary 0..64"],
        );
    }

    #[test]
    fn output_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let r = convert(&fixture("llama"), tmp.path(), &["--no-truncation"]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    }
}

mod whole_model {
    use super::*;
    use gqla_model::transgqla::checkpoint::{convert_checkpoint, Calibration, CheckpointOptions};
    use gqla_model::transgqla::{Method, Truncation};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct("tests/convert.proptest-regressions"))),
            ..ProptestConfig::default()
        })]

        /// Exact before truncation, whole model: random LLaMA checkpoints of random geometry convert
        /// (no truncation, freqfold 1) to GQLA whose held-out logits and every layer's attention
        /// output equal the source's.
        #[test]
        fn exact_conversion_of_random_models(kv in 1usize..=3, per in 1usize..=3, half in 1usize..=4, hidden in 4usize..=16, layers in 1usize..=2, seed in any::<u64>()) {
            let tmp = tempfile::tempdir().unwrap();
            let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
            write_random_llama(&src, hidden, kv * per, kv, 2 * half, 8, 16, layers, seed);
            let opt = CheckpointOptions { method: Method::TransGqla(Truncation::Exact), dtype: Some(gqla_reference::dtype::DType::F64), calibration: Calibration::Random { sequences: 2, tokens: 6, seed }, calibration_precision: Default::default(), budget: gqla_model::budget::Budget::new(None), emit: Default::default(), calibration_flow: Default::default() };
            let report = convert_checkpoint(&src, &out, &opt, &mut |_| {}).unwrap();
            prop_assert!(report.held_out_logits_rel_err <= 1e-9, "logits {:e}", report.held_out_logits_rel_err);
            prop_assert!(report.held_out_kl.abs() <= 1e-12, "KL {:e}", report.held_out_kl);
            for row in &report.layers {
                prop_assert!(row.held_out_attention_rel_err <= 1e-9, "layer {}: {:e}", row.layer, row.held_out_attention_rel_err);
            }
        }
    }
}

/// Every family's GQLA output names, in auto_map, classes the shipped files define: DeepSeek-V3's
/// for GQA sources, the source's own family for MLA ones. (That transformers runs them is
/// `hf_transformers_loads_outputs_unpatched`, under GQLA_PYTHON.)
#[rstest]
#[case::llama("llama", &["--no-truncation"], "GqlaConfig", "GqlaForCausalLM", "deepseek_v3")]
#[case::deepseek_v3("deepseek_v3", &["--groups", "2"], "GqlaConfig", "GqlaForCausalLM", "deepseek_v3")]
#[case::deepseek_v2("deepseek_v2_yarn", &["--groups", "4"], "GqlaDeepseekV2Config", "GqlaDeepseekV2ForCausalLM", "deepseek_v2")]
#[case::glm("glm4_moe_lite", &["--groups", "4"], "GqlaGlm4MoeLiteConfig", "GqlaGlm4MoeLiteForCausalLM", "glm4_moe_lite")]
fn every_family_names_a_shipped_class(
    #[case] fixture: &str,
    #[case] args: &[&str],
    #[case] config_class: &str,
    #[case] model_class: &str,
    #[case] model_type: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = convert(&root().join("fixtures/hf").join(fixture).join("checkpoint"), &out, args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], model_type);
    assert_eq!(config["gqla_decode_path"], "absorb");
    for (key, file, class) in [
        ("AutoConfig", "configuration_gqla", config_class),
        ("AutoModelForCausalLM", "modeling_gqla", model_class),
    ] {
        assert_eq!(config["auto_map"][key], format!("{file}.{class}"));
        let code = std::fs::read_to_string(out.join(format!("{file}.py"))).unwrap();
        assert!(code.contains(&format!("\nclass {class}(")), "{file}.py defines no class {class}");
    }
}

/// `--emit mla` of an MLA source with G < H is the GQLA conversion in another layout: our reader
/// gives the same attention output from both on both paths. The stock output carries a latent
/// norm and H kv heads and no remote code; the GQLA output ships modeling_gqla.py with auto_map.
#[test]
fn emit_mla_is_the_gqla_conversion_in_the_stock_layout() {
    let fx = root().join("fixtures/hf/deepseek_v3");
    let tmp = tempfile::tempdir().unwrap();
    let (gqla_out, mla_out) = (tmp.path().join("gqla"), tmp.path().join("mla"));
    let args = ["--groups", "2", "--dtype", "f64"];
    let r = convert(&fx.join("checkpoint"), &gqla_out, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = convert(&fx.join("checkpoint"), &mla_out, &[&args[..], &["--emit", "mla"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let config =
        |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap() };
    let (g, m) = (config(&gqla_out), config(&mla_out));
    assert_eq!(g["num_key_value_heads"], 2);
    assert_eq!(m["num_key_value_heads"], m["num_attention_heads"]);
    assert!(m.get("auto_map").is_none() && !mla_out.join("modeling_gqla.py").exists());
    assert_eq!(g["auto_map"]["AutoModelForCausalLM"], "modeling_gqla.GqlaForCausalLM");
    for f in ["modeling_gqla.py", "configuration_gqla.py"] {
        assert!(gqla_out.join(f).is_file(), "{f} not shipped");
    }
    assert_eq!(meta(&mla_out)["options"]["emit"], "mla");
    for path in ["absorb", "gqa"] {
        let (a, b) = (tmp.path().join(format!("a_{path}.st")), tmp.path().join(format!("b_{path}.st")));
        let input = fx.join("layer1.safetensors");
        for (ckpt, out) in [(&gqla_out, &a), (&mla_out, &b)] {
            let f = forward(ckpt, "1", &input, out, &["--path", path]);
            assert_eq!(f.code, 0, "{}", f.stderr);
        }
        let e = rel_err(&read_tensor(&b, "attn_output").1, &read_tensor(&a, "attn_output").1);
        assert!(e <= 1e-12, "{path}: stock layout vs GQLA layout {e:e}");
    }
}

/// With no --kv-lora-rank or --rope-dim, a GQA source gets the paper's budget: the absorb cache
/// is 28.125% of the source's, measured.
#[test]
fn default_budget_is_28_125_percent_of_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("c");
    let r = convert(&root().join("fixtures/hf/llama/checkpoint"), &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = &meta(&out)["report"];
    let (src, absorb) = (
        report["source_cache_elements"].as_u64().unwrap(),
        report["absorb_cache_elements"].as_u64().unwrap(),
    );
    assert_eq!(absorb * 32, src * 9, "absorb {absorb} of source {src}");
    let copied = |name: &str| std::fs::read(out.join(name)).unwrap();
    let source = root().join("fixtures/hf/llama/checkpoint");
    assert_eq!(
        copied("generation_config.json"),
        std::fs::read(source.join("generation_config.json")).unwrap()
    );
}

/// The Python that runs HF transformers 5.23 (`GQLA_PYTHON`, default `python3`), or None after
/// saying that `test` skipped.
fn hf_python(test: &str) -> Option<String> {
    crate::common::python(test, "import torch, transformers; assert transformers.__version__ == '5.23.0'")
}

/// HF transformers itself loads converted checkpoints (through examples/hf_load_gqla.py) and
/// reproduces the source model's logits. Needs a Python with torch and transformers 5.23:
/// `GQLA_PYTHON` (default `python3`); without one the test says it skipped.
#[test]
fn hf_transformers_runs_converted_checkpoints() {
    let Some(python) = hf_python("hf_transformers_runs_converted_checkpoints") else {
        return;
    };
    for (name, args) in [
        ("llama", vec!["--no-truncation"]),
        ("qwen2", vec!["--no-truncation"]),
        ("deepseek_v3_moe", vec!["--groups", "4"]),
        ("glm4_moe_lite", vec!["--groups", "4"]),
    ] {
        let fx = root().join("fixtures/hf").join(name).join("checkpoint");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("c");
        let r = convert(&fx, &out, &[args.as_slice(), &["--dtype", "f64"]].concat());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let run = std::process::Command::new(&python)
            .arg(root().join("examples/hf_load_gqla.py"))
            .arg(&out)
            .arg(&fx)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let diff: f64 = stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            diff <= 1e-12,
            "{name}: HF logits of the converted model differ from the source's by {diff:e}"
        );
    }
}

/// HF transformers loads `gqla convert` outputs with no patch (examples/hf_check_gqla.py):
/// - the default GQLA output through its shipped modeling_gqla.py (`trust_remote_code=True`), on
///   both decode paths, reproduces the source's logits, and cached decoding the full forward, for
///   every family: GQA sources (LLaMA, Qwen2) and MLA ones (DeepSeek-V3, DeepSeek-V2 with YaRN and
///   with its MoE, GLM-4.7-Flash);
/// - `--emit mla` through stock transformers: for an MLA source with G < H it equals the GQLA
///   output; for a GQA source (with the fitted latent norm) its log-probs equal our reference's
///   (`gqla snapshot`) on the probe ids.
///
/// Needs `GQLA_PYTHON` with torch and transformers 5.23; without one it says it skipped.
#[test]
fn hf_transformers_loads_outputs_unpatched() {
    let Some(python) = hf_python("hf_transformers_loads_outputs_unpatched") else {
        return;
    };
    let check = |dir: &Path, load: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let run = std::process::Command::new(&python)
            .arg(root().join("examples/hf_check_gqla.py"))
            .arg(dir)
            .args(["--load", load])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&run.stderr));
        String::from_utf8_lossy(&run.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("llama", vec!["--no-truncation"]),
        ("qwen2", vec!["--no-truncation"]),
        ("deepseek_v3_moe", vec!["--groups", "4"]),
        ("deepseek_v2_yarn", vec!["--groups", "4"]),
        ("deepseek_v2_moe", vec!["--groups", "4"]),
        ("glm4_moe_lite", vec!["--groups", "4"]),
    ] {
        let fx = root().join("fixtures/hf").join(name).join("checkpoint");
        let out = tmp.path().join(name);
        let r = convert(&fx, &out, &[args.as_slice(), &["--dtype", "f64"]].concat());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let lines = check(&out, "remote", &["--against", fx.to_str().unwrap()]);
        assert_eq!(lines.len(), 2, "{name}: {lines:?}");
        for l in &lines {
            let (vs, cached) = (l["vs_against"].as_f64().unwrap(), l["cached_vs_full"].as_f64().unwrap());
            assert!(vs <= 1e-12, "{name} {}: HF logits vs the source {vs:e}", l["path"]);
            assert!(cached <= 1e-12, "{name} {}: cached decode vs full forward {cached:e}", l["path"]);
        }
    }

    let fx = root().join("fixtures/hf/deepseek_v3/checkpoint");
    let (gqla_out, mla_out) = (tmp.path().join("ds_gqla"), tmp.path().join("ds_mla"));
    assert_eq!(convert(&fx, &gqla_out, &["--groups", "2", "--dtype", "f64"]).code, 0);
    assert_eq!(
        convert(&fx, &mla_out, &["--groups", "2", "--dtype", "f64", "--emit", "mla"]).code,
        0
    );
    let stock = &check(&mla_out, "stock", &["--against", gqla_out.to_str().unwrap()])[0];
    assert!(stock["vs_against"].as_f64().unwrap() <= 1e-12, "stock MLA layout vs GQLA: {stock}");
    assert!(stock["cached_vs_full"].as_f64().unwrap() <= 1e-12, "{stock}");

    let llama_mla = tmp.path().join("llama_mla");
    let r = convert(
        &root().join("fixtures/hf/llama/checkpoint"),
        &llama_mla,
        &["--emit", "mla", "--dtype", "f64"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = gqla(&["snapshot", llama_mla.to_str().unwrap()]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    let snap = gqla_model::snapshot::Snapshot::from_yaml(&s.stdout, Path::new("snapshot")).unwrap();
    let ids: Vec<String> = snap.probe.token_ids.iter().map(u32::to_string).collect();
    let stock = &check(&llama_mla, "stock", &["--ids", &ids.join(",")])[0];
    let rows = stock["logprobs"].as_array().unwrap();
    for next in &snap.next_tokens {
        for c in &next.top {
            let hf = rows[next.position][c.id as usize].as_f64().unwrap();
            assert!(
                (hf - c.logprob).abs() <= 1e-4,
                "position {} token {}: stock HF {hf} vs our reference {}",
                next.position,
                c.id,
                c.logprob
            );
        }
    }
}
