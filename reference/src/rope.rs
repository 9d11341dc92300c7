//! Rotary position embedding with an explicit frequency table.
//!
//! For frequency index l with angular frequency θ_l and position t, RoPE rotates one coordinate pair
//! (a, b) by the angle tθ_l:
//! $$ (a, b) \mapsto (a\cos t\theta_l - b\sin t\theta_l,\; b\cos t\theta_l + a\sin t\theta_l). $$
//! The two layouts differ only in which coordinates form pair l of a vector of dim d:
//! rotate-half (HF LLaMA) pairs (l, l + d/2); interleaved (DeepSeek `rope_interleave`) pairs
//! (2l, 2l+1). HF's DeepSeek-V3 code de-interleaves after rotating; scores are the same either way,
//! and this reference keeps the interleaved layout in the cache.

use crate::error::{Error, Result};
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
            return Err(Error::Config("RoPE needs at least one frequency".into()));
        }
        if let Some(f) = freqs.iter().find(|f| !f.is_finite()) {
            return Err(Error::Config(format!("RoPE frequency {f} is not finite")));
        }
        Ok(Self { style, freqs, attention_factor: 1.0 })
    }

    /// The standard table θ_l = base^(−2l/d), l = 0..d/2.
    pub fn standard(style: RopeStyle, dim: usize, base: f64) -> Result<Self> {
        if dim == 0 || dim % 2 != 0 {
            return Err(Error::Config(format!("RoPE dim {dim} must be positive and even")));
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
