//! Symmetric eigendecomposition with eigenvalues in descending order (faer).

use gqla_reference::error::{Error, Result};
use ndarray::{Array1, Array2};

/// Eigenvalues (descending) and eigenvectors (columns, same order) of a symmetric matrix.
pub fn symmetric_eigen_desc(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    let n = a.nrows();
    assert_eq!(n, a.ncols(), "symmetric_eigen_desc: square matrix");
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a[[i, j]] + a[[j, i]]));
    let evd = m.self_adjoint_eigen(faer::Side::Lower).map_err(|e| Error::Decomposition {
        what: "the eigendecomposition",
        why: format!("{e:?}"),
    })?;
    let (s, u) = (evd.S().column_vector(), evd.U());
    // faer returns ascending eigenvalues.
    let values = Array1::from_shape_fn(n, |k| s[n - 1 - k]);
    let vectors = Array2::from_shape_fn((n, n), |(i, k)| u[(i, n - 1 - k)]);
    Ok((values, vectors))
}
