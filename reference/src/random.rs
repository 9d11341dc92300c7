//! Seeded random layers and inputs for tests and case generation.
//!
//! Weights are drawn so that every projection output has unit variance per element, and the
//! query is multiplied by `logit_std`: the scaled logits q·k/sqrt(d_qk) then have a standard
//! deviation of about `logit_std`, so `logit_std = 8` gives logits of magnitude tens.

use crate::config::{GqaDims, LatentDims};
use crate::error::Result;
use crate::gqa::{GqaProjections, GqaWeights};
use crate::latent::{LatentProjections, LatentWeights, QueryProjection};
use crate::linear::{Linear, RmsNorm};
use crate::rope::{Rope, RopeStyle};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A seeded source of random arrays.
pub struct Sampler(ChaCha8Rng);

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
    /// Entries N(0, std²).
    pub fn normal(&mut self, shape: (usize, usize), std: f64) -> Array2<f64> {
        Array2::from_shape_simple_fn(shape, || std * Distribution::<f64>::sample(&StandardNormal, &mut self.0))
    }
    pub fn normal1(&mut self, n: usize, std: f64) -> Array1<f64> {
        Array1::from_shape_simple_fn(n, || std * Distribution::<f64>::sample(&StandardNormal, &mut self.0))
    }
    pub fn uniform1(&mut self, n: usize, lo: f64, hi: f64) -> Array1<f64> {
        Array1::from_shape_simple_fn(n, || self.0.random_range(lo..hi))
    }
    fn linear(&mut self, out: usize, inp: usize, gain: f64, bias: bool) -> Linear<f64> {
        let w = self.normal((out, inp), gain / (inp as f64).sqrt());
        Linear::new(w, bias.then(|| self.normal1(out, 0.1 * gain)))
    }
    fn norm(&mut self, n: usize) -> RmsNorm<f64> {
        RmsNorm {
            weight: self.uniform1(n, 0.5, 1.5),
            eps: 1e-6,
        }
    }
}

/// Options of a random latent layer beyond its geometry.
#[derive(Clone, Copy, Debug)]
pub struct LatentOptions {
    pub hidden: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_norm: bool,
    pub bias: bool,
    pub rope_style: RopeStyle,
    pub logit_std: f64,
}

impl Default for LatentOptions {
    fn default() -> Self {
        Self {
            hidden: 64,
            q_lora_rank: None,
            kv_norm: true,
            bias: false,
            rope_style: RopeStyle::Interleaved,
            logit_std: 8.0,
        }
    }
}

/// A random MLA/GQLA layer in f64.
pub fn latent_layer(dims: LatentDims, opt: LatentOptions, seed: u64) -> Result<LatentWeights<f64>> {
    let mut s = Sampler::new(seed);
    let q_out = dims.h() * dims.qk_dim();
    let query = match opt.q_lora_rank {
        None => QueryProjection::Direct(s.linear(q_out, opt.hidden, opt.logit_std, opt.bias)),
        Some(r) => QueryProjection::LowRank {
            down: s.linear(r, opt.hidden, 1.0, opt.bias),
            norm: s.norm(r),
            up: s.linear(q_out, r, opt.logit_std, false),
        },
    };
    let kv_a = s.linear(dims.d_c() + dims.d_r(), opt.hidden, 1.0, opt.bias);
    let kv_norm = opt.kv_norm.then(|| s.norm(dims.d_c()));
    let kv_b = s.normal((dims.g() * (dims.d_n() + dims.d_v()), dims.d_c()), 1.0 / (dims.d_c() as f64).sqrt());
    let o_proj = s.linear(opt.hidden, dims.h() * dims.d_v(), 1.0, opt.bias);
    let rope = Rope::standard(opt.rope_style, dims.d_r(), 10000.0)?;
    let projections = LatentProjections {
        query,
        kv_a,
        kv_norm,
        kv_b,
        o_proj,
    };
    LatentWeights::new(dims, projections, rope, None)
}

/// A random GQA layer in f64 (LLaMA semantics, rotate-half RoPE).
pub fn gqa_layer(dims: GqaDims, hidden: usize, qkv_bias: bool, logit_std: f64, seed: u64) -> Result<GqaWeights<f64>> {
    let mut s = Sampler::new(seed);
    let (h, kv, d) = (dims.h(), dims.kv(), dims.d());
    let q = s.linear(h * d, hidden, logit_std, qkv_bias);
    let k = s.linear(kv * d, hidden, 1.0, qkv_bias);
    let v = s.linear(kv * d, hidden, 1.0, qkv_bias);
    let o = s.linear(hidden, h * d, 1.0, false);
    GqaWeights::new(
        dims,
        GqaProjections { q, k, v, o },
        Rope::standard(RopeStyle::RotateHalf, d, 10000.0)?,
        None,
        None,
    )
}

/// Random hidden states [n, hidden] with unit-variance entries.
pub fn hidden_states(n: usize, hidden: usize, seed: u64) -> Array2<f64> {
    Sampler::new(seed ^ 0x9E37_79B9_7F4A_7C15).normal((n, hidden), 1.0)
}
