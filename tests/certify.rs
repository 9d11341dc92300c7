//! `gqla certify`: certificates, exit codes, and clear refusals.

use crate::common::gqla;

#[test]
fn builtin_certificate_on_a_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cert");
    let filter = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=65;page=64;dtype=bf16";
    let r = gqla(&["certify", "--filter", filter, "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("CONFORMANT"), "{}", r.stdout);
    assert!(
        !r.stderr.contains("panicked"),
        "a mutant's panic leaked to the terminal: {}",
        r.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert!(!results.is_empty());
    assert!(results
        .iter()
        .all(|c| c["status"] == "PASS" && c["id"].as_str().unwrap().starts_with(filter)));
    assert_eq!(report["suite_version"], "0.1");
    assert_eq!(report["conformant"], true);
    assert!(report["mutation"]["killed"].as_u64().unwrap() >= 1);
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("<testsuite") && junit.contains(&format!("tests=\"{}\"", results.len())));
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("CONFORMANT"));
}

#[test]
fn refusals_are_clear() {
    for (kernel, needle) in [
        ("cuda", "issue 5"),
        ("external:/nowhere", "not implemented yet"),
        ("triton", "unknown kernel"),
    ] {
        let r = gqla(&["certify", "--kernel", kernel, "--out", "/tmp/unused-gqla-cert"]);
        assert_eq!(r.code, 2, "{kernel}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{kernel}: {}", r.stderr);
    }
    let r = gqla(&["certify", "--filter", "no.such.op", "--out", "/tmp/unused-gqla-cert"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no case id starts with"), "{}", r.stderr);
}
