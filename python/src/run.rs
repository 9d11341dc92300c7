//! `gqla._native.Run`: one certification of a Python kernel, driven a case at a time from Python
//! (the package's `certify`, `stability` and its pytest plugin all run through it), judged by the
//! suite's own [`Prepared::run`], twin comparison and [`report`]; and `Stability`, the tally of
//! several runs on fresh seeds.

use crate::case::PyCase;
use crate::kernel::PyKernel;
use crate::{parse_profile, selection};
use gqla_conformance::case::{Case, Poison};
use gqla_conformance::certify::{report, RunInfo};
use gqla_conformance::inputs::Mirror;
use gqla_conformance::kernel::{Kernel, KernelIdentity, Outputs};
use gqla_conformance::report::{Report, SeedOrigin};
use gqla_conformance::runner::{first_difference, CaseResult, Interrupted, Prepared};
use gqla_conformance::selection::fresh_seed;
use gqla_conformance::stability::Stability;
use gqla_conformance::verdict::Status;
use gqla_conformance::Profile;
use pyo3::exceptions::{PyIndexError, PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set while a kernel runs (or further draws are made) in this process: a kernel that
/// certifies from inside a certification would nest runs on ever more threads.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Holds [`RUNNING`] for its lifetime.
struct Running;

impl Running {
    fn enter() -> PyResult<Self> {
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err(
                "gqla: a kernel is already being certified in this process (is gqla.certify called from inside a kernel?)",
            ));
        }
        Ok(Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// How long past its time limit a kernel may keep the interpreter before the process gives up:
/// 60 s, or `GQLA_HELD_LIMIT_S` seconds (the tests use a short one).
fn held_limit() -> Duration {
    std::env::var("GQLA_HELD_LIMIT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// This thread needs the interpreter to judge a case, to poll for Ctrl-C and to report a
/// TIMEOUT; a kernel that holds it (a C extension that never releases the GIL) would hang the
/// process. A thread that needs no interpreter watches: when `back` is still unset
/// [`held_limit`] past the case's time limit (its preparation included), it says so and exits
/// with status 124.
fn watchdog(case: String, back: Arc<AtomicBool>, timeout: Duration) {
    let limit = held_limit();
    let _ = std::thread::Builder::new().name("gqla-watchdog".into()).spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout + limit {
            if back.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "gqla: the kernel has held the Python interpreter for {} s past the {} s time limit of case `{case}`: exiting (status 124) without a certificate",
            limit.as_secs(),
            timeout.as_secs_f64()
        );
        std::process::exit(124);
    });
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("results serialize")
}

/// One kernel's certification over the cases a selection and profile give.
#[pyclass(name = "Run", module = "gqla._native")]
pub struct PyRun {
    kernel: Arc<dyn Kernel>,
    profile: Arc<Profile>,
    timeout: Duration,
    filter: String,
    seed: u64,
    origin: SeedOrigin,
    /// The selected cases as the profile draws them, in suite order.
    cases: Vec<Case>,
    results: Vec<Option<CaseResult>>,
    /// Outputs of passing cases whose twin (or base) has not been judged yet: twins are compared
    /// with their base whatever order the cases run in.
    held: HashMap<usize, Outputs>,
    /// The case that timed out (or was interrupted): its call may still hold the interpreter, so
    /// no later case runs.
    stopped: Option<String>,
    report: Option<Report>,
}

impl PyRun {
    fn index_of(&self, case: &Case) -> Option<usize> {
        self.cases.iter().position(|c| c == case)
    }

    /// Compare a passing twin's outputs with its base's, once both are known; the twin's result
    /// becomes POISON_DEPENDENT when they differ.
    fn pair(&mut self, index: usize, outputs: Option<Outputs>) {
        let Some(out) = outputs.filter(|_| self.results[index].as_ref().is_some_and(|r| r.status.passed())) else {
            return;
        };
        let case = &self.cases[index];
        let (twin, base) = match case.poison() {
            Poison::Garbage => match case.nan_twin().and_then(|b| self.index_of(&b)) {
                Some(b) => (index, b),
                None => return,
            },
            Poison::Nan => match self.cases.iter().position(|c| c.nan_twin().as_ref() == Some(case)) {
                Some(t) => (t, index),
                None => return,
            },
        };
        let other = if twin == index { base } else { twin };
        let Some(held) = self.held.remove(&other) else {
            // The other half has not run yet (or failed, which is its own verdict).
            if self.results[other].is_none() {
                self.held.insert(index, out);
            }
            return;
        };
        let (twin_out, base_out) = if twin == index { (&out, &held) } else { (&held, &out) };
        let detail = first_difference(twin_out, base_out, Mirror::of(&self.cases[twin]).outputs);
        if let (Some(detail), Some(r)) = (detail, self.results[twin].as_mut()) {
            r.status = Status::PoisonDependent { detail };
        }
    }

    fn run_info(&self) -> RunInfo<'_> {
        RunInfo {
            filter: &self.filter,
            seed: self.seed,
            origin: self.origin,
            timeout: self.timeout,
        }
    }

    /// The cases that have a result, with their results, in suite order.
    fn judged(&self) -> (Vec<Case>, Vec<CaseResult>) {
        self.cases
            .iter()
            .zip(&self.results)
            .filter_map(|(c, r)| Some((c.clone(), r.clone()?)))
            .unzip()
    }
}

#[pymethods]
impl PyRun {
    /// A certification of `kernel(case, tensors)` (the package's adapter) on the cases of `ops`
    /// and id prefixes `filters` that `profile` selects, drawn from `seed` (a fresh one if None).
    #[new]
    #[pyo3(signature = (kernel, profile, name, ops=Vec::new(), filters=Vec::new(), seed=None, version=String::new(), description=String::new(), timeout=600.0, environment=BTreeMap::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        kernel: Py<PyAny>,
        profile: &str,
        name: String,
        ops: Vec<String>,
        filters: Vec<String>,
        seed: Option<u64>,
        version: String,
        description: String,
        timeout: f64,
        environment: BTreeMap<String, String>,
    ) -> PyResult<Self> {
        let profile = Arc::new(parse_profile(profile)?);
        let selection = selection(ops, filters)?;
        let chosen = seed.unwrap_or_else(fresh_seed);
        let timeout = Duration::try_from_secs_f64(timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| PyValueError::new_err(format!("timeout {timeout}: expected a positive number of seconds")))?;
        let cases: Vec<Case> = selection
            .cases(chosen)
            .map_err(|e| PyValueError::new_err(e.to_string()))?
            .iter()
            .map(|c| profile.draw(c))
            .collect();
        let kernel: Arc<dyn Kernel> = Arc::new(PyKernel {
            call: kernel,
            identity: KernelIdentity {
                name,
                version,
                description,
            },
            profile: profile.clone(),
            environment,
        });
        Ok(Self {
            kernel,
            profile,
            timeout,
            filter: selection.to_string(),
            seed: chosen,
            origin: SeedOrigin::of_run(chosen, seed.is_some()),
            results: vec![None; cases.len()],
            cases,
            held: HashMap::new(),
            stopped: None,
            report: None,
        })
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.seed
    }

    /// How many cases the run has (excluded ones included).
    fn __len__(&self) -> usize {
        self.cases.len()
    }

    /// Who chose the seed, in the certificate's words.
    #[getter]
    fn origin(&self) -> &'static str {
        self.origin.text()
    }

    /// The selected cases as the profile draws them, each with why the profile excludes it
    /// (None: the kernel runs it).
    fn cases(&self) -> Vec<(PyCase, Option<String>)> {
        self.cases
            .iter()
            .map(|c| {
                let excluded = self.profile.excludes(c).map(|why| why.to_string());
                (PyCase::new(c.clone(), self.profile.clone()), excluded)
            })
            .collect()
    }

    /// Run the kernel on case `index` and judge it; its result (report.json's form) as JSON.
    /// A case already judged returns its result again.
    fn call(&mut self, py: Python<'_>, index: usize) -> PyResult<String> {
        let case = self
            .cases
            .get(index)
            .cloned()
            .ok_or_else(|| PyIndexError::new_err(format!("case {index}: the run has {} cases", self.cases.len())))?;
        if let Some(r) = &self.results[index] {
            return Ok(json(r));
        }
        let _running = Running::enter()?;
        let done = |status| CaseResult {
            id: case.to_string(),
            status,
            seconds: 0.0,
        };
        let (result, outputs) = if let Some(why) = self.profile.excludes(&case) {
            // Decided by the declaration: no inputs drawn, no reference computed.
            (done(Status::NotSupported { reason: why.to_string() }), None)
        } else if let Some(why) = &self.stopped {
            let message = format!("not run: {why} before it, and its call may still hold the interpreter");
            (done(Status::RuntimeError { message }), None)
        } else {
            let (kernel, profile, timeout) = (self.kernel.clone(), (*self.profile).clone(), self.timeout);
            // Ctrl-C while the kernel runs: Python's handler raises in this (the main) thread,
            // which the wait asks every POLL.
            let mut signalled: Option<PyErr> = None;
            let back = Arc::new(AtomicBool::new(false));
            watchdog(case.to_string(), back.clone(), timeout);
            let ran = py.detach(|| {
                Prepared::new(&case).run_polled(&kernel, &profile, timeout, || {
                    Python::attach(|py| py.check_signals()).map_err(|e| signalled = Some(e)).is_err()
                })
            });
            back.store(true, Ordering::SeqCst);
            match ran {
                Ok(done) => done,
                Err(Interrupted) => {
                    // Its call goes on in its thread: no later case may run beside it.
                    self.stopped = Some(format!("case `{case}` was interrupted"));
                    return Err(signalled.unwrap_or_else(|| PyKeyboardInterrupt::new_err("")));
                }
            }
        };
        if matches!(result.status, Status::Timeout { .. }) {
            self.stopped = Some(format!("case `{case}` timed out"));
        }
        self.results[index] = Some(result);
        self.pair(index, outputs);
        Ok(json(self.results[index].as_ref().expect("just judged")))
    }

    /// The certificate of the cases run so far: BORDERLINE precision families drawn again on the
    /// kernel, then judged; written to `out` when given. Returns report.json's text and the
    /// verdict line.
    #[pyo3(signature = (out=None))]
    fn finish(&mut self, py: Python<'_>, out: Option<PathBuf>) -> PyResult<(String, String)> {
        let _running = Running::enter()?;
        let (_, results) = self.judged();
        let kernel = self.kernel.clone();
        let run = self.run_info();
        let done = py.detach(|| report(&kernel, results, &run, |_| {}));
        if let Some(dir) = out {
            done.write(&dir)
                .map_err(|e| PyRuntimeError::new_err(format!("cannot write the certificate to {}: {e}", dir.display())))?;
        }
        let text = json(&done);
        let line = done.verdict_line();
        self.report = Some(done);
        Ok((text, line))
    }
}

/// Per case shape, on how many of several runs' seeds it passed; per precision family, on how
/// many seeds it was PRECISE (`gqla certify --seeds N`'s tally).
#[pyclass(name = "Stability", module = "gqla._native")]
#[derive(Default)]
pub struct PyStability {
    inner: Stability,
}

#[pymethods]
impl PyStability {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Record a finished run.
    fn record(&mut self, run: PyRef<'_, PyRun>) -> PyResult<()> {
        let report = run
            .report
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("the run is not finished (call finish first)"))?;
        let (cases, results) = run.judged();
        self.inner.record(run.seed, &cases, &results);
        self.inner.record_draws(run.seed, &report.precision_draws);
        self.inner.record_families(run.seed, &report.precision);
        Ok(())
    }

    /// Something was selected, and every case and precision family held on every seed.
    #[getter]
    fn stable(&self) -> bool {
        self.inner.stable()
    }

    #[getter]
    fn seeds(&self) -> Vec<u64> {
        self.inner.seeds().to_vec()
    }

    /// The summary `gqla certify --seeds N` prints, for `kernel`.
    fn summary(&self, kernel: &str) -> String {
        self.inner.summary(kernel)
    }

    /// (selected case shapes, [(shape, passed, ran, first failure)] for those that failed on
    /// some seed, [(family, precise seeds, seeds, lowest ratio, highest ratio)] for the families
    /// not PRECISE on every seed).
    #[allow(clippy::type_complexity)]
    fn tally(&self) -> (usize, Vec<(String, u32, u32, Option<String>)>, Vec<(String, u32, u32, f64, f64)>) {
        let unstable = self
            .inner
            .unstable()
            .map(|(id, t)| (id.to_string(), t.passed, t.ran, t.first_failure.clone()))
            .collect();
        let families = self
            .inner
            .families()
            .filter(|(_, f)| f.precise != f.seeds)
            .map(|(k, f)| (k.to_string(), f.precise, f.seeds, f.min_ratio, f.max_ratio))
            .collect();
        (self.inner.selected().count(), unstable, families)
    }

    /// seeds.md: the seeds, and per selected case on how many it passed.
    fn markdown(&self, kernel: &str, origin: &str) -> String {
        self.inner.markdown(kernel, origin)
    }
}
