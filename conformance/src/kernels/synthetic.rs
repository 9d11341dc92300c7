//! Synthetic kernels that test the tolerance rule itself: each returns the f64 truth plus an
//! error drawn from its own random stream, independent of the naive reference's, whose RMS is a
//! chosen multiple of the case's expected RMS bound (floors included). At 0.9× a correct rule
//! calls them CONFORMANT on every seed, at 1.1× NOT CONFORMANT on every seed; every per-case
//! check (specials, max error, cosine) passes at both, so only the precision families decide.
//!
//! The expected bound is measured, not assumed: b / rms(truth) = K_RMS · rms(e_naive) /
//! rms(truth) + FLOOR_RMS · u on an independent draw of the same case (another seed), times this
//! case's rms(truth); so the noise of the judged case's own naive error enters the verdict as it
//! does for a real kernel.

use crate::case::{Case, DType, Op, Poison};
use crate::definition::TensorName;
use crate::inputs::{CaseInputs, Mirror};
use crate::kernel::{Kernel, KernelError, KernelIdentity, Outputs};
use crate::profile::Profile;
use crate::reference::{compute, Precision, Tensors};
use crate::tolerance::{FLOOR_RMS, K_RMS};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Which outputs carry the chosen error; the others are the truth rounded to their dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The value outputs: `out` of the decode operations, `k` and `v` of cache.expand.
    Values,
    /// The decode operations' LSE.
    Lse,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Values, Target::Lse];

    pub fn name(self) -> &'static str {
        match self {
            Target::Values => "out",
            Target::Lse => "lse",
        }
    }

    fn hits(self, tensor: TensorName) -> bool {
        match self {
            Target::Values => matches!(tensor, TensorName::Out | TensorName::K | TensorName::V),
            Target::Lse => tensor == TensorName::Lse,
        }
    }
}

/// The truth plus an error of `ratio` times the expected RMS bound on `target`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Synthetic {
    pub target: Target,
    pub ratio: f64,
}

/// The ratios the acceptance runs use: just inside and just outside the bound.
pub const RATIOS: [f64; 2] = [0.9, 1.1];

fn values(t: &Tensors, name: TensorName) -> &[f64] {
    &t.iter().find(|(n, _)| *n == name).expect("the reference covers every output").1
}

/// RMS over the positions where the truth is finite (the judge's positions).
fn rms_where_finite(x: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut sq, mut n) = (0.0, 0usize);
    for (v, t) in x {
        if t.is_finite() {
            sq += v * v;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        (sq / n as f64).sqrt()
    }
}

impl Synthetic {
    /// The dtype an output is stored in, and whose roundoff its bound uses (the LSE is f32).
    fn dtype(case: &Case, tensor: TensorName) -> DType {
        if tensor == TensorName::Lse {
            DType::F32
        } else {
            case.dtype()
        }
    }

    /// The expected RMS bound of `tensor` on cases like `case` relative to rms(truth), measured
    /// on an independent draw: K_RMS · rms(e_naive) / rms(truth) + FLOOR_RMS · u. (Relative,
    /// because the outputs' scale varies from draw to draw, with large logits most.)
    fn expected_relative_bound(case: &Case, tensor: TensorName) -> f64 {
        // The NaN-poison base of a twin: a twin's bound is its base's.
        let other = case
            .with_poison(Poison::Nan)
            .with_seed(crate::lattice::mix(case.seed() ^ 0x0005_1e70_ca11_b8a7).max(1));
        let inputs = CaseInputs::generate(&other);
        let (truth, naive) = (compute(&inputs, Precision::Exact), compute(&inputs, Precision::Naive(case.dtype())));
        let (t, n) = (values(&truth, tensor), values(&naive, tensor));
        let n_rms = rms_where_finite(n.iter().zip(t).map(|(n, t)| (n - t, *t)));
        let t_rms = rms_where_finite(t.iter().map(|t| (*t, *t)));
        let relative = if t_rms > 0.0 { n_rms / t_rms } else { 0.0 };
        K_RMS * relative + FLOOR_RMS * Self::dtype(case, tensor).unit_roundoff()
    }
}

impl Kernel for Synthetic {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: format!("synthetic-{}-{}", self.target.name(), self.ratio),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "the truth plus an independent Gaussian error of {}x the expected RMS bound on {} (a test of the tolerance rule)",
                self.ratio,
                self.target.name()
            ),
        }
    }

    fn profile(&self) -> Profile {
        Profile::everything()
    }

    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        let case = inputs.case.clone();
        let truth = compute(inputs, Precision::Exact);
        let mirrored = Mirror::of(&case).outputs;
        for (name, t) in &truth {
            let dtype = Self::dtype(&case, *name);
            let out = outputs.get_mut(*name)?;
            let dst = out.region_mut();
            if !self.target.hits(*name) || !(case.op().is_decode() || case.op() == Op::CacheExpand) {
                for (d, v) in dst.iter_mut().zip(t) {
                    *d = dtype.round_f32(*v as f32);
                }
                continue;
            }
            // Error-bearing positions: finite and nonzero (an empty row's exact 0 stays 0).
            let live = t.iter().filter(|v| v.is_finite() && **v != 0.0).count();
            let finite = t.iter().filter(|v| v.is_finite()).count();
            let t_rms = rms_where_finite(t.iter().map(|v| (*v, *v)));
            let target = self.ratio * Self::expected_relative_bound(&case, *name) * t_rms;
            // The output's own rounding adds to the drawn error; take it out of the draw's share.
            let rounding = rms_where_finite(t.iter().map(|v| (dtype.round_f32(*v as f32) as f64 - v, *v)));
            let share = if live == 0 { 0.0 } else { finite as f64 / live as f64 };
            let scale = ((target * target - rounding * rounding).max(0.0) * share).sqrt();
            // One stream per (case seed, output), shared by a twin and its base; a mirrored
            // output's twin carries the error negated, as it carries the value.
            let tag = Op::ALL.iter().position(|o| *o == case.op()).unwrap_or(0) as u64 * 64 + *name as u64;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::lattice::mix(case.seed() ^ crate::lattice::mix(tag)));
            let sign = if case.poison() == Poison::Garbage && mirrored.contains(name) { -1.0 } else { 1.0 };
            for (d, v) in dst.iter_mut().zip(t) {
                let g: f64 = StandardNormal.sample(&mut rng);
                *d = if v.is_finite() && *v != 0.0 {
                    dtype.round_f32((v + sign * scale * g) as f32)
                } else {
                    dtype.round_f32(*v as f32)
                };
            }
        }
        Ok(())
    }
}
