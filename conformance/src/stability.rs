//! `--seeds N`: one kernel on the suite drawn from N fresh seeds, and per case (its id without the
//! seed, [`Case::shape_id`]) on how many it passed. A verdict that changes with the seed is a bug,
//! of the kernel or of the suite.

use crate::case::Case;
use crate::report::{md_escape, plain};
use crate::runner::CaseResult;
use crate::SUITE_VERSION;
use std::collections::BTreeMap;

/// One case across seeds: how many passed, how many ran, the first failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u32,
    pub ran: u32,
    pub first_failure: Option<String>,
}

/// Per case shape, its tally over the seeds recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Stability {
    seeds: Vec<u64>,
    cases: BTreeMap<String, Tally>,
}

impl Stability {
    /// Record one seed's results, `results[i]` being case `cases[i]`'s.
    pub fn record(&mut self, seed: u64, cases: &[Case], results: &[CaseResult]) {
        assert_eq!(cases.len(), results.len(), "one result per case");
        self.seeds.push(seed);
        for (case, r) in cases.iter().zip(results) {
            let t = self.cases.entry(case.shape_id()).or_default();
            if r.status.selected() {
                t.ran += 1;
                t.passed += r.status.passed() as u32;
                if r.status.failed() && t.first_failure.is_none() {
                    t.first_failure = Some(format!("seed {seed}: {}: {}", r.status.name(), plain(&r.status.cause())));
                }
            }
        }
    }

    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// The cases the profile selected (ran on at least one seed).
    pub fn selected(&self) -> impl Iterator<Item = (&str, &Tally)> {
        self.cases.iter().filter(|(_, t)| t.ran > 0).map(|(k, t)| (k.as_str(), t))
    }

    /// The selected cases that failed on some seed.
    pub fn unstable(&self) -> impl Iterator<Item = (&str, &Tally)> {
        self.selected().filter(|(_, t)| t.passed != t.ran)
    }

    /// Stable means: something was selected, and every selected case passed on every seed.
    pub fn stable(&self) -> bool {
        self.selected().next().is_some() && self.unstable().next().is_none()
    }

    /// `seeds.md`: the seeds (`origin`: who chose them), and per selected case its passes.
    pub fn markdown(&self, kernel: &str, origin: &str) -> String {
        let selected = self.selected().count();
        let unstable = self.unstable().count();
        let mut md = format!(
            "# Seed stability: {}\n\n- suite {SUITE_VERSION}, {} seeds ({origin}): {}\n- {selected} cases selected by the profile; {} passed on every seed\n\n| case | passed |\n|---|---|\n",
            md_escape(kernel),
            self.seeds.len(),
            self.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
            selected - unstable
        );
        for (id, t) in self.selected() {
            let note = t
                .first_failure
                .as_deref()
                .map(|w| format!(" ({})", md_escape(w)))
                .unwrap_or_default();
            md.push_str(&format!("| `{id}` | {}/{}{note} |\n", t.passed, t.ran));
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::suite_cases_seeded;
    use crate::verdict::Status;

    #[test]
    fn the_same_case_on_two_seeds_is_one_row() {
        let pick = |seed| suite_cases_seeded(seed).into_iter().take(2).collect::<Vec<_>>();
        let (a, b) = (pick(11), pick(12));
        assert_ne!(a[0].to_string(), b[0].to_string(), "the seed is in the id");
        let result = |c: &Case, status: Status| CaseResult {
            id: c.to_string(),
            status,
            seconds: 0.0,
        };
        let mut s = Stability::default();
        s.record(
            11,
            &a,
            &[
                result(&a[0], Status::Pass { checks: Vec::new() }),
                result(&a[1], Status::Pass { checks: Vec::new() }),
            ],
        );
        let failed = Status::RuntimeError { message: "boom".into() };
        s.record(12, &b, &[result(&b[0], Status::Pass { checks: Vec::new() }), result(&b[1], failed)]);
        assert_eq!(s.selected().count(), 2);
        let unstable: Vec<_> = s.unstable().collect();
        assert_eq!(unstable.len(), 1);
        assert_eq!((unstable[0].1.passed, unstable[0].1.ran), (1, 2));
        assert!(unstable[0]
            .1
            .first_failure
            .as_deref()
            .unwrap()
            .starts_with("seed 12: RUNTIME_ERROR"));
        assert!(!s.stable());
        assert!(s.markdown("k", "o").contains("| 1/2 (seed 12"), "{}", s.markdown("k", "o"));
    }
}
