//! The tolerance policy: how a kernel's output is judged against the f64 reference.
//!
//! For each output tensor, with `truth` the f64 reference, `naive` the naive same-precision
//! reference (see [`crate::reference`]) and u the unit roundoff of the case dtype:
//! 1. Non-finite values must sit exactly where the truth has them, with the same kind (NaN, +∞,
//!    −∞). An empty row's LSE is −∞ by definition; NaN never passes unless the truth is NaN.
//! 2. max |kernel − truth| ≤ K_MAX · max |naive − truth| + FLOOR_MAX · u · max |truth|
//! 3. mean |kernel − truth| ≤ K_MEAN · mean |naive − truth| + FLOOR_MEAN · u · mean |truth|
//! 4. 1 − cos(kernel, truth) ≤ K_COS · (1 − cos(naive, truth)) + u²
//!
//! Why these constants: a correct kernel differs from the naive one mainly in summation order
//! (tiling, split-KV, fused exp), which changes the rounding error by a small factor; FlashAttention
//! accepts 2–3× its naive same-precision error, and its Hopper tests bound the mean at 1.5×. We
//! take K_MAX = 3, K_MEAN = 2, K_COS = 10. The floors cover the rounding of the output itself
//! (FlashAttention-3 uses two output ulps), and make an f32 case with a near-exact naive reference
//! still leave room for a different but correct order of operations. No bound looks at the
//! kernel's own output.

use serde::Serialize;

pub const K_MAX: f64 = 3.0;
pub const K_MEAN: f64 = 2.0;
pub const K_COS: f64 = 10.0;
pub const FLOOR_MAX: f64 = 4.0;
pub const FLOOR_MEAN: f64 = 2.0;

/// Error figures of one output tensor, and the bounds they were held to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorCheck {
    pub tensor: String,
    pub max_abs_err: f64,
    pub max_abs_bound: f64,
    pub mean_abs_err: f64,
    pub mean_abs_bound: f64,
    pub one_minus_cos: f64,
    pub one_minus_cos_bound: f64,
    /// max |err| / max |truth|.
    pub max_rel_err: f64,
    /// Positions where kernel and truth disagree on being finite (or on the kind of non-finite).
    pub nonfinite_mismatches: usize,
    /// The first such position (flat index), if any.
    pub first_nonfinite_mismatch: Option<usize>,
}

impl TensorCheck {
    pub fn nonfinite_ok(&self) -> bool {
        self.nonfinite_mismatches == 0
    }
    pub fn numerics_ok(&self) -> bool {
        self.max_abs_err <= self.max_abs_bound && self.mean_abs_err <= self.mean_abs_bound && self.one_minus_cos <= self.one_minus_cos_bound
    }
}

fn kind(x: f64) -> u8 {
    if x.is_nan() {
        1
    } else if x == f64::INFINITY {
        2
    } else if x == f64::NEG_INFINITY {
        3
    } else {
        0
    }
}

/// Figures over the positions where the truth is finite.
fn stats(x: &[f64], truth: &[f64]) -> (f64, f64, f64) {
    let (mut max, mut sum, mut n) = (0.0f64, 0.0, 0usize);
    let (mut dot, mut xx, mut tt) = (0.0, 0.0, 0.0);
    for (a, t) in x.iter().zip(truth) {
        if t.is_finite() && a.is_finite() {
            let e = (a - t).abs();
            max = max.max(e);
            sum += e;
            n += 1;
            dot += a * t;
            xx += a * a;
            tt += t * t;
        }
    }
    let mean = if n > 0 { sum / n as f64 } else { 0.0 };
    let cos = if xx > 0.0 && tt > 0.0 {
        dot / (xx.sqrt() * tt.sqrt())
    } else if xx == tt {
        1.0
    } else {
        0.0
    };
    (max, mean, (1.0 - cos).max(0.0))
}

/// Judge one tensor of a kernel against the truth, with bounds from the naive reference.
pub fn check(tensor: &str, kernel: &[f64], truth: &[f64], naive: &[f64], u: f64) -> TensorCheck {
    assert_eq!(kernel.len(), truth.len(), "check: kernel and truth lengths");
    let mismatches: Vec<usize> = kernel
        .iter()
        .zip(truth)
        .enumerate()
        .filter(|(_, (a, t))| kind(**a) != kind(**t))
        .map(|(i, _)| i)
        .collect();
    let (k_max, k_mean, k_cos) = stats(kernel, truth);
    let (n_max, n_mean, n_cos) = stats(naive, truth);
    let finite: Vec<f64> = truth.iter().copied().filter(|t| t.is_finite()).map(f64::abs).collect();
    let t_max = finite.iter().copied().fold(0.0, f64::max);
    let t_mean = if finite.is_empty() {
        0.0
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    };
    TensorCheck {
        tensor: tensor.to_string(),
        max_abs_err: k_max,
        max_abs_bound: K_MAX * n_max + FLOOR_MAX * u * t_max,
        mean_abs_err: k_mean,
        mean_abs_bound: K_MEAN * n_mean + FLOOR_MEAN * u * t_mean,
        one_minus_cos: k_cos,
        one_minus_cos_bound: K_COS * n_cos + u * u,
        max_rel_err: if t_max > 0.0 { k_max / t_max } else { k_max },
        nonfinite_mismatches: mismatches.len(),
        first_nonfinite_mismatch: mismatches.first().copied(),
    }
}
