//! CUDA kernels for both GQLA decode paths, through cudarc with the driver and NVRTC loaded at run
//! time: nothing CUDA is needed to build, and every entry point reports a missing driver, NVRTC or
//! device as an error instead of panicking.
//!
//! - [`compile`]: the embedded `.cu` source and the NVRTC options (recorded in certificates).
//! - [`ptx_cache`]: NVRTC's output kept on disk, where no other user can plant it.
//! - [`device`]: probing and opening a GPU, compiling and loading the kernels.
//! - [`runtime`]: what the launches need from where kernels run (memory, launches), for the GPU.
//! - [`emu`]: the host emulator, the same kernel source compiled for the CPU with checked memory
//!   accesses and barriers, so the kernels are certified in CI without a GPU.
//! - [`launch`]: kernel parameters and launches (`absorb_decode` and `gqa_decode` share one
//!   grouped-attention kernel with split-KV and a combine step; `expand_cache`).
//! - [`kernel`]: [`CudaKernel`] and [`EmuKernel`], the conformance harness's kernel trait.
//! - [`bench`](mod@bench): the decode benchmark and the measured ceilings.
//! - [`plan`]: which decode path a GPU should run (a roofline model over a datasheet table), and
//!   its validation against a benchmark's measured run. It needs no GPU.
//! - [`timing`]: how device work is timed (cold L2, median of event-timed runs) and how long a
//!   wait may last before the kernels are called hung.

pub mod bench;
pub mod compile;
pub mod device;
pub mod emu;
pub mod kernel;
pub mod launch;
pub mod plan;
pub mod ptx_cache;
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
    #[error("CUDA driver error while {what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("cuBLAS error while {what}: {source}")]
    Blas {
        what: String,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },
    #[error("timing {what}: {why}")]
    Timing { what: String, why: String },
    /// Device work outlasted the wait limit: a kernel is taken to be hung. The [`Gpu`] it ran on
    /// is not torn down when dropped (its driver calls could block behind the kernel); the
    /// process should write what it can and exit, with [`device::HUNG_EXIT_CODE`].
    #[error("the GPU did not finish {what} within {seconds:.0} s (GQLA_SYNC_TIMEOUT_S): a kernel is hung")]
    Hung { what: String, seconds: f64 },
    #[error("NVRTC could not compile the kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("host emulation: {0}")]
    Emulator(String),
    #[error("not supported by the CUDA kernels: {0}")]
    Unsupported(String),
    /// The harness gave no buffer for an output the kernel writes.
    #[error(transparent)]
    MissingOutput(#[from] gqla_conformance::kernel::MissingOutput),
}

/// Wrap a driver error with what was being done.
pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    let what = what.into();
    move |source| CudaError::Driver { what, source }
}
