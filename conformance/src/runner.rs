//! Running a kernel over cases and judging each one.

use crate::case::{Case, Dtype};
use crate::inputs::CaseInputs;
use crate::kernel::{Kernel, KernelError, Outputs};
use crate::reference::{compute, Precision, Tensors};
use crate::tolerance::check;
use crate::verdict::Status;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The name of the threads kernels run on (a panic hook can recognise them).
pub const KERNEL_THREAD: &str = "gqla-kernel";

/// One case's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseResult {
    pub id: String,
    #[serde(flatten)]
    pub status: Status,
    pub seconds: f64,
}

/// A case's inputs and both references, computed once and shared by every kernel run on it.
pub struct Prepared {
    pub inputs: Arc<CaseInputs>,
    truth: Tensors,
    naive: Tensors,
}

impl Prepared {
    pub fn new(case: &Case) -> Self {
        let inputs = CaseInputs::generate(case);
        let truth = compute(&inputs, Precision::Exact);
        let naive = compute(&inputs, Precision::Naive(case.dtype));
        Self {
            inputs: Arc::new(inputs),
            truth,
            naive,
        }
    }

    /// Judge a kernel's outputs against the references.
    pub fn judge(&self, outputs: &Outputs) -> Status {
        let case = &self.inputs.case;
        let expected = Outputs::for_case(case);
        if outputs.tensors.len() != expected.tensors.len() {
            return Status::ShapeOrDtypeMismatch {
                detail: format!("{} output tensors, expected {}", outputs.tensors.len(), expected.tensors.len()),
            };
        }
        for (t, e) in outputs.tensors.iter().zip(&expected.tensors) {
            if t.name != e.name || t.shape != e.shape {
                return Status::ShapeOrDtypeMismatch {
                    detail: format!("output `{}` has shape {:?}, expected `{}` {:?}", t.name, t.shape, e.name, e.shape),
                };
            }
        }
        let broken: Vec<String> = outputs
            .tensors
            .iter()
            .filter(|t| !t.canaries_intact())
            .map(|t| t.name.to_string())
            .collect();
        let checks = outputs
            .tensors
            .iter()
            .map(|t| {
                let (_, want) = self
                    .truth
                    .iter()
                    .find(|(n, _)| *n == t.name)
                    .expect("reference covers every output");
                let (_, base) = self
                    .naive
                    .iter()
                    .find(|(n, _)| *n == t.name)
                    .expect("reference covers every output");
                let got: Vec<f64> = t.region().iter().map(|v| *v as f64).collect();
                // LSE is an f32 output whatever the storage dtype.
                let u = if t.name == "lse" {
                    Dtype::F32.unit_roundoff()
                } else {
                    case.dtype.unit_roundoff()
                };
                check(t.name, &got, want, base, u)
            })
            .collect();
        Status::judge(checks, broken)
    }

    /// Run `kernel` on this case with a time limit, catching panics.
    pub fn run(&self, kernel: &Arc<dyn Kernel>, timeout: Duration) -> CaseResult {
        let start = Instant::now();
        let (tx, rx) = mpsc::channel();
        let (k, inp) = (kernel.clone(), self.inputs.clone());
        let spawned = std::thread::Builder::new().name(KERNEL_THREAD.into()).spawn(move || {
            let mut out = Outputs::for_case(&inp.case);
            let r = catch_unwind(AssertUnwindSafe(|| k.run(&inp, &mut out)));
            let _ = tx.send((r, out));
        });
        if let Err(e) = spawned {
            return CaseResult {
                id: self.inputs.case.to_string(),
                status: Status::RuntimeError {
                    message: format!("cannot start the kernel thread: {e}"),
                },
                seconds: 0.0,
            };
        }
        let status = match rx.recv_timeout(timeout) {
            Err(_) => Status::Timeout {
                seconds: timeout.as_secs_f64(),
            },
            Ok((Err(panic), _)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                Status::RuntimeError {
                    message: format!("kernel panicked: {msg}"),
                }
            }
            Ok((Ok(Err(KernelError::NotSupported(reason))), _)) => Status::NotSupported { reason },
            Ok((Ok(Err(KernelError::Runtime(message))), _)) => Status::RuntimeError { message },
            Ok((Ok(Ok(())), out)) => self.judge(&out),
        };
        CaseResult {
            id: self.inputs.case.to_string(),
            status,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Run `kernel` on `case` with a time limit, catching panics.
pub fn run_case(kernel: &Arc<dyn Kernel>, case: &Case, timeout: Duration) -> CaseResult {
    Prepared::new(case).run(kernel, timeout)
}
