//! Tensor shapes from named axes: each definition's tensors list their dimensions as axes, or as
//! derived axes (a width computed from axes, declared once with its formula), evaluated for a case
//! without parsing anything. definitions.json lists them the same way: a tensor's shape is a list
//! of axis names (`["B", "s_q", "H", "latent_row"]`; a cache gives its contiguous and its paged
//! list) and each derived axis is an entry of the axes table with its formula.

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
    /// Rows per sequence of a contiguous cache.
    Capacity,
    /// Pages in a paged cache's pool.
    NumPages,
    /// Rows per page.
    Page,
    /// Latent values per scale of an FP8 tiled cache record.
    Tile,
}

impl AxisName {
    pub const fn name(self) -> &'static str {
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
            AxisName::Capacity => "capacity",
            AxisName::NumPages => "num_pages",
            AxisName::Page => "page",
            AxisName::Tile => "tile",
        }
    }
}

/// How a derived axis is computed from axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formula {
    /// a + b
    Sum(AxisName, AxisName),
    /// a·b
    Product(AxisName, AxisName),
    /// a·(b + c)
    ProductOfSum(AxisName, AxisName, AxisName),
    /// The bytes of an FP8 tiled record: d_c FP8 values, 4 per f32 scale of each tile, 2 per bf16
    /// RoPE value.
    TiledRecord { dc: AxisName, tile: AxisName, dr: AxisName },
}

impl Formula {
    /// As definitions.json spells it.
    pub fn spelled(self) -> String {
        match self {
            Formula::Sum(a, b) => format!("{} + {}", a.name(), b.name()),
            Formula::Product(a, b) => format!("{}·{}", a.name(), b.name()),
            Formula::ProductOfSum(a, b, c) => format!("{}·({} + {})", a.name(), b.name(), c.name()),
            Formula::TiledRecord { dc, tile, dr } => {
                format!(
                    "{dc} + 4·({dc} / {tile}) + 2·{dr}",
                    dc = dc.name(),
                    tile = tile.name(),
                    dr = dr.name()
                )
            }
        }
    }
    pub fn value(self, axes: &CaseAxes) -> usize {
        let v = |a| axes.get(a);
        match self {
            Formula::Sum(a, b) => v(a) + v(b),
            Formula::Product(a, b) => v(a) * v(b),
            Formula::ProductOfSum(a, b, c) => v(a) * (v(b) + v(c)),
            Formula::TiledRecord { dc, tile, dr } => v(dc) + 4 * v(dc).checked_div(v(tile)).unwrap_or(0) + 2 * v(dr),
        }
    }
}

/// A named width derived from axes (the latent row d_c + d_r, every group's keys G·d_n, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Derived {
    pub name: &'static str,
    pub formula: Formula,
    pub meaning: &'static str,
}

/// One dimension: an axis, or a derived axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Of(AxisName),
    Derived(&'static Derived),
}

impl Dim {
    /// The axis name definitions.json lists.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Of(a) => a.name(),
            Dim::Derived(d) => d.name,
        }
    }
    pub fn value(self, axes: &CaseAxes) -> usize {
        match self {
            Dim::Of(a) => axes.get(a),
            Dim::Derived(d) => d.formula.value(axes),
        }
    }
}

const CONTIGUOUS_ROWS: [Dim; 2] = [Dim::Of(AxisName::B), Dim::Of(AxisName::Capacity)];
const PAGED_ROWS: [Dim; 2] = [Dim::Of(AxisName::NumPages), Dim::Of(AxisName::Page)];

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
    /// The dimensions for a cache layout (`paged`: the paged form of a cache; ignored otherwise).
    pub fn dims(&self, paged: bool) -> Vec<Dim> {
        match self {
            Shape::Dims(dims) => dims.to_vec(),
            Shape::Cache(w) => {
                let rows = if paged { PAGED_ROWS } else { CONTIGUOUS_ROWS };
                vec![rows[0], rows[1], *w]
            }
        }
    }
    /// The shape in axis names, for messages: the contiguous form, then `|` and the paged one for
    /// a cache.
    pub fn formula(&self) -> String {
        let names = |paged| format!("[{}]", self.dims(paged).iter().map(|d| d.name()).collect::<Vec<_>>().join(", "));
        match self {
            Shape::Dims(_) => names(false),
            Shape::Cache(_) => format!("{} | {}", names(false), names(true)),
        }
    }
    /// The tensor's rank.
    pub fn rank(&self) -> usize {
        match self {
            Shape::Dims(dims) => dims.len(),
            Shape::Cache(_) => 3,
        }
    }
    /// The derived axes the shape uses.
    pub fn derived(&self) -> impl Iterator<Item = &'static Derived> {
        self.dims(false).into_iter().filter_map(|d| match d {
            Dim::Derived(d) => Some(d),
            Dim::Of(_) => None,
        })
    }
    /// Every axis name the shape uses, in either layout.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.dims(false).iter().map(|d| d.name()).collect();
        if matches!(self, Shape::Cache(_)) {
            names.extend(PAGED_ROWS.iter().map(|d| d.name()));
        }
        names
    }
    /// The shape for a case, as its inputs lay the cache out.
    pub fn eval(&self, axes: &CaseAxes) -> Vec<usize> {
        let paged = matches!(axes.layout, CacheLayout::Paged { .. });
        self.dims(paged).iter().map(|d| d.value(axes)).collect()
    }
    /// A cache's row width.
    pub fn cache_width(&self, axes: &CaseAxes) -> Option<usize> {
        match self {
            Shape::Cache(w) => Some(w.value(axes)),
            Shape::Dims(_) => None,
        }
    }
}

/// definitions.json: a list of axis names; a cache, `{"contiguous": [...], "paged": [...]}`.
impl Serialize for Shape {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = |paged| self.dims(paged).iter().map(|d| d.name()).collect::<Vec<_>>();
        match self {
            Shape::Dims(_) => names(false).serialize(s),
            Shape::Cache(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("contiguous", &names(false))?;
                m.serialize_entry("paged", &names(true))?;
                m.end()
            }
        }
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
            AxisName::Capacity => match self.layout {
                CacheLayout::Contiguous { capacity } => capacity,
                CacheLayout::Paged { .. } => 0,
            },
            AxisName::NumPages => match self.layout {
                CacheLayout::Paged { num_pages, .. } => num_pages,
                CacheLayout::Contiguous { .. } => 0,
            },
            AxisName::Page => match self.layout {
                CacheLayout::Paged { page, .. } => page,
                CacheLayout::Contiguous { .. } => 0,
            },
            AxisName::Tile => match c.kv() {
                crate::case::KvFormat::Tiled { tile, .. } => tile,
                _ => 0,
            },
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
        const KEYS: Derived = Derived {
            name: "group_keys_with_rope",
            formula: Formula::ProductOfSum(G, Dn, Dr),
            meaning: "",
        };
        let k = Shape::Cache(Dim::Derived(&KEYS));
        assert_eq!(
            k.formula(),
            "[B, capacity, group_keys_with_rope] | [num_pages, page, group_keys_with_rope]"
        );
        assert_eq!(KEYS.formula.spelled(), "G·(d_n + d_r)");
        let width = case.g() * (case.dn() + case.dr());
        assert_eq!(k.eval(&contiguous), [case.batch(), 70, width]);
        assert_eq!(k.eval(&paged), [9, 16, width]);
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::json!({"contiguous": ["B", "capacity", "group_keys_with_rope"], "paged": ["num_pages", "page", "group_keys_with_rope"]})
        );
        assert_eq!(Shape::Dims(&[]).formula(), "[]");
        assert_eq!(Shape::Dims(&[]).eval(&paged), Vec::<usize>::new());
        let table = Shape::Dims(&[Dim::Of(B), Dim::Of(MaxPages)]);
        assert_eq!(
            (table.formula().as_str(), table.eval(&paged)),
            ("[B, max_pages]", vec![case.batch(), 5])
        );
        assert_eq!(serde_json::to_value(table).unwrap(), serde_json::json!(["B", "max_pages"]));
        assert_eq!(Formula::Sum(Dc, Dr).spelled(), "d_c + d_r");
        assert_eq!(Formula::Product(Kv, D).spelled(), "KV·d");
    }
}
