//! The kernels' CUDA source and how NVRTC compiles it.

use crate::CudaError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use gqla_conformance::case::DType;

/// The kernel source, embedded in the crate: the files of kernels/, assembled by build.rs.
pub const SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/gqla_kernels.cu"));

/// Kernel families; the loaded functions are `<family>_<dtype name>` for every storage dtype.
pub const FAMILIES: [&str; 4] = ["attn", "attn_combine", "expand", "fill"];

/// Tensor-core kernel families, for 16-bit storage only (`<family>_bf16`, `<family>_f16`).
pub const MMA_FAMILIES: [&str; 3] = ["attn_mma", "attn_mma_narrow", "mma_probe"];

/// Hopper wgmma kernel families, for 16-bit storage, compiled for sm_90a only.
pub const WGMMA_FAMILIES: [&str; 3] = ["attn_wgmma", "attn_wgmma_narrow", "wgmma_probe"];

/// The architecture NVRTC compiles for on a device of compute capability `cc`: the
/// architecture-specific `compute_90a` on Hopper (wgmma), else `compute_<major><minor>`.
pub fn arch_for(cc: (i32, i32)) -> String {
    let suffix = if cc == (9, 0) { "a" } else { "" };
    format!("compute_{}{}{suffix}", cc.0, cc.1)
}

/// Whether the kernels compiled for `arch` include the wgmma ones.
pub fn has_wgmma(arch: &str) -> bool {
    arch.ends_with("_90a")
}

/// Every function name the module compiled for `arch` must export.
pub fn function_names(arch: &str) -> Vec<String> {
    let names = |families: &'static [&'static str], dtypes: &'static [DType]| {
        families
            .iter()
            .flat_map(move |f| dtypes.iter().map(move |d| format!("{f}_{}", d.name())))
    };
    let wgmma: &'static [&'static str] = if has_wgmma(arch) { &WGMMA_FAMILIES } else { &[] };
    names(&FAMILIES, &[DType::F32, DType::Bf16, DType::F16])
        .chain(names(&MMA_FAMILIES, &[DType::Bf16, DType::F16]))
        .chain(names(wgmma, &[DType::Bf16, DType::F16]))
        .collect()
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

/// What `ptxas -v` says about one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxasFunction {
    pub name: String,
    pub registers: u32,
    pub stack_bytes: u32,
    /// Spill stores plus spill loads.
    pub spill_bytes: u32,
}

/// Parse `ptxas -v` output: per entry function, registers, stack frame and spills.
pub fn parse_ptxas_report(log: &str) -> Vec<PtxasFunction> {
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let head = &line[..line.find(word)?];
        head.split_whitespace().last()?.parse().ok()
    };
    let mut out: Vec<PtxasFunction> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(PtxasFunction {
                name,
                registers: 0,
                stack_bytes: 0,
                spill_bytes: 0,
            });
        } else if let Some(f) = out.last_mut() {
            if let Some(n) = number_before(line, "bytes stack frame") {
                f.stack_bytes = n;
                f.spill_bytes =
                    number_before(line, "bytes spill stores").unwrap_or(0) + number_before(line, "bytes spill loads").unwrap_or(0);
            }
            if let Some(n) = number_before(line, "registers") {
                f.registers = n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed() {
        let log = "ptxas info    : Compiling entry function 'attn_mma_bf16' for 'sm_90'\n\
                   ptxas info    : Function properties for attn_mma_bf16\n\
                   \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 203 registers, used 1 barriers\n\
                   ptxas info    : Compiling entry function 'fill_f32' for 'sm_90'\n\
                   \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                   ptxas info    : Used 30 registers, used 0 barriers\n";
        let r = parse_ptxas_report(log);
        assert_eq!(
            r,
            vec![
                PtxasFunction {
                    name: "attn_mma_bf16".into(),
                    registers: 203,
                    stack_bytes: 8,
                    spill_bytes: 16
                },
                PtxasFunction {
                    name: "fill_f32".into(),
                    registers: 30,
                    stack_bytes: 0,
                    spill_bytes: 0
                },
            ]
        );
    }
}
