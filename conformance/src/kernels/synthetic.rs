//! Synthetic kernels that test the tolerance rule itself: each returns the f64 truth plus an
//! error drawn from its own random stream, independent of the naive reference's, whose RMS is a
//! chosen multiple of the case's RMS bound (floors included). At 0.9× a correct rule
//! calls them CONFORMANT on every seed, at 1.1× NOT CONFORMANT on every seed; every per-case
//! check (specials, max error, cosine) passes at both, so only the precision families decide.
//!
//! The bound is the case's own, b = K_RMS · rms(e_naive) + FLOOR_RMS · u · rms(truth), from the
//! naive reference on the same inputs; the error's values are drawn from the kernel's own stream,
//! independent of the naive reference's errors. (Scaling to an independent draw's bound instead
//! was tried: with large logits in bf16 the naive error varies 3-4x from draw to draw, so such a
//! kernel's error does not track its case, and the per-case bounds rightly reject it; a real
//! kernel's rounding tracks its case as the naive one's does.) What varies from case to case is
//! then the drawn error's own RMS, about 1/sqrt(2N) relative.

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

    /// The case's RMS bound on an output, as the judge computes it (over the finite truth).
    fn bound(truth: &[f64], naive: &[f64], dtype: DType) -> f64 {
        let n_rms = rms_where_finite(naive.iter().zip(truth).map(|(n, t)| (n - t, *t)));
        let t_rms = rms_where_finite(truth.iter().map(|t| (*t, *t)));
        K_RMS * n_rms + FLOOR_RMS * dtype.unit_roundoff() * t_rms
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
        let naive = compute(inputs, Precision::Naive(case.dtype()));
        let mirrored = Mirror::of(&case).outputs;
        for (name, t) in &truth {
            let dtype = Self::dtype(&case, *name);
            let out = outputs.get_mut(*name)?;
            let dst = out.region_mut();
            if !self.target.hits(*name) {
                for (d, v) in dst.iter_mut().zip(t) {
                    *d = dtype.round_f32(*v as f32);
                }
                continue;
            }
            // Error-bearing positions: finite and nonzero (an empty row's exact 0 stays 0).
            let live = t.iter().filter(|v| v.is_finite() && **v != 0.0).count();
            let finite = t.iter().filter(|v| v.is_finite()).count();
            let target = self.ratio * Self::bound(t, values(&naive, *name), dtype);
            // The output's own rounding adds to the drawn error; take it out of the draw's share.
            let rounding = rms_where_finite(t.iter().map(|v| (dtype.round_f32(*v as f32) as f64 - v, *v)));
            let share = if live == 0 { 0.0 } else { finite as f64 / live as f64 };
            let scale = ((target * target - rounding * rounding).max(0.0) * share).sqrt();
            // One stream per (case seed, output), shared by a twin and its base; a mirrored
            // output's twin carries the error negated, as it carries the value.
            let tag = Op::ALL.iter().position(|o| *o == case.op()).unwrap_or(0) as u64 * 64 + *name as u64;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::lattice::mix(case.seed() ^ crate::lattice::mix(tag)));
            let sign = if case.poison() == Poison::Garbage && mirrored.contains(name) {
                -1.0
            } else {
                1.0
            };
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
