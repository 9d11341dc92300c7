//! Running a kernel over cases and judging each one as its profile declares.

use crate::case::{Case, DType, KvFormat, Op, Poison, ScaleRule};
use crate::definition::TensorName;
use crate::inputs::CaseInputs;
use crate::kernel::{Kernel, KernelError, Outputs};
use crate::profile::{EmptyLse, EmptyOut, LseBase, LseDtype, Profile, ScaleRead};
use crate::reference::{compute, Precision, Tensors};
use crate::tolerance::{check, SpecialMismatch};
use crate::verdict::Status;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The name of the threads kernels run on (a panic hook can recognise them).
pub const KERNEL_THREAD: &str = "gqla-kernel";

/// How often a polled run asks whether it was interrupted.
pub const POLL: Duration = Duration::from_millis(100);

/// A polled run that was interrupted while the kernel ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// A declared finite sentinel must match to this relative difference (a bf16 ulp).
const SENTINEL_REL: f64 = 1.0 / 128.0;

/// One case's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseResult {
    pub id: String,
    #[serde(flatten)]
    pub status: Status,
    pub seconds: f64,
}

/// A case's inputs and both references, computed once and shared by every kernel run on it.
pub struct Prepared {
    pub inputs: Arc<CaseInputs>,
    truth: Tensors,
    naive: Tensors,
    /// The naive reference reading FP8 scales in bf16 (`fp8.scale_read: arbitrary_bf16`), for a
    /// cache whose scales are not powers of two; computed when a kernel declares it.
    naive_bf16_scales: std::sync::OnceLock<Tensors>,
}

fn reference(tensors: &Tensors, name: TensorName) -> &[f64] {
    &tensors
        .iter()
        .find(|(n, _)| *n == name)
        .expect("the reference covers every output")
        .1
}

impl Prepared {
    pub fn new(case: &Case) -> Self {
        Self::from_inputs(CaseInputs::generate(case))
    }

    pub fn from_inputs(inputs: CaseInputs) -> Self {
        let truth = compute(&inputs, Precision::Exact);
        let naive = compute(&inputs, Precision::Naive(inputs.case.dtype()));
        Self {
            inputs: Arc::new(inputs),
            truth,
            naive,
            naive_bf16_scales: std::sync::OnceLock::new(),
        }
    }

    /// The naive reference for a kernel of `profile`: its FP8 scales read as declared (they
    /// differ only for a tiled cache with arbitrary scales).
    fn naive_for(&self, profile: &Profile) -> &Tensors {
        let bf16_reader = profile.fp8.as_ref().is_some_and(|f| f.scale_read == ScaleRead::ArbitraryBf16);
        let arbitrary = matches!(
            self.case().kv(),
            KvFormat::Tiled {
                scales: ScaleRule::Amax,
                ..
            }
        );
        if bf16_reader && arbitrary {
            let dtype = self.case().dtype();
            self.naive_bf16_scales
                .get_or_init(|| compute(&self.inputs, Precision::NaiveReading(dtype, ScaleRead::ArbitraryBf16)))
        } else {
            &self.naive
        }
    }

    pub fn case(&self) -> &Case {
        &self.inputs.case
    }

    /// An upper estimate of the bytes one case takes while it is judged: its inputs twice (the
    /// harness's copy and the kernel's), the outputs with their margins, and both references
    /// in f64. Computed from the id alone, before anything is allocated.
    pub fn estimate_bytes(case: &Case) -> u128 {
        let lens: Vec<u128> = (0..case.batch()).map(|b| case.seq_len(b) as u128).collect();
        let (b, tokens) = (lens.len() as u128, lens.iter().sum::<u128>());
        let slots = match case.page() {
            None => b * (lens.iter().copied().max().unwrap_or(0) + 3),
            Some(p) => {
                let p = p as u128;
                (3 * lens.iter().map(|l| l.div_ceil(p)).sum::<u128>() + 2) * p
            }
        };
        let width: u128 = crate::definition::cache_components(case).iter().map(|(_, w)| *w as u128).sum();
        let (g, dn, dv, dc) = (case.g() as u128, case.dn() as u128, case.dv() as u128, case.dc() as u128);
        let (inputs, outputs) = match case.op() {
            Op::CacheExpand => (slots * width + g * (dn + dv) * dc, tokens * g * (dn + dv)),
            _ => {
                let rows = b * case.sq() as u128 * case.h() as u128;
                (rows * case.q_width() as u128 + slots * width, rows * (case.out_width() as u128 + 1))
            }
        };
        2 * 4 * inputs + (4 + 2 * 8) * outputs + 4 * 2 * crate::kernel::MARGIN as u128
    }

    /// Flat indices of the rows with no visible key, as (row of [B, s_q], heads) pairs: the
    /// positions the empty-row conventions govern.
    fn empty_rows(&self) -> Vec<usize> {
        let c = self.case();
        if !c.op().is_decode() {
            return vec![];
        }
        (0..c.batch())
            .flat_map(|b| (0..c.sq()).map(move |j| (b, j)))
            .filter(|&(b, j)| c.visible(b, j) == 0)
            .map(|(b, j)| b * c.sq() + j)
            .collect()
    }

    /// Judge a kernel's outputs against the references, following the kernel's declaration.
    pub fn judge(&self, outputs: &Outputs, profile: &Profile) -> Status {
        let case = self.case();
        let expected = Outputs::for_case(case, profile);
        let counts = |o: &Outputs| (o.tensors.len(), o.indices.len(), o.bytes.len());
        if counts(outputs) != counts(&expected) {
            return Status::ShapeOrDtypeMismatch {
                detail: format!(
                    "(float, index, byte) output tensors {:?}, expected {:?}",
                    counts(outputs),
                    counts(&expected)
                ),
            };
        }
        for (t, e) in outputs.tensors.iter().zip(&expected.tensors) {
            if t.name != e.name || t.shape != e.shape {
                return Status::ShapeOrDtypeMismatch {
                    detail: format!("output `{}` has shape {:?}, expected `{}` {:?}", t.name, t.shape, e.name, e.shape),
                };
            }
        }
        let broken: Vec<String> = outputs.broken_canaries().iter().map(|n| n.to_string()).collect();
        let empty_rows = self.empty_rows();
        let checks = outputs
            .tensors
            .iter()
            .map(|t| {
                let raw: Vec<f64> = t.region().iter().map(|v| *v as f64).collect();
                let (truth, naive) = (reference(&self.truth, t.name), reference(self.naive_for(profile), t.name));
                // Row width of this tensor in elements: the empty-row conventions cover whole rows.
                let (per_row, special) = match t.name {
                    // A validated profile names every declared dtype; otherwise the suite's own convention.
                    TensorName::Out => (
                        case.h() * case.out_width(),
                        Special::Out(profile.out_empty_row.get(case.dtype()).unwrap_or(EmptyOut::Zero)),
                    ),
                    TensorName::Lse => (
                        case.h(),
                        Special::Lse(
                            profile
                                .lse
                                .written()
                                .expect("lse is expected only when declared")
                                .empty_row
                                .get(case.dtype())
                                .unwrap_or(EmptyLse::NegInf),
                        ),
                    ),
                    _ => (0, Special::None),
                };
                let mut empty = vec![false; raw.len()];
                for &r in &empty_rows {
                    empty[r * per_row..(r + 1) * per_row].fill(true);
                }
                let (mut u, mut got, mut base) = (case.dtype().unit_roundoff(), raw.clone(), naive.to_vec());
                if let Some(lse) = profile.lse.written().filter(|_| t.name == TensorName::Lse) {
                    if lse.dtype == LseDtype::F32 {
                        u = DType::F32.unit_roundoff();
                    } else {
                        base.iter_mut().for_each(|v| *v = case.dtype().round_f32(*v as f32) as f64);
                    }
                    if lse.base == LseBase::Two {
                        got.iter_mut().for_each(|v| *v *= std::f64::consts::LN_2);
                    }
                }
                let (mut k, mut w, mut n) = (Vec::new(), Vec::new(), Vec::new());
                let (mut unspecified, mut sentinel_misses) = (0, Vec::new());
                for i in 0..raw.len() {
                    let (want, nv) = if empty[i] {
                        match special {
                            Special::Out(EmptyOut::Zero) | Special::Lse(EmptyLse::NegInf) | Special::None => (truth[i], base[i]),
                            Special::Out(EmptyOut::Nan) => (f64::NAN, f64::NAN),
                            Special::Lse(EmptyLse::PosInf) => (f64::INFINITY, f64::INFINITY),
                            Special::Out(EmptyOut::Unspecified) | Special::Lse(EmptyLse::Unspecified) => {
                                unspecified += 1;
                                continue;
                            }
                            Special::Lse(EmptyLse::Finite(v)) => {
                                let v = v as f64;
                                if !(raw[i].is_finite() && (raw[i] - v).abs() <= SENTINEL_REL * v.abs()) {
                                    sentinel_misses.push(SpecialMismatch {
                                        index: i,
                                        got: raw[i],
                                        want: format!("{v:e} (declared sentinel)"),
                                    });
                                }
                                continue;
                            }
                        }
                    } else {
                        (truth[i], base[i])
                    };
                    k.push(got[i]);
                    w.push(want);
                    n.push(nv);
                }
                let mut c = check(t.name, &k, &w, &n, u, unspecified);
                if let Some(first) = sentinel_misses.first() {
                    if c.first_special_mismatch.is_none() {
                        c.first_special_mismatch = Some(first.clone());
                    }
                    c.special_mismatches += sentinel_misses.len();
                }
                c
            })
            .collect();
        Status::judge(checks, broken)
    }

    /// Run `kernel` on this case with a time limit, catching panics; also returns the outputs.
    /// The kernel gets its own copy of the inputs, compared bitwise with the originals after the
    /// call.
    pub fn run(&self, kernel: &Arc<dyn Kernel>, profile: &Profile, timeout: Duration) -> (CaseResult, Option<Outputs>) {
        self.run_polled(kernel, profile, timeout, || false)
            .expect("a run that is never interrupted completes")
    }

    /// [`Self::run`], asking `interrupted` every [`POLL`] while the kernel runs: when it says
    /// yes, the wait ends (the kernel's thread is left to finish, as after a timeout) with
    /// [`Interrupted`].
    pub fn run_polled(
        &self,
        kernel: &Arc<dyn Kernel>,
        profile: &Profile,
        timeout: Duration,
        mut interrupted: impl FnMut() -> bool,
    ) -> Result<(CaseResult, Option<Outputs>), Interrupted> {
        let start = Instant::now();
        let id = self.case().to_string();
        let result = |status, outputs| {
            Ok((
                CaseResult {
                    id: id.clone(),
                    status,
                    seconds: start.elapsed().as_secs_f64(),
                },
                outputs,
            ))
        };
        if let Some(why) = profile.excludes(self.case()) {
            return result(Status::NotSupported { reason: why.to_string() }, None);
        }
        let (tx, rx) = mpsc::channel();
        let (k, inp, prof) = (kernel.clone(), self.inputs.clone(), profile.clone());
        let spawned = std::thread::Builder::new().name(KERNEL_THREAD.into()).spawn(move || {
            let mut own = (*inp).clone();
            let mut out = Outputs::for_case(&inp.case, &prof);
            let r = catch_unwind(AssertUnwindSafe(|| k.run(&mut own, &mut out)));
            let untouched = own.same_bits(&inp);
            let _ = tx.send((r, untouched, out));
        });
        if let Err(e) = spawned {
            return result(
                Status::RuntimeError {
                    message: format!("cannot start the kernel thread: {e}"),
                },
                None,
            );
        }
        let received = loop {
            let left = timeout.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.min(POLL)) {
                Err(mpsc::RecvTimeoutError::Timeout) if left > POLL => {
                    if interrupted() {
                        return Err(Interrupted);
                    }
                }
                r => break r,
            }
        };
        match received {
            Err(_) => result(
                Status::Timeout {
                    seconds: timeout.as_secs_f64(),
                },
                None,
            ),
            Ok((Err(panic), _, _)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                result(
                    Status::RuntimeError {
                        message: format!("kernel panicked: {msg}"),
                    },
                    None,
                )
            }
            Ok((Ok(_), false, _)) => result(
                Status::InputMutated {
                    detail: "the kernel wrote to its inputs (they differ bitwise from the originals after the call)".into(),
                },
                None,
            ),
            Ok((Ok(Err(KernelError::InputsWritten(detail))), _, _)) => result(Status::InputMutated { detail }, None),
            Ok((Ok(Err(KernelError::BadOutputs(detail))), _, _)) => result(Status::ShapeOrDtypeMismatch { detail }, None),
            Ok((Ok(Err(e @ (KernelError::Declined(_) | KernelError::Runtime(_)))), _, _)) => {
                result(Status::RuntimeError { message: e.to_string() }, None)
            }
            Ok((Ok(Ok(())), _, out)) => {
                let status = self.judge(&out, profile);
                result(status, Some(out))
            }
        }
    }
}

/// Which convention governs the empty rows of a tensor.
#[derive(Clone, Copy)]
enum Special {
    Out(EmptyOut),
    Lse(EmptyLse),
    None,
}

/// The first element where two runs' outputs differ bitwise, in words (None: identical).
pub fn first_difference(twin: &Outputs, primary: &Outputs, mirrored: &[TensorName]) -> Option<String> {
    for (a, b) in twin.tensors.iter().zip(&primary.tensors) {
        let negated = mirrored.contains(&a.name);
        // Mirrored: the negation, bit for bit, except that a zero may carry either sign and a
        // NaN any payload (a kernel writes a literal 0 or NaN for an empty row).
        let same = |x: f32, y: f32| {
            if !negated {
                x.to_bits() == y.to_bits()
            } else {
                (x.is_nan() && y.is_nan()) || (x == 0.0 && y == 0.0) || x.to_bits() == (-y).to_bits()
            }
        };
        let differ = a.region().iter().zip(b.region()).filter(|(x, y)| !same(**x, **y)).count();
        if let Some(i) = a.region().iter().zip(b.region()).position(|(x, y)| !same(*x, *y)) {
            return Some(format!(
                "`{}` differs from the NaN-poisoned run{} at {differ} element(s), first at flat index {i} ({} against {}{}): \
                 the output depends on memory a correct kernel never reads, or was not computed from this case's inputs",
                a.name,
                if negated { " negated (its values are mirrored)" } else { "" },
                a.region()[i],
                if negated { "-" } else { "" },
                b.region()[i]
            ));
        }
    }
    None
}

/// Pairs each `poison=garbage` twin with the NaN-poison case just before it in lattice order:
/// the twin must pass and equal that case's outputs bitwise, its mirrored outputs negated
/// ([`crate::inputs::Mirror`]).
#[derive(Default)]
pub struct Twins {
    /// The last passing NaN-poison case and its outputs.
    last: Option<(Case, Outputs)>,
}

impl Twins {
    /// Record a judged case; a passing twin is held against its NaN-poison case.
    pub fn pair(&mut self, case: &Case, mut result: CaseResult, outputs: Option<Outputs>) -> CaseResult {
        match (case.poison(), outputs) {
            (Poison::Nan, Some(out)) if result.status.passed() => self.last = Some((case.clone(), out)),
            (Poison::Garbage, Some(out)) if result.status.passed() => {
                if let Some((_, primary)) = self.last.as_ref().filter(|(c, _)| Some(c) == case.nan_twin().as_ref()) {
                    if let Some(detail) = first_difference(&out, primary, crate::inputs::Mirror::of(case).outputs) {
                        result.status = Status::PoisonDependent { detail };
                    }
                }
            }
            _ => {}
        }
        result
    }
}

/// Runs one kernel over cases in lattice order, judging each by the kernel's profile and its
/// twins against their NaN-poison cases.
pub struct Session {
    kernel: Arc<dyn Kernel>,
    /// Taken once, before anything runs: every case is judged by the same declaration.
    pub profile: Profile,
    timeout: Duration,
    twins: Twins,
}

impl Session {
    pub fn new(kernel: Arc<dyn Kernel>, timeout: Duration) -> Self {
        Self {
            profile: kernel.profile(),
            kernel,
            timeout,
            twins: Twins::default(),
        }
    }

    pub fn kernel(&self) -> &Arc<dyn Kernel> {
        &self.kernel
    }

    pub fn run(&mut self, p: &Prepared) -> CaseResult {
        let (result, outputs) = p.run(&self.kernel, &self.profile, self.timeout);
        self.twins.pair(p.case(), result, outputs)
    }
}

#[cfg(test)]
mod memory_tests {
    use super::Prepared;
    use crate::inputs::CaseInputs;
    use crate::kernel::Outputs;
    use crate::profile::Profile;

    /// The estimate bounds what a case really allocates, and is not wildly above it.
    #[test]
    fn memory_estimates_bound_the_real_allocations() {
        for case in crate::lattice::suite_cases()
            .into_iter()
            .filter(|c| (0..c.batch()).all(|b| c.seq_len(b) <= 200))
        {
            let inp = CaseInputs::generate(&case);
            let floats = inp.q.len() + inp.w_ukv.len() + inp.cache.components.iter().map(|c| c.len()).sum::<usize>();
            let outs: usize = Outputs::for_case(&case, &Profile::everything())
                .tensors
                .iter()
                .map(|t| t.len())
                .sum();
            let real = (2 * 4 * floats + (4 + 2 * 8) * outs) as u128;
            let est = Prepared::estimate_bytes(&case);
            assert!(est >= real && est <= 4 * real + (1 << 16), "{case}: estimate {est}, real {real}");
        }
    }
}

#[cfg(test)]
mod twin_tests {
    use super::first_difference;
    use crate::case::{Op, Poison};
    use crate::inputs::{CaseInputs, Mirror};
    use crate::kernel::{Kernel, Outputs};
    use crate::kernels::ReferenceF32;
    use crate::lattice::suite_cases;
    use crate::profile::Profile;

    /// Every operation's twin: the honest outputs are the base's with the mirrored ones negated,
    /// bit for bit; the base's own outputs, copied, are not.
    #[test]
    fn mirrored_twins_match_their_base_negated_and_a_copy_does_not() {
        for op in Op::ALL {
            let twin = suite_cases()
                .into_iter()
                .find(|c| c.op() == op && c.poison() == Poison::Garbage)
                .unwrap();
            let base = twin.nan_twin().unwrap();
            let run = |c| {
                let mut out = Outputs::for_case(c, &Profile::everything());
                ReferenceF32.run(&mut CaseInputs::generate(c), &mut out).unwrap();
                out
            };
            let (b, t) = (run(&base), run(&twin));
            let mirrored = Mirror::of(&twin).outputs;
            assert_eq!(first_difference(&t, &b, mirrored), None, "{twin}");
            let copied = first_difference(&b, &b, mirrored).expect("a copy differs");
            assert!(copied.contains("negated (its values are mirrored)"), "{copied}");
        }
    }
}
