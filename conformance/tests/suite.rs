//! The suite certifies correct kernels on every case, rejects every mutant, and judges by the
//! kernel's declaration.

use gqla_conformance::case::{Case, DType, Op};
use gqla_conformance::definition::TensorName;
use gqla_conformance::inputs::CaseInputs;
use gqla_conformance::kernels::{Bug, FlashCpu, ReferenceF32};
use gqla_conformance::lattice::{must_pass, suite_cases, suite_cases_seeded, SUITE_VERSION};
use gqla_conformance::mutation::first_rejection;
use gqla_conformance::pack::{inputs_file, sha256_hex};
use gqla_conformance::precision::{families_of, settle};
use gqla_conformance::profile::{ByDtype, EmptyLse, EmptyOut, Lse, LseBase, LseConvention, LseDtype, NoLse, Profile, Scale};
use gqla_conformance::runner::{CaseResult, Prepared, Session};
use gqla_conformance::{Kernel, KernelError, KernelIdentity, Outputs};
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
        (
            "gqa.decode:h=2;g=1;d=4;d=4;dv=4;sq=1;ctx=3;page=none;dtype=f32;seed=1",
            "given twice",
        ),
        (
            "gqa.decode:seed=1;h=2;g=1;d=4;dv=4;sq=1;ctx=3;page=none;dtype=f32",
            "canonical id is `gqa.decode:h=2;g=1;d=4;dv=4;sq=1;ctx=3;page=none;dtype=f32;seed=1`",
        ),
        (
            "gqa.decode:h=2;g=1;d=4;dv=4;sq=1;ctx=3;page=none;dtype=f32;poison=nan;seed=1",
            "canonical",
        ),
        (
            "gqa.decode:h=70000;g=1;d=4;dv=4;sq=1;ctx=3;page=none;dtype=f32;seed=1",
            "h <= 65536",
        ),
        (
            "gqa.decode:h=2;g=1;d=4;dv=4;sq=1;ctx=100000000;page=none;dtype=f32;seed=1",
            "cached tokens",
        ),
    ] {
        let e = id.parse::<Case>().unwrap_err().to_string();
        assert!(e.contains(why), "{id}: {e}");
    }
}

/// The must-pass list is versioned and pins every case's inputs: changing the lattice or how
/// inputs are drawn means a new suite version and file.
#[test]
fn must_pass_list_matches_the_committed_file() {
    let path = format!("{}/mustpass/{SUITE_VERSION}.txt", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated: String = suite_cases()
        .iter()
        .map(|c| format!("{c} {}\n", sha256_hex(&inputs_file(&CaseInputs::generate(c)))))
        .collect();
    if std::env::var_os("GQLA_WRITE_MUSTPASS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    assert_eq!(
        committed, generated,
        "{path} differs from the lattice: bump SUITE_VERSION (GQLA_WRITE_MUSTPASS=1 writes it)"
    );
    assert_eq!(committed.lines().count(), must_pass().len());
}

fn builtins() -> Vec<Arc<dyn Kernel>> {
    vec![
        Arc::new(ReferenceF32),
        // Requested split counts (1, 7, 16, 64) come from the cases; 3 and 64 are the kernel's
        // own choice when a case requests none.
        Arc::new(FlashCpu::correct(3)),
        Arc::new(FlashCpu::correct(64)),
        #[cfg(feature = "candle")]
        Arc::new(gqla_conformance::kernels::CandleCpu),
    ]
}

/// What keeps a kernel's results from CONFORMANT besides failed cases: the failures of its
/// further precision draws, and its IMPRECISE families (after those draws).
fn precision_failures(session: &mut Session, results: &[CaseResult]) -> Vec<String> {
    let name = session.kernel().identity().name;
    let draws = settle(session, results, |_| {});
    let mut failures: Vec<String> = draws
        .iter()
        .filter(|r| r.status.failed())
        .map(|r| format!("{name} on further draw {}: {}", r.id, r.status.cause()))
        .collect();
    let pooled: Vec<CaseResult> = results.iter().chain(&draws).cloned().collect();
    failures.extend(
        families_of(&pooled)
            .into_iter()
            .filter(|f| f.imprecise())
            .map(|f| format!("{name}: {f}")),
    );
    failures
}

/// Every built-in kernel passes every case of the published suite, and every precision family:
/// no NOT_SUPPORTED, no failure.
#[test]
fn correct_kernels_pass_every_case() {
    let mut sessions: Vec<Session> = builtins().into_iter().map(|k| Session::new(k, TIMEOUT)).collect();
    let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); sessions.len()];
    let mut failures = Vec::new();
    for case in suite_cases() {
        let prepared = Prepared::new(&case);
        for (s, rs) in sessions.iter_mut().zip(&mut results) {
            let r = s.run(&prepared);
            if !r.status.passed() {
                failures.push(format!("{} on {}: {}", s.kernel().identity().name, r.id, r.status.cause()));
            }
            rs.push(r);
        }
    }
    for (s, rs) in sessions.iter_mut().zip(&results) {
        failures.extend(precision_failures(s, rs));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The status each mutant must get on the first case it fails.
fn expected(bug: Bug) -> &'static [&'static str] {
    use Bug::*;
    match bug {
        OutOfBoundsWrite => &["OUT_OF_BOUNDS_WRITE"],
        PanicOnEmptySequence | DeclineEverything => &["RUNTIME_ERROR"],
        WritesInputs => &["INPUT_MUTATED"],
        ReadPastContext | NanLeakFromPoison | EmptyRowNan | NoMaxSubtraction | EmptySplitNan | StaleOutput => &["NONFINITE_MISMATCH"],
        CausalOffByOne | DropLastPartialPage | TopLeftAlignment | LookupTable => &["NUMERICAL_MISMATCH", "NONFINITE_MISMATCH"],
        MaskByNan => &["NUMERICAL_MISMATCH", "POISON_DEPENDENT"],
        // A RoPE byte read as FP8 may be e4m3fn's NaN code.
        Fp8RopeReadAsFp8 => &["NUMERICAL_MISMATCH", "NONFINITE_MISMATCH"],
        _ => &["NUMERICAL_MISMATCH"],
    }
}

/// Each mutant's first rejection on the suite drawn from `seed` (None: it passed every case and
/// every precision family).
fn first_rejections(seed: u64, cases: impl Fn(&Case) -> bool) -> Vec<(Bug, Option<(String, String)>)> {
    let cases: Vec<Case> = suite_cases_seeded(seed).into_iter().filter(|c| cases(c)).collect();
    // References are computed once per case, and only for the cases some mutant reaches.
    let prepared: Vec<OnceLock<Prepared>> = cases.iter().map(|_| OnceLock::new()).collect();
    Bug::ALL
        .into_iter()
        .map(|bug| {
            let lazily = cases.iter().zip(&prepared).map(|(c, p)| p.get_or_init(|| Prepared::new(c)));
            (bug, first_rejection(bug, lazily, TIMEOUT))
        })
        .collect()
}

/// The lookup-table mutant answers the published suite (seed 0) from what it learned, so only a
/// fresh seed exposes it; every other mutant is rejected on the published suite too.
#[test]
fn only_a_fresh_seed_exposes_learned_outputs() {
    let published = first_rejections(0, |c| c.op() == Op::DecodeGqa && (0..c.batch()).all(|b| c.seq_len(b) <= 135));
    let survived: Vec<Bug> = published.iter().filter(|(_, r)| r.is_none()).map(|(b, _)| *b).collect();
    assert!(survived.contains(&Bug::LookupTable), "{published:?}");
}

/// Fresh seeds the stability tests use: `GQLA_TEST_SEEDS` (default 3, to keep CI short; the
/// acceptance run uses 20, recorded in docs/results).
fn test_seeds() -> u64 {
    std::env::var("GQLA_TEST_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// Verdicts do not depend on the seed: built-in kernels (and one with a real precision
/// weakness) pass on every fresh seed; here on the cases of up to 135 keys, which keeps the test
/// short (`gqla certify --seeds 20` runs the whole suite, see docs/results).
#[test]
fn correct_kernels_pass_on_every_seed() {
    let short = |c: &Case| (0..c.batch()).all(|b| c.seq_len(b) <= 135);
    let mut failures = Vec::new();
    for seed in 1..=test_seeds() {
        let kernels: Vec<Arc<dyn Kernel>> = vec![Arc::new(ReferenceF32), Arc::new(FlashCpu::correct(3)), Arc::new(Bf16Logits)];
        let mut sessions: Vec<Session> = kernels.into_iter().map(|k| Session::new(k, TIMEOUT)).collect();
        let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); sessions.len()];
        for case in suite_cases_seeded(seed).into_iter().filter(short) {
            let p = Prepared::new(&case);
            for (s, rs) in sessions.iter_mut().zip(&mut results) {
                let r = s.run(&p);
                if !r.status.passed() {
                    failures.push(format!(
                        "seed {seed}: {} on {}: {}",
                        s.kernel().identity().name,
                        r.id,
                        r.status.cause()
                    ));
                }
                rs.push(r);
            }
        }
        for (s, rs) in sessions.iter_mut().zip(&results) {
            failures.extend(precision_failures(s, rs).into_iter().map(|f| format!("seed {seed}: {f}")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every mutant is rejected on the whole suite, with the status its bug calls for, on every
/// fresh seed.
#[test]
fn every_mutant_is_rejected_on_every_seed() {
    let mut wrong = Vec::new();
    for seed in 1..=test_seeds() {
        let results = first_rejections(seed, |_| true);
        assert_eq!(results.len(), Bug::ALL.len());
        for (bug, r) in results {
            match r {
                None => wrong.push(format!("seed {seed}: mutant {bug:?} passed every case")),
                Some((id, status)) if !expected(bug).contains(&status.as_str()) => wrong.push(format!(
                    "seed {seed}: mutant {bug:?} on {id}: {status} (expected {:?})",
                    expected(bug)
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A real-kernel weakness: logits rounded to the storage dtype before the softmax. Its error is
/// the naive same-precision reference's, so it must pass on every seed (suite 0.2 rejected it on
/// 3 of 20).
struct Bf16Logits;

impl Kernel for Bf16Logits {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: "logits-in-storage-dtype".into(),
            version: "test".into(),
            description: "reference with scores rounded to the case dtype".into(),
        }
    }
    fn profile(&self) -> Profile {
        Profile::everything()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        let naive = gqla_conformance::reference::compute(inputs, gqla_conformance::reference::Precision::Naive(inputs.case.dtype()));
        for (name, values) in naive {
            if outputs.has(name) {
                for (d, v) in outputs.get_mut(name)?.region_mut().iter_mut().zip(values) {
                    *d = v as f32;
                }
            }
        }
        Ok(())
    }
}

/// A kernel that follows other conventions: LSE in base 2 and the storage dtype, +inf and NaN for
/// empty rows. Judged by its declaration it passes; judged by the suite's own it fails.
struct OtherConventions {
    empty_lse: ByDtype<EmptyLse>,
    empty_out: EmptyOut,
}

impl Kernel for OtherConventions {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: "other-conventions".into(),
            version: "test".into(),
            description: String::new(),
        }
    }
    fn profile(&self) -> Profile {
        Profile {
            out_empty_row: ByDtype::All(self.empty_out),
            lse: Lse::Written(LseConvention {
                dtype: LseDtype::Storage,
                base: LseBase::Two,
                empty_row: self.empty_lse.clone(),
            }),
            ..Profile::everything()
        }
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        FlashCpu::correct(3).run(inputs, outputs)?;
        let c = &inputs.case;
        for (i, v) in outputs.get_mut(TensorName::Lse)?.region_mut().iter_mut().enumerate() {
            let (b, j) = (i / (c.sq() * c.h()), (i / c.h()) % c.sq());
            *v = if c.visible(b, j) == 0 {
                match self.empty_lse.get(c.dtype()).unwrap() {
                    EmptyLse::PosInf => f32::INFINITY,
                    EmptyLse::Finite(s) => s,
                    _ => 12345.0,
                }
            } else {
                c.dtype().round_f32(*v / std::f32::consts::LN_2)
            };
        }
        let w = c.h() * c.out_width();
        let out = outputs.get_mut(TensorName::Out)?.region_mut();
        for r in 0..c.batch() * c.sq() {
            if c.visible(r / c.sq(), r % c.sq()) == 0 && self.empty_out == EmptyOut::Nan {
                out[r * w..(r + 1) * w].fill(f32::NAN);
            }
        }
        Ok(())
    }
}

#[test]
fn conventions_are_judged_as_declared() {
    let padded = suite_cases()
        .into_iter()
        .find(|c| c.op() == Op::DecodeAbsorb && c.ctx().contains(&None))
        .unwrap();
    let p = Prepared::new(&padded);
    for (empty_lse, empty_out) in [
        (EmptyLse::PosInf, EmptyOut::Nan),
        (EmptyLse::Finite(-2.38e38), EmptyOut::Zero),
        (EmptyLse::Unspecified, EmptyOut::Unspecified),
    ] {
        let k: Arc<dyn Kernel> = Arc::new(OtherConventions {
            empty_lse: ByDtype::All(empty_lse),
            empty_out,
        });
        let declared = k.profile();
        let (r, _) = p.run(&k, &declared, TIMEOUT);
        assert!(r.status.passed(), "{empty_lse:?}/{empty_out:?}: {}", r.status.cause());
        // The same outputs judged by the suite's own conventions are wrong.
        let (r, _) = p.run(&k, &Profile::everything(), TIMEOUT);
        assert!(r.status.failed(), "{empty_lse:?}: {}", r.status.name());
    }
    // A declared sentinel must be there.
    let k: Arc<dyn Kernel> = Arc::new(OtherConventions {
        empty_lse: ByDtype::All(EmptyLse::Finite(-2.38e38)),
        empty_out: EmptyOut::Zero,
    });
    let mut other = k.profile();
    other.lse = Lse::Written(LseConvention {
        empty_row: ByDtype::All(EmptyLse::Finite(-1e30)),
        ..other.lse.written().unwrap().clone()
    });
    let (r, _) = p.run(&k, &other, TIMEOUT);
    assert_eq!(r.status.name(), "NONFINITE_MISMATCH", "{}", r.status.cause());
    assert!(r.status.cause().contains("declared sentinel"), "{}", r.status.cause());
}

/// A kernel that writes no LSE is judged on `out` alone; cases outside a profile are not run.
#[test]
fn profiles_select_cases_and_outputs() {
    struct OutOnly;
    impl Kernel for OutOnly {
        fn identity(&self) -> KernelIdentity {
            KernelIdentity {
                name: "out-only".into(),
                version: "test".into(),
                description: String::new(),
            }
        }
        fn profile(&self) -> Profile {
            Profile {
                dtypes: [DType::Bf16].into_iter().collect(),
                scale: Scale::Fixed(1.0 / (576f32).sqrt()),
                operations: [Op::DecodeAbsorb].into_iter().collect(),
                lse: Lse::Named(NoLse::None),
                ..Profile::everything()
            }
        }
        fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
            assert!(!outputs.has(TensorName::Lse));
            let mut full = Outputs::for_case(&inputs.case, &Profile::everything());
            FlashCpu::correct(3).run(inputs, &mut full)?;
            outputs
                .get_mut(TensorName::Out)?
                .region_mut()
                .copy_from_slice(full.get(TensorName::Out)?.region());
            Ok(())
        }
    }
    let k: Arc<dyn Kernel> = Arc::new(OutOnly);
    let mut session = Session::new(k, TIMEOUT);
    let (mut selected, mut passed) = (0, 0);
    let mut shown = 0;
    for c in suite_cases() {
        // The fixed scale is drawn as the `scale` input, as certify does.
        let c = session.profile.draw(&c);
        let excluded = session.profile.excludes(&c).is_some();
        // Excluded cases are never run; three go through the session (the others would only
        // cost their reference).
        if excluded && shown == 3 {
            continue;
        }
        shown += excluded as usize;
        let r = session.run(&Prepared::new(&c));
        if r.status.selected() {
            selected += 1;
            passed += r.status.passed() as usize;
            assert_eq!(c.scale(), 1.0 / (576f32).sqrt(), "{c}");
        } else {
            assert!(r.status.cause().contains("is not in the declared profile"), "{}", r.status.cause());
        }
    }
    let absorb_bf16 = suite_cases()
        .iter()
        .filter(|c| c.op() == Op::DecodeAbsorb && c.dtype() == DType::Bf16)
        .count();
    assert!(absorb_bf16 > 40, "{absorb_bf16}");
    assert_eq!(
        (selected, passed),
        (absorb_bf16, absorb_bf16),
        "every absorb case in bf16, each drawn at 1/sqrt(576) (before: the 2 cases at that scale)"
    );
}

/// The tolerance rule's acceptance on a few seeds (`gqla certify --kernel synthetic --seeds 20`
/// runs the whole suite, see docs/results): a kernel whose error is 0.9x its RMS bound is
/// CONFORMANT, one at 1.1x is rejected by every family it targets and by nothing else, and no
/// family is left BORDERLINE. Here on the cases of up to 135 keys, each of the four kernels on
/// two of the test seeds (`GQLA_TEST_SEEDS=20`: every kernel on every seed).
#[test]
fn synthetic_kernels_are_decided_on_either_side_of_the_bound() {
    use gqla_conformance::kernels::synthetic::{Synthetic, Target, RATIOS};
    let short = |c: &Case| (0..c.batch()).all(|b| c.seq_len(b) <= 135);
    let all: Vec<Synthetic> = Target::ALL
        .into_iter()
        .flat_map(|target| RATIOS.map(|ratio| Synthetic { target, ratio }))
        .collect();
    let seeds = test_seeds();
    let mut wrong = Vec::new();
    for seed in 1..=seeds {
        // Every kernel on two seeds of the default three: seed s runs those whose position,
        // counted from s, is not the third of each three.
        let kernels: Vec<Synthetic> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| seeds > 3 || !(*i as u64 + seed).is_multiple_of(3))
            .map(|(_, k)| *k)
            .collect();
        let mut sessions: Vec<Session> = kernels.iter().map(|k| Session::new(Arc::new(*k), TIMEOUT)).collect();
        let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); kernels.len()];
        for case in suite_cases_seeded(seed).into_iter().filter(short) {
            let p = Prepared::new(&case);
            for (s, rs) in sessions.iter_mut().zip(&mut results) {
                rs.push(s.run(&p));
            }
        }
        for ((k, s), rs) in kernels.iter().zip(&mut sessions).zip(&results) {
            let name = s.kernel().identity().name;
            let draws = settle(s, rs, |_| {});
            let pooled: Vec<CaseResult> = rs.iter().chain(&draws).cloned().collect();
            for r in pooled.iter().filter(|r| r.status.failed()) {
                wrong.push(format!("seed {seed}: {name} failed {}: {}", r.id, r.status.cause()));
            }
            for f in families_of(&pooled) {
                let targeted = match k.target {
                    Target::Values => f.tensor != TensorName::Lse,
                    Target::Lse => f.tensor == TensorName::Lse,
                };
                if f.borderline || f.imprecise() != (targeted && k.ratio > 1.0) {
                    wrong.push(format!("seed {seed}: {name}: {f}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
