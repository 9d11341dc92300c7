//! `gqla probe`: the tensor-core layouts the attention kernels assume, checked on their own.
//!
//! One m16n8k16 product through `mma_probe_*` (four ways: register fragments and three ldmatrix
//! forms) and the wgmma descriptor products through `wgmma_probe_*` (sm_90a), each against the f64
//! product of the same rounded operands. The first GPU check to run: a wrong fragment layout shows
//! here as a named element, where the certificate would only show wrong attention outputs.

use super::CliError;
use gqla_conformance::case::DType;
use gqla_cuda::launch::{self, Variant};
use gqla_cuda::{Emulator, Gpu, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Run on the host emulator instead of GPU 0 (the same kernel source, checked accesses).
    #[arg(long)]
    emulator: bool,
}

/// Seed of the probes' operands.
const SEED: u64 = 7;

pub fn run(a: Args) -> Result<(), CliError> {
    if a.emulator {
        probe(&Emulator::default())
    } else {
        let gpu = Gpu::open(0).map_err(CliError::cuda("the probes need a GPU (or --emulator)"))?;
        probe(&gpu)
    }
}

/// Run every probe `rt` can run, print one line each, and fail if any product is wrong.
fn probe<R: Runtime>(rt: &R) -> Result<(), CliError> {
    println!("{}", rt.description());
    let mut failed = Vec::new();
    let mut report = |name: String, bad: Vec<String>| {
        if bad.is_empty() {
            println!("{name}: pass");
        } else {
            println!("{name}: FAIL, {} wrong elements: {}", bad.len(), bad[..bad.len().min(4)].join("; "));
            failed.push(name);
        }
    };
    for dtype in [DType::Bf16, DType::F16] {
        match Variant::Mma.missing(rt) {
            Some(need) => println!("mma_probe_{dtype}: not run: needs {need}"),
            None => {
                let (got, want) = launch::mma_probe(rt, dtype, SEED).map_err(CliError::cuda(format!("mma_probe_{dtype}")))?;
                report(format!("mma_probe_{dtype}"), launch::mma_probe_mismatches(&got, &want));
            }
        }
        match Variant::Wgmma.missing(rt) {
            Some(need) => println!("wgmma_probe_{dtype}: not run: needs {need}"),
            None => {
                let (got, want) = launch::wgmma_probe(rt, dtype, SEED).map_err(CliError::cuda(format!("wgmma_probe_{dtype}")))?;
                report(
                    format!("wgmma_probe_{dtype}"),
                    launch::probe_mismatches(&got, &want, &launch::WGMMA_PROBE_WAYS),
                );
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("wrong tensor-core products: {}", failed.join(", "))))
    }
}
