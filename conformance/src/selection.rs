//! Which cases a run takes: id prefixes (`--filter`) over the suite drawn from one seed.

use crate::case::Case;
use crate::lattice::suite_cases_seeded;
use crate::profile::Profile;
use std::fmt;

/// Case-id prefixes; a case is selected when its id starts with one of them. No prefix (or `*`)
/// selects every case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    prefixes: Vec<String>,
}

/// A selection that leaves no case of the suite.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no case id starts with `{0}`")]
pub struct NothingSelected(pub Selection);

impl Selection {
    pub fn new(prefixes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Selection {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
        }
    }

    /// Every case.
    pub fn everything() -> Self {
        Selection::default()
    }

    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    pub fn is_everything(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn selects(&self, case: &Case) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| case.matches(p))
    }

    /// The selected cases of the suite drawn from `seed`, each with its index in the suite.
    pub fn indexed_cases(&self, seed: u64) -> Result<Vec<(usize, Case)>, NothingSelected> {
        let cases: Vec<(usize, Case)> = suite_cases_seeded(seed)
            .into_iter()
            .enumerate()
            .filter(|(_, c)| self.selects(c))
            .collect();
        if cases.is_empty() {
            return Err(NothingSelected(self.clone()));
        }
        Ok(cases)
    }

    /// The selected cases `profile` supports, as it draws them (a fixed scale set as an input),
    /// each with its index in the suite: what a pack drawn for the profile holds.
    pub fn drawn_for(&self, seed: u64, profile: &Profile) -> Result<Vec<(usize, Case)>, NothingSelected> {
        let cases: Vec<(usize, Case)> = self
            .indexed_cases(seed)?
            .into_iter()
            .map(|(i, c)| (i, profile.draw(&c)))
            .filter(|(_, c)| profile.excludes(c).is_none())
            .collect();
        if cases.is_empty() {
            return Err(NothingSelected(self.clone()));
        }
        Ok(cases)
    }

    /// The selected cases of the suite drawn from `seed`, in suite order.
    pub fn cases(&self, seed: u64) -> Result<Vec<Case>, NothingSelected> {
        Ok(self.indexed_cases(seed)?.into_iter().map(|(_, c)| c).collect())
    }
}

/// The prefixes as certificates record them: `a | b`.
impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefixes.join(" | "))
    }
}

/// A fresh suite seed: never 0 (the published suite, whose inputs are known), and small enough
/// to retype from a certificate.
pub fn fresh_seed() -> u64 {
    rand::random::<u32>().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_select_by_id_and_none_selects_everything() {
        let all = Selection::everything().cases(0).unwrap();
        assert_eq!(Selection::new(["*"]).cases(0).unwrap().len(), all.len());
        let expand = Selection::new(["gqla.cache.expand"]).indexed_cases(0).unwrap();
        assert!(!expand.is_empty() && expand.len() < all.len());
        for (i, c) in &expand {
            assert!(c.to_string().starts_with("gqla.cache.expand"));
            assert_eq!(all[*i].to_string(), c.to_string(), "the suite index");
        }
        let two = Selection::new(["gqla.cache.expand", "gqa.decode"]);
        assert_eq!(two.to_string(), "gqla.cache.expand | gqa.decode");
        let e = Selection::new(["nope"]).cases(0).unwrap_err();
        assert_eq!(e.to_string(), "no case id starts with `nope`");
        assert!((0..64).map(|_| fresh_seed()).all(|s| s != 0 && s <= u32::MAX as u64));
    }
}
