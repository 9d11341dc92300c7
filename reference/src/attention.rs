//! Scaled dot-product attention over explicit key ranges, with the log-sum-exp.
//!
//! For a query row q and visible keys t ∈ [start, end):
//! $$ s_t = \text{scale}\cdot q\cdot k_t,\quad o = \sum_t \frac{e^{s_t - m}}{\sum_u e^{s_u - m}} v_t,
//! \quad \mathrm{LSE} = m + \ln\sum_t e^{s_t - m},\; m = \max_t s_t. $$
//! An empty row (no visible key) returns o = 0 and LSE = −∞, FlashAttention's convention.

use crate::real::Real;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

/// Below this many multiply-adds a call stays on one thread (rayon's overhead would dominate).
const PARALLEL_WORK: usize = 1 << 16;

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

/// Many query rows, each with its own range: returns (O `[n, d_v]`, LSE `[n]`). The same
/// equations as [`attend_row`], computed a block of rows at a time with matrix products:
/// S = scale·Q Kᵀ over the keys the block sees, P = exp(S − m) within each row's range (0
/// outside), O = P V / Σ P. Results equal [`attend_row`]'s to rounding.
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
    assert!(ranges.iter().all(|r| r.end <= keys.nrows()), "attend: a range ends past the keys");
    let n = queries.nrows();
    let blocks: Vec<usize> = (0..n).step_by(ROW_BLOCK).collect();
    let block = |&b: &usize| {
        let rows = b..(b + ROW_BLOCK).min(n);
        attend_block(queries.slice(s![rows.clone(), ..]), keys, values, scale, &ranges[rows])
    };
    // Blocks are independent, so they run in parallel; a block's arithmetic is the same on any
    // number of threads, and so is the result, bit for bit.
    let work: usize = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum::<usize>() * (keys.ncols() + values.ncols());
    let parts: Vec<(Array2<T>, Array1<T>)> = if work < PARALLEL_WORK {
        blocks.iter().map(block).collect()
    } else {
        blocks.par_iter().map(block).collect()
    };
    let mut out = Array2::zeros((n, values.ncols()));
    let mut lse = Array1::zeros(n);
    for (&b, (o, l)) in blocks.iter().zip(parts) {
        out.slice_mut(s![b..b + o.nrows(), ..]).assign(&o);
        lse.slice_mut(s![b..b + l.len()]).assign(&l);
    }
    (out, lse)
}

/// Query rows per block in [`attend`]: the block's scores are [rows, keys it sees].
const ROW_BLOCK: usize = 64;

/// [`attend`] for one block of rows.
fn attend_block<T: Real>(
    q: ArrayView2<T>,
    keys: ArrayView2<T>,
    values: ArrayView2<T>,
    scale: T,
    ranges: &[KeyRange],
) -> (Array2<T>, Array1<T>) {
    let (b, d_v) = (q.nrows(), values.ncols());
    let mut out = Array2::zeros((b, d_v));
    let mut lse = Array1::from_elem(b, T::neg_infinity());
    let seen = || ranges.iter().filter(|r| r.start < r.end);
    let (Some(lo), Some(hi)) = (seen().map(|r| r.start).min(), seen().map(|r| r.end).max()) else {
        return (out, lse); // no row sees a key: o = 0, LSE = −∞
    };
    let seen_values = values.slice(s![lo..hi, ..]);
    if seen_values.iter().any(|v| !v.is_finite()) {
        // 0·NaN is NaN: a product over the block would spread a value to rows that never see it.
        for (r, range) in ranges.iter().enumerate() {
            let (o, l) = attend_row(q.row(r), keys, values, scale, *range);
            out.row_mut(r).assign(&o);
            lse[r] = l;
        }
        return (out, lse);
    }
    let scores = q.dot(&keys.slice(s![lo..hi, ..]).t());
    let mut weights = Array2::<T>::zeros(scores.raw_dim());
    let mut denom = vec![T::zero(); b];
    for (r, range) in ranges.iter().enumerate().filter(|(_, r)| r.start < r.end) {
        let (row, span) = (scores.row(r), range.start - lo..range.end - lo);
        let m = span.clone().map(|t| row[t] * scale).fold(T::neg_infinity(), T::max);
        let mut w = weights.row_mut(r);
        for t in span {
            w[t] = (row[t] * scale - m).exp();
            denom[r] += w[t];
        }
        lse[r] = m + denom[r].ln();
    }
    out.assign(&weights.dot(&seen_values));
    for (mut o, &z) in out.rows_mut().into_iter().zip(&denom) {
        if z != T::zero() {
            o.mapv_inplace(|v| v / z);
        }
    }
    (out, lse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Sampler;

    fn check_against_rows(n: usize, window: Option<usize>, seed: u64) {
        let mut rng = Sampler::new(seed);
        let (d, d_v) = (96, 80);
        let (q, k, v) = (rng.normal((n, d), 1.0), rng.normal((n, d), 1.0), rng.normal((n, d_v), 1.0));
        let mut ranges = causal_ranges(n, n, window);
        ranges[n / 2] = KeyRange { start: 3, end: 3 }; // a row that sees no key
        let (out, lse) = attend(q.view(), k.view(), v.view(), 0.1, &ranges);
        for (r, range) in ranges.iter().enumerate() {
            let (o, l) = attend_row(q.row(r), k.view(), v.view(), 0.1, *range);
            let e = (&out.row(r) - &o).mapv(f64::abs).fold(0.0, |a: f64, &b| a.max(b));
            assert!(e <= 1e-13 * o.mapv(f64::abs).fold(1.0, |a: f64, &b| a.max(b)), "row {r}: {e:e}");
            assert!(l == lse[r] || (l - lse[r]).abs() <= 1e-13 * l.abs(), "row {r}: {l} vs {}", lse[r]);
        }
        assert_eq!((lse[n / 2], out.row(n / 2).iter().all(|&x| x == 0.0)), (f64::NEG_INFINITY, true));
        assert!(out.iter().all(|x| x.is_finite()) && out.iter().any(|&x| x != 0.0));
    }

    /// A non-finite value reaches exactly the rows that see it, as in the one-row definition.
    #[test]
    fn a_nan_value_reaches_only_the_rows_that_see_it() {
        let mut rng = Sampler::new(3);
        let n = 100;
        let (q, k, mut v) = (rng.normal((n, 8), 1.0), rng.normal((n, 8), 1.0), rng.normal((n, 4), 1.0));
        v[[40, 2]] = f64::NAN;
        let mut ranges = causal_ranges(n, n, None);
        ranges[10] = KeyRange { start: 5, end: 5 };
        let (out, _) = attend(q.view(), k.view(), v.view(), 0.3, &ranges);
        for (r, range) in ranges.iter().enumerate() {
            let sees = range.start <= 40 && 40 < range.end;
            assert_eq!(out.row(r).iter().any(|x| x.is_nan()), sees, "row {r}");
        }
        assert!(out.row(10).iter().all(|&x| x == 0.0));
    }

    /// Blocks of rows by matrix products equal the one-row definition to rounding: causal, with
    /// a sliding window (ranges that start late), a row with no keys, and blocks that do not
    /// divide the rows.
    #[test]
    fn blocks_equal_single_rows() {
        check_against_rows(300, Some(200), 7);
        check_against_rows(300, None, 8);
        check_against_rows(5, None, 9);
    }

    /// Large enough to take the parallel branch: the result is the same on one thread and on
    /// many, bit for bit.
    #[test]
    fn parallel_blocks_are_bit_stable() {
        let mut rng = Sampler::new(11);
        let (n, d, d_v) = (300, 96, 80);
        let (q, k, v) = (rng.normal((n, d), 1.0), rng.normal((n, d), 1.0), rng.normal((n, d_v), 1.0));
        let ranges = causal_ranges(n, n, None);
        let work: usize = ranges.iter().map(|r| r.end - r.start).sum::<usize>() * (d + d_v);
        assert!(work >= PARALLEL_WORK, "the test must exercise the parallel branch");
        let many = attend(q.view(), k.view(), v.view(), 0.1, &ranges);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| attend(q.view(), k.view(), v.view(), 0.1, &ranges));
        assert_eq!(many.0.mapv(f64::to_bits), one.0.mapv(f64::to_bits));
        assert_eq!(many.1.mapv(f64::to_bits), one.1.mapv(f64::to_bits));
    }
}
