//! What `--kernel` names, parsed once into a [`KernelSpec`]: the built-in kernels, the CUDA
//! kernels (on a GPU or on the host emulator, one attention kernel forced or the default choice
//! per dtype), or a vector pack's outputs.

use crate::kernels::synthetic::Target;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the CUDA kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaBackend {
    /// GPU 0.
    Device,
    /// The host emulator (checked memory accesses and barriers).
    Emulator,
}

/// One attention kernel of the CUDA family, forced for every case it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaVariant {
    /// SIMT FMAs, every storage dtype.
    Simt,
    /// mma.sync tensor cores, 16-bit storage.
    Mma,
    /// Hopper wgmma, 16-bit storage, sm_90a only.
    Wgmma,
}

impl CudaVariant {
    pub const ALL: [CudaVariant; 3] = [CudaVariant::Simt, CudaVariant::Mma, CudaVariant::Wgmma];
    pub fn name(self) -> &'static str {
        match self {
            CudaVariant::Simt => "simt",
            CudaVariant::Mma => "mma",
            CudaVariant::Wgmma => "wgmma",
        }
    }
}

/// A kernel to certify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpec {
    /// The CUDA kernels when a GPU is present, else [`KernelSpec::Builtin`].
    Auto,
    /// reference-f32, flash-cpu (with the mutation catalogue), candle and the CUDA kernels on the
    /// emulator, each with a certificate of its own.
    Builtin,
    ReferenceF32,
    FlashCpu,
    Candle,
    /// The CUDA kernels; `variant` None: the default attention kernel per dtype.
    Cuda {
        backend: CudaBackend,
        variant: Option<CudaVariant>,
    },
    /// A vector pack: the outputs a kernel outside this process wrote for it.
    External(PathBuf),
    /// Synthetic kernels that test the tolerance rule ([`crate::kernels::Synthetic`]): one
    /// (`synthetic-out-0.9`: its target and its ratio to the bound in hundredths), or None for
    /// all four of the acceptance runs (out and lse at 0.9 and 1.1).
    Synthetic(Option<(Target, u32)>),
}

/// A `--kernel` value that names no kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown kernel `{0}`: expected auto, builtin, reference-f32, flash-cpu, candle, cuda, cuda-simt, cuda-mma, \
     cuda-wgmma, cuda-emu, cuda-emu-simt, cuda-emu-mma, cuda-emu-wgmma, synthetic, synthetic-out-RATIO, synthetic-lse-RATIO \
     (RATIO in hundredths, e.g. 0.9) or external:DIR"
)]
pub struct UnknownKernel(pub String);

impl FromStr for KernelSpec {
    type Err = UnknownKernel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("external:") {
            if dir.is_empty() {
                return Err(UnknownKernel(s.into()));
            }
            return Ok(KernelSpec::External(PathBuf::from(dir)));
        }
        let named = [
            ("auto", KernelSpec::Auto),
            ("builtin", KernelSpec::Builtin),
            ("reference-f32", KernelSpec::ReferenceF32),
            ("flash-cpu", KernelSpec::FlashCpu),
            ("candle", KernelSpec::Candle),
        ];
        if let Some((_, k)) = named.into_iter().find(|(n, _)| *n == s) {
            return Ok(k);
        }
        if s == "synthetic" {
            return Ok(KernelSpec::Synthetic(None));
        }
        if let Some(rest) = s.strip_prefix("synthetic-") {
            let one = Target::ALL.into_iter().find_map(|t| {
                let ratio: f64 = rest.strip_prefix(t.name())?.strip_prefix('-')?.parse().ok()?;
                let hundredths = (ratio * 100.0).round();
                ((0.01..=100.0).contains(&ratio) && (ratio * 100.0 - hundredths).abs() < 1e-9).then_some((t, hundredths as u32))
            });
            return one.map(|o| KernelSpec::Synthetic(Some(o))).ok_or_else(|| UnknownKernel(s.into()));
        }
        for (base, backend) in [("cuda-emu", CudaBackend::Emulator), ("cuda", CudaBackend::Device)] {
            let variant = match s.strip_prefix(base) {
                Some("") => None,
                Some(rest) => match CudaVariant::ALL.into_iter().find(|v| rest.strip_prefix('-') == Some(v.name())) {
                    Some(v) => Some(v),
                    None => continue,
                },
                None => continue,
            };
            return Ok(KernelSpec::Cuda { backend, variant });
        }
        Err(UnknownKernel(s.into()))
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Auto => f.write_str("auto"),
            KernelSpec::Builtin => f.write_str("builtin"),
            KernelSpec::ReferenceF32 => f.write_str("reference-f32"),
            KernelSpec::FlashCpu => f.write_str("flash-cpu"),
            KernelSpec::Candle => f.write_str("candle"),
            KernelSpec::Cuda { backend, variant } => {
                f.write_str(match backend {
                    CudaBackend::Device => "cuda",
                    CudaBackend::Emulator => "cuda-emu",
                })?;
                match variant {
                    Some(v) => write!(f, "-{}", v.name()),
                    None => Ok(()),
                }
            }
            KernelSpec::External(dir) => write!(f, "external:{}", dir.display()),
            KernelSpec::Synthetic(None) => f.write_str("synthetic"),
            KernelSpec::Synthetic(Some((t, hundredths))) => write!(f, "synthetic-{}-{}", t.name(), *hundredths as f64 / 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_prints_back() {
        for name in [
            "auto",
            "builtin",
            "reference-f32",
            "flash-cpu",
            "candle",
            "cuda",
            "cuda-simt",
            "cuda-mma",
            "cuda-wgmma",
            "cuda-emu",
            "cuda-emu-simt",
            "cuda-emu-mma",
            "cuda-emu-wgmma",
            "external:some/pack",
            "synthetic",
            "synthetic-out-0.9",
            "synthetic-lse-1.1",
            "synthetic-lse-2",
        ] {
            let k: KernelSpec = name.parse().unwrap();
            assert_eq!(k.to_string(), name);
        }
        assert_eq!(
            "cuda-emu-mma".parse::<KernelSpec>().unwrap(),
            KernelSpec::Cuda {
                backend: CudaBackend::Emulator,
                variant: Some(CudaVariant::Mma)
            }
        );
        for bad in [
            "",
            "cuda-",
            "cuda-tensor",
            "cuda-emu-",
            "cudax",
            "triton",
            "external:",
            "Builtin",
            "flash-cpu2",
            "synthetic-",
            "synthetic-out",
            "synthetic-out-0",
            "synthetic-out-0.905",
            "synthetic-out-nan",
            "synthetic-k-0.9",
        ] {
            let e = bad.parse::<KernelSpec>().unwrap_err();
            assert!(e.to_string().starts_with(&format!("unknown kernel `{bad}`")), "{e}");
        }
    }
}
