//! Rotary position embedding with an explicit frequency table.
//!
//! For frequency index l with angular frequency θ_l and position t, RoPE rotates one coordinate pair
//! (a, b) by the angle tθ_l:
//! $$ (a, b) \mapsto (a\cos t\theta_l - b\sin t\theta_l,\; b\cos t\theta_l + a\sin t\theta_l). $$
//! The two layouts differ only in which coordinates form pair l of a vector of dim d:
//! rotate-half (HF LLaMA) pairs (l, l + d/2); interleaved (DeepSeek `rope_interleave`) pairs
//! (2l, 2l+1). HF's DeepSeek-V3 code de-interleaves after rotating; scores are the same either way,
//! and this reference keeps the interleaved layout in the cache.

use crate::error::{Error, GeometryError, Result};
use crate::real::Real;

/// Which coordinates form a RoPE pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pair l is (l, l + d/2): HF LLaMA/Qwen2/Mistral `rotate_half`.
    RotateHalf,
    /// Pair l is (2l, 2l + 1): DeepSeek-V2/V3 with `rope_interleave`.
    Interleaved,
}

/// RoPE over a vector of dim 2·len(freqs).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    style: RopeStyle,
    /// Angular frequency θ_l per pair (radians per position). A converted model may keep any subset.
    freqs: Vec<f64>,
    /// Multiplier on cos and sin (YaRN's attention factor; 1 otherwise).
    attention_factor: f64,
}

impl Rope {
    /// An explicit frequency table, one θ_l per coordinate pair.
    pub fn new(style: RopeStyle, freqs: Vec<f64>) -> Result<Self> {
        if freqs.is_empty() {
            return Err(GeometryError::NotPositive {
                name: "the number of RoPE frequencies",
            }
            .into());
        }
        if let Some(f) = freqs.iter().find(|f| !f.is_finite()) {
            return Err(Error::Value {
                what: "a RoPE frequency".into(),
                value: *f,
                expected: "finite",
            });
        }
        Ok(Self {
            style,
            freqs,
            attention_factor: 1.0,
        })
    }

    /// The standard table θ_l = base^(−2l/d), l = 0..d/2.
    pub fn standard(style: RopeStyle, dim: usize, base: f64) -> Result<Self> {
        if dim == 0 {
            return Err(GeometryError::NotPositive { name: "RoPE dim" }.into());
        }
        if !dim.is_multiple_of(2) {
            return Err(GeometryError::Odd {
                name: "RoPE dim",
                value: dim,
            }
            .into());
        }
        let freqs = (0..dim / 2).map(|l| base.powf(-(2.0 * l as f64) / dim as f64)).collect();
        Self::new(style, freqs)
    }

    /// Scale cos and sin by a constant (YaRN's attention factor).
    pub fn with_attention_factor(mut self, factor: f64) -> Self {
        self.attention_factor = factor;
        self
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }
    pub fn freqs(&self) -> &[f64] {
        &self.freqs
    }
    pub fn attention_factor(&self) -> f64 {
        self.attention_factor
    }
    /// The vector dim this RoPE acts on.
    pub fn dim(&self) -> usize {
        2 * self.freqs.len()
    }

    /// The coordinate indices of pair l.
    pub fn pair(&self, l: usize) -> (usize, usize) {
        match self.style {
            RopeStyle::RotateHalf => (l, l + self.freqs.len()),
            RopeStyle::Interleaved => (2 * l, 2 * l + 1),
        }
    }

    /// Rotate `x` (length [`Rope::dim`]) in place to position `pos`.
    pub fn apply<T: Real>(&self, mut x: ndarray::ArrayViewMut1<T>, pos: usize) {
        assert_eq!(x.len(), self.dim(), "RoPE applied to a vector of the wrong dim");
        for (l, &theta) in self.freqs.iter().enumerate() {
            let angle = pos as f64 * theta;
            let c = T::of(angle.cos() * self.attention_factor);
            let s = T::of(angle.sin() * self.attention_factor);
            let (i, j) = self.pair(l);
            let (a, b) = (x[i], x[j]);
            x[i] = a * c - b * s;
            x[j] = b * c + a * s;
        }
    }
}

/// How a checkpoint rescales the standard frequency table (HF `rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// θ_l = base^(−2l/d).
    Default,
    /// θ_l / factor.
    Linear { factor: f64 },
    /// LLaMA-3.1: long wavelengths divided by `factor`, short ones kept, a linear blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// YaRN (DeepSeek-V2/V3): a ramp between interpolated (θ/factor) and extrapolated (θ)
    /// frequencies over the correction range [low, high], and cos/sin scaled by an attention factor.
    Yarn {
        factor: f64,
        original_max_position: f64,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// YaRN's magnitude correction: 0.1·m·ln(s) + 1 for s > 1, else 1.
pub fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

impl RopeScaling {
    /// The frequency table and cos/sin multiplier for a rope of `dim` with base `base`.
    pub fn table(&self, dim: usize, base: f64) -> Result<(Vec<f64>, f64)> {
        let standard = Rope::standard(RopeStyle::RotateHalf, dim, base)?.freqs;
        let two_pi = 2.0 * std::f64::consts::PI;
        Ok(match *self {
            RopeScaling::Default => (standard, 1.0),
            RopeScaling::Linear { factor } => (standard.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                let freqs = standard
                    .iter()
                    .map(|&f| {
                        let wavelen = two_pi / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let attention = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if m != 0.0 && a != 0.0 => yarn_mscale(factor, m) / yarn_mscale(factor, a),
                    _ => yarn_mscale(factor, 1.0),
                });
                let d = dim as f64;
                let correction = |rotations: f64| d * (original_max_position / (rotations * two_pi)).ln() / (2.0 * base.ln());
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let freqs = standard
                    .iter()
                    .enumerate()
                    .map(|(l, &f)| {
                        let ramp = ((l as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect();
                (freqs, attention)
            }
        })
    }
}
