//! The mutation catalogue's verdict on the suite: each seeded bug of [`FlashCpu`] (a correct
//! kernel with one [`Bug`]) runs on the prepared cases until one rejects it. A bug no case
//! rejects is a hole in the suite.

use crate::kernels::{Bug, FlashCpu};
use crate::report::MutationSummary;
use crate::runner::{Prepared, Session};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Run every mutant over `prepared` (in order) until a case rejects it; `timeout` per case.
pub fn mutation_summary(prepared: &[Prepared], timeout: Duration) -> MutationSummary {
    let mut results = BTreeMap::new();
    for bug in Bug::ALL {
        let mut session = Session::new(Arc::new(FlashCpu::mutant(3, bug)), timeout);
        let first = prepared.iter().map(|p| session.run(p)).find(|r| !r.status.passed());
        results.insert(format!("{bug:?}"), first.map(|r| (r.id, r.status.name().to_string())));
    }
    let killed = results.values().filter(|r| r.is_some()).count();
    MutationSummary {
        mutants: results.len(),
        killed,
        kill_rate: killed as f64 / results.len() as f64,
        results,
    }
}
