//! Certifying kernels that run in this process (built-in, CUDA, or a Python callable through the
//! `gqla` package): every selected case run on each kernel as its profile draws it, the
//! references computed once per case and shared; then, per kernel, its BORDERLINE precision
//! families drawn again ([`crate::precision::settle`]) and its [`Report`].
//!
//! The command line (`gqla certify`) and the Python package both certify through here, so a
//! certificate means the same whoever asked for it.

use crate::case::Case;
use crate::kernel::Kernel;
use crate::precision::settle;
use crate::report::{Environment, Report, SeedOrigin};
use crate::runner::{CaseResult, Prepared, Session};
use std::sync::Arc;
use std::time::Duration;

/// Every kernel on `cases`, in order. Each case's inputs and references are computed once and
/// shared by the kernels whose profile draws it as the suite does (a kernel that fixes the scale
/// runs the case drawn at its scale); with `keep`, they are returned for the mutation catalogue.
/// `progress` is called after each kernel's run of a case.
pub fn run_cases(
    kernels: &[Arc<dyn Kernel>],
    cases: &[Case],
    timeout: Duration,
    keep: bool,
    mut progress: impl FnMut(&Case),
) -> (Vec<Vec<CaseResult>>, Vec<Prepared>) {
    let mut sessions: Vec<Session> = kernels.iter().map(|k| Session::new(k.clone(), timeout)).collect();
    let mut prepared = Vec::new();
    let mut results = vec![Vec::with_capacity(cases.len()); kernels.len()];
    for case in cases {
        let p = Prepared::new(case);
        for (s, r) in sessions.iter_mut().zip(&mut results) {
            let drawn = s.profile.draw(case);
            r.push(if drawn == *case { s.run(&p) } else { s.run(&Prepared::new(&drawn)) });
            progress(case);
        }
        if keep {
            prepared.push(p);
        }
    }
    (results, prepared)
}

/// What a certificate records about the run beyond the results.
pub struct RunInfo<'a> {
    /// The selection's filter, as the certificate states it.
    pub filter: &'a str,
    pub seed: u64,
    pub origin: SeedOrigin,
    pub timeout: Duration,
}

/// The certificate of one kernel's `results`: its BORDERLINE precision families drawn again on
/// a fresh session (`progress` called before each further case), then judged.
pub fn report(kernel: &Arc<dyn Kernel>, results: Vec<CaseResult>, run: &RunInfo, progress: impl FnMut(&Case)) -> Report {
    let mut session = Session::new(kernel.clone(), run.timeout);
    let draws = settle(&mut session, &results, progress);
    Report::new(
        kernel.identity(),
        Environment::detect(kernel.environment()),
        run.filter,
        (run.seed, run.origin),
        session.profile.clone(),
        results,
    )
    .with_precision_draws(draws)
}
