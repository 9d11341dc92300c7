//! The suite certifies correct kernels on every case and rejects every mutant.

use gqla_conformance::case::Case;
use gqla_conformance::kernels::{Bug, FlashCpu, ReferenceF32};
use gqla_conformance::lattice::{must_pass, suite_cases, SUITE_VERSION};
use gqla_conformance::runner::Prepared;
use gqla_conformance::{Kernel, Status};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn case_ids_round_trip() {
    for c in suite_cases() {
        let id = c.to_string();
        let back: Case = id.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, c, "{id}");
    }
}

#[test]
fn malformed_case_ids_are_errors() {
    for (id, why) in [
        ("gqla.decode.gqa", "op:key=value"),
        ("nope.op:h=1", "unknown operation"),
        (
            "gqla.decode.gqa:h=9;g=2;dn=8;dr=4;dv=8;sq=1;ctx=3;page=none;dtype=bf16;seed=1",
            "g divides h",
        ),
        (
            "gqla.decode.absorb:h=2;dc=8;dn=4;dr=4;sq=1;ctx=x;dtype=f32;seed=1",
            "needs a number",
        ),
        ("gqa.decode:h=2;g=1;d=4;dv=4;sq=1;ctx=3;dtype=f8;seed=1", "dtype"),
    ] {
        let e = id.parse::<Case>().unwrap_err().to_string();
        assert!(e.contains(why), "{id}: {e}");
    }
}

/// The must-pass list is versioned: changing the lattice means a new suite version and file.
#[test]
fn must_pass_list_matches_the_committed_file() {
    let path = format!("{}/mustpass/{SUITE_VERSION}.txt", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = must_pass().join("\n") + "\n";
    if std::env::var_os("GQLA_WRITE_MUSTPASS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    assert_eq!(
        committed, generated,
        "{path} differs from the lattice: bump SUITE_VERSION (GQLA_WRITE_MUSTPASS=1 writes it)"
    );
}

#[test]
fn correct_kernels_pass_every_case() {
    let kernels = [
        Arc::new(ReferenceF32) as Arc<dyn Kernel>,
        Arc::new(FlashCpu::correct(1)),
        Arc::new(FlashCpu::correct(3)),
        Arc::new(FlashCpu::correct(64)),
        #[cfg(feature = "candle")]
        Arc::new(gqla_conformance::kernels::CandleCpu),
    ];
    for case in suite_cases() {
        let prepared = Prepared::new(&case);
        for kernel in &kernels {
            let r = prepared.run(kernel, TIMEOUT);
            assert!(
                matches!(r.status, Status::Pass { .. }),
                "{} on {}: {:?}",
                kernel.identity().name,
                r.id,
                r.status
            );
        }
    }
}

/// The status each mutant must get on the first case it fails.
fn expected(bug: Bug) -> &'static [&'static str] {
    use Bug::*;
    match bug {
        OutOfBoundsWrite => &["OUT_OF_BOUNDS_WRITE"],
        PanicOnEmptySequence => &["RUNTIME_ERROR"],
        ReadPastContext | NanLeakFromPoison | EmptyRowNan | NoMaxSubtraction | EmptySplitNan => &["NONFINITE_MISMATCH"],
        CausalOffByOne | DropLastPartialPage | TopLeftAlignment => &["NUMERICAL_MISMATCH", "NONFINITE_MISMATCH"],
        _ => &["NUMERICAL_MISMATCH"],
    }
}

#[test]
fn every_mutant_is_rejected_with_the_expected_status() {
    let cases = suite_cases();
    // References are computed once per case, and only for the cases some mutant reaches.
    let prepared: Vec<OnceLock<Prepared>> = cases.iter().map(|_| OnceLock::new()).collect();
    let mut killed = 0;
    for bug in Bug::ALL {
        let kernel: Arc<dyn Kernel> = Arc::new(FlashCpu { splits: 3, bug: Some(bug) });
        let first = cases
            .iter()
            .zip(&prepared)
            .map(|(c, p)| p.get_or_init(|| Prepared::new(c)).run(&kernel, TIMEOUT))
            .find(|r| !r.status.is_conformant());
        let r = first.unwrap_or_else(|| panic!("mutant {bug:?} passed every case"));
        assert!(
            expected(bug).contains(&r.status.name()),
            "mutant {bug:?} on {}: {} (expected {:?})",
            r.id,
            r.status.name(),
            expected(bug)
        );
        killed += 1;
    }
    assert_eq!(killed, Bug::ALL.len());
}
