//! `gqla snapshot`: byte-identical digests of identical checkpoints, `--check` passing on an
//! unchanged checkpoint and failing (exit 1, a readable diff) on a changed one, hostile snapshot
//! files refused with exit 2, and the library digest in a user's own insta test.

use crate::common::{gqla, read_all, root, write_all, Run};
use gqla_model::budget::Budget;
use gqla_model::snapshot::Snapshot;
use std::path::{Path, PathBuf};

fn snapshot(args: &[&str]) -> Run {
    gqla(&[&["snapshot"], args].concat())
}

/// A copy of `dir`'s files in a new temporary directory.
fn copy_dir(dir: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// Multiply element `index` of tensor `name` (F32 or F64) in `file` by `1 + rel`.
fn perturb(file: &Path, name: &str, index: usize, rel: f64) {
    let mut tensors = read_all(file);
    let t = tensors.get_mut(name).unwrap_or_else(|| panic!("{} has no {name}", file.display()));
    match t.dtype {
        safetensors::Dtype::F32 => {
            let b = &mut t.bytes[4 * index..4 * index + 4];
            let v = f32::from_le_bytes(b.try_into().unwrap());
            b.copy_from_slice(&((v as f64 * (1.0 + rel)) as f32).to_le_bytes());
        }
        safetensors::Dtype::F64 => {
            let b = &mut t.bytes[8 * index..8 * index + 8];
            let v = f64::from_le_bytes(b.try_into().unwrap());
            b.copy_from_slice(&(v * (1.0 + rel)).to_le_bytes());
        }
        d => panic!("unexpected dtype {d:?}"),
    }
    write_all(file, &tensors);
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/hf").join(name).join("checkpoint")
}

/// Two runs, and a copy of the checkpoint elsewhere, give the same bytes; the digest holds both
/// paths of every layer, agreeing, and the caches measured on each path.
#[test]
fn identical_checkpoints_give_byte_identical_snapshots() {
    let fx = fixture("gqla_g2");
    let a = snapshot(&[fx.to_str().unwrap()]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let b = snapshot(&[fx.to_str().unwrap()]);
    assert_eq!(a.stdout, b.stdout, "two runs differ");
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_dir(&fx, &tmp.path().join("elsewhere"));
    let c = snapshot(&[copy.to_str().unwrap()]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(a.stdout, c.stdout, "a copy in another directory differs");

    let s = Snapshot::from_yaml(&a.stdout, Path::new("stdout")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fx.join("config.json")).unwrap()).unwrap();
    assert_eq!(s.layers.len(), config["num_hidden_layers"].as_u64().unwrap() as usize);
    for l in &s.layers {
        assert!(l.absorb.is_some(), "layer {}: no absorb fingerprint", l.layer);
        assert_eq!(l.paths_agree, Some(true), "layer {}", l.layer);
        assert!(l.gqa.norm > 0.0 && l.gqa.projections.iter().all(|p| p.is_finite()));
    }
    // The absorb cache holds [c; k^R] per token: kv_lora_rank + qk_rope_head_dim elements.
    let absorb = s.cache.iter().find(|c| c.path.name() == "absorb").expect("absorb cache");
    let (d_c, d_r) = (
        config["kv_lora_rank"].as_u64().unwrap(),
        config["qk_rope_head_dim"].as_u64().unwrap(),
    );
    assert_eq!(absorb.elements_per_token_per_layer as u64, d_c + d_r);
    let on_disk = read_all(&fx.join("model.safetensors"));
    assert_eq!(s.tensors.len(), on_disk.len());
    assert_eq!(s.next_tokens.len(), s.probe.token_ids.len());
    assert!(s.next_tokens.iter().all(|n| n.top.len() == s.probe.top_k));
}

/// An unchanged checkpoint passes its own snapshot; a row of weights moved by 1% fails it, naming the
/// tensor and the layers whose attention moved; a change far below the tolerances passes when
/// the snapshot only reports tensor changes, and fails when they must match.
#[test]
fn check_passes_unchanged_and_reports_regressions() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_dir(&fixture("gqla_g2"), &tmp.path().join("ckpt"));
    let (c, snap) = (ckpt.to_str().unwrap(), tmp.path().join("snap.yaml"));
    let s = snap.to_str().unwrap();
    let w = snapshot(&[c, "--output", s]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    let ok = snapshot(&["--check", s, c]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("PASS"), "{}", ok.stdout);

    let weights = ckpt.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    for i in 0..12 {
        perturb(&weights, "model.layers.1.self_attn.kv_b_proj.weight", i, 1e-2);
    }
    let bad = snapshot(&["--check", s, c]);
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .contains("REGRESSION tensor model.layers.1.self_attn.kv_b_proj.weight: sha256"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout.contains("REGRESSION layer 1 absorb: attention output moved"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout.contains("REGRESSION layer 1 gqa: attention output moved"),
        "{}",
        bad.stdout
    );
    assert!(!bad.stdout.contains("layer 0 "), "layer 0 did not change: {}", bad.stdout);
    assert!(bad.stdout.contains("FAIL"), "{}", bad.stdout);

    // A last-layer MLP weight moved by 1e-5: no fingerprint or log-prob moves past tolerance.
    std::fs::write(&weights, &original).unwrap();
    perturb(&weights, "model.layers.1.mlp.down_proj.weight", 3, 1e-5);
    let strict = snapshot(&["--check", s, c]);
    assert_eq!(strict.code, 1, "{}", strict.stdout);
    assert!(strict.stdout.contains("mlp.down_proj.weight: sha256"), "{}", strict.stdout);
    let yaml = std::fs::read_to_string(&snap).unwrap();
    assert!(yaml.contains("tensors: must_match"), "{yaml}");
    std::fs::write(&snap, yaml.replace("tensors: must_match", "tensors: report")).unwrap();
    let lenient = snapshot(&["--check", s, c]);
    assert_eq!(lenient.code, 0, "{}\n{}", lenient.stdout, lenient.stderr);
    assert!(lenient.stdout.contains("note       tensor model.layers.1.mlp.down_proj.weight"));
}

/// YAML whose aliases expand to 10^12 strings under `config` (which takes any value).
fn alias_bomb() -> String {
    let mut y = String::from("format: gqla-snapshot/1\nconfig:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        y += &format!("  a{i}: &a{i} [{refs}]\n");
    }
    y
}

/// A snapshot file is input like any other: malformed or out-of-bounds contents exit 2 with a
/// message naming the file and the field, before any checkpoint is run.
#[test]
fn hostile_snapshot_files_exit_2() {
    let fx = fixture("gqla_g2");
    let good = snapshot(&[fx.to_str().unwrap()]);
    assert_eq!(good.code, 0, "{}", good.stderr);
    let y = &good.stdout;
    let first_id = Snapshot::from_yaml(y, Path::new("x")).unwrap().probe.token_ids[0];
    let cases: Vec<(&str, String, &str)> = vec![
        ("not yaml", "{{{ : ]".into(), "not a gqla snapshot"),
        (
            "wrong format",
            y.replace("format: gqla-snapshot/1", "format: gqla-snapshot/9"),
            "format",
        ),
        (
            "unknown field",
            y.replace("format: gqla-snapshot/1", "format: gqla-snapshot/1\nextra: 1"),
            "unknown field",
        ),
        (
            "NaN tolerance",
            y.replace("attention_rel: 0.00001", "attention_rel: .nan"),
            "tolerances.attention_rel",
        ),
        (
            "negative tolerance",
            y.replace("logprob_abs: 0.001", "logprob_abs: -1.0"),
            "tolerances.logprob_abs",
        ),
        (
            "huge probe",
            y.replace("attention_tokens: 8", "attention_tokens: 1000000000"),
            "probe.attention_tokens",
        ),
        ("zero top-k", y.replace("top_k: 5", "top_k: 0"), "probe.top_k"),
        (
            "token id outside the vocabulary",
            y.replacen(&format!("- {first_id}\n"), "- 64\n", 1),
            "probe.token_ids",
        ),
        ("empty", String::new(), "not a gqla snapshot"),
        ("alias bomb", alias_bomb(), "repetition limit"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (what, text, expect) in cases {
        assert_ne!(&text, y, "{what}: the edit did not apply");
        let f = tmp.path().join("bad.yaml");
        std::fs::write(&f, &text).unwrap();
        let r = snapshot(&["--check", f.to_str().unwrap(), fx.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{what}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("bad.yaml"), "{what}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{what}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    }
}

/// A converted checkpoint records its provenance; the GQA source has one path and the
/// conversion's absorb cache is smaller than the source's.
#[test]
fn converted_checkpoint_snapshot_has_provenance_and_both_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let src = fixture("llama");
    let r = gqla(&[
        "convert",
        "--input",
        src.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--no-truncation",
        "--dtype",
        "f64",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = snapshot(&[src.to_str().unwrap()]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    let source = Snapshot::from_yaml(&s.stdout, Path::new("source")).unwrap();
    assert!(source.provenance.is_none());
    assert!(source.layers.iter().all(|l| l.absorb.is_none() && l.paths_agree.is_none()));
    assert_eq!(source.cache.len(), 1);
    let c = snapshot(&[out.to_str().unwrap()]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let conv = Snapshot::from_yaml(&c.stdout, Path::new("converted")).unwrap();
    let prov = conv.provenance.as_ref().expect("gqla_meta.json");
    assert!(prov["tool"].as_str().unwrap().starts_with("gqla "), "{prov}");
    assert!(conv.layers.iter().all(|l| l.paths_agree == Some(true)));
    // Exact conversion: the GQA path computes the source's attention, fingerprint for fingerprint.
    for (a, b) in conv.layers.iter().zip(&source.layers) {
        let d = a.gqa.rel_diff(&b.gqa);
        assert!(d <= 1e-6, "layer {}: converted vs source fingerprint {d:e}", a.layer);
    }
}

/// The digest as a library call, pinned by insta as a user's own `cargo test` would pin theirs.
#[test]
fn library_digest_in_an_insta_snapshot() {
    let snap = Snapshot::take(&fixture("llama"), None, &Budget::new(None), &mut |_, _| {}).unwrap();
    insta::assert_yaml_snapshot!("llama_fixture_digest", snap);
}

/// The real model: a GGUF file's quantised tensors hashed as stored, and its check passing.
/// Without the GGUF (`.ci/run` fetches it) this prints SKIPPED.
#[test]
fn smollm2_gguf_snapshot_checks_clean() {
    let Some(gguf) = crate::common::smollm2_gguf("smollm2_gguf_snapshot_checks_clean") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("smol.yaml");
    let (g, s) = (gguf.to_str().unwrap(), f.to_str().unwrap());
    let w = snapshot(&[g, "--output", s]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    let snap = Snapshot::from_yaml(&std::fs::read_to_string(&f).unwrap(), &f).unwrap();
    assert_eq!(snap.layers.len(), 30);
    assert_eq!(snap.tensors["model.layers.0.self_attn.q_proj.weight"].dtype, "gguf:Q4_1");
    assert_eq!(snap.tensors["model.layers.0.self_attn.q_proj.weight"].shape, [576, 576]);
    assert!(
        snap.config.get("gguf_source").is_none(),
        "the file's location is not part of the digest"
    );
    let r = snapshot(&["--check", s, g]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}
