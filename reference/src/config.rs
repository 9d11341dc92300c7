//! Layer geometries, validated once at construction.
//!
//! Notation (SPEC.md): H query heads, G groups (G divides H), d_c latent rank, d_n no-rope key dim,
//! d_r rope dim, d_v value dim. A [`LatentDims`] with G = H is MLA.

use crate::error::{Error, Result};

/// The most heads (query heads, groups, kv heads) a geometry may have.
pub const MAX_HEADS: usize = 1 << 12;
/// The widest a head dimension or latent rank may be.
pub const MAX_DIM: usize = 1 << 16;

/// Refuse a value above its ceiling: no size computed from a geometry can overflow.
fn at_most(named: &[(&str, usize)], max: usize) -> Result<()> {
    match named.iter().find(|(_, v)| *v > max) {
        Some((name, v)) => Err(Error::Config(format!("{name}={v} is above the largest supported, {max}"))),
        None => Ok(()),
    }
}

/// Geometry of an MLA/GQLA attention layer. Private fields: only valid geometries exist (also
/// when read from JSON, which goes through [`LatentDims::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawLatentDims")]
pub struct LatentDims {
    h: usize,
    g: usize,
    d_c: usize,
    d_n: usize,
    d_r: usize,
    d_v: usize,
}

/// The fields of a [`LatentDims`] as read, before validation.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatentDims {
    h: usize,
    g: usize,
    d_c: usize,
    d_n: usize,
    d_r: usize,
    d_v: usize,
}

impl TryFrom<RawLatentDims> for LatentDims {
    type Error = Error;
    fn try_from(r: RawLatentDims) -> Result<Self> {
        Self::new(r.h, r.g, r.d_c, r.d_n, r.d_r, r.d_v)
    }
}

impl LatentDims {
    /// Validates H, G, d_c, d_n, d_r, d_v: all positive, G | H, d_r even (RoPE acts on pairs).
    pub fn new(h: usize, g: usize, d_c: usize, d_n: usize, d_r: usize, d_v: usize) -> Result<Self> {
        let named = [("H", h), ("G", g), ("d_c", d_c), ("d_n", d_n), ("d_r", d_r), ("d_v", d_v)];
        if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive, got 0")));
        }
        at_most(&named[..2], MAX_HEADS)?;
        at_most(&named[2..], MAX_DIM)?;
        if !h.is_multiple_of(g) {
            return Err(Error::Config(format!(
                "the number of query heads H={h} must be divisible by the number of groups G={g}"
            )));
        }
        if !d_r.is_multiple_of(2) {
            return Err(Error::Config(format!("the rope dim d_r={d_r} must be even")));
        }
        Ok(Self { h, g, d_c, d_n, d_r, d_v })
    }
    pub fn h(&self) -> usize {
        self.h
    }
    pub fn g(&self) -> usize {
        self.g
    }
    pub fn d_c(&self) -> usize {
        self.d_c
    }
    pub fn d_n(&self) -> usize {
        self.d_n
    }
    pub fn d_r(&self) -> usize {
        self.d_r
    }
    pub fn d_v(&self) -> usize {
        self.d_v
    }
    /// Query heads per group, H/G.
    pub fn heads_per_group(&self) -> usize {
        self.h / self.g
    }
    /// The group of query head i: g(i) = floor(i / (H/G)).
    pub fn group_of(&self, head: usize) -> usize {
        head / self.heads_per_group()
    }
    /// MLA is GQLA with one group per head.
    pub fn is_mla(&self) -> bool {
        self.g == self.h
    }
    /// The query/key dim seen by the softmax, d_n + d_r.
    pub fn qk_dim(&self) -> usize {
        self.d_n + self.d_r
    }
    /// The default softmax scale 1/sqrt(d_n + d_r).
    pub fn default_scale(&self) -> f64 {
        1.0 / (self.qk_dim() as f64).sqrt()
    }
    /// The same geometry with G = H (what repeating each group's up-projection per head gives).
    pub fn as_mla(&self) -> Self {
        Self { g: self.h, ..*self }
    }
}

/// Geometry of a GQA/MHA/MQA layer (LLaMA semantics): H query heads, KV key/value heads, head dim D.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GqaDims {
    h: usize,
    kv: usize,
    d: usize,
}

impl GqaDims {
    /// Validates H, KV, D: positive, KV | H, D even.
    pub fn new(h: usize, kv: usize, d: usize) -> Result<Self> {
        if h == 0 || kv == 0 || d == 0 {
            return Err(Error::Config(format!("H={h}, KV={kv}, head_dim={d} must all be positive")));
        }
        at_most(&[("H", h), ("KV", kv)], MAX_HEADS)?;
        at_most(&[("head_dim", d)], MAX_DIM)?;
        if !h.is_multiple_of(kv) {
            return Err(Error::Config(format!(
                "the number of query heads H={h} must be divisible by the number of kv heads KV={kv}"
            )));
        }
        if !d.is_multiple_of(2) {
            return Err(Error::Config(format!("head_dim={d} must be even for RoPE")));
        }
        Ok(Self { h, kv, d })
    }
    pub fn h(&self) -> usize {
        self.h
    }
    pub fn kv(&self) -> usize {
        self.kv
    }
    pub fn d(&self) -> usize {
        self.d
    }
    pub fn heads_per_kv(&self) -> usize {
        self.h / self.kv
    }
    pub fn kv_of(&self, head: usize) -> usize {
        head / self.heads_per_kv()
    }
}
