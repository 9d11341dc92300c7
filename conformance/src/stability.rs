//! `--seeds N`: one kernel on the suite drawn from N fresh seeds, and per case (its id without the
//! seed, [`Case::shape_id`]) on how many it passed. A verdict that changes with the seed is a bug,
//! of the kernel or of the suite.

use crate::case::Case;
use crate::precision::Family;
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

impl Tally {
    /// One more run of the case; `when` names it in the first failure.
    fn add(&mut self, r: &CaseResult, when: &str) {
        self.ran += 1;
        self.passed += r.status.passed() as u32;
        if r.status.failed() && self.first_failure.is_none() {
            self.first_failure = Some(format!("{when}: {}: {}", r.status.name(), plain(&r.status.cause())));
        }
    }
}

/// One precision family across seeds: on how many it was PRECISE, and its ratios.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyTally {
    pub seeds: u32,
    pub precise: u32,
    /// Seeds on which it ended BORDERLINE (decided by its point estimate).
    pub borderline: u32,
    pub min_ratio: f64,
    pub max_ratio: f64,
}

/// Per case shape, its tally over the seeds recorded so far; per precision family, its
/// judgements.
#[derive(Clone, Debug, Default)]
pub struct Stability {
    seeds: Vec<u64>,
    cases: BTreeMap<String, Tally>,
    families: BTreeMap<String, FamilyTally>,
    /// The families pooled over every seed (pack sets, which cannot be drawn again).
    pooled: Vec<Family>,
}

impl Stability {
    /// Record one seed's results, `results[i]` being case `cases[i]`'s.
    pub fn record(&mut self, seed: u64, cases: &[Case], results: &[CaseResult]) {
        assert_eq!(cases.len(), results.len(), "one result per case");
        self.seeds.push(seed);
        for (case, r) in cases.iter().zip(results) {
            if r.status.selected() {
                self.cases.entry(case.shape_id()).or_default().add(r, &format!("seed {seed}"));
            }
        }
    }

    /// Record the further draws of one seed's BORDERLINE families: each a run of its case shape.
    pub fn record_draws(&mut self, seed: u64, draws: &[CaseResult]) {
        for r in draws {
            if let Ok(case) = r.id.parse::<Case>() {
                self.cases
                    .entry(case.shape_id())
                    .or_default()
                    .add(r, &format!("seed {seed}, further draw"));
            }
        }
    }

    /// Record one seed's precision families.
    pub fn record_families(&mut self, _seed: u64, families: &[Family]) {
        for f in families {
            let t = self
                .families
                .entry(format!("{} {} {}", f.operation, f.tensor, f.dtype.name()))
                .or_insert(FamilyTally {
                    min_ratio: f64::INFINITY,
                    ..FamilyTally::default()
                });
            t.seeds += 1;
            t.precise += !f.imprecise() as u32;
            t.borderline += f.borderline as u32;
            t.min_ratio = t.min_ratio.min(f.ratio);
            t.max_ratio = t.max_ratio.max(f.ratio);
        }
    }

    /// The families pooled over every seed: they, not each seed's, decide precision.
    pub fn set_pooled(&mut self, families: Vec<Family>) {
        self.pooled = families;
    }

    pub fn families(&self) -> impl Iterator<Item = (&str, &FamilyTally)> {
        self.families.iter().map(|(k, t)| (k.as_str(), t))
    }

    pub fn pooled(&self) -> &[Family] {
        &self.pooled
    }

    /// Precision holds: pooled families (when set) are not IMPRECISE; otherwise every family
    /// was PRECISE on every seed.
    fn precise(&self) -> bool {
        if self.pooled.is_empty() {
            self.families.values().all(|t| t.precise == t.seeds)
        } else {
            self.pooled.iter().all(|f| !f.imprecise())
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

    /// Stable means: something was selected, every selected case passed on every seed (further
    /// precision draws included), and precision held ([`Self::precise`]).
    pub fn stable(&self) -> bool {
        self.selected().next().is_some() && self.unstable().next().is_none() && self.precise()
    }

    /// The terminal's summary: how many cases passed on every seed, each that did not with its
    /// first failure, the families not PRECISE on every seed and the pooled ones; a line each.
    pub fn summary(&self, kernel: &str) -> String {
        let (selected, unstable) = (self.selected().count(), self.unstable().count());
        let mut lines = vec![format!(
            "kernel {}: {} of {selected} cases passed on all {} seeds",
            crate::report::plain(kernel),
            selected - unstable,
            self.seeds.len()
        )];
        for (id, v) in self.unstable() {
            lines.push(format!(
                "  {}/{}  {id}  {}",
                v.passed,
                v.ran,
                v.first_failure.as_deref().unwrap_or("")
            ));
        }
        for (key, f) in self.families().filter(|(_, f)| f.precise != f.seeds) {
            lines.push(format!(
                "  precision {key}: PRECISE on {}/{} seeds, ratio {:.3}-{:.3}",
                f.precise, f.seeds, f.min_ratio, f.max_ratio
            ));
        }
        for f in self.pooled() {
            lines.push(format!("  pooled over the seeds: {f}"));
        }
        lines.join("\n")
    }

    /// `seeds.md`: the seeds (`origin`: who chose them), and per selected case its passes.
    pub fn markdown(&self, kernel: &str, origin: &str) -> String {
        let selected = self.selected().count();
        let unstable = self.unstable().count();
        let mut md = format!(
            "# Seed stability: {}\n\n- suite {SUITE_VERSION}, {} seeds ({origin}): {}\n- {selected} cases selected by the profile; {} passed on every seed (runs include further precision draws)\n\n| case | passed |\n|---|---|\n",
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
        if !self.families.is_empty() {
            md.push_str("\n## Precision families\n\nPer (operation, output, dtype): on how many seeds it was PRECISE (RMS error within its bound, [conformance/src/precision.rs]), ended BORDERLINE, and its ratio's range.\n\n| family | precise | borderline | ratio |\n|---|---|---|---|\n");
            for (k, t) in &self.families {
                md.push_str(&format!(
                    "| {k} | {}/{} | {} | {:.3}–{:.3} |\n",
                    t.precise, t.seeds, t.borderline, t.min_ratio, t.max_ratio
                ));
            }
        }
        if !self.pooled.is_empty() {
            md.push_str("\n## Pooled over the seeds (this decides precision)\n\n");
            for f in &self.pooled {
                md.push_str(&format!("- {}\n", md_escape(&f.to_string())));
            }
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

    /// A family IMPRECISE on one seed makes the run unstable; for pack sets the families pooled
    /// over every seed decide instead.
    #[test]
    fn precision_families_count_per_seed_unless_pooled() {
        let cases: Vec<Case> = suite_cases_seeded(11).into_iter().take(1).collect();
        let pass = [CaseResult {
            id: cases[0].to_string(),
            status: Status::Pass { checks: Vec::new() },
            seconds: 0.0,
        }];
        let family = |ratio: f64, imprecise: bool| Family {
            operation: "gqa.decode".into(),
            tensor: crate::definition::TensorName::Lse,
            dtype: crate::case::DType::Bf16,
            kv: crate::case::KvFormatKind::Native,
            cases: 40,
            draws: 1,
            ratio,
            low: ratio * 0.99,
            high: ratio * 1.01,
            confidence: 0.95,
            judgement: if imprecise {
                crate::precision::Judgement::Imprecise
            } else {
                crate::precision::Judgement::Precise
            },
            borderline: false,
        };
        let mut s = Stability::default();
        s.record(11, &cases, &pass);
        s.record_families(11, &[family(0.5, false)]);
        assert!(s.stable());
        s.record(12, &cases, &pass);
        s.record_families(12, &[family(1.2, true)]);
        assert!(!s.stable());
        let (key, t) = s.families().next().unwrap();
        assert_eq!(
            (key, t.precise, t.seeds, t.min_ratio, t.max_ratio),
            ("gqa.decode lse bf16", 1, 2, 0.5, 1.2)
        );
        assert!(
            s.markdown("k", "o").contains("| gqa.decode lse bf16 | 1/2 | 0 | 0.500–1.200 |"),
            "{}",
            s.markdown("k", "o")
        );
        s.set_pooled(vec![family(0.9, false)]);
        assert!(s.stable(), "the pooled family decides");
        s.set_pooled(vec![family(1.1, true)]);
        assert!(!s.stable());
    }
}
