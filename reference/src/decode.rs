//! The two GQLA decode paths, and what every attention path returns.

use ndarray::{Array2, Array3};

/// The result of attending `s` query tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOutput<T> {
    /// The layer output y = W^O [o_1; …; o_H] + b^O: [s, hidden].
    pub y: Array2<T>,
    /// Per-head attention outputs o_i before W^O: [s, H, d_v].
    pub heads: Array3<T>,
    /// Natural-log LSE of the scaled scores per query token and head: [s, H].
    pub lse: Array2<T>,
}

/// A GQLA decode path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodePath {
    /// MQA over the latent cache [c; k^R] (MLA's absorbed decode).
    Absorb,
    /// GQA over the per-group cache.
    Gqa,
}

impl DecodePath {
    pub const ALL: [DecodePath; 2] = [DecodePath::Absorb, DecodePath::Gqa];
    pub fn name(self) -> &'static str {
        match self {
            DecodePath::Absorb => "absorb",
            DecodePath::Gqa => "gqa",
        }
    }
    pub fn from_name(name: &str) -> Option<DecodePath> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}
