//! The scalar types the reference runs in, and input rounding to bf16/f16.
//!
//! The reference is generic over [`Real`] (f64 for ground truth, f32 for the naive same-precision
//! reference the tolerance policy compares kernels against). Low-precision kernels are modelled by
//! rounding the *inputs* to bf16/f16 and computing in f32, which is what a naive low-precision
//! kernel with f32 accumulation does.

use crate::dtype::DType;
use ndarray::{Array, Array2, ArrayView2, Dimension};
use std::fmt::{Debug, Display};
use std::iter::Sum;

/// A floating-point type the reference computes in.
pub trait Real:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Debug
    + Display
    + Sum
    + Default
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + Send
    + Sync
    + 'static
{
    /// The type's name as used in reports.
    const NAME: &'static str;
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// X Wᵀ for X [n, k] and W [m, k] (see [`crate::linear::matmul_t`]).
    fn matmul_t(x: ArrayView2<Self>, w: ArrayView2<Self>) -> Array2<Self> {
        crate::linear::ndarray_matmul_t(x, w)
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[cfg(feature = "faer")]
    fn matmul_t(x: ArrayView2<Self>, w: ArrayView2<Self>) -> Array2<Self> {
        crate::linear::faer_matmul_t(x, w)
    }
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[cfg(feature = "faer")]
    fn matmul_t(x: ArrayView2<Self>, w: ArrayView2<Self>) -> Array2<Self> {
        crate::linear::faer_matmul_t(x, w)
    }
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

/// Cast an f64 array to `T`, rounding each element to `rounding` first (`DType::F64`: as given).
pub fn cast<T: Real, D: Dimension>(a: &Array<f64, D>, rounding: DType) -> Array<T, D> {
    round_cast(a, rounding)
}

/// `a` with each element rounded by `r`, in precision `U`. Elementwise in parallel: a layer's
/// weights are hundreds of millions of elements, cast for every calibration pass.
pub fn round_cast<T: Real, U: Real, D: Dimension>(a: &Array<T, D>, r: DType) -> Array<U, D> {
    let zip = ndarray::Zip::from(a);
    match r {
        // A branch-free loop the compiler vectorises.
        DType::F64 => zip.par_map_collect(|&x| U::of(x.f64())),
        _ => zip.par_map_collect(|&x| U::of(r.round(x.f64()))),
    }
}

/// Widen an array to f64 (exact for f32).
pub fn widen<T: Real, D: Dimension>(a: &Array<T, D>) -> Array<f64, D> {
    a.mapv(|x| x.f64())
}

/// Relative error in the Frobenius norm: ‖a − b‖ / ‖b‖ (b is the reference).
///
/// Returns `f64::INFINITY` if either side holds a non-finite value, so NaN never passes.
pub fn rel_err<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "rel_err: shapes differ");
    if a.iter().chain(b.iter()).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}
