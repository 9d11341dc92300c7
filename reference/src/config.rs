//! Layer geometries, validated once at construction.
//!
//! Notation (SPEC.md): H query heads, G groups (G divides H), d_c latent rank, d_n no-rope key dim,
//! d_r rope dim, d_v value dim. A [`LatentDims`] with G = H is MLA.

pub use crate::error::GeometryError;
use crate::error::{Error, Result};

/// The most heads (query heads, groups, kv heads) a geometry may have.
pub const MAX_HEADS: usize = 1 << 12;
/// The widest a head dimension or latent rank may be.
pub const MAX_DIM: usize = 1 << 16;

fn positive(named: &[(&'static str, usize)]) -> std::result::Result<(), GeometryError> {
    match named.iter().find(|(_, v)| *v == 0) {
        Some(&(name, _)) => Err(GeometryError::NotPositive { name }),
        None => Ok(()),
    }
}

/// Refuse a value above its ceiling: no size computed from a geometry can overflow.
fn at_most(named: &[(&'static str, usize)], max: usize) -> std::result::Result<(), GeometryError> {
    match named.iter().find(|(_, v)| *v > max) {
        Some(&(name, value)) => Err(GeometryError::AboveCeiling { name, value, max }),
        None => Ok(()),
    }
}

/// Geometry of an MLA/GQLA attention layer. Private fields: only valid geometries exist (also
/// when read from JSON, which goes through [`LatentDims::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "LatentShape")]
pub struct LatentDims {
    h: usize,
    g: usize,
    d_c: usize,
    d_n: usize,
    d_r: usize,
    d_v: usize,
}

/// The six numbers of a latent geometry, named and not yet validated: what
/// [`LatentDims::new`] takes, what a config or JSON spells out, and what [`LatentDims::shape`]
/// gives back for deriving a neighbouring geometry (`LatentShape { g: 1, ..dims.shape() }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentShape {
    /// Query heads H.
    pub h: usize,
    /// Groups G (G = H is MLA).
    pub g: usize,
    /// Latent rank d_c.
    pub d_c: usize,
    /// No-rope key dim d_n.
    pub d_n: usize,
    /// Rope dim d_r.
    pub d_r: usize,
    /// Value dim d_v.
    pub d_v: usize,
}

impl LatentShape {
    /// DeepSeek-V3's attention (d_c 512, d_n 128, d_r 64, d_v 128, 128 heads) as GQLA with 8 groups:
    /// the paper's main decode geometry.
    pub const DEEPSEEK_V3_G8: LatentShape = LatentShape {
        h: 128,
        g: 8,
        d_c: 512,
        d_n: 128,
        d_r: 64,
        d_v: 128,
    };
}

impl LatentShape {
    /// The geometry TransGQLA gives a GQA layer: G = KV groups, d_n = d_v = D (the source's head
    /// dim), a latent of rank `d_c` and `d_r` rope dims.
    pub fn from_gqa(gqa: GqaDims, d_c: usize, d_r: usize) -> LatentShape {
        LatentShape {
            h: gqa.h(),
            g: gqa.kv(),
            d_c,
            d_n: gqa.d(),
            d_r,
            d_v: gqa.d(),
        }
    }
}

impl TryFrom<LatentShape> for LatentDims {
    type Error = Error;
    fn try_from(s: LatentShape) -> Result<Self> {
        Self::new(s)
    }
}

impl LatentDims {
    /// Validates H, G, d_c, d_n, d_r, d_v: all positive, G | H, d_r even (RoPE acts on pairs).
    pub fn new(shape: LatentShape) -> Result<Self> {
        let LatentShape { h, g, d_c, d_n, d_r, d_v } = shape;
        let named = [("H", h), ("G", g), ("d_c", d_c), ("d_n", d_n), ("d_r", d_r), ("d_v", d_v)];
        positive(&named)?;
        at_most(&named[..2], MAX_HEADS)?;
        at_most(&named[2..], MAX_DIM)?;
        if !h.is_multiple_of(g) {
            return Err(GeometryError::HeadsNotDivisible {
                h,
                per: "groups",
                name: "G",
                by: g,
            }
            .into());
        }
        if !d_r.is_multiple_of(2) {
            return Err(GeometryError::Odd { name: "d_r", value: d_r }.into());
        }
        Ok(Self { h, g, d_c, d_n, d_r, d_v })
    }
    /// The six numbers, named.
    pub fn shape(&self) -> LatentShape {
        let LatentDims { h, g, d_c, d_n, d_r, d_v } = *self;
        LatentShape { h, g, d_c, d_n, d_r, d_v }
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
        positive(&[("H", h), ("KV", kv), ("head_dim", d)])?;
        at_most(&[("H", h), ("KV", kv)], MAX_HEADS)?;
        at_most(&[("head_dim", d)], MAX_DIM)?;
        if !h.is_multiple_of(kv) {
            return Err(GeometryError::HeadsNotDivisible {
                h,
                per: "kv heads",
                name: "KV",
                by: kv,
            }
            .into());
        }
        if !d.is_multiple_of(2) {
            return Err(GeometryError::Odd {
                name: "head_dim",
                value: d,
            }
            .into());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers match the kind of refusal, not its text.
    #[test]
    fn each_refusal_is_its_own_variant() {
        let base = LatentShape::DEEPSEEK_V3_G8;
        let refused = |shape: LatentShape| match LatentDims::new(shape) {
            Err(Error::Geometry(g)) => g,
            other => panic!("{shape:?}: {other:?}"),
        };
        assert_eq!(refused(LatentShape { d_c: 0, ..base }), GeometryError::NotPositive { name: "d_c" });
        assert_eq!(
            refused(LatentShape { d_c: MAX_DIM + 1, ..base }),
            GeometryError::AboveCeiling {
                name: "d_c",
                value: MAX_DIM + 1,
                max: MAX_DIM
            }
        );
        assert!(matches!(
            refused(LatentShape { g: 7, ..base }),
            GeometryError::HeadsNotDivisible { h: 128, by: 7, .. }
        ));
        assert_eq!(
            refused(LatentShape { d_r: 63, ..base }),
            GeometryError::Odd { name: "d_r", value: 63 }
        );
        assert!(matches!(
            GqaDims::new(32, 5, 128),
            Err(Error::Geometry(GeometryError::HeadsNotDivisible { by: 5, .. }))
        ));
        assert_eq!(LatentDims::new(base).unwrap().shape(), base);
        assert!(matches!(
            crate::rope::Rope::standard(crate::rope::RopeStyle::RotateHalf, 7, 1e4),
            Err(Error::Geometry(GeometryError::Odd {
                name: "RoPE dim",
                value: 7
            }))
        ));
        let small = LatentShape {
            h: 4,
            g: 2,
            d_c: 8,
            d_n: 4,
            d_r: 4,
            d_v: 4,
        };
        let w = crate::random::latent_layer(LatentDims::new(small).unwrap(), Default::default(), 1).unwrap();
        assert!(matches!(w.with_scale(f64::NAN), Err(Error::SoftmaxScale { .. })));
        let dims = LatentDims::new(base).unwrap();
        assert!(matches!(
            crate::tp::tp_footprint::<f32>(dims, 3, crate::cache::GroupCacheLayout::RopeOnce, 1),
            Err(Error::Geometry(GeometryError::TpDegree { degree: 3, groups: 8 }))
        ));
    }
}
