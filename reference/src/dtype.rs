//! [`DType`]: the one floating-point element type of the project.
//!
//! It names a checkpoint's storage (`torch_dtype`), a cache's element, a conformance case's
//! storage, and the rounding applied to reference inputs. Each user accepts the subset it
//! supports and says so when given another (kernels store f32, bf16 or f16, never f64).

use serde::{Deserialize, Serialize};

/// A floating-point element type. Ordered as certificates list them (f32, bf16, f16, f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
    F64,
}

/// A name that is not a dtype.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown dtype `{0}` (expected f32, bf16, f16 or f64, or float32, bfloat16, float16 or float64)")]
pub struct UnknownDType(pub String);

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::Bf16, DType::F16, DType::F64];
    /// The dtypes a kernel may store its inputs and outputs in.
    pub const KERNEL_STORAGE: [DType; 3] = [DType::F32, DType::Bf16, DType::F16];

    /// The short name (`f32`, `bf16`, ...); also the suffix of the CUDA kernels for this dtype.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::F64 => "f64",
        }
    }

    /// The name HF configs use (`torch_dtype` / `dtype`).
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::Bf16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
        }
    }

    /// The dtype an HF config names, if any.
    pub fn from_hf_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.hf_name() == s)
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Bf16 | DType::F16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// Whether kernels may store data in this dtype (f32, bf16, f16).
    pub fn is_kernel_storage(self) -> bool {
        Self::KERNEL_STORAGE.contains(&self)
    }

    /// `x` rounded to the nearest value of this dtype (round to nearest even).
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F64 => x,
            DType::F32 => x as f32 as f64,
            DType::Bf16 => half::bf16::from_f64(x).to_f64(),
            DType::F16 => half::f16::from_f64(x).to_f64(),
        }
    }

    /// `x` rounded to the nearest value of this dtype, for dtypes no wider than f32 (f64 keeps
    /// `x`, which is already exact in it).
    #[inline] // called per element by the references and input generation, across crates
    pub fn round_f32(self, x: f32) -> f32 {
        match self {
            DType::F32 | DType::F64 => x,
            DType::Bf16 => half::bf16::from_f32(x).to_f32(),
            DType::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Unit roundoff u = 2^-p, with p the significand's bits (the implicit one included).
    pub fn unit_roundoff(self) -> f64 {
        let p = match self {
            DType::Bf16 => 8,
            DType::F16 => 11,
            DType::F32 => 24,
            DType::F64 => 53,
        };
        f64::powi(2.0, -p)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses the short name or the HF name.
impl std::str::FromStr for DType {
    type Err = UnknownDType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .or_else(|| Self::from_hf_name(s))
            .ok_or_else(|| UnknownDType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_sizes_match_the_encodings() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>(), Ok(d));
            assert_eq!(d.hf_name().parse::<DType>(), Ok(d));
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{}\"", d.name()));
        }
        assert!("f8".parse::<DType>().unwrap_err().to_string().contains("`f8`"));
        assert!(!DType::F64.is_kernel_storage());
    }

    #[test]
    fn rounding_keeps_the_dtypes_significand() {
        let x = 1.0 + 1.0 / 512.0;
        assert_eq!(DType::Bf16.round(x), 1.0);
        assert_eq!(DType::F16.round(x), x);
        assert_eq!(DType::F32.round(1.0 + 2f64.powi(-30)), 1.0);
        assert_eq!(DType::F64.round(1.0 + 2f64.powi(-30)), 1.0 + 2f64.powi(-30));
        for d in DType::ALL {
            // Halfway below 1 + u rounds to even (1); just above rounds up.
            let u = d.unit_roundoff();
            assert_eq!(d.round(1.0 + u), 1.0, "{d}");
            if d != DType::F64 {
                assert_eq!(d.round(1.0 + 1.5 * u), 1.0 + 2.0 * u, "{d}");
                assert_eq!(d.round_f32((1.0 + 1.5 * u) as f32) as f64, 1.0 + 2.0 * u, "{d}");
            }
        }
    }
}
