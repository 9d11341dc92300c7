//! CUDA kernels for both GQLA decode paths, through cudarc with the driver and NVRTC loaded at run
//! time: nothing CUDA is needed to build, and every entry point reports a missing driver, NVRTC or
//! device as an error instead of panicking.
//!
//! - [`compile`]: the embedded `.cu` source and the NVRTC options (recorded in certificates).
//! - [`device`]: probing and opening a GPU, compiling and loading the kernels.
//! - [`runtime`]: what the launches need from where kernels run (memory, launches), for the GPU.
//! - [`emu`]: the host emulator, the same kernel source compiled for the CPU with checked memory
//!   accesses and barriers, so the kernels are certified in CI without a GPU.
//! - [`launch`]: kernel parameters and launches (`absorb_decode` and `gqa_decode` share one
//!   grouped-attention kernel with split-KV and a combine step; `expand_cache`).
//! - [`kernel`]: [`CudaKernel`] and [`EmuKernel`], the conformance harness's kernel trait.
//! - [`bench`](mod@bench): the decode benchmark and the measured ceilings.
//! - [`timing`]: how device work is timed (cold L2, median of event-timed runs) and how long a
//!   wait may last before the kernels are called hung.

pub mod bench;
pub mod compile;
pub mod device;
pub mod emu;
pub mod kernel;
pub mod launch;
pub mod runtime;
pub mod timing;

pub use device::{Gpu, GpuInfo};
pub use emu::Emulator;
pub use kernel::{CudaKernel, DeviceKernel, EmuKernel};
pub use runtime::Runtime;

/// Why the CUDA implementation cannot run (or failed).
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver: libcuda could not be loaded")]
    NoDriver,
    #[error("no NVRTC: libnvrtc.so.13 could not be loaded (put the CUDA 13.0 NVRTC library on LD_LIBRARY_PATH)")]
    NoNvrtc,
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA driver error while {what}: {detail}")]
    Driver { what: String, detail: String },
    #[error("NVRTC could not compile the kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("host emulation: {0}")]
    Emulator(String),
    #[error("not supported by the CUDA kernels: {0}")]
    Unsupported(String),
}

/// Wrap a driver error with what was being done.
pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    let what = what.into();
    move |e| CudaError::Driver {
        what,
        detail: format!("{e:?}"),
    }
}
