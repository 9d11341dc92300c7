//! The reference computed in f32 on the case's inputs.

use crate::case::DType;
use crate::definition::TensorName;
use crate::inputs::CaseInputs;
use crate::kernel::{Kernel, KernelError, KernelIdentity, Outputs};
use crate::profile::Profile;
use crate::reference::{compute, Precision};

pub struct ReferenceF32;

impl Kernel for ReferenceF32 {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: "reference-f32".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "the suite's reference, computed in f32".into(),
        }
    }
    fn profile(&self) -> Profile {
        Profile::everything()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        for (name, values) in compute(inputs, Precision::Naive(DType::F32)) {
            let out = outputs.get_mut(name)?;
            // Outputs are stored in the case dtype, except the LSE, which is f32 by definition.
            let dtype = if name == TensorName::Lse { DType::F32 } else { inputs.case.dtype() };
            for (dst, v) in out.region_mut().iter_mut().zip(values) {
                *dst = dtype.round_f32(v as f32);
            }
        }
        Ok(())
    }
}
