//! The kernels' CUDA source and how NVRTC compiles it.

use crate::CudaError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

/// The kernel source, embedded in the crate.
pub const SOURCE: &str = include_str!("../kernels/decode.cu");

/// Storage dtypes every kernel is instantiated for (the suffix of its name).
pub const DTYPE_SUFFIXES: [&str; 3] = ["f32", "bf16", "f16"];

/// Kernel families; the loaded functions are `<family>_<suffix>`.
pub const FAMILIES: [&str; 4] = ["attn", "attn_combine", "expand", "fill"];

/// Tensor-core kernel families, for 16-bit storage only (`<family>_bf16`, `<family>_f16`).
pub const MMA_FAMILIES: [&str; 2] = ["attn_mma", "mma_probe"];

/// Every function name the module must export.
pub fn function_names() -> Vec<String> {
    let all = FAMILIES.iter().flat_map(|f| DTYPE_SUFFIXES.iter().map(move |s| format!("{f}_{s}")));
    let mma = MMA_FAMILIES.iter().flat_map(|f| ["bf16", "f16"].map(|s| format!("{f}_{s}")));
    all.chain(mma).collect()
}

/// NVRTC options for a virtual architecture such as `compute_90`: IEEE division and square root,
/// no flush-to-zero, FMA contraction allowed (it only makes products more accurate).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--fmad=true".into(),
        "--extra-device-vectorization".into(),
    ]
}

/// Whether the NVRTC library can be loaded (without panicking when it cannot).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. "13.0".
pub fn nvrtc_version() -> Result<String, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable; the call writes two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::NoNvrtc);
    }
    Ok(format!("{major}.{minor}"))
}

/// Compile [`SOURCE`] to PTX for `arch` (e.g. `compute_90`). Needs NVRTC, not a GPU.
pub fn compile(arch: &str) -> Result<Ptx, CudaError> {
    compile_source(SOURCE, arch)
}

/// Compile CUDA source `src` to PTX for `arch` with [`options`].
pub fn compile_source(src: &str, arch: &str) -> Result<Ptx, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions {
        options: options(arch),
        name: Some("gqla_decode.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile {
        arch: arch.into(),
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })
}
