//! Linear maps and RMSNorm with HF semantics.

use crate::dtype::DType;
use crate::real::{round_cast, Real};
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// X Wᵀ for X [n, k] and W [m, k]: returns [n, m]. matrixmultiply's blocked GEMM through
/// ndarray; with the `faer` feature (on in `gqla-model`), faer's, about 1.3× faster on two cores.
pub fn matmul_t<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>) -> Array2<T> {
    assert_eq!(x.ncols(), w.ncols(), "matmul_t: inner dims");
    T::matmul_t(x, w)
}

/// X Wᵀ with ndarray's GEMM (the default [`Real::matmul_t`]).
pub fn ndarray_matmul_t<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>) -> Array2<T> {
    let mut y = Array2::zeros((x.nrows(), w.nrows()));
    ndarray::linalg::general_mat_mul(T::one(), &x, &w.t(), T::zero(), &mut y);
    y
}

/// X Wᵀ with faer's GEMM, parallel through rayon.
#[cfg(feature = "faer")]
pub fn faer_matmul_t<T>(x: ArrayView2<T>, w: ArrayView2<T>) -> Array2<T>
where
    T: Real + faer::traits::ComplexField,
{
    let (n, k, m) = (x.nrows(), x.ncols(), w.nrows());
    let (x, w) = (x.as_standard_layout(), w.as_standard_layout());
    let mut y = Array2::zeros((n, m));
    if n > 0 && k > 0 && m > 0 {
        let xm = faer::MatRef::from_row_major_slice(x.as_slice().expect("standard layout"), n, k);
        let wt = faer::MatRef::from_column_major_slice(w.as_slice().expect("standard layout"), k, m);
        let ym = faer::MatMut::from_row_major_slice_mut(y.as_slice_mut().expect("fresh"), n, m);
        faer::linalg::matmul::matmul(ym, faer::Accum::Replace, xm, wt, T::one(), faer::Par::rayon(0));
    }
    y
}

/// y = W x + b, with W stored [out, in] as in HF checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<T> {
    pub weight: Array2<T>,
    pub bias: Option<Array1<T>>,
}

impl<T: Real> Linear<T> {
    pub fn new(weight: Array2<T>, bias: Option<Array1<T>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.len(), weight.nrows(), "Linear: bias length must equal output rows");
        }
        Self { weight, bias }
    }
    pub fn out_dim(&self) -> usize {
        self.weight.nrows()
    }
    pub fn in_dim(&self) -> usize {
        self.weight.ncols()
    }
    /// Y = X Wᵀ + b for rows X [n, in].
    pub fn forward(&self, x: ArrayView2<T>) -> Array2<T> {
        self.forward_rows(x, 0..self.out_dim())
    }
    /// Output columns `rows` of [`Linear::forward`] (Y[:, rows] = X W[rows]ᵀ + b[rows]), with no
    /// copy of the weight.
    pub fn forward_rows(&self, x: ArrayView2<T>, rows: std::ops::Range<usize>) -> Array2<T> {
        assert_eq!(x.ncols(), self.in_dim(), "Linear::forward: input width");
        let mut y = matmul_t(x, self.weight.slice(ndarray::s![rows.clone(), ..]));
        if let Some(b) = &self.bias {
            y += &b.slice(ndarray::s![rows]);
        }
        y
    }
    /// The map restricted to output rows `rows` (a contiguous slice: a TP column shard).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        Self {
            weight: self.weight.slice(ndarray::s![rows.clone(), ..]).to_owned(),
            bias: self.bias.as_ref().map(|b| b.slice(ndarray::s![rows]).to_owned()),
        }
    }
    pub fn cast<U: Real>(&self) -> Linear<U> {
        self.rounded(DType::F64)
    }
    /// The map in precision `U`, each parameter first rounded by `r`.
    pub fn rounded<U: Real>(&self, r: DType) -> Linear<U> {
        Linear {
            weight: round_cast(&self.weight, r),
            bias: self.bias.as_ref().map(|b| round_cast(b, r)),
        }
    }
}

/// RMSNorm: y = w ⊙ x / sqrt(mean(x²) + ε), computed in the working precision.
///
/// HF upcasts to f32 inside RMSNorm; in exact arithmetic the two agree, and the fixtures are
/// generated with the norm evaluated in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNorm<T> {
    pub weight: Array1<T>,
    pub eps: f64,
}

impl<T: Real> RmsNorm<T> {
    pub fn forward(&self, x: ArrayView2<T>) -> Array2<T> {
        let n = T::of(x.ncols() as f64);
        let mut y = x.to_owned();
        for mut row in y.axis_iter_mut(Axis(0)) {
            let ms = row.iter().map(|&v| v * v).sum::<T>() / n;
            let inv = T::one() / (ms + T::of(self.eps)).sqrt();
            row.zip_mut_with(&self.weight, |v, &w| *v = w * (*v * inv));
        }
        y
    }
    pub fn cast<U: Real>(&self) -> RmsNorm<U> {
        self.rounded(DType::F64)
    }
    /// The norm in precision `U`, its weight first rounded by `r`.
    pub fn rounded<U: Real>(&self, r: DType) -> RmsNorm<U> {
        RmsNorm {
            weight: self.weight.map(|x| U::of(r.round(x.f64()))),
            eps: self.eps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::hidden_states;

    /// Each GEMM equals the textbook sum, for strided (transposed) inputs too.
    #[test]
    fn matmul_t_is_the_sum_of_products() {
        let x = hidden_states(37, 53, 1);
        let w = hidden_states(29, 53, 2);
        let naive = Array2::from_shape_fn((37, 29), |(i, j)| (0..53).map(|l| x[[i, l]] * w[[j, l]]).sum::<f64>());
        let wt = w.t().to_owned();
        #[cfg_attr(not(feature = "faer"), allow(unused_mut))]
        let mut got = vec![
            ("default", matmul_t(x.view(), w.view())),
            ("ndarray", ndarray_matmul_t(x.view(), wt.t())),
        ];
        #[cfg(feature = "faer")]
        got.push(("faer", faer_matmul_t(x.view(), wt.t())));
        for (name, y) in got {
            let e = crate::real::rel_err(&y, &naive);
            assert!(e < 1e-14, "{name}: {e:e}");
        }
        assert_eq!(matmul_t(x.slice(ndarray::s![..0, ..]), w.view()).dim(), (0, 29));
    }
}
