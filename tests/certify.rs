//! `gqla certify`: certificates, exit codes, clear refusals, and the forgeries a pack must not
//! get away with.

use crate::common::{gqla, Run};

/// The verdict line: the last line of a certification's stdout.
fn verdict(r: &Run) -> &str {
    r.stdout.lines().last().unwrap_or("")
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("report.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn builtin_certificates_on_a_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let filter = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=65,31;page=64;dtype=bf16;seed=";
    let r = gqla(&[
        "certify",
        "--kernel",
        "builtin",
        "--filter",
        filter,
        "--seed",
        "11",
        "--out",
        out.to_str().unwrap(),
    ]);
    // One case passes everywhere, but it is one geometry in one dtype with no padding row: the
    // coverage core is not met, so the verdict is PARTIAL (exit 1) and says what is missing.
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(verdict(&r).starts_with("PARTIAL — cuda-emu (suite 0.5, seed 11;"), "{}", r.stdout);
    assert!(
        verdict(&r).contains("core not covered: gqla.decode.absorb: dtype f32, dtype f16, contiguous caches, s_q = 1, a padding row"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains("panicked"),
        "a mutant's panic leaked to the terminal: {}",
        r.stderr
    );
    // Every built-in kernel gets its own certificate; the flash kernel's carries the catalogue.
    for kernel in ["reference-f32", "flash-cpu", "candle", "cuda-emu"] {
        let dir = out.join(kernel);
        let report = report(&dir);
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{report}");
        assert!(results
            .iter()
            .all(|c| c["status"] == "PASS" && c["id"].as_str().unwrap().starts_with(filter)));
        assert_eq!(report["suite_version"], gqla_conformance::SUITE_VERSION);
        assert_eq!(
            (report["verdict"].as_str(), report["seed"].as_u64(), report["seed_origin"].as_str()),
            (Some("PARTIAL"), Some(11), Some("given_to_this_run"))
        );
        let missing = report["coverage"][0]["missing"].as_array().unwrap();
        assert!(missing.contains(&serde_json::json!("large logits")), "{report}");
        assert_eq!(report["kernel"]["name"], kernel);
        assert_eq!(report["coverage"][0]["must_pass"], 1, "{report}");
        assert!(report["profile"]["operations"].is_array(), "{report}");
        assert!(report["environment"]["rustc"].as_str().unwrap().starts_with("rustc "), "{report}");
        assert_eq!(report["definitions"][0]["name"], "gqla.decode.absorb", "{report}");
        assert_eq!(report["mutation"].is_null(), kernel != "flash-cpu", "{kernel}");
        let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
        let doc = roxmltree::Document::parse(&junit).unwrap_or_else(|e| panic!("{kernel}: junit.xml is not XML: {e}"));
        // The one case, its further precision draws, and a test per precision family.
        let families = report["precision"].as_array().unwrap().len();
        let draws = report["precision_draws"].as_array().unwrap().len();
        assert!(families >= 1, "{report}");
        assert_eq!(
            doc.root_element().attribute("tests"),
            Some((1 + draws + families).to_string().as_str())
        );
        let core = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("core_not_covered.gqla.decode.absorb"))
            .and_then(|n| n.attribute("value"));
        assert!(core.is_some_and(|v| v.contains("a padding row")), "{junit}");
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("- verdict: **PARTIAL**"), "{md}");
        assert!(
            md.contains("| core not covered |") && md.contains("a context of 4096+ keys"),
            "{md}"
        );
        assert!(md.contains("- seed: 11 (given to this certify run with --seed"), "{md}");
    }
}

/// The mutation catalogue on the whole suite: every seeded bug is rejected on a fresh seed, and
/// on the published seed exactly one survives, the one that learned the published outputs.
#[test]
fn flash_cpu_certificate_rejects_every_mutant() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let r = gqla(&["certify", "--kernel", "flash-cpu", "--seed", "7", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let report = report(&out);
    let m = &report["mutation"];
    let all = gqla_conformance::kernels::Bug::ALL.len() as u64;
    let survivors: Vec<&String> = m["results"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k)
        .collect();
    assert!(survivors.is_empty(), "survivors: {survivors:?}");
    assert_eq!((m["mutants"].as_u64(), m["killed"].as_u64()), (Some(all), Some(all)), "{m}");
    assert!(
        r.stdout
            .contains(&format!("mutation catalogue: {all} of {all} seeded bugs rejected")),
        "{}",
        r.stdout
    );
    // Every selected case passed, and every case was selected: the profile is the whole suite,
    // which meets every operation's coverage core.
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), gqla_conformance::lattice::must_pass().len());
    assert!(results.iter().all(|c| c["status"] == "PASS"));
    assert_eq!(report["verdict"], "CONFORMANT");
    for c in report["coverage"].as_array().unwrap() {
        assert_eq!(c["missing"], serde_json::json!([]), "{c}");
    }
}

/// The default kernel is CUDA when a GPU is present, else the built-in kernels; without a GPU it
/// says why it fell back. Without --seed, a fresh seed is drawn and recorded.
#[test]
fn default_kernel_falls_back_to_builtin_without_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let filter = "gqla.cache.expand:g=8;dc=512;dn=128;dv=128;ctx=65,31;page=64;dtype=bf16;seed=";
    let r = gqla(&["certify", "--filter", filter, "--out", out.to_str().unwrap()]);
    // One case: PARTIAL, exit 1 (see builtin_certificates_on_a_subset).
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(verdict(&r).starts_with("PARTIAL — "), "{}", r.stdout);
    let dir = if r.stdout.contains("CUDA device found") {
        out.clone()
    } else {
        assert!(r.stdout.contains("no CUDA kernels to certify"), "{}", r.stdout);
        out.join("candle")
    };
    let seed = report(&dir)["seed"].as_u64().unwrap();
    assert!(seed > 0, "a fresh seed, not the published one");
    assert_eq!(report(&dir)["seed_origin"], "drawn_by_this_run");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains(&format!("- seed: {seed} (fresh draw by this certify run")), "{md}");
    assert!(verdict(&r).contains(&format!("seed {seed};")), "{}", r.stdout);
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
    for (args, needle) in [
        (&["--kernel", "external:/nowhere"][..], "/nowhere"),
        (&["--kernel", "triton"][..], "unknown kernel"),
        (&["--filter", "no.such.op"][..], "no case id starts with"),
        (
            &["--kernel", "flash-cpu", "--profile", "p.json"][..],
            "--profile is for external:DIR kernels",
        ),
        (&["--kernel", "flash-cpu", "--seeds", "0"][..], "--seeds needs at least 1"),
    ] {
        let r = gqla(&[&["certify"][..], args, &["--out", "/tmp/unused-gqla-cert"]].concat());
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
}

/// `--seeds N` re-runs the profile on N fresh seeds and says, per case, on how many it passed.
/// A certificate that cannot be written is known before the suite runs: exit 2, saying where and
/// why (it once ran the whole suite, then exited 3).
#[test]
fn an_unwritable_certificate_is_refused_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = file.join("cert");
    let filter = "gqla.cache.expand:g=8;dc=512;dn=128;dv=128;ctx=65,31;page=64;dtype=bf16;seed=";
    let r = gqla(&[
        "certify",
        "--kernel",
        "reference-f32",
        "--filter",
        filter,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("cannot be created") && r.stderr.contains("a-file is a file"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("CONFORMANT"), "nothing is certified: {}", r.stdout);
}

#[test]
fn seeds_mode_reports_per_case_pass_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seeds");
    let filter = "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=0,17,pad,1,130";
    let r = gqla(&[
        "certify",
        "--kernel",
        "reference-f32",
        "--seeds",
        "3",
        "--filter",
        filter,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The mixed batch in bf16, f32 and f16, its split-KV variant, and their garbage-poison twins.
    assert!(
        r.stdout.contains("kernel reference-f32: 8 of 8 cases passed on all 3 seeds"),
        "{}",
        r.stdout
    );
    let md = std::fs::read_to_string(out.join("seeds.md")).unwrap();
    // Every run passed (further precision draws of a BORDERLINE family are runs too), and every
    // family was PRECISE on all three seeds.
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `gqla.decode.gqa")).collect();
    assert_eq!(rows.len(), 8, "{md}");
    for row in rows {
        let (passed, ran) = row.split('|').nth(2).and_then(|c| c.trim().split_once('/')).unwrap();
        assert!(passed == ran && passed.parse::<u32>().unwrap() >= 3, "{row}");
    }
    assert!(md.contains("| gqla.decode.gqa out bf16 | 3/3 | 0 |"), "{md}");
}

mod packs {
    use super::{report, verdict};
    use crate::common::{gqla, RawTensor};
    use gqla_conformance::inputs::CaseInputs;
    use gqla_conformance::kernels::ReferenceF32;
    use gqla_conformance::lattice::suite_cases_seeded;
    use gqla_conformance::{Case, Kernel, Outputs, Profile};
    use std::path::Path;

    /// The base gqla.decode.gqa case at s_q = 1, and its paged variations with their twins.
    const BASE: &str = "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65,31;page=64;dtype=bf16;seed=";
    const PAGED: &str = "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65,130,3;page=16;dtype=bf16";
    const SEED: &str = "5";

    fn export(dir: &Path, filters: &[&str]) -> crate::common::Run {
        let mut args = vec!["vectors", "export", "--out", dir.to_str().unwrap(), "--seed", SEED];
        for f in filters {
            args.extend(["--filter", f]);
        }
        gqla(&args)
    }

    fn kernel_json(dir: &Path, name: &str, profile: &Profile) {
        let info = serde_json::json!({"name": name, "version": "1.2", "description": "test", "environment": {"device": "cpu"}, "profile": profile});
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("kernel.json"), info.to_string()).unwrap();
    }

    /// Outputs as a correct external kernel would write them, for every case of the manifest.
    fn write_outputs(pack: &Path, outputs: &Path, with_lse: bool) {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(pack.join("manifest.json")).unwrap()).unwrap();
        std::fs::create_dir_all(outputs).unwrap();
        for c in m["cases"].as_array().unwrap() {
            let case: Case = c["id"].as_str().unwrap().parse().unwrap();
            let mut out = Outputs::for_case(&case, &Profile::everything());
            ReferenceF32.run(&mut CaseInputs::generate(&case), &mut out).unwrap();
            let tensors: Vec<(String, RawTensor)> = out
                .tensors
                .iter()
                .filter(|t| with_lse || t.name != gqla_conformance::definition::TensorName::Lse)
                .map(|t| {
                    (
                        t.name.to_string(),
                        RawTensor {
                            dtype: safetensors::Dtype::F32,
                            shape: t.shape.clone(),
                            bytes: t.region().iter().flat_map(|v| v.to_le_bytes()).collect(),
                        },
                    )
                })
                .collect();
            let path = outputs.join(c["outputs"].as_str().unwrap());
            gqla_files::tensors::write_tensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
        }
    }

    fn certify(pack: &Path, outputs: &Path, cert: &Path, extra: &[&str]) -> (crate::common::Run, serde_json::Value) {
        let kernel = format!("external:{}", pack.display());
        let args = [
            &[
                "certify",
                "--kernel",
                &kernel,
                "--outputs",
                outputs.to_str().unwrap(),
                "--out",
                cert.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        let r = gqla(&args);
        let rep = report(cert);
        (r, rep)
    }

    /// One pack serves two kernels with their own outputs directories and profiles; the
    /// certificate states the profile, the seed and the coverage.
    #[test]
    fn one_pack_serves_kernels_with_their_own_profiles() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, a, b) = (tmp.path().join("pack"), tmp.path().join("a"), tmp.path().join("b"));
        let r = export(&pack, &[BASE, PAGED]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        write_outputs(&pack, &a, true);
        kernel_json(&a, "with-lse", &Profile::everything());
        write_outputs(&pack, &b, false);
        let out_only = Profile {
            lse: gqla_conformance::profile::Lse::Named(gqla_conformance::profile::NoLse::None),
            ..Profile::everything()
        };
        kernel_json(&b, "out-only\n- verdict: **CONFORMANT**", &out_only);
        for (dir, name) in [(&a, "with-lse"), (&b, "out-only")] {
            let cert = tmp.path().join(format!("cert-{name}"));
            let (r, rep) = certify(&pack, dir, &cert, &[]);
            // Three cases of one geometry: every one passes, the core is not met (PARTIAL, exit 1).
            assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
            assert!(verdict(&r).starts_with("PARTIAL — "), "{}", r.stdout);
            assert_eq!(rep["seed"], 5);
            // A pack's seed was chosen by whoever exported it: never a "fresh draw".
            assert_eq!(rep["seed_origin"], "chosen_by_exporter");
            assert_eq!(rep["coverage"][0]["must_pass"], 3, "base, paged and its twin: {rep}");
            assert_eq!(rep["environment"]["kernel_environment"]["device"], "cpu", "{rep}");
            let md = std::fs::read_to_string(cert.join("report.md")).unwrap();
            assert_eq!(md.matches("verdict: **").count(), 1, "a forged verdict line: {md}");
            assert!(
                !md.contains("fresh draw") && md.contains("chosen by whoever exported the pack"),
                "{md}"
            );
            roxmltree::Document::parse(&std::fs::read_to_string(cert.join("junit.xml")).unwrap()).unwrap();
        }
        // The out-only profile judged against outputs that lack the LSE: the LSE is not certified.
        let md = std::fs::read_to_string(tmp.path().join("cert-out-only/report.md")).unwrap();
        assert!(md.contains("not written (not certified)"), "{md}");
    }

    /// A twin's outputs cannot be its base's file: the twin's values are mirrored, so its truth is
    /// the base's `out` negated, and a copy (or a link) of the base's outputs fails on its own
    /// numbers (1 - cos = 2), while the honest outputs pass.
    #[test]
    fn a_copied_twin_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, outs) = (tmp.path().join("pack"), tmp.path().join("outs"));
        assert_eq!(export(&pack, &[PAGED]).code, 0);
        write_outputs(&pack, &outs, true);
        kernel_json(&outs, "k", &Profile::everything());
        let (r, rep) = certify(&pack, &outs, &tmp.path().join("honest"), &[]);
        assert_eq!(rep["summary"], serde_json::json!({"PASS": 2}), "{}", r.stdout);
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(pack.join("manifest.json")).unwrap()).unwrap();
        let (base, twin) = (
            m["cases"][0]["outputs"].as_str().unwrap(),
            m["cases"][1]["outputs"].as_str().unwrap(),
        );
        assert_eq!(m["cases"][1]["params"]["twin_of"], m["cases"][0]["id"]);
        std::fs::copy(outs.join(base), outs.join(twin)).unwrap();
        let (r, rep) = certify(&pack, &outs, &tmp.path().join("copied"), &[]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert_eq!(rep["results"][1]["status"], "NUMERICAL_MISMATCH", "{rep}");
        assert!(rep["results"][1]["checks"][0]["one_minus_cos"].as_f64().unwrap() > 1.9, "{rep}");
    }

    /// `vectors export --seeds N` writes a set of packs, and `certify --seeds N` judges them in one
    /// run: per case, on how many seeds it passed; each seed gets its certificate.
    #[test]
    fn a_set_of_packs_is_judged_for_stability() {
        let tmp = tempfile::tempdir().unwrap();
        let (set, outs, cert) = (tmp.path().join("set"), tmp.path().join("outs"), tmp.path().join("cert"));
        let r = gqla(&[
            "vectors",
            "export",
            "--out",
            set.to_str().unwrap(),
            "--seeds",
            "2",
            "--filter",
            BASE,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut members: Vec<String> = std::fs::read_dir(&set)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        members.sort();
        assert_eq!(members.len(), 2, "{members:?}");
        for m in &members {
            assert!(m.starts_with("seed-"), "{m}");
            write_outputs(&set.join(m), &outs.join(m), true);
            kernel_json(&outs.join(m), "k", &Profile::everything());
        }
        let (r, _) = certify(&set, &outs, &cert, &["--seeds", "2"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("kernel k: 1 of 1 cases passed on all 2 seeds"), "{}", r.stdout);
        let md = std::fs::read_to_string(cert.join("seeds.md")).unwrap();
        assert!(
            md.contains("| 2/2 |") && md.contains("2 seeds (chosen by whoever exported the packs)"),
            "{md}"
        );
        for m in &members {
            let rep = report(&cert.join(m));
            assert_eq!(
                (rep["seed_origin"].as_str(), rep["summary"]["PASS"].as_u64()),
                (Some("chosen_by_exporter"), Some(1))
            );
        }
        // A wrong count, or a single pack, is refused.
        let (r, _) = certify(&set, &outs, &tmp.path().join("c2"), &["--seeds", "3"]);
        assert!(r.code == 2 && r.stderr.contains("holds 2 packs"), "{}", r.stderr);
        let one = set.join(&members[0]);
        let (r, _) = certify(&one, &outs.join(&members[0]), &tmp.path().join("c3"), &["--seeds", "1"]);
        assert!(r.code == 2 && r.stderr.contains("a single pack"), "{}", r.stderr);
    }

    /// A fixed-scale kernel gets a pack drawn for its profile: every selected case at its scale
    /// (the manifest says so, in bits too), judged in full; the pack serves no other profile, and
    /// a pack of the suite's cases as they are does not serve it.
    #[test]
    fn a_pack_drawn_for_a_fixed_scale_profile() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, outs, cert) = (tmp.path().join("pack"), tmp.path().join("outs"), tmp.path().join("cert"));
        let fixed = Profile {
            scale: gqla_conformance::profile::Scale::Fixed(1.0 / 24.0),
            ..Profile::everything()
        };
        let pfile = tmp.path().join("fixed.json");
        std::fs::write(&pfile, serde_json::to_string(&fixed).unwrap()).unwrap();
        let r = gqla(&[
            "vectors",
            "export",
            "--out",
            pack.to_str().unwrap(),
            "--seed",
            SEED,
            "--filter",
            BASE,
            "--filter",
            PAGED,
            "--profile",
            pfile.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(pack.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            m["profile"]["scale"]["fixed"].as_f64().map(|v| v as f32),
            Some(1.0f32 / 24.0),
            "{m}"
        );
        let cases = m["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3, "every selected case, none filtered out by the scale: {m}");
        for c in cases {
            assert_eq!(
                c["params"]["scale_f32_bits"].as_u64(),
                Some((1.0f32 / 24.0).to_bits() as u64),
                "{c}"
            );
            assert!(c["id"].as_str().unwrap().contains(";scale=0.041666668;"), "{c}");
        }
        write_outputs(&pack, &outs, true);
        kernel_json(&outs, "fixed-scale", &fixed);
        let (r, rep) = certify(&pack, &outs, &cert, &[]);
        assert_eq!(
            (r.code, rep["summary"].clone()),
            (1, serde_json::json!({"PASS": 3})),
            "{}",
            r.stdout
        );
        assert_eq!(rep["verdict"], "PARTIAL", "filtered to 3 cases: {}", r.stdout);
        // Another profile: refused up front.
        kernel_json(&outs, "input-scale", &Profile::everything());
        let (r, _) = certify(&pack, &outs, &tmp.path().join("cert2"), &[]);
        assert_eq!(r.code, 2, "{}", r.stdout);
        assert!(r.stderr.contains("drawn for another profile"), "{}", r.stderr);
        // The suite's own cases do not serve a fixed-scale kernel: it is told how to get its pack.
        let (plain_pack, plain_outs) = (tmp.path().join("plain"), tmp.path().join("plain-outs"));
        assert_eq!(export(&plain_pack, &[BASE]).code, 0);
        kernel_json(&plain_outs, "fixed-scale", &fixed);
        let (r, _) = certify(&plain_pack, &plain_outs, &tmp.path().join("cert3"), &[]);
        assert_eq!(r.code, 2, "{}", r.stdout);
        assert!(r.stderr.contains("vectors export --profile"), "{}", r.stderr);
    }

    /// Outputs are judged per case: missing, wrong shape, truncated; and a pack without a
    /// declaration is refused.
    #[test]
    fn pack_outputs_are_judged_per_case() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, outs, cert) = (tmp.path().join("pack"), tmp.path().join("outs"), tmp.path().join("cert"));
        assert_eq!(export(&pack, &[BASE]).code, 0);
        // No declaration: refused before anything is judged.
        std::fs::create_dir_all(&outs).unwrap();
        let (r, _) = certify(&pack, &outs, &cert, &[]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("kernel.json") && r.stderr.contains("no profile"), "{}", r.stderr);
        assert!(!cert.exists(), "a refusal writes nothing");
        kernel_json(&outs, "k", &Profile::everything());
        // No outputs written.
        let (r, rep) = certify(&pack, &outs, &cert, &[]);
        assert_eq!((r.code, rep["results"][0]["status"].as_str()), (1, Some("RUNTIME_ERROR")), "{rep}");
        assert!(
            r.stdout.contains("no outputs were written"),
            "the cause on the terminal: {}",
            r.stdout
        );
        assert!(verdict(&r).starts_with("NOT CONFORMANT — "), "{}", r.stdout);
        // Correct outputs.
        write_outputs(&pack, &outs, true);
        let (r, rep) = certify(&pack, &outs, &cert, &[]);
        assert_eq!((r.code, rep["results"][0]["status"].as_str()), (1, Some("PASS")), "{rep}");
        assert_eq!(rep["verdict"], "PARTIAL", "one case meets no core: {rep}");
        // A profile file overrides kernel.json; a bad one names the field.
        let pfile = tmp.path().join("profile.json");
        std::fs::write(&pfile, r#"{"operations": []}"#).unwrap();
        let (r, _) = certify(&pack, &outs, &cert, &["--profile", pfile.to_str().unwrap()]);
        assert_eq!(r.code, 2);
        assert!(
            r.stderr.contains("profile.json") && r.stderr.contains("missing field"),
            "{}",
            r.stderr
        );
        // A profile that selects nothing certifies nothing.
        let nothing = Profile {
            operations: Default::default(),
            ..Profile::everything()
        };
        std::fs::write(&pfile, serde_json::to_string(&nothing).unwrap()).unwrap();
        let (r, rep) = certify(&pack, &outs, &cert, &["--profile", pfile.to_str().unwrap()]);
        assert_eq!((r.code, rep["verdict"].as_str()), (1, Some("NOTHING_CERTIFIED")), "{rep}");
        // Truncated outputs.
        let file = outs.join(format!("{:05}.outputs.safetensors", index_of(BASE)));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let (r, rep) = certify(&pack, &outs, &cert, &[]);
        assert_eq!((r.code, rep["results"][0]["status"].as_str()), (1, Some("RUNTIME_ERROR")), "{rep}");
        assert!(
            rep["results"][0]["message"]
                .as_str()
                .unwrap()
                .contains("not a valid safetensors file"),
            "{rep}"
        );
    }

    fn index_of(prefix: &str) -> usize {
        suite_cases_seeded(5).iter().position(|c| c.matches(prefix)).unwrap()
    }

    /// Every forgery suite 0.2 accepted is refused with exit 2, and nothing is written.
    #[test]
    fn forged_packs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, outs) = (tmp.path().join("pack"), tmp.path().join("outs"));
        assert_eq!(export(&pack, &[BASE]).code, 0);
        write_outputs(&pack, &outs, true);
        kernel_json(&outs, "k", &Profile::everything());
        let manifest_text = std::fs::read_to_string(pack.join("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&manifest_text).unwrap();
        let forge = |edit: &dyn Fn(&mut serde_json::Value), want: &str| {
            let mut m = manifest.clone();
            edit(&mut m);
            std::fs::write(pack.join("manifest.json"), m.to_string()).unwrap();
            let cert = tmp.path().join("forged-cert");
            let (r, _) = certify(&pack, &outs, &cert, &[]);
            assert_eq!(r.code, 2, "{want}: {}{}", r.stdout, r.stderr);
            assert!(
                r.stderr.contains("manifest.json") && r.stderr.contains(want),
                "{want}: {}",
                r.stderr
            );
            assert!(!cert.exists(), "{want}: a refusal writes nothing");
        };
        forge(
            &|m| m["cases"][0]["id"] = "gqa.decode:h=1;g=1;d=1;dv=1;sq=1;ctx=1;page=none;dtype=f32;seed=1".into(),
            "is not a case of suite 0.5 with seed 5",
        );
        forge(
            &|m| {
                let c = m["cases"][0].clone();
                m["cases"].as_array_mut().unwrap().extend(std::iter::repeat_n(c, 98));
            },
            "is listed twice",
        );
        forge(&|m| m["cases"][0]["outputs"] = "../x".into(), "expected index");
        forge(&|m| m["cases"][0]["outputs"] = "/etc/passwd".into(), "expected index");
        forge(&|m| m["cases"][0]["inputs_sha256"] = "00".repeat(32).into(), "inputs_sha256");
        forge(&|m| m["suite_version"] = "0.2".into(), "suite version 0.2");
        forge(&|m| m["seed"] = 6.into(), "is not a case of suite 0.5 with seed 6");
        std::fs::write(pack.join("manifest.json"), &manifest_text).unwrap();
        // Tampered inputs.
        let inputs = pack.join(manifest["cases"][0]["inputs"].as_str().unwrap());
        let mut bytes = std::fs::read(&inputs).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&inputs, &bytes).unwrap();
        let (r, _) = certify(&pack, &outs, &tmp.path().join("c2"), &[]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("the inputs were changed"), "{}", r.stderr);
        bytes[n - 1] ^= 1;
        std::fs::write(&inputs, &bytes).unwrap();
        // An outputs file that is a symlink leading out, or a FIFO: refused, never followed or read.
        let out_file = outs.join(manifest["cases"][0]["outputs"].as_str().unwrap());
        let secret = tmp.path().join("secret.safetensors");
        std::fs::rename(&out_file, &secret).unwrap();
        std::os::unix::fs::symlink(&secret, &out_file).unwrap();
        let (r, _) = certify(&pack, &outs, &tmp.path().join("c3"), &[]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("leads outside"), "{}", r.stderr);
        std::fs::remove_file(&out_file).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(&out_file).status().unwrap().success());
        let (r, _) = certify(&pack, &outs, &tmp.path().join("c4"), &[]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }

    /// A kernel that declines every case at run time is not conformant; a case the manifest does
    /// not list is a failure, not a pass.
    #[test]
    fn missing_cases_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let (pack, outs) = (tmp.path().join("pack"), tmp.path().join("outs"));
        assert_eq!(export(&pack, &[BASE]).code, 0);
        write_outputs(&pack, &outs, true);
        kernel_json(&outs, "k", &Profile::everything());
        let (r, rep) = certify(&pack, &outs, &tmp.path().join("c"), &["--filter", BASE, "--filter", PAGED]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        let statuses: Vec<&str> = rep["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["PASS", "RUNTIME_ERROR", "RUNTIME_ERROR"], "{rep}");
        assert!(r.stdout.contains("the pack has no inputs for this case"), "{}", r.stdout);
    }

    /// `vectors export` refuses a non-empty directory and takes repeated filters.
    #[test]
    fn export_refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let pack = tmp.path().join("pack");
        std::fs::create_dir(&pack).unwrap();
        std::fs::write(pack.join("old.outputs.safetensors"), "stale").unwrap();
        let r = export(&pack, &[BASE]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("is not empty"), "{}", r.stderr);
        assert_eq!(std::fs::read_dir(&pack).unwrap().count(), 1, "nothing written");
        let fresh = tmp.path().join("fresh");
        let r = export(&fresh, &[BASE, PAGED]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fresh.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["cases"].as_array().unwrap().len(), 3);
        let p = &m["cases"][1]["params"];
        assert_eq!(
            (p["page_size"].as_u64(), p["seq_lens"].clone()),
            (Some(16), serde_json::json!([66, 131, 4])),
            "{m}"
        );
        assert_eq!(m["cases"][2]["params"]["twin_of"], m["cases"][1]["id"], "{m}");
    }
}

/// `python examples/SCRIPT` with the `gqla` package at `package` (and Triton's interpreter, for
/// the SGLang kernel).
fn example_command(python: &str, package: &std::path::Path, script: &str) -> std::process::Command {
    let mut c = std::process::Command::new(python);
    c.env("TRITON_INTERPRET", "1")
        .env("PYTHONPATH", package)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-W", "ignore"])
        .arg(crate::common::root().join("examples").join(script));
    c
}

/// Certify a real kernel with its script in examples/ (in process, through the `gqla` package
/// this build produced) on the cases `filters` select from suite seed `seed`: the script's exit
/// status, stdout and certificate. None (after printing SKIPPED) when the Python the examples use
/// (`GQLA_PYTHON`, default python3) cannot run `probe`.
fn certify_example(script: &str, probe: &str, filters: &[&str], seed: &str, extra: &[&str]) -> Option<(Run, serde_json::Value)> {
    let python = crate::common::python(script, probe)?;
    let package = crate::python_package::assembled();
    let tmp = tempfile::tempdir().unwrap();
    let cert = tmp.path().join("cert");
    let mut args = vec!["--seed", seed, "--out", cert.to_str().unwrap()];
    for f in filters {
        args.extend(["--filter", f]);
    }
    let run = example_command(&python, package.path(), script)
        .args(&args)
        .args(extra)
        .output()
        .unwrap();
    let r = Run {
        code: run.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&run.stdout).into(),
        stderr: String::from_utf8_lossy(&run.stderr).into(),
    };
    assert!(
        cert.join("report.json").is_file(),
        "{script}: no certificate\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let rep = report(&cert);
    Some((r, rep))
}

/// Cases a report judged (every result but NOT_SUPPORTED: an example's filters also match the
/// FP8 cases its profile leaves out).
fn selected_total(report: &serde_json::Value) -> u64 {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != "NOT_SUPPORTED")
        .count() as u64
}

/// Must-pass cases a certificate covers, over every operation.
fn must_pass_total(report: &serde_json::Value) -> u64 {
    report["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["must_pass"].as_u64().unwrap())
        .sum()
}

/// The decode cases the examples' real kernels (and the gqla package's tests) run in CI
/// (tests/example-core.txt): every decode operation's coverage core (a test holds it). Their full
/// runs (every decode case) are committed results
/// (docs/results/2026-12-07-examples-on-the-package.md).
fn example_core() -> Vec<&'static str> {
    include_str!("example-core.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The examples' CI selection meets the coverage core of every decode operation for the widest
/// profile, so an example that passes it is CONFORMANT, not PARTIAL.
#[test]
fn example_core_meets_the_coverage_core() {
    use gqla_conformance::case::Op;
    let cases = gqla_conformance::selection::Selection::new(example_core()).cases(21).unwrap();
    // The examples' kernels read no FP8 cache: the core without FP8 formats.
    let everything = gqla_conformance::profile::Profile::everything().without_fp8();
    for op in [Op::DecodeAbsorb, Op::DecodeGqa, Op::GqaDecode] {
        let missing = gqla_conformance::coverage::missing(op, &everything, &cases);
        assert!(missing.is_empty(), "{}: {missing:?}", op.name());
    }
}

/// A real, independently written kernel: `jax.nn.dot_product_attention` on the CPU
/// (examples/certify_jax.py, in process through the `gqla` package), with its honest profile, on
/// the decode core of a seed (every decode case: docs/results/2026-12-07-examples-on-the-package.md).
#[test]
fn jax_example_is_conformant() {
    let Some((r, rep)) = certify_example("certify_jax.py", "import jax, ml_dtypes", &example_core(), "21", &[]) else {
        return;
    };
    assert_eq!(
        (r.code, rep["verdict"].as_str()),
        (0, Some("CONFORMANT")),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(rep["profile"]["lse"]["dtype"], "storage");
    assert_eq!(rep["kernel"]["name"], "jax-dot-product-attention");
    // Every case selected is a decode case inside JAX's profile: all must pass.
    let cases = selected_total(&rep);
    assert!(cases >= 30, "the core selects {cases} cases: {}", r.stdout);
    assert_eq!(must_pass_total(&rep), cases, "{}", r.stdout);
}

/// PyTorch's SDPA (examples/certify_sdpa.py; out only, as declared) in f32 and in the case
/// dtype (--native), on the decode core.
#[test]
fn pytorch_sdpa_example_is_conformant() {
    for mode in [&[][..], &["--native"][..]] {
        let Some((r, rep)) = certify_example("certify_sdpa.py", "import torch", &example_core(), "22", mode) else {
            return;
        };
        assert_eq!(
            (r.code, rep["verdict"].as_str()),
            (0, Some("CONFORMANT")),
            "{mode:?}: {}\n{}",
            r.stdout,
            r.stderr
        );
        assert_eq!(must_pass_total(&rep), selected_total(&rep));
    }
}

/// The same script as a pack kernel: it runs over a pack the command line exported (as on a
/// machine without the command line) and the command line certifies what it wrote.
#[test]
fn a_python_kernel_certifies_through_a_pack() {
    let Some(python) = crate::common::python("a_python_kernel_certifies_through_a_pack", "import torch") else {
        return;
    };
    let package = crate::python_package::assembled();
    let tmp = tempfile::tempdir().unwrap();
    let (pack, outs, cert) = (tmp.path().join("pack"), tmp.path().join("outs"), tmp.path().join("cert"));
    let core: Vec<&str> = example_core().into_iter().filter(|f| f.starts_with("gqa.decode:")).collect();
    let mut args = vec!["vectors", "export", "--out", pack.to_str().unwrap(), "--seed", "23"];
    for f in &core {
        args.extend(["--filter", f]);
    }
    let r = gqla(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = example_command(&python, package.path(), "certify_sdpa.py")
        .args(["--pack", pack.to_str().unwrap(), "--outputs", outs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let kernel = format!("external:{}", pack.display());
    let r = gqla(&[
        "certify",
        "--kernel",
        &kernel,
        "--outputs",
        outs.to_str().unwrap(),
        "--out",
        cert.to_str().unwrap(),
    ]);
    let rep = report(&cert);
    assert_eq!((r.code, rep["verdict"].as_str()), (0, Some("CONFORMANT")), "{}", r.stdout);
    assert_eq!(rep["kernel"]["name"], "torch-sdpa-f32");
    assert_eq!(rep["seed_origin"], "chosen_by_exporter");
}

/// A second real kernel: SGLang's Triton decode attention under the Triton interpreter
/// (examples/certify_sglang_triton.py), with its honest profile (s_q = 1, no LSE, NaN for an
/// empty row, split counts honoured), on short s_q = 1 cases of every decode operation (the
/// interpreter takes seconds per case; docs/results has every s_q = 1 case). So few cases leave
/// the coverage core unmet: every case passes, and the verdict is PARTIAL (exit 1).
#[test]
fn sglang_triton_example_passes_its_cases() {
    let probe = "import os; os.environ['TRITON_INTERPRET'] = '1'; import torch, triton; \
                 from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd";
    let filters = [
        "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65,31;page=64;dtype=bf16;seed=",
        "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=0,17,pad,1,130;page=64;dtype=bf16;splits=16",
        "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65,130,3;page=1;",
        "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=per_group;sq=1;ctx=65,31;page=64;dtype=bf16;seed=",
        "gqa.decode:h=9;g=3;d=128;dv=128;sq=1;",
        "gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=pad,5,0",
        "gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=65,31;page=64;dtype=f16;",
    ];
    let Some((r, rep)) = certify_example("certify_sglang_triton.py", probe, &filters, "33", &[]) else {
        return;
    };
    assert_eq!(
        (r.code, rep["verdict"].as_str()),
        (1, Some("PARTIAL")),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(must_pass_total(&rep), 10, "{}", r.stdout);
    assert_eq!(rep["summary"], serde_json::json!({"PASS": 10}), "{}", r.stdout);
    assert!(r.stdout.contains("a context of 4096+ keys"), "{}", r.stdout);
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

/// `gqla probe --emulator` runs every tensor-core probe on the host emulator and passes; without
/// `--emulator` on a machine with no GPU it exits 2 and says what is missing.
#[test]
fn probes_run_on_the_emulator() {
    let r = gqla(&["probe", "--emulator"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for name in ["mma_probe_bf16", "mma_probe_f16", "wgmma_probe_bf16", "wgmma_probe_f16"] {
        assert!(r.stdout.contains(&format!("{name}: pass")), "{}", r.stdout);
    }
    let r = gqla(&["probe"]);
    match r.code {
        0 => assert!(r.stdout.contains("mma_probe_bf16: pass"), "{}", r.stdout),
        2 => assert!(r.stderr.contains("the probes need a GPU"), "{}", r.stderr),
        code => panic!("exit {code}: {}{}", r.stdout, r.stderr),
    }
}
