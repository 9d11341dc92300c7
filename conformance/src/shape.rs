//! Tensor shapes from named axes: each definition's tensors list their dimensions as axes (or a
//! width derived from axes, spelled once here), evaluated for a case without parsing anything.
//! definitions.json spells them back as formulas (`[B, capacity, d_c + d_r] | [num_pages, page,
//! d_c + d_r]`).

use crate::case::Case;
use serde::{Serialize, Serializer};

/// An axis a tensor dimension is made of, as definitions.json names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisName {
    /// Sequences in the batch.
    B,
    /// New query tokens per sequence.
    Sq,
    /// Query heads.
    H,
    /// Groups (GQLA).
    G,
    /// Key/value heads (plain GQA).
    Kv,
    /// Latent width.
    Dc,
    /// No-rope key width per group.
    Dn,
    /// Key width per kv head (plain GQA).
    D,
    /// Rope width.
    Dr,
    /// Value width per group (or kv head).
    Dv,
    /// Block-table columns.
    MaxPages,
    /// Cached tokens over the batch (the sum of seq_lens).
    Tokens,
}

impl AxisName {
    pub fn name(self) -> &'static str {
        match self {
            AxisName::B => "B",
            AxisName::Sq => "s_q",
            AxisName::H => "H",
            AxisName::G => "G",
            AxisName::Kv => "KV",
            AxisName::Dc => "d_c",
            AxisName::Dn => "d_n",
            AxisName::D => "d",
            AxisName::Dr => "d_r",
            AxisName::Dv => "d_v",
            AxisName::MaxPages => "max_pages",
            AxisName::Tokens => "tokens",
        }
    }
}

/// One dimension: an axis, or a width derived from axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Of(AxisName),
    /// a + b
    Sum(AxisName, AxisName),
    /// a·b
    Product(AxisName, AxisName),
    /// a·(b + c)
    ProductOfSum(AxisName, AxisName, AxisName),
}

impl Dim {
    /// The formula definitions.json shows.
    pub fn formula(self) -> String {
        match self {
            Dim::Of(a) => a.name().into(),
            Dim::Sum(a, b) => format!("{} + {}", a.name(), b.name()),
            Dim::Product(a, b) => format!("{}·{}", a.name(), b.name()),
            Dim::ProductOfSum(a, b, c) => format!("{}·({} + {})", a.name(), b.name(), c.name()),
        }
    }
    pub fn value(self, axes: &CaseAxes) -> usize {
        let v = |a| axes.get(a);
        match self {
            Dim::Of(a) => v(a),
            Dim::Sum(a, b) => v(a) + v(b),
            Dim::Product(a, b) => v(a) * v(b),
            Dim::ProductOfSum(a, b, c) => v(a) * (v(b) + v(c)),
        }
    }
}

/// A tensor's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// These dimensions (none: a scalar).
    Dims(&'static [Dim]),
    /// A cache of rows `width` wide: [B, capacity, width] contiguous, [num_pages, page, width]
    /// paged.
    Cache(Dim),
}

impl Shape {
    /// The formula definitions.json shows: the contiguous form, then `|` and the paged one for a
    /// cache.
    pub fn formula(&self) -> String {
        match self {
            Shape::Dims(dims) => format!("[{}]", dims.iter().map(|d| d.formula()).collect::<Vec<_>>().join(", ")),
            Shape::Cache(w) => {
                let w = w.formula();
                format!("[B, capacity, {w}] | [num_pages, page, {w}]")
            }
        }
    }
    /// The tensor's rank.
    pub fn rank(&self) -> usize {
        match self {
            Shape::Dims(dims) => dims.len(),
            Shape::Cache(_) => 3,
        }
    }
    /// The shape for a case, as its inputs lay the cache out.
    pub fn eval(&self, axes: &CaseAxes) -> Vec<usize> {
        match self {
            Shape::Dims(dims) => dims.iter().map(|d| d.value(axes)).collect(),
            Shape::Cache(w) => {
                let width = w.value(axes);
                match axes.layout {
                    CacheLayout::Contiguous { capacity } => vec![axes.case.batch(), capacity, width],
                    CacheLayout::Paged { num_pages, page, .. } => vec![num_pages, page, width],
                }
            }
        }
    }
    /// A cache's row width.
    pub fn cache_width(&self, axes: &CaseAxes) -> Option<usize> {
        match self {
            Shape::Cache(w) => Some(w.value(axes)),
            Shape::Dims(_) => None,
        }
    }
}

impl Serialize for Shape {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.formula())
    }
}

/// How a case's caches are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLayout {
    Contiguous { capacity: usize },
    Paged { num_pages: usize, page: usize, max_pages: usize },
}

/// The value of every axis for one case and cache layout.
#[derive(Clone, Copy, Debug)]
pub struct CaseAxes<'a> {
    pub case: &'a Case,
    pub layout: CacheLayout,
}

impl CaseAxes<'_> {
    pub fn get(&self, a: AxisName) -> usize {
        let c = self.case;
        match a {
            AxisName::B => c.batch(),
            AxisName::Sq => c.sq(),
            AxisName::H => c.h(),
            AxisName::G | AxisName::Kv => c.g(),
            AxisName::Dc => c.dc(),
            AxisName::Dn | AxisName::D => c.dn(),
            AxisName::Dr => c.dr(),
            AxisName::Dv => c.dv(),
            AxisName::MaxPages => match self.layout {
                CacheLayout::Paged { max_pages, .. } => max_pages,
                CacheLayout::Contiguous { .. } => 0,
            },
            AxisName::Tokens => (0..c.batch()).map(|b| c.seq_len(b)).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AxisName::*;

    #[test]
    fn shapes_evaluate_and_spell_their_formulas() {
        let case = crate::lattice::suite_cases()
            .into_iter()
            .find(|c| c.op() == crate::case::Op::DecodeGqa)
            .unwrap();
        let contiguous = CaseAxes {
            case: &case,
            layout: CacheLayout::Contiguous { capacity: 70 },
        };
        let paged = CaseAxes {
            case: &case,
            layout: CacheLayout::Paged {
                num_pages: 9,
                page: 16,
                max_pages: 5,
            },
        };
        let k = Shape::Cache(Dim::ProductOfSum(G, Dn, Dr));
        assert_eq!(k.formula(), "[B, capacity, G·(d_n + d_r)] | [num_pages, page, G·(d_n + d_r)]");
        let width = case.g() * (case.dn() + case.dr());
        assert_eq!(k.eval(&contiguous), [case.batch(), 70, width]);
        assert_eq!(k.eval(&paged), [9, 16, width]);
        assert_eq!(Shape::Dims(&[]).formula(), "[]");
        assert_eq!(Shape::Dims(&[]).eval(&paged), Vec::<usize>::new());
        let table = Shape::Dims(&[Dim::Of(B), Dim::Of(MaxPages)]);
        assert_eq!(
            (table.formula().as_str(), table.eval(&paged)),
            ("[B, max_pages]", vec![case.batch(), 5])
        );
        assert_eq!(Shape::Dims(&[Dim::Sum(Dc, Dr), Dim::Product(Kv, D)]).formula(), "[d_c + d_r, KV·d]");
    }
}
