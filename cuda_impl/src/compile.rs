//! The kernels' CUDA source and how NVRTC compiles it.

use crate::CudaError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use gqla_conformance::case::DType;

/// The kernel source, embedded in the crate: the files of kernels/, assembled by build.rs.
pub const SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/gqla_kernels.cu"));

/// A kernel family of the module: its functions are `<family>_<dtype name>`, one per storage
/// dtype it is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// SIMT split-KV attention (every storage dtype).
    Attn,
    /// The split-KV merge.
    AttnCombine,
    /// cache.expand: the latent through W^UK, W^UV.
    Expand,
    /// Fill a buffer (canaries, poison).
    Fill,
    /// mma.sync tensor-core attention, and its narrow-value form.
    AttnMma,
    AttnMmaNarrow,
    /// One mma.sync product against the f64 product (the layout probe).
    MmaProbe,
    /// Hopper wgmma attention, and its narrow-value form (sm_90a only).
    AttnWgmma,
    AttnWgmmaNarrow,
    /// One wgmma product (the layout probe, sm_90a only).
    WgmmaProbe,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::Attn,
        Family::AttnCombine,
        Family::Expand,
        Family::Fill,
        Family::AttnMma,
        Family::AttnMmaNarrow,
        Family::MmaProbe,
        Family::AttnWgmma,
        Family::AttnWgmmaNarrow,
        Family::WgmmaProbe,
    ];

    /// The name the kernel source gives the family.
    pub fn name(self) -> &'static str {
        match self {
            Family::Attn => "attn",
            Family::AttnCombine => "attn_combine",
            Family::Expand => "expand",
            Family::Fill => "fill",
            Family::AttnMma => "attn_mma",
            Family::AttnMmaNarrow => "attn_mma_narrow",
            Family::MmaProbe => "mma_probe",
            Family::AttnWgmma => "attn_wgmma",
            Family::AttnWgmmaNarrow => "attn_wgmma_narrow",
            Family::WgmmaProbe => "wgmma_probe",
        }
    }

    /// The storage dtypes it is compiled for: tensor-core families take 16-bit storage only.
    pub fn dtypes(self) -> &'static [DType] {
        match self {
            Family::Attn | Family::AttnCombine | Family::Expand | Family::Fill => &[DType::F32, DType::Bf16, DType::F16],
            _ => &[DType::Bf16, DType::F16],
        }
    }

    /// Whether it is compiled only for sm_90a.
    pub fn needs_wgmma(self) -> bool {
        matches!(self, Family::AttnWgmma | Family::AttnWgmmaNarrow | Family::WgmmaProbe)
    }
}

/// One function of the module: a family instantiated for a storage dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub family: Family,
    pub dtype: DType,
}

impl Entry {
    pub fn new(family: Family, dtype: DType) -> Self {
        Entry { family, dtype }
    }
}

/// The function's name in the module: `<family>_<dtype>`, e.g. `attn_mma_bf16`.
impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.family.name(), self.dtype.name())
    }
}

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

/// Every function the module compiled for `arch` must export.
pub fn entries(arch: &str) -> Vec<Entry> {
    Family::ALL
        .into_iter()
        .filter(|f| has_wgmma(arch) || !f.needs_wgmma())
        .flat_map(|f| f.dtypes().iter().map(move |&d| Entry::new(f, d)))
        .collect()
}

/// The names of [`entries`].
pub fn function_names(arch: &str) -> Vec<String> {
    entries(arch).iter().map(Entry::to_string).collect()
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
