//! The coverage core: what the cases a profile selects must exercise, per operation, before a
//! certificate may call the kernel CONFORMANT for that operation. Every selected case passing
//! proves nothing about the axes no selected case touches: a profile narrowed to one case (a
//! fixed scale, a filter) would otherwise be CONFORMANT on one geometry with no padding row.
//! Below the core the verdict is PARTIAL, and the certificate names what is missing.
//!
//! The core, per operation, relative to what the profile declares (an axis the kernel does not
//! declare is never demanded of it):
//!
//! | axis | decode operations | gqla.cache.expand | met by a selected case with |
//! |---|---|---|---|
//! | each declared dtype | yes | yes | that dtype |
//! | contiguous caches, where declared | yes | yes | no page size |
//! | paged caches, where page sizes are declared | yes | yes | a declared page size |
//! | s_q = 1, where declared | yes | - | s_q = 1 |
//! | s_q > 1, where declared | yes | - | s_q ≥ 2 |
//! | a padding row | yes | yes | a sequence with no keys (`pad` or context 0) |
//! | a long context | yes | yes | a context of at least [`LONG_CONTEXT`] keys |
//! | large logits | yes | - | `logits=large` (scaled logits of magnitude hundreds) |
//! | requested split counts, where honoured | yes | - | a `splits=N` case |
//! | each declared FP8 cache format | gqla.decode.absorb | - | a case in that format (`kv=tiled`) |
//! | arbitrary FP8 scales, where read | gqla.decode.absorb | - | `kv=tiled;scales=amax` |
//! | per-tensor FP8, each declared flavour | gqla.decode.absorb, gqla.decode.gqa | - | `kv=fp8;fp8=F` |

use crate::case::{Case, DType, Fp8, KvFormat, KvFormatKind, Logits, Op, OpKind, ScaleRule};
use crate::profile::ScaleRead;
use crate::profile::{PageSizes, PageSizesName, Profile, SplitCounts};
use serde::Serialize;
use std::fmt;

/// The shortest context that counts as long: past the 4096-key windows and tiles kernels
/// specialise on, where split-KV and multi-block paths engage.
pub const LONG_CONTEXT: usize = 4096;

/// One axis of the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreAxis {
    Dtype(DType),
    Contiguous,
    Paged,
    SingleToken,
    MultiToken,
    PaddingRow,
    LongContext,
    LargeLogits,
    Splits,
    /// A cache in this (FP8) format.
    Kv(KvFormatKind),
    /// A tiled cache whose scales are not powers of two.
    ArbitraryScales,
    /// A per-tensor FP8 cache of this element type.
    Flavour(Fp8),
}

impl CoreAxis {
    /// Whether `case` exercises this axis.
    pub fn met_by(self, case: &Case) -> bool {
        match self {
            CoreAxis::Dtype(d) => case.dtype() == d,
            CoreAxis::Contiguous => case.page().is_none(),
            CoreAxis::Paged => case.page().is_some(),
            CoreAxis::SingleToken => case.sq() == 1,
            CoreAxis::MultiToken => case.sq() > 1,
            CoreAxis::PaddingRow => case.ctx().iter().any(|c| c.is_none_or(|n| n == 0)),
            CoreAxis::LongContext => case.ctx().iter().flatten().any(|&n| n >= LONG_CONTEXT),
            CoreAxis::LargeLogits => case.logits() == Logits::Large,
            CoreAxis::Splits => case.splits().is_some(),
            CoreAxis::Kv(k) => case.kv().kind() == k,
            CoreAxis::Flavour(f) => case.kv().per_tensor().is_some_and(|(g, _, _)| g == f),
            CoreAxis::ArbitraryScales => matches!(
                case.kv(),
                KvFormat::Tiled {
                    scales: ScaleRule::Amax,
                    ..
                }
            ),
        }
    }
}

impl fmt::Display for CoreAxis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreAxis::Dtype(d) => write!(f, "dtype {}", d.name()),
            CoreAxis::Contiguous => f.write_str("contiguous caches"),
            CoreAxis::Paged => f.write_str("paged caches"),
            CoreAxis::SingleToken => f.write_str("s_q = 1"),
            CoreAxis::MultiToken => f.write_str("s_q > 1"),
            CoreAxis::PaddingRow => f.write_str("a padding row"),
            CoreAxis::LongContext => write!(f, "a context of {LONG_CONTEXT}+ keys"),
            CoreAxis::LargeLogits => f.write_str("large logits"),
            CoreAxis::Splits => f.write_str("requested split counts"),
            CoreAxis::Kv(k) => write!(f, "a {} FP8 cache", k.name()),
            CoreAxis::ArbitraryScales => f.write_str("FP8 scales that are not powers of two"),
            CoreAxis::Flavour(fp8) => write!(f, "a per-tensor {} cache", fp8.name()),
        }
    }
}

/// The core `profile` must cover for `op`: what it declares, plus what every kernel of the
/// operation meets (padding rows, a long context, large logits).
pub fn core(op: Op, profile: &Profile) -> Vec<CoreAxis> {
    let mut axes: Vec<CoreAxis> = profile.dtypes.iter().map(|&d| CoreAxis::Dtype(d)).collect();
    if profile.contiguous {
        axes.push(CoreAxis::Contiguous);
    }
    if !matches!(profile.page_sizes, PageSizes::Named(PageSizesName::None)) {
        axes.push(CoreAxis::Paged);
    }
    match op.kind() {
        OpKind::Decode(_) => {
            if profile.s_q.min == 1 {
                axes.push(CoreAxis::SingleToken);
            }
            if profile.s_q.max > 1 {
                axes.push(CoreAxis::MultiToken);
            }
            axes.extend([CoreAxis::PaddingRow, CoreAxis::LongContext, CoreAxis::LargeLogits]);
            if profile.split_counts == SplitCounts::Honoured {
                axes.push(CoreAxis::Splits);
            }
            if let Some(fp8) = &profile.fp8 {
                let per_tensor = fp8.formats.contains(&KvFormatKind::PerTensor);
                if op == Op::DecodeAbsorb {
                    axes.extend(fp8.formats.iter().map(|&k| CoreAxis::Kv(k)));
                    if fp8.formats.contains(&KvFormatKind::Tiled) && fp8.scale_read != ScaleRead::Pow2 {
                        axes.push(CoreAxis::ArbitraryScales);
                    }
                }
                if op == Op::DecodeGqa && per_tensor {
                    axes.push(CoreAxis::Kv(KvFormatKind::PerTensor));
                }
                if matches!(op, Op::DecodeAbsorb | Op::DecodeGqa) && per_tensor {
                    axes.extend(fp8.flavours.iter().map(|&f| CoreAxis::Flavour(f)));
                }
            }
        }
        OpKind::Cache(_) => axes.extend([CoreAxis::PaddingRow, CoreAxis::LongContext]),
    }
    axes
}

/// The axes of `op`'s core that no case of `selected` exercises.
pub fn missing<'a>(op: Op, profile: &Profile, selected: impl IntoIterator<Item = &'a Case> + Clone) -> Vec<CoreAxis> {
    core(op, profile)
        .into_iter()
        .filter(|axis| !selected.clone().into_iter().any(|c| c.op() == op && axis.met_by(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::suite_cases;

    /// The lattice meets the whole core of the widest profile, for every operation: a kernel that
    /// declares everything and passes everything is CONFORMANT, never PARTIAL.
    #[test]
    fn the_lattice_meets_the_core_of_every_operation() {
        let everything = Profile::everything();
        let cases = suite_cases();
        for op in Op::ALL {
            assert_eq!(missing(op, &everything, &cases), vec![], "{}", op.name());
        }
    }

    /// A fixed-scale profile has every decode case drawn at its scale: nothing is left out, and
    /// the core is met (before, it selected the two cases whose scale matched).
    #[test]
    fn a_fixed_scale_profile_is_judged_on_the_whole_lattice() {
        let fixed = Profile {
            scale: crate::profile::Scale::Fixed(1.0 / 24.0),
            ..Profile::everything()
        };
        let drawn: Vec<Case> = suite_cases().iter().map(|c| fixed.draw(c)).collect();
        assert!(drawn.iter().all(|c| fixed.excludes(c).is_none()));
        assert!(drawn.iter().filter(|c| c.op().is_decode()).all(|c| c.scale() == 1.0 / 24.0));
        for op in Op::ALL {
            assert_eq!(missing(op, &fixed, &drawn), vec![], "{}", op.name());
        }
        // A case already at that scale keeps the suite's id.
        let at = suite_cases()
            .into_iter()
            .find(|c| c.op() == Op::DecodeAbsorb && c.scale() == 1.0 / 24.0)
            .unwrap();
        assert_eq!(fixed.draw(&at), at);
    }

    /// The thresholds are the table's: each axis is met by exactly the cases it names.
    #[test]
    fn each_axis_is_met_by_the_cases_it_names() {
        let cases = suite_cases();
        let find = |f: &dyn Fn(&Case) -> bool| cases.iter().find(|c| f(c)).expect("the lattice has one").clone();
        let long = find(&|c| c.ctx().iter().flatten().any(|&n| n == 4097));
        assert!(CoreAxis::LongContext.met_by(&long));
        let short = find(&|c| c.op().is_decode() && c.ctx().iter().all(|n| n.is_some_and(|n| (1..LONG_CONTEXT).contains(&n))));
        assert!(!CoreAxis::LongContext.met_by(&short) && !CoreAxis::PaddingRow.met_by(&short));
        let pad = find(&|c| c.ctx().contains(&None));
        assert!(CoreAxis::PaddingRow.met_by(&pad));
        let large = find(&|c| c.logits() == Logits::Large);
        assert!(CoreAxis::LargeLogits.met_by(&large) && !CoreAxis::LargeLogits.met_by(&short));
    }

    /// A profile narrowed to one case misses most of the core; what it does not declare is never
    /// demanded.
    #[test]
    fn a_narrow_selection_misses_the_core_and_undeclared_axes_are_not_demanded() {
        let cases = suite_cases();
        let one: Vec<Case> = cases.iter().filter(|c| c.op() == Op::GqaDecode).take(1).cloned().collect();
        let everything = Profile::everything();
        let miss = missing(Op::GqaDecode, &everything, &one);
        assert!(
            miss.contains(&CoreAxis::PaddingRow) && miss.contains(&CoreAxis::Dtype(DType::F16)),
            "{miss:?}"
        );
        let narrow = Profile {
            dtypes: [DType::Bf16].into_iter().collect(),
            page_sizes: PageSizes::Named(PageSizesName::None),
            split_counts: SplitCounts::Ignored,
            ..everything
        };
        let core = core(Op::GqaDecode, &narrow);
        assert!(!core.contains(&CoreAxis::Dtype(DType::F16)) && !core.contains(&CoreAxis::Paged) && !core.contains(&CoreAxis::Splits));
    }

    /// FP8 caches: the core of a kernel that reads tiled records with arbitrary scales demands a
    /// tiled case and an amax-scaled one; a power-of-two reader is not asked for the latter, and a
    /// kernel that reads no FP8 for neither.
    #[test]
    fn fp8_formats_are_in_the_core_only_where_declared() {
        let everything = Profile::everything();
        let absorb = core(Op::DecodeAbsorb, &everything);
        assert!(absorb.contains(&CoreAxis::Kv(KvFormatKind::Tiled)) && absorb.contains(&CoreAxis::ArbitraryScales));
        assert!(!core(Op::DecodeGqa, &everything).contains(&CoreAxis::Kv(KvFormatKind::Tiled)));
        let mut pow2 = everything.clone();
        pow2.fp8.as_mut().unwrap().scale_read = ScaleRead::Pow2;
        let core_pow2 = core(Op::DecodeAbsorb, &pow2);
        assert!(core_pow2.contains(&CoreAxis::Kv(KvFormatKind::Tiled)) && !core_pow2.contains(&CoreAxis::ArbitraryScales));
        let none = core(Op::DecodeAbsorb, &everything.clone().without_fp8());
        assert!(!none.iter().any(|a| matches!(a, CoreAxis::Kv(_) | CoreAxis::ArbitraryScales)));
        let native: Vec<Case> = suite_cases().into_iter().filter(|c| c.kv() == KvFormat::Native).collect();
        let miss = missing(Op::DecodeAbsorb, &everything, &native);
        assert_eq!(
            miss,
            vec![
                CoreAxis::Kv(KvFormatKind::Tiled),
                CoreAxis::Kv(KvFormatKind::PerTensor),
                CoreAxis::ArbitraryScales,
                CoreAxis::Flavour(Fp8::E4m3fn),
                CoreAxis::Flavour(Fp8::E4m3fnuz)
            ]
        );
        let gqa: Vec<CoreAxis> = core(Op::DecodeGqa, &everything)
            .into_iter()
            .filter(|a| !a.met_by(&native[0]))
            .collect();
        assert!(gqa.contains(&CoreAxis::Kv(KvFormatKind::PerTensor)) && !gqa.contains(&CoreAxis::Kv(KvFormatKind::Tiled)));
    }
}
