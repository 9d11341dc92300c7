//! The mutation catalogue's verdict on the suite: each seeded bug of [`FlashCpu`] (a correct
//! kernel with one [`Bug`]) runs on the prepared cases until one rejects it; a mutant that passes
//! every case is judged on its precision families (drawn again while BORDERLINE, as any
//! in-process kernel is). A bug nothing rejects is a hole in the suite.

use crate::case::KvFormat;
use crate::kernels::{Bug, FlashCpu};
use crate::precision::{families_of, settle};
use crate::report::MutationSummary;
use crate::runner::{CaseResult, Prepared, Session};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The status a mutant gets when only its precision family rejects it.
pub const IMPRECISE: &str = "IMPRECISE";

/// One mutant's first rejection over `prepared` (in order): the first case it fails, else its
/// first IMPRECISE family (named `precision <family>`); None when it passes everything.
pub fn first_rejection<'a>(bug: Bug, prepared: impl IntoIterator<Item = &'a Prepared>, timeout: Duration) -> Option<(String, String)> {
    let mut session = Session::new(Arc::new(FlashCpu::mutant(3, bug)), timeout);
    let mut results: Vec<CaseResult> = Vec::new();
    // A bug in reading FP8 caches runs only where it can show: elsewhere it is the correct kernel.
    for p in prepared
        .into_iter()
        .filter(|p| !bug.reads_fp8() || p.case().kv() != KvFormat::Native)
    {
        let r = session.run(p);
        if !r.status.passed() {
            return Some((r.id, r.status.name().to_string()));
        }
        results.push(r);
    }
    let draws = settle(&mut session, &results, |_| {});
    if let Some(r) = draws.iter().find(|r| r.status.failed()) {
        return Some((r.id.clone(), r.status.name().to_string()));
    }
    results.extend(draws);
    families_of(&results)
        .into_iter()
        .find(|f| f.imprecise())
        .map(|f| (format!("precision {f}"), IMPRECISE.to_string()))
}

/// Run every mutant over `prepared` (in order) until something rejects it; `timeout` per case.
pub fn mutation_summary(prepared: &[Prepared], timeout: Duration) -> MutationSummary {
    let results: BTreeMap<String, Option<(String, String)>> = Bug::ALL
        .into_iter()
        .map(|bug| (format!("{bug:?}"), first_rejection(bug, prepared, timeout)))
        .collect();
    let killed = results.values().filter(|r| r.is_some()).count();
    MutationSummary {
        mutants: results.len(),
        killed,
        kill_rate: killed as f64 / results.len() as f64,
        results,
    }
}
