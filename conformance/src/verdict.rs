//! Case statuses.

use crate::tolerance::TensorCheck;
use serde::Serialize;

/// The outcome of one case. Passing means PASS or a declared NOT_SUPPORTED.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pass { checks: Vec<TensorCheck> },
    NotSupported { reason: String },
    ShapeOrDtypeMismatch { detail: String },
    NumericalMismatch { checks: Vec<TensorCheck> },
    NonfiniteMismatch { checks: Vec<TensorCheck> },
    OutOfBoundsWrite { tensors: Vec<String> },
    RuntimeError { message: String },
    Timeout { seconds: f64 },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pass { .. } => "PASS",
            Status::NotSupported { .. } => "NOT_SUPPORTED",
            Status::ShapeOrDtypeMismatch { .. } => "SHAPE_OR_DTYPE_MISMATCH",
            Status::NumericalMismatch { .. } => "NUMERICAL_MISMATCH",
            Status::NonfiniteMismatch { .. } => "NONFINITE_MISMATCH",
            Status::OutOfBoundsWrite { .. } => "OUT_OF_BOUNDS_WRITE",
            Status::RuntimeError { .. } => "RUNTIME_ERROR",
            Status::Timeout { .. } => "TIMEOUT",
        }
    }
    /// PASS or NOT_SUPPORTED: allowed by a must-pass list.
    pub fn is_conformant(&self) -> bool {
        matches!(self, Status::Pass { .. } | Status::NotSupported { .. })
    }

    /// The status of a kernel whose outputs were checked: out-of-bounds writes first, then
    /// non-finite placement, then numerics.
    pub fn judge(checks: Vec<TensorCheck>, canaries_broken: Vec<String>) -> Status {
        if !canaries_broken.is_empty() {
            Status::OutOfBoundsWrite { tensors: canaries_broken }
        } else if checks.iter().any(|c| !c.nonfinite_ok()) {
            Status::NonfiniteMismatch { checks }
        } else if checks.iter().any(|c| !c.numerics_ok()) {
            Status::NumericalMismatch { checks }
        } else {
            Status::Pass { checks }
        }
    }
}
