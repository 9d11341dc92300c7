//! `gqla certify`: certificates, exit codes, and clear refusals.

use crate::common::gqla;

#[test]
fn builtin_certificates_on_a_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let filter = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=65;page=64;dtype=bf16";
    let r = gqla(&["certify", "--kernel", "builtin", "--filter", filter, "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("CONFORMANT"), "{}", r.stdout);
    assert!(
        !r.stderr.contains("panicked"),
        "a mutant's panic leaked to the terminal: {}",
        r.stderr
    );
    // Every built-in kernel gets its own certificate; the flash kernel's carries the catalogue.
    for kernel in ["reference-f32", "flash-cpu", "candle", "cuda-emu"] {
        let dir = out.join(kernel);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
        let results = report["results"].as_array().unwrap();
        assert!(!results.is_empty());
        assert!(results
            .iter()
            .all(|c| c["status"] == "PASS" && c["id"].as_str().unwrap().starts_with(filter)));
        assert_eq!(report["suite_version"], gqla_conformance::SUITE_VERSION);
        assert_eq!(report["conformant"], true);
        assert_eq!(report["kernel"]["name"], kernel);
        assert!(report["environment"]["rustc"].as_str().unwrap().starts_with("rustc "), "{report}");
        assert_eq!(report["definitions"][0]["name"], "gqla.decode.absorb", "{report}");
        let kill = &report["mutation"];
        if kernel == "flash-cpu" {
            assert_eq!(kill["mutants"], gqla_conformance::kernels::Bug::ALL.len());
            assert!(kill["killed"].as_u64().unwrap() >= 1);
        } else {
            assert!(kill.is_null(), "{kernel}: {kill}");
        }
        let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
        assert!(junit.contains("<testsuite") && junit.contains(&format!("tests=\"{}\"", results.len())));
        assert!(std::fs::read_to_string(dir.join("report.md")).unwrap().contains("CONFORMANT"));
    }
    assert!(r.stdout.contains("kernel candle"), "{}", r.stdout);
    assert!(r.stdout.contains("kernel cuda-emu"), "{}", r.stdout);
}

/// The default kernel is CUDA when a GPU is present, else the built-in kernels; without a GPU it
/// says why it fell back.
#[test]
fn default_kernel_falls_back_to_builtin_without_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let filter = "gqla.cache.expand:g=8;dc=512;dn=128;dv=128;ctx=65;page=64;dtype=bf16";
    let r = gqla(&["certify", "--filter", filter, "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    if r.stdout.contains("CUDA device found") {
        assert!(out.join("report.json").exists());
    } else {
        assert!(r.stdout.contains("no CUDA kernels to certify"), "{}", r.stdout);
        assert!(out.join("candle/report.json").exists());
    }
}

#[test]
fn refusals_are_clear() {
    // Without a GPU `cuda` says why; with one, the bad filter is refused instead.
    let r = gqla(&[
        "certify",
        "--kernel",
        "cuda",
        "--filter",
        "no.such.op",
        "--out",
        "/tmp/unused-gqla-cert",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot certify the CUDA kernels: no CUDA") || r.stderr.contains("no case id starts with"),
        "{}",
        r.stderr
    );
    for (kernel, needle) in [("external:/nowhere", "/nowhere/manifest.json"), ("triton", "unknown kernel")] {
        let r = gqla(&["certify", "--kernel", kernel, "--out", "/tmp/unused-gqla-cert"]);
        assert_eq!(r.code, 2, "{kernel}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{kernel}: {}", r.stderr);
    }
    let r = gqla(&["certify", "--filter", "no.such.op", "--out", "/tmp/unused-gqla-cert"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no case id starts with"), "{}", r.stderr);
}

mod packs {
    use crate::common::{gqla, root, RawTensor};
    use gqla_conformance::inputs::CaseInputs;
    use gqla_conformance::kernels::ReferenceF32;
    use gqla_conformance::{Case, Kernel, Outputs};
    use std::path::Path;

    /// The base gqla.decode.gqa case (its seed is its position in the lattice).
    const CASE: &str = "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=2;ctx=65;page=64;dtype=bf16;seed=";

    fn export(dir: &Path) {
        let r = gqla(&["vectors", "export", "--out", dir.to_str().unwrap(), "--filter", CASE]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }

    /// Outputs as a correct external kernel would write them.
    fn correct_outputs(path: &Path, shape_override: Option<Vec<usize>>) {
        let case: Case = gqla_conformance::lattice::suite_cases()
            .into_iter()
            .find(|c| c.matches(CASE))
            .unwrap();
        let mut out = Outputs::for_case(&case);
        ReferenceF32.run(&CaseInputs::generate(&case), &mut out).unwrap();
        let tensors: Vec<(String, RawTensor)> = out
            .tensors
            .iter()
            .map(|t| {
                let shape = if t.name == "out" {
                    shape_override.clone().unwrap_or(t.shape.clone())
                } else {
                    t.shape.clone()
                };
                let n: usize = shape.iter().product();
                (
                    t.name.to_string(),
                    RawTensor {
                        dtype: safetensors::Dtype::F32,
                        shape,
                        bytes: t.region().iter().cycle().take(n).flat_map(|v| v.to_le_bytes()).collect(),
                    },
                )
            })
            .collect();
        gqla_reference::hf::tensors::write_tensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    }

    fn certify(dir: &Path, out: &Path) -> (i32, serde_json::Value) {
        let r = gqla(&[
            "certify",
            "--kernel",
            &format!("external:{}", dir.display()),
            "--out",
            out.to_str().unwrap(),
        ]);
        let report = std::fs::read_to_string(out.join("report.json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or(serde_json::Value::Null);
        (r.code, report)
    }

    #[test]
    fn pack_outputs_are_judged_per_case() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, cert) = (tmp.path().join("pack"), tmp.path().join("cert"));
        export(&pack);
        let outputs = pack.join("00000.outputs.safetensors");
        // No outputs written.
        let (code, report) = certify(&pack, &cert);
        assert_eq!(
            (code, report["results"][0]["status"].as_str()),
            (1, Some("RUNTIME_ERROR")),
            "{report}"
        );
        // Correct outputs.
        correct_outputs(&outputs, None);
        let (code, report) = certify(&pack, &cert);
        assert_eq!((code, report["results"][0]["status"].as_str()), (0, Some("PASS")), "{report}");
        assert!(report["kernel"]["name"].as_str().unwrap().starts_with("external:"), "{report}");
        // The author's kernel.json names the kernel and its environment in the certificate.
        std::fs::write(
            pack.join("kernel.json"),
            r#"{"name": "my-kernel", "version": "1.2", "description": "test", "environment": {"device": "cpu"}}"#,
        )
        .unwrap();
        let (_, report) = certify(&pack, &cert);
        assert_eq!(report["kernel"]["name"], "my-kernel", "{report}");
        assert_eq!(report["environment"]["kernel_environment"]["device"], "cpu", "{report}");
        std::fs::write(pack.join("kernel.json"), "{ not json").unwrap();
        let r = gqla(&[
            "certify",
            "--kernel",
            &format!("external:{}", pack.display()),
            "--out",
            cert.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("kernel.json"), "{}", r.stderr);
        std::fs::remove_file(pack.join("kernel.json")).unwrap();
        // Wrong shape.
        correct_outputs(&outputs, Some(vec![1, 2, 16, 127]));
        let (code, report) = certify(&pack, &cert);
        assert_eq!(
            (code, report["results"][0]["status"].as_str()),
            (1, Some("SHAPE_OR_DTYPE_MISMATCH")),
            "{report}"
        );
        // Truncated file.
        correct_outputs(&outputs, None);
        let bytes = std::fs::read(&outputs).unwrap();
        std::fs::write(&outputs, &bytes[..bytes.len() / 2]).unwrap();
        let (code, report) = certify(&pack, &cert);
        assert_eq!(
            (code, report["results"][0]["status"].as_str()),
            (1, Some("RUNTIME_ERROR")),
            "{report}"
        );
        assert!(
            report["results"][0]["message"]
                .as_str()
                .unwrap()
                .contains("not a valid safetensors file"),
            "{report}"
        );
    }

    /// A pack carries every definition and, for split-KV cases, the requested split count.
    #[test]
    fn packs_carry_definitions_and_split_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let pack = tmp.path().join("pack");
        let filter = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=4097;page=64;dtype=bf16;splits=7";
        let r = gqla(&["vectors", "export", "--out", pack.to_str().unwrap(), "--filter", filter]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let defs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(pack.join("definitions.json")).unwrap()).unwrap();
        let names: Vec<&str> = defs.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["gqla.decode.absorb", "gqla.decode.gqa", "gqla.cache.expand", "gqa.decode"]);
        assert!(defs[0]["axes"].as_array().unwrap().iter().any(|a| a["name"] == "num_splits"));
        let bytes = std::fs::read(pack.join("00000.inputs.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let n = st.tensor("num_splits").unwrap();
        assert_eq!((n.dtype(), n.data()), (safetensors::Dtype::I32, &7i32.to_le_bytes()[..]));
    }

    #[test]
    fn malformed_manifest_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let pack = tmp.path().join("pack");
        export(&pack);
        let bad = format!("{{\"suite_version\": \"{}\", \"cases\": 3}}", gqla_conformance::SUITE_VERSION);
        std::fs::write(pack.join("manifest.json"), bad).unwrap();
        let r = gqla(&[
            "certify",
            "--kernel",
            &format!("external:{}", pack.display()),
            "--out",
            tmp.path().join("c").to_str().unwrap(),
        ]);
        assert_eq!(r.code, 2);
        assert!(
            r.stderr.contains("manifest.json") && r.stderr.contains("malformed manifest"),
            "{}",
            r.stderr
        );
        let r = gqla(&[
            "certify",
            "--kernel",
            "external:/no/such/pack",
            "--out",
            tmp.path().join("c").to_str().unwrap(),
        ]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("/no/such/pack/manifest.json"), "{}", r.stderr);
    }

    /// examples/certify_sdpa.py certifies PyTorch's SDPA as a gqla.decode.gqa kernel, in f32 and
    /// in the case dtype (--native). Needs a Python with torch (`GQLA_PYTHON`, default python3);
    /// without one the test says it skipped.
    #[test]
    fn pytorch_sdpa_example_is_conformant() {
        let python = std::env::var("GQLA_PYTHON").unwrap_or_else(|_| "python3".into());
        if !std::process::Command::new(&python)
            .args(["-c", "import torch, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            crate::common::skipped(&format!(
                "pytorch_sdpa_example_is_conformant: {python} cannot import torch and safetensors (set GQLA_PYTHON)"
            ));
            return;
        }
        for mode in [None, Some("--native")] {
            let tmp = tempfile::tempdir().unwrap();
            let pack = tmp.path().join("pack");
            let r = gqla(&["vectors", "export", "--out", pack.to_str().unwrap(), "--filter", "gqla.decode.gqa"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let run = std::process::Command::new(&python)
                .arg(root().join("examples/certify_sdpa.py"))
                .arg(&pack)
                .args(mode)
                .output()
                .unwrap();
            assert!(run.status.success(), "{mode:?}: {}", String::from_utf8_lossy(&run.stderr));
            let (code, report) = certify(&pack, &tmp.path().join("cert"));
            assert_eq!(code, 0, "{mode:?}: {report}");
            assert_eq!(report["conformant"], true);
        }
    }
}

/// The decode benchmark needs a GPU: without one it says so and exits 2 (never a panic).
#[test]
fn decode_benchmark_without_a_gpu_is_a_clear_error() {
    if gqla_cuda::device::context(0).is_ok() {
        crate::common::skipped("decode_benchmark_without_a_gpu_is_a_clear_error: a GPU is present");
        return;
    }
    let r = gqla(&["bench", "decode", "--quick"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("the decode benchmark needs a GPU: no CUDA"), "{}", r.stderr);
}

/// The benchmark's grid filters are checked before a GPU is opened: a wrong name or a zero size
/// is a usage error that names the value and the choices, with or without a GPU.
#[test]
fn decode_benchmark_rejects_bad_grid_filters() {
    for (args, want) in [
        (
            &["--geometry", "llama"][..],
            "unknown geometry `llama`: expected one of llama3-8b-gqla, deepseek-v3-gqla",
        ),
        (&["--path", "absorb,mla"][..], "unknown path `mla`: expected absorb or gqa"),
        (&["--batch", "16,0"][..], "--batch values must be positive"),
        (&["--context", "0"][..], "--context values must be positive"),
        (&["--sq", "0"][..], "--sq values must be positive"),
        (&["--page", "0"][..], "--page must be positive"),
        (&["--context", "3000000000"][..], "--context 3000000000 is out of range"),
        (&["--batch", "100000", "--context", "100000000"][..], "is out of range"),
    ] {
        let r = gqla(&[&["bench", "decode"][..], args].concat());
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
}
