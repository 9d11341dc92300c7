//! What every attention path returns.

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
