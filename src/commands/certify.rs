//! `gqla certify`: run a kernel over the conformance suite, as its profile declares, and write
//! its certificate.

use super::CliError;
use gqla_conformance::case::Case;
use gqla_conformance::certify::{run_cases, RunInfo};
use gqla_conformance::kernel_spec::{CudaBackend, KernelSpec};
use gqla_conformance::kernels::synthetic::{Target, RATIOS};
use gqla_conformance::kernels::{CandleCpu, FlashCpu, ReferenceF32, Synthetic};
use gqla_conformance::lattice::SUITE_VERSION;
use gqla_conformance::mutation::mutation_summary;
use gqla_conformance::pack::{certify_pack, outputs_dir, PackRun};
use gqla_conformance::precision::families_of;
use gqla_conformance::report::{plain, Report, SeedOrigin};
use gqla_conformance::runner::{CaseResult, Prepared};
use gqla_conformance::selection::fresh_seed;
use gqla_conformance::stability::Stability;
use gqla_conformance::{Kernel, Selection};
use gqla_cuda::{CudaKernel, EmuKernel};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The kernel: `auto` (`cuda` when a GPU is present, else `builtin`), `builtin`
    /// (reference-f32, flash-cpu with the mutation catalogue, candle, and cuda-emu, each with its
    /// own certificate under `OUT/<kernel>/`), `reference-f32`, `flash-cpu`, `candle`, `cuda`
    /// (GPU 0: mma.sync tensor cores for bf16/f16, SIMT for f32), `cuda-simt` (GPU 0, SIMT for
    /// every dtype), `cuda-mma`, `cuda-wgmma` (GPU 0, one attention kernel for every case it takes:
    /// mma.sync, or Hopper wgmma on sm_90), `cuda-emu` and `cuda-emu-{simt,mma,wgmma}` (the CUDA
    /// kernel source on the host emulator, with checked memory accesses and barriers), or
    /// `external:DIR` (a vector pack; the kernel's outputs and kernel.json in `--outputs`), or
    /// `synthetic` (the truth plus an independent error of 0.9x and 1.1x the RMS bound on out
    /// and on lse, four kernels that test the tolerance rule; one: `synthetic-lse-1.1`).
    #[arg(long, default_value = "auto", value_parser = |s: &str| s.parse::<KernelSpec>().map_err(|e| e.to_string()))]
    kernel: KernelSpec,
    /// Only cases whose id starts with this prefix (e.g. `gqla.decode.gqa`); repeat for several.
    #[arg(long = "filter", value_name = "PREFIX")]
    filters: Vec<String>,
    /// Where report.json, report.md and junit.xml go.
    #[arg(long, default_value = "certificate")]
    out: std::path::PathBuf,
    /// Per-case time limit in seconds (in-process kernels).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400), default_value_t = 300)]
    timeout: u64,
    /// Draw every case from this suite seed (0: the published suite); default: a fresh seed,
    /// recorded in the certificate. A pack's seed is its manifest's.
    #[arg(long)]
    seed: Option<u64>,
    /// Stability mode: certify on N fresh seeds and report, per case, on how many it passed. With
    /// external:DIR, DIR is a set of N packs (`vectors export --seeds N`), one outputs directory
    /// per pack in `--outputs`.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u32>,
    /// external:DIR only: the directory holding the kernel's NNNNN.outputs.safetensors and
    /// kernel.json (default: the pack itself).
    #[arg(long)]
    outputs: Option<std::path::PathBuf>,
    /// external:DIR only: the kernel's profile (JSON), instead of the one in kernel.json.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
}

/// Exit status of a certification: 0 conformant, 1 otherwise: NOT CONFORMANT, NOTHING CERTIFIED,
/// and PARTIAL. PARTIAL exits 1 because a CI gate reads only the status: a run whose cases leave
/// part of the coverage core unexercised (a narrowed profile, a filter) must not turn it green.
/// What did pass is still certified, and the verdict line names what is missing.
pub enum Outcome {
    Conformant,
    Rejected,
}

/// An in-process kernel to certify, and whether its certificate carries the mutation catalogue.
struct Candidate {
    kernel: Arc<dyn Kernel>,
    with_mutants: bool,
    /// The GPU the kernel runs on, if any: checked for a hung kernel once the certificate is out.
    gpu: Option<Arc<CudaKernel>>,
}

fn candidate(kernel: Arc<dyn Kernel>, with_mutants: bool) -> Candidate {
    Candidate {
        kernel,
        with_mutants,
        gpu: None,
    }
}

fn gpu_candidate(kernel: CudaKernel) -> Candidate {
    let kernel = Arc::new(kernel);
    Candidate {
        kernel: kernel.clone(),
        with_mutants: false,
        gpu: Some(kernel),
    }
}

/// After the certificates are written: a kernel that hung is an error of its own (exit 124).
fn hung(candidates: &[Candidate]) -> Result<(), CliError> {
    for c in candidates {
        if let Some(source) = c.gpu.as_ref().and_then(|k| k.gpu().hung_error("a case")) {
            return Err(CliError::Cuda {
                context: format!("certifying {} (the certificate lists the cases that ran)", c.kernel.identity().name),
                source,
            });
        }
    }
    Ok(())
}

fn builtin() -> Vec<Candidate> {
    vec![
        candidate(Arc::new(ReferenceF32), false),
        candidate(Arc::new(FlashCpu::correct(3)), true),
        candidate(Arc::new(CandleCpu), false),
        candidate(Arc::new(EmuKernel::emulated()), false),
    ]
}

/// The in-process kernels `spec` names (the CUDA ones opened on GPU 0 or the emulator).
fn in_process(spec: &KernelSpec) -> Result<Vec<Candidate>, CliError> {
    Ok(match spec {
        KernelSpec::Auto => match CudaKernel::open(0) {
            Ok(k) => {
                println!("CUDA device found: certifying the CUDA kernels ({})", k.gpu().info.name);
                vec![gpu_candidate(k)]
            }
            Err(why) => {
                println!("no CUDA kernels to certify ({why}): certifying the built-in kernels");
                builtin()
            }
        },
        KernelSpec::Builtin => builtin(),
        KernelSpec::Cuda {
            backend: CudaBackend::Device,
            variant,
        } => vec![gpu_candidate(
            CudaKernel::open(0)
                .map_err(CliError::cuda("cannot certify the CUDA kernels"))?
                .with_variant(variant.map(Into::into)),
        )],
        KernelSpec::Cuda {
            backend: CudaBackend::Emulator,
            variant,
        } => vec![candidate(
            Arc::new(EmuKernel::emulated().with_variant(variant.map(Into::into))),
            false,
        )],
        KernelSpec::FlashCpu => vec![candidate(Arc::new(FlashCpu::correct(3)), true)],
        KernelSpec::ReferenceF32 => vec![candidate(Arc::new(ReferenceF32), false)],
        KernelSpec::Candle => vec![candidate(Arc::new(CandleCpu), false)],
        KernelSpec::Synthetic(one) => {
            let chosen: Vec<(Target, f64)> = match one {
                Some((t, hundredths)) => vec![(*t, *hundredths as f64 / 100.0)],
                None => Target::ALL.into_iter().flat_map(|t| RATIOS.map(|r| (t, r))).collect(),
            };
            chosen
                .into_iter()
                .map(|(target, ratio)| candidate(Arc::new(Synthetic { target, ratio }), false))
                .collect()
        }
        KernelSpec::External(dir) => {
            return Err(CliError::Usage(format!(
                "external:{} is judged from its outputs, not run in this process",
                dir.display()
            )))
        }
    })
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<Outcome, CliError> {
    if let KernelSpec::External(pack) = &a.kernel {
        return external(pack, &a);
    }
    // Before anything runs: a certificate that cannot be written is known now, not after the suite.
    gqla_files::write::check_output_dir(&a.out)?;
    for (given, flag) in [(a.outputs.is_some(), "--outputs"), (a.profile.is_some(), "--profile")] {
        if given {
            return Err(CliError::Usage(format!(
                "{flag} is for external:DIR kernels; an in-process kernel declares its own profile"
            )));
        }
    }
    if a.seeds == Some(0) {
        return Err(CliError::Usage("--seeds needs at least 1".into()));
    }
    let candidates = in_process(&a.kernel)?;
    let selection = Selection::new(a.filters.clone());
    let chosen = selection.cases(0).map_err(|e| CliError::Usage(e.to_string()))?;
    // Every selected case's inputs and references stay in memory for the mutation catalogue.
    budget.check(&[gqla_model::budget::Need {
        what: format!("the inputs and references of the {} selected cases", chosen.len()),
        bytes: chosen.iter().try_fold(0u128, |acc, c| acc.checked_add(Prepared::estimate_bytes(c))),
    }])?;
    quiet_kernel_panics();
    if let Some(n) = a.seeds {
        return stability(&candidates, n, &selection, &a);
    }
    let seed = a.seed.unwrap_or_else(fresh_seed);
    let (_, results, prepared) = run_suite(&candidates, seed, &selection, &a, true)?;
    let several = candidates.len() > 1;
    let mut all_conformant = true;
    for (c, results) in candidates.iter().zip(results) {
        let identity = c.kernel.identity();
        let dir = if several { a.out.join(&identity.name) } else { a.out.clone() };
        let run = RunInfo {
            filter: &selection.to_string(),
            seed,
            origin: SeedOrigin::of_run(seed, a.seed.is_some()),
            timeout: Duration::from_secs(a.timeout),
        };
        let mut report = certified(c, results, &run);
        if c.with_mutants {
            report.mutation = Some(mutation_summary(&prepared, Duration::from_secs(a.timeout)));
        }
        all_conformant &= matches!(finish(report, &dir)?, Outcome::Conformant);
    }
    hung(&candidates)?;
    Ok(if all_conformant { Outcome::Conformant } else { Outcome::Rejected })
}

/// A candidate's certificate of `results` ([`gqla_conformance::certify::report`]: its BORDERLINE
/// precision families drawn again, with a spinner while they are).
fn certified(c: &Candidate, results: Vec<CaseResult>, run: &RunInfo) -> Report {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("precision draws {pos} {msg}").expect("valid template"));
    let report = gqla_conformance::certify::report(&c.kernel, results, run, |case| {
        bar.set_message(format!("{} {}", c.kernel.identity().name, case.op().name()));
        bar.inc(1);
    });
    bar.finish_and_clear();
    report
}

/// A kernel's panic is reported as RUNTIME_ERROR in the certificate; keep it off the terminal.
fn quiet_kernel_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(gqla_conformance::runner::KERNEL_THREAD) {
            default_hook(info);
        }
    }));
}

/// Every candidate on the suite drawn from `seed`; references computed once per case and shared
/// by every kernel (and, when `keep`, kept for the mutation catalogue).
#[allow(clippy::type_complexity)]
fn run_suite(
    candidates: &[Candidate],
    seed: u64,
    selection: &Selection,
    a: &Args,
    keep: bool,
) -> Result<(Vec<Case>, Vec<Vec<CaseResult>>, Vec<Prepared>), CliError> {
    let cases = selection.cases(seed).map_err(|e| CliError::Usage(e.to_string()))?;
    let bar = ProgressBar::new((cases.len() * candidates.len()) as u64);
    bar.set_style(ProgressStyle::with_template("certifying {bar:30} {pos}/{len} {msg}").expect("valid template"));
    let kernels: Vec<Arc<dyn Kernel>> = candidates.iter().map(|c| c.kernel.clone()).collect();
    let (results, prepared) = run_cases(&kernels, &cases, Duration::from_secs(a.timeout), keep, |case| {
        bar.set_message(format!("{} seed {seed}", case.op().name()));
        bar.inc(1);
    });
    bar.finish_and_clear();
    Ok((cases, results, prepared))
}

/// `--seeds N`: the profile on N fresh seeds; per case (its id without the seed), how many passed.
fn stability(candidates: &[Candidate], n: u32, selection: &Selection, a: &Args) -> Result<Outcome, CliError> {
    let mut tallies = vec![Stability::default(); candidates.len()];
    for i in 0..n {
        let seed = fresh_seed();
        println!("seed {seed} ({} of {n})", i + 1);
        let (cases, results, _) = run_suite(candidates, seed, selection, a, false)?;
        let run = RunInfo {
            filter: &selection.to_string(),
            seed,
            origin: SeedOrigin::DrawnByThisRun,
            timeout: Duration::from_secs(a.timeout),
        };
        for ((t, rs), c) in tallies.iter_mut().zip(results).zip(candidates) {
            // Tallied by the cases as the kernel's profile draws them (its further draws' ids).
            let profile = c.kernel.profile();
            let drawn: Vec<Case> = cases.iter().map(|x| profile.draw(x)).collect();
            t.record(seed, &drawn, &rs);
            let report = certified(c, rs, &run);
            t.record_draws(seed, &report.precision_draws);
            t.record_families(seed, &report.precision);
        }
    }
    let mut all = true;
    for (c, t) in candidates.iter().zip(&tallies) {
        let name = c.kernel.identity().name;
        let dir = if candidates.len() > 1 { a.out.join(&name) } else { a.out.clone() };
        std::fs::create_dir_all(&dir).map_err(CliError::io(format!("cannot create {}", dir.display())))?;
        gqla_files::write_file(
            &dir.join("seeds.md"),
            t.markdown(&name, "fresh draws by this certify run").as_bytes(),
        )?;
        println!("{}", t.summary(&name));
        all &= t.stable();
    }
    hung(candidates)?;
    Ok(if all { Outcome::Conformant } else { Outcome::Rejected })
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Certify the outputs a kernel wrote for a vector pack.
fn external(pack: &Path, a: &Args) -> Result<Outcome, CliError> {
    if let Some(n) = a.seeds {
        return external_seeds(pack, n, a);
    }
    let outputs = outputs_dir(pack, a.outputs.as_deref());
    finish(judge_pack(pack, &outputs, a)?.0, &a.out)
}

/// `--seeds N` with a set of packs (`vectors export --seeds N`): DIR holds N packs `seed-S`, and
/// the outputs directory one outputs directory per pack, of the same name. Each pack gets its
/// certificate in `OUT/seed-S`; seeds.md tallies per case on how many seeds it passed.
fn external_seeds(set: &Path, n: u32, a: &Args) -> Result<Outcome, CliError> {
    let packs = gqla_conformance::pack::pack_set(set).map_err(bad)?;
    if packs.len() != n as usize {
        return Err(CliError::Usage(format!(
            "--seeds {n}: {} holds {} packs (seed-S directories), not {n}",
            set.display(),
            packs.len()
        )));
    }
    let outputs = outputs_dir(set, a.outputs.as_deref());
    let mut tally = Stability::default();
    let mut name = String::new();
    let mut pooled = Vec::new();
    for (seed, dir) in &packs {
        let sub = dir.file_name().expect("a pack directory has a name");
        let (report, cases) = judge_pack(dir, &outputs.join(sub), a)?;
        println!("seed {seed}: {}", report.verdict_line());
        tally.record(*seed, &cases, &report.results);
        tally.record_families(*seed, &report.precision);
        pooled.extend(report.results.iter().cloned());
        name = report.kernel.name.clone();
        report
            .write(&a.out.join(sub))
            .map_err(CliError::io(format!("cannot write the certificate to {}", a.out.display())))?;
    }
    // A pack cannot be drawn again: its seeds together are the further draws.
    tally.set_pooled(families_of(&pooled));
    gqla_files::write_file(
        &a.out.join("seeds.md"),
        tally.markdown(&name, "chosen by whoever exported the packs").as_bytes(),
    )?;
    println!("{}", tally.summary(&name));
    Ok(if tally.stable() { Outcome::Conformant } else { Outcome::Rejected })
}

/// Judge the outputs in `outputs` of one pack: the certificate's report, and the cases judged.
fn judge_pack(pack: &Path, outputs: &Path, a: &Args) -> Result<(Report, Vec<Case>), CliError> {
    // The pack and the kernel's outputs are inputs: the certificate lands outside both.
    gqla_files::write::note_input_dir(pack);
    gqla_files::write::note_input_dir(outputs);
    gqla_files::write::check_output_dir(&a.out)?;
    let profile = a.profile.as_deref().map(super::read_profile).transpose()?;
    let run = PackRun {
        pack,
        outputs,
        profile,
        filters: &a.filters,
        seed: a.seed,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("judging {bar:30} {pos}/{len}").expect("valid template"));
    let judged = certify_pack(&run, |n| bar.set_length(n as u64), |_| bar.inc(1)).map_err(bad);
    bar.finish_and_clear();
    judged
}

/// Write the certificate, print the summary with every failure's cause, and say whether it is
/// conformant.
fn finish(report: Report, out: &Path) -> Result<Outcome, CliError> {
    report
        .write(out)
        .map_err(CliError::io(format!("cannot write the certificate to {}", out.display())))?;
    let selected = report.results.iter().filter(|r| r.status.selected()).count();
    println!(
        "kernel {} — suite {SUITE_VERSION}, seed {}, {} cases, {selected} selected by its profile",
        plain(&report.kernel.name),
        report.seed,
        report.results.len()
    );
    for (status, n) in &report.summary {
        println!("  {status:<24} {n}");
    }
    // Families not clearly below the bound (the certificate lists every family).
    for f in report.precision.iter().filter(|f| f.high > 1.0) {
        println!("  precision {f}");
    }
    if !report.precision_draws.is_empty() {
        println!(
            "  {} further case(s) on new draws for BORDERLINE precision families",
            report.precision_draws.len()
        );
    }
    for c in &report.coverage {
        for (axis, n) in &c.left_out {
            println!("  {}: {n} NOT_SUPPORTED ({axis} is not in the declared profile)", c.operation);
        }
    }
    for r in report.results.iter().chain(&report.precision_draws).filter(|r| r.status.failed()) {
        println!("  {} {}: {}", r.status.name(), r.id, plain(&r.status.cause()));
    }
    if let Some(m) = &report.mutation {
        println!(
            "  mutation catalogue: {} of {} seeded bugs rejected ({:.1}%)",
            m.killed,
            m.mutants,
            100.0 * m.kill_rate
        );
    }
    println!("{} — certificate in {}", report.verdict_line(), out.display());
    Ok(if report.conformant {
        Outcome::Conformant
    } else {
        Outcome::Rejected
    })
}
