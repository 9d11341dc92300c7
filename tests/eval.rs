//! `gqla eval`: perplexity, KL and top-1 agreement, on the tiny LLaMA fixture with a word-level
//! tokenizer (the SmolLM2 tests in reference/tests/reference/smollm2.rs cover a real tokenizer and model).

use crate::common::{gqla, root};
use std::path::Path;

fn tokenizer_json(dir: &Path, vocab: usize) {
    let words: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("w{i}"), i.into())).collect();
    let t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
}

#[test]
fn eval_scores_a_model_and_compares_it_with_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(root().join("fixtures/hf/llama/checkpoint")).unwrap().flatten() {
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    tokenizer_json(&ck, 64);
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        (0..40).map(|i| format!("w{}", (i * 11 + 5) % 64)).collect::<Vec<_>>().join(" "),
    )
    .unwrap();
    let (ck_s, text_s) = (ck.to_str().unwrap(), text.to_str().unwrap());
    let json = |args: &[&str]| -> serde_json::Value {
        let r = gqla(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        serde_json::from_str(&r.stdout).unwrap()
    };
    let compare = |model: &str| {
        json(&[
            "eval",
            "--checkpoint",
            model,
            "--text",
            text_s,
            "--against",
            ck_s,
            "--window",
            "16",
            "--json",
        ])
    };
    let same = compare(ck_s);
    assert_eq!(
        (same["tokens"].as_u64(), same["windows"].as_u64(), same["predicted"].as_u64()),
        (Some(40), Some(3), Some(37))
    );
    assert!(same["kl_from_source"].as_f64().unwrap().abs() < 1e-9 && same["top1_agreement"] == 1.0);
    let ppl = same["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl.is_finite() && (ppl - same["source_perplexity"].as_f64().unwrap()).abs() < 1e-9 * ppl);
    // A lossy conversion: its tokenizer comes from the source.
    let out = tmp.path().join("out");
    let r = gqla(&[
        "convert",
        "--input",
        ck_s,
        "--output",
        out.to_str().unwrap(),
        "--kv-lora-rank",
        "8",
        "--rope-dim",
        "4",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lossy = compare(out.to_str().unwrap());
    assert!(lossy["kl_from_source"].as_f64().unwrap() > 1e-6);
    assert_eq!(lossy["source_perplexity"], same["source_perplexity"]);
    // The table, and refusals.
    let r = gqla(&["eval", "--checkpoint", ck_s, "--text", text_s]);
    assert!(r.code == 0 && r.stdout.contains("perplexity"), "{}", r.stderr);
    std::fs::write(&text, "w1").unwrap();
    let r = gqla(&["eval", "--checkpoint", ck_s, "--text", text_s]);
    assert!(r.code == 2 && r.stderr.contains("at least 2"), "{}", r.stderr);
    let r = gqla(&[
        "eval",
        "--checkpoint",
        root().join("fixtures/hf/qwen2/checkpoint").to_str().unwrap(),
        "--text",
        text_s,
    ]);
    assert!(r.code == 2 && r.stderr.contains("tokenizer"), "{}", r.stderr);
}

/// `ck` with its vocabulary cut to its first `vocab` tokens: embeddings, LM head and config.
fn with_vocab(from: &Path, to: &Path, vocab: usize) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if !name.ends_with(".safetensors") {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
                    let row = t.data().len() / t.shape()[0];
                    let view =
                        safetensors::tensor::TensorView::new(t.dtype(), vec![vocab, t.shape()[1]], &t.data()[..vocab * row]).unwrap();
                    (n, view)
                } else {
                    (n, t)
                }
            })
            .collect();
        std::fs::write(to.join(&name), safetensors::serialize(views, None).unwrap()).unwrap();
    }
    let cfg = to.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["vocab_size"] = vocab.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
}

/// KL and top-1 agreement mean nothing across vocabularies: a source of another vocabulary size,
/// or whose tokenizer numbers the same tokens differently, is refused (it once scored, exit 0).
#[test]
fn eval_refuses_a_source_with_another_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = root().join("fixtures/hf/llama/checkpoint");
    let (ck, small, shuffled) = (tmp.path().join("ck"), tmp.path().join("small"), tmp.path().join("shuffled"));
    with_vocab(&llama, &ck, 64);
    with_vocab(&llama, &small, 48);
    with_vocab(&llama, &shuffled, 64);
    tokenizer_json(&ck, 64);
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, (0..40).map(|i| format!("w{}", (i * 7) % 40)).collect::<Vec<_>>().join(" ")).unwrap();
    let eval = |model: &Path, source: &Path| {
        gqla(&[
            "eval",
            "--checkpoint",
            model.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--against",
            source.to_str().unwrap(),
            "--tokenizer",
            ck.join("tokenizer.json").to_str().unwrap(),
        ])
    };
    let r = eval(&ck, &small);
    assert!(
        r.code == 2 && r.stderr.contains("vocab_size 48") && r.stderr.contains("vocab_size 64"),
        "{}",
        r.stderr
    );
    // The same size, the tokens renumbered.
    let words: serde_json::Map<String, serde_json::Value> = (0..64).map(|i| (format!("w{i}"), ((i + 1) % 64).into())).collect();
    let t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "w0"}
    });
    std::fs::write(shuffled.join("tokenizer.json"), t.to_string()).unwrap();
    let r = eval(&ck, &shuffled);
    assert!(
        r.code == 2 && r.stderr.contains("\"w63\" to id 0") && r.stderr.contains("id 63"),
        "{}",
        r.stderr
    );
    tokenizer_json(&shuffled, 64);
    let r = eval(&ck, &shuffled);
    assert_eq!(r.code, 0, "the same vocabulary: {}", r.stderr);
    // --max-tokens 0 once meant "no limit"; now at least 2.
    let r = gqla(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--max-tokens",
        "0",
    ]);
    assert!(r.code == 2 && r.stderr.contains("--max-tokens"), "{}", r.stderr);
}

/// SmolLM2-135M-Instruct converted at 28.125% of the cache (d_c 76 + d_r 32 of 384 elements per
/// token), calibrated on fixtures/text/calibration.txt, scored on fixtures/text/heldout.txt (text
/// the conversion never saw): the figures are pinned, four significant digits. Calibration runs
/// in f64 (bit-stable); the scores in f32. Without the GGUF (`.ci/run` fetches it) this prints
/// SKIPPED.
#[test]
fn smollm2_at_28_percent_of_the_cache_on_held_out_text() {
    let Some(gguf) = crate::common::smollm2_gguf("smollm2_at_28_percent_of_the_cache_on_held_out_text") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smol-28");
    let (g, o) = (gguf.to_str().unwrap(), out.to_str().unwrap());
    let r = gqla(&[
        "convert",
        "--input",
        g,
        "--output",
        o,
        "--kv-lora-rank",
        "76",
        "--rope-dim",
        "32",
        "--calib-text",
        "fixtures/text/calibration.txt",
        "--calib-tokens",
        "64",
        "--calib-precision",
        "f64",
        "--dtype",
        "f32",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        out.join("tokenizer.json").is_file(),
        "the GGUF's tokenizer is written beside the weights"
    );
    let r = gqla(&[
        "eval",
        "--checkpoint",
        o,
        "--against",
        g,
        "--text",
        "fixtures/text/heldout.txt",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let eval: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gqla_meta.json")).unwrap()).unwrap();
    let rep = &meta["report"];
    let mut snap = serde_json::json!({
        "cache_elements_per_token": {
            "source": rep["source_cache_elements"], "absorb": rep["absorb_cache_elements"], "gqa": rep["gqa_cache_elements"],
        },
        "calibration_tokens": rep["calibration_tokens"],
        "converter_held_out_kl": rep["held_out_kl"],
        "freqfold": meta["options"]["freqfold"],
        "freqfold_trials": rep["freqfold_trials"],
        "heldout_text": {
            "tokens": eval["tokens"], "perplexity": eval["perplexity"], "source_perplexity": eval["source_perplexity"],
            "kl_from_source": eval["kl_from_source"], "top1_agreement": eval["top1_agreement"],
        },
    });
    assert_eq!(rep["absorb_cache_elements"], 108);
    assert_eq!(rep["source_cache_elements"], 384);
    crate::convert::round_floats(&mut snap);
    insta::assert_json_snapshot!("smollm2_28_percent_heldout", snap);
}
