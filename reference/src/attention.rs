//! Scaled dot-product attention over explicit key ranges, with the log-sum-exp.
//!
//! For a query row q and visible keys t ∈ [start, end):
//! $$ s_t = \text{scale}\cdot q\cdot k_t,\quad o = \sum_t \frac{e^{s_t - m}}{\sum_u e^{s_u - m}} v_t,
//! \quad \mathrm{LSE} = m + \ln\sum_t e^{s_t - m},\; m = \max_t s_t. $$
//! An empty row (no visible key) returns o = 0 and LSE = −∞, FlashAttention's convention.

use crate::real::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// The keys one query row may see: positions start..end of the key sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: usize,
    pub end: usize,
}

/// Bottom-right causal alignment: `s_q` queries that are the last tokens of a sequence of
/// `kv_len` keys. Query j (0-based) sits at position kv_len − s_q + j and sees keys ≤ that position,
/// optionally only the last `window` of them (sliding window, Mistral).
pub fn causal_ranges(s_q: usize, kv_len: usize, window: Option<usize>) -> Vec<KeyRange> {
    assert!(s_q <= kv_len, "causal_ranges: {s_q} queries but only {kv_len} keys");
    (0..s_q)
        .map(|j| {
            let end = kv_len - s_q + j + 1;
            let start = window.map_or(0, |w| end.saturating_sub(w));
            KeyRange { start, end }
        })
        .collect()
}

/// One query row against its visible keys: returns (o, LSE).
pub fn attend_row<T: Real>(q: ArrayView1<T>, keys: ArrayView2<T>, values: ArrayView2<T>, scale: T, range: KeyRange) -> (Array1<T>, T) {
    let d_v = values.ncols();
    if range.start >= range.end {
        return (Array1::zeros(d_v), T::neg_infinity());
    }
    let scores: Vec<T> = (range.start..range.end).map(|t| keys.row(t).dot(&q) * scale).collect();
    let m = scores.iter().copied().fold(T::neg_infinity(), T::max);
    let weights: Vec<T> = scores.iter().map(|&s| (s - m).exp()).collect();
    let denom: T = weights.iter().copied().sum();
    let mut out = Array1::<T>::zeros(d_v);
    for (w, t) in weights.iter().zip(range.start..range.end) {
        out.scaled_add(*w / denom, &values.row(t));
    }
    (out, m + denom.ln())
}

/// Many query rows, each with its own range: returns (O `[n, d_v]`, LSE `[n]`).
pub fn attend<T: Real>(
    queries: ArrayView2<T>,
    keys: ArrayView2<T>,
    values: ArrayView2<T>,
    scale: T,
    ranges: &[KeyRange],
) -> (Array2<T>, Array1<T>) {
    assert_eq!(queries.nrows(), ranges.len(), "attend: one range per query row");
    assert_eq!(queries.ncols(), keys.ncols(), "attend: query and key dims differ");
    assert_eq!(keys.nrows(), values.nrows(), "attend: key and value counts differ");
    // Rows contiguous: a matrix built by a transposed product or a concatenation may be
    // column-major, and strided rows in every dot product cost several times over on a real model.
    let (queries, keys, values) = (queries.as_standard_layout(), keys.as_standard_layout(), values.as_standard_layout());
    let mut out = Array2::zeros((queries.nrows(), values.ncols()));
    let mut lse = Array1::zeros(queries.nrows());
    for (r, range) in ranges.iter().enumerate() {
        let (o, l) = attend_row(queries.row(r), keys.view(), values.view(), scale, *range);
        out.row_mut(r).assign(&o);
        lse[r] = l;
    }
    (out, lse)
}
