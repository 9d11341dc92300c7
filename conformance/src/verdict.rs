//! Case statuses.

use crate::tolerance::TensorCheck;
use serde::Serialize;

/// The outcome of one case. Only PASS passes; NOT_SUPPORTED is a case outside the kernel's
/// declared profile, which was never run and certifies nothing.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pass {
        checks: Vec<TensorCheck>,
    },
    NotSupported {
        reason: String,
    },
    ShapeOrDtypeMismatch {
        detail: String,
    },
    NumericalMismatch {
        checks: Vec<TensorCheck>,
    },
    NonfiniteMismatch {
        checks: Vec<TensorCheck>,
    },
    OutOfBoundsWrite {
        tensors: Vec<String>,
    },
    /// The kernel wrote to its inputs (their digest changed across the call).
    InputMutated {
        detail: String,
    },
    /// A `poison=garbage` twin's outputs differ from its NaN-poison case's: the kernel reads
    /// memory a correct kernel never reads (and hid it where that memory was NaN).
    PoisonDependent {
        detail: String,
    },
    RuntimeError {
        message: String,
    },
    Timeout {
        seconds: f64,
    },
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
            Status::InputMutated { .. } => "INPUT_MUTATED",
            Status::PoisonDependent { .. } => "POISON_DEPENDENT",
            Status::RuntimeError { .. } => "RUNTIME_ERROR",
            Status::Timeout { .. } => "TIMEOUT",
        }
    }
    pub fn passed(&self) -> bool {
        matches!(self, Status::Pass { .. })
    }
    /// Whether the case was run (anything but NOT_SUPPORTED by declaration).
    pub fn selected(&self) -> bool {
        !matches!(self, Status::NotSupported { .. })
    }
    /// A failure: selected by the profile and not PASS.
    pub fn failed(&self) -> bool {
        self.selected() && !self.passed()
    }

    /// The status of a kernel whose outputs were checked: out-of-bounds writes first, then
    /// special-value placement, then numerics.
    pub fn judge(checks: Vec<TensorCheck>, canaries_broken: Vec<String>) -> Status {
        if !canaries_broken.is_empty() {
            Status::OutOfBoundsWrite { tensors: canaries_broken }
        } else if checks.iter().any(|c| !c.specials_ok()) {
            Status::NonfiniteMismatch { checks }
        } else if checks.iter().any(|c| !c.numerics_ok()) {
            Status::NumericalMismatch { checks }
        } else {
            Status::Pass { checks }
        }
    }

    /// Why the case did not pass, in one line (empty for PASS).
    pub fn cause(&self) -> String {
        match self {
            Status::Pass { .. } => String::new(),
            Status::NotSupported { reason } => reason.clone(),
            Status::ShapeOrDtypeMismatch { detail } | Status::InputMutated { detail } | Status::PoisonDependent { detail } => {
                detail.clone()
            }
            Status::NumericalMismatch { checks } => checks
                .iter()
                .filter(|c| !c.numerics_ok())
                .map(|c| format!("{}: {}", c.tensor, c.failures().join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
            Status::NonfiniteMismatch { checks } => checks
                .iter()
                .filter(|c| !c.specials_ok())
                .map(|c| match &c.first_special_mismatch {
                    Some(m) => format!(
                        "{}: {} position(s) disagree with the declared special values, first at flat index {}: got {:e}, expected {}",
                        c.tensor, c.special_mismatches, m.index, m.got, m.want
                    ),
                    None => format!("{}: {} special-value mismatches", c.tensor, c.special_mismatches),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Status::OutOfBoundsWrite { tensors } => format!("wrote outside output tensor(s) {}", tensors.join(", ")),
            Status::RuntimeError { message } => message.clone(),
            Status::Timeout { seconds } => format!("no answer within {seconds} s"),
        }
    }
}
