//! `gqla certify`: run a kernel over the conformance suite, as its profile declares, and write
//! its certificate.

use super::CliError;
use gqla_conformance::case::Case;
use gqla_conformance::confined;
use gqla_conformance::kernels::{Bug, CandleCpu, FlashCpu, ReferenceF32};
use gqla_conformance::lattice::{suite_cases_seeded, SUITE_VERSION};
use gqla_conformance::pack::{judge, outputs_dir, read_kernel_info, read_manifest, Judging};
use gqla_conformance::report::{plain, Environment, MutationSummary, Report};
use gqla_conformance::runner::{CaseResult, Prepared, Session};
use gqla_conformance::{Kernel, KernelIdentity, Profile};
use gqla_cuda::launch::Variant;
use gqla_cuda::{CudaKernel, EmuKernel};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// `external:DIR` (a vector pack; the kernel's outputs and kernel.json in `--outputs`).
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Only cases whose id starts with this prefix (e.g. `gqla.decode.gqa`); repeat for several.
    #[arg(long)]
    filter: Vec<String>,
    /// Where report.json, report.md and junit.xml go.
    #[arg(long, default_value = "certificate")]
    out: PathBuf,
    /// Per-case time limit in seconds (in-process kernels).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400), default_value_t = 300)]
    timeout: u64,
    /// Draw every case from this suite seed (0: the published suite); default: a fresh seed,
    /// recorded in the certificate. A pack's seed is its manifest's.
    #[arg(long)]
    seed: Option<u64>,
    /// Stability mode: certify on N fresh seeds and report, per case, on how many it passed.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u32>,
    /// external:DIR only: the directory holding the kernel's NNNNN.outputs.safetensors and
    /// kernel.json (default: the pack itself).
    #[arg(long)]
    outputs: Option<PathBuf>,
    /// external:DIR only: the kernel's profile (JSON), instead of the one in kernel.json.
    #[arg(long)]
    profile: Option<PathBuf>,
}

/// Whether case `id` is selected by the prefixes (all cases when there are none).
fn selected(prefixes: &[String], id: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| p == "*" || id.starts_with(p.as_str()))
}

/// The prefixes as the report records them.
fn filter_text(prefixes: &[String]) -> String {
    prefixes.join(" | ")
}

/// Exit status of a certification: 0 conformant, 1 rejected (or nothing certified).
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

fn unknown_kernel(name: &str) -> CliError {
    CliError::Usage(format!(
        "unknown kernel `{name}`: expected auto, builtin, reference-f32, flash-cpu, candle, cuda, cuda-simt, cuda-mma, \
         cuda-wgmma, cuda-emu, cuda-emu-simt, cuda-emu-mma, cuda-emu-wgmma or external:DIR"
    ))
}

/// The attention kernel a CUDA kernel name asks for: `base` alone is the default choice per dtype
/// (None inside), `base-simt`, `base-mma`, `base-wgmma` force one; anything else is None.
fn variant_of(name: &str, base: &str) -> Option<Option<Variant>> {
    match name.strip_prefix(base)? {
        "" => Some(None),
        rest => Some(Some(Variant::from_name(rest.strip_prefix('-')?)?)),
    }
}

/// A fresh suite seed (never 0, the published one), small enough to retype.
fn fresh_seed() -> u64 {
    rand::random::<u32>().max(1) as u64
}

pub fn run(a: Args, budget: &gqla_reference::budget::Budget) -> Result<Outcome, CliError> {
    if let Some(rest) = a.kernel.strip_prefix("external:") {
        return external(Path::new(rest), &a);
    }
    // Before anything runs: a certificate that cannot be written is known now, not after the suite.
    gqla_reference::files::write::check_output_dir(&a.out)?;
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
    let candidates = match a.kernel.as_str() {
        "auto" => match CudaKernel::open(0) {
            Ok(k) => {
                println!("CUDA device found: certifying the CUDA kernels ({})", k.gpu().info.name);
                vec![gpu_candidate(k)]
            }
            Err(why) => {
                println!("no CUDA kernels to certify ({why}): certifying the built-in kernels");
                builtin()
            }
        },
        "builtin" => builtin(),
        k if k.starts_with("cuda") && !k.starts_with("cuda-emu") => {
            let variant = variant_of(k, "cuda").ok_or_else(|| unknown_kernel(k))?;
            vec![gpu_candidate(
                CudaKernel::open(0)
                    .map_err(CliError::cuda("cannot certify the CUDA kernels"))?
                    .with_variant(variant),
            )]
        }
        k if k.starts_with("cuda-emu") => {
            let variant = variant_of(k, "cuda-emu").ok_or_else(|| unknown_kernel(k))?;
            vec![candidate(Arc::new(EmuKernel::emulated().with_variant(variant)), false)]
        }
        "flash-cpu" => vec![candidate(Arc::new(FlashCpu::correct(3)), true)],
        "reference-f32" => vec![candidate(Arc::new(ReferenceF32), false)],
        "candle" => vec![candidate(Arc::new(CandleCpu), false)],
        other => return Err(unknown_kernel(other)),
    };
    let chosen: Vec<Case> = suite_cases_seeded(0)
        .into_iter()
        .filter(|c| selected(&a.filter, &c.to_string()))
        .collect();
    if chosen.is_empty() {
        return Err(CliError::Usage(format!("no case id starts with `{}`", filter_text(&a.filter))));
    }
    // Every selected case's inputs and references stay in memory for the mutation catalogue.
    budget.check(&[gqla_reference::budget::Need {
        what: format!("the inputs and references of the {} selected cases", chosen.len()),
        bytes: chosen.iter().try_fold(0u128, |acc, c| acc.checked_add(c.memory_bytes())),
    }])?;
    quiet_kernel_panics();
    if let Some(n) = a.seeds {
        return stability(&candidates, n, &a);
    }
    let seed = a.seed.unwrap_or_else(fresh_seed);
    let (results, prepared) = run_suite(&candidates, seed, &a, true);
    let several = candidates.len() > 1;
    let mut all_conformant = true;
    for (c, results) in candidates.iter().zip(results) {
        let identity = c.kernel.identity();
        let dir = if several { a.out.join(&identity.name) } else { a.out.clone() };
        let mut report = Report::new(
            identity,
            Environment::detect(c.kernel.environment()),
            &filter_text(&a.filter),
            seed,
            c.kernel.profile(),
            results,
        );
        if c.with_mutants {
            report.mutation = Some(mutation_summary(&prepared, Duration::from_secs(a.timeout)));
        }
        all_conformant &= matches!(finish(report, &dir)?, Outcome::Conformant);
    }
    hung(&candidates)?;
    Ok(if all_conformant { Outcome::Conformant } else { Outcome::Rejected })
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
fn run_suite(candidates: &[Candidate], seed: u64, a: &Args, keep: bool) -> (Vec<Vec<CaseResult>>, Vec<Prepared>) {
    let cases: Vec<Case> = suite_cases_seeded(seed)
        .into_iter()
        .filter(|c| selected(&a.filter, &c.to_string()))
        .collect();
    let timeout = Duration::from_secs(a.timeout);
    let bar = ProgressBar::new((cases.len() * candidates.len()) as u64);
    bar.set_style(ProgressStyle::with_template("certifying {bar:30} {pos}/{len} {msg}").expect("valid template"));
    let mut sessions: Vec<Session> = candidates.iter().map(|c| Session::new(c.kernel.clone(), timeout)).collect();
    let mut prepared = Vec::new();
    let mut results = vec![Vec::with_capacity(cases.len()); candidates.len()];
    for case in &cases {
        bar.set_message(format!("{} seed {seed}", case.op().name()));
        let p = Prepared::new(case);
        for (s, r) in sessions.iter_mut().zip(&mut results) {
            r.push(s.run(&p));
            bar.inc(1);
        }
        if keep {
            prepared.push(p);
        }
    }
    bar.finish_and_clear();
    (results, prepared)
}

/// One case across seeds: how many passed, how many ran, the first failure.
#[derive(Clone, Default)]
struct Tally {
    passed: u32,
    ran: u32,
    first_failure: Option<String>,
}

/// `--seeds N`: the profile on N fresh seeds; per case (its id without the seed), how many passed.
fn stability(candidates: &[Candidate], n: u32, a: &Args) -> Result<Outcome, CliError> {
    let seeds: Vec<u64> = (0..n).map(|_| fresh_seed()).collect();
    // Per kernel: case (seedless id) → its tally.
    let mut tally: Vec<BTreeMap<String, Tally>> = vec![BTreeMap::new(); candidates.len()];
    for (i, &seed) in seeds.iter().enumerate() {
        println!("seed {seed} ({} of {n})", i + 1);
        let (results, _) = run_suite(candidates, seed, a, false);
        for (t, rs) in tally.iter_mut().zip(results) {
            for r in rs {
                let key = r.id.rsplit_once(";seed=").map_or(r.id.clone(), |(k, _)| k.to_string());
                let e = t.entry(key).or_default();
                if r.status.selected() {
                    e.ran += 1;
                    e.passed += r.status.passed() as u32;
                    if r.status.failed() && e.first_failure.is_none() {
                        e.first_failure = Some(format!("seed {seed}: {}: {}", r.status.name(), plain(&r.status.cause())));
                    }
                }
            }
        }
    }
    let mut all = true;
    for (c, t) in candidates.iter().zip(&tally) {
        let name = c.kernel.identity().name;
        let unstable: Vec<(&String, &Tally)> = t.iter().filter(|(_, v)| v.passed != v.ran).collect();
        let selected = t.values().filter(|v| v.ran > 0).count();
        let mut md = format!(
            "# Seed stability: {}\n\n- suite {SUITE_VERSION}, {n} fresh seeds: {}\n- {selected} cases selected by the profile; {} passed on every seed\n\n| case | passed |\n|---|---|\n",
            gqla_conformance::report::md_escape(&name),
            seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
            selected - unstable.len()
        );
        for (id, v) in t.iter().filter(|(_, v)| v.ran > 0) {
            let note = v
                .first_failure
                .as_deref()
                .map(|w| format!(" ({})", gqla_conformance::report::md_escape(w)))
                .unwrap_or_default();
            md.push_str(&format!("| `{id}` | {}/{}{note} |\n", v.passed, v.ran));
        }
        let dir = if candidates.len() > 1 { a.out.join(&name) } else { a.out.clone() };
        std::fs::create_dir_all(&dir).map_err(CliError::io(format!("cannot create {}", dir.display())))?;
        gqla_reference::files::write_file(&dir.join("seeds.md"), md.as_bytes())?;
        println!(
            "kernel {name}: {} of {selected} cases passed on all {n} seeds",
            selected - unstable.len()
        );
        for (id, v) in &unstable {
            println!("  {}/{}  {id}  {}", v.passed, v.ran, v.first_failure.as_deref().unwrap_or(""));
        }
        all &= unstable.is_empty() && selected > 0;
    }
    hung(candidates)?;
    Ok(if all { Outcome::Conformant } else { Outcome::Rejected })
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Certify the outputs a kernel wrote for a vector pack.
fn external(pack: &Path, a: &Args) -> Result<Outcome, CliError> {
    if a.seeds.is_some() {
        return Err(CliError::Usage(
            "--seeds runs in-process kernels; for a pack, export one pack per seed (`vectors export --seed S`)".into(),
        ));
    }
    let manifest = read_manifest(pack).map_err(bad)?;
    if let Some(s) = a.seed.filter(|s| *s != manifest.seed) {
        return Err(CliError::Usage(format!(
            "--seed {s}: the pack {} was drawn from seed {}",
            pack.display(),
            manifest.seed
        )));
    }
    let outputs = outputs_dir(pack, a.outputs.as_deref());
    // The kernel's outputs are an input too: the certificate lands outside them and the pack.
    gqla_reference::files::write::note_input_dir(&outputs);
    gqla_reference::files::write::check_output_dir(&a.out)?;
    let info = read_kernel_info(&outputs).map_err(bad)?;
    let profile = match (&a.profile, info.as_ref().and_then(|i| i.profile.clone())) {
        (Some(path), _) => {
            let bytes = confined::read_regular(path, 1 << 20).map_err(bad)?;
            let text = String::from_utf8(bytes).map_err(|_| CliError::Usage(format!("{}: not UTF-8 text", path.display())))?;
            Profile::from_json(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        }
        (None, Some(p)) => p,
        (None, None) => {
            return Err(CliError::Usage(format!(
                "{}: no profile: a pack kernel declares what it supports and which conventions it follows, in kernel.json \
                 (\"profile\") or with --profile FILE, before anything is judged (see README, \"Profiles\")",
                outputs.join(gqla_conformance::pack::KERNEL_INFO).display()
            )))
        }
    };
    // Without --filter, the filters the pack was exported with (the certificate states them).
    let filters = if a.filter.is_empty() {
        manifest.filters.clone()
    } else {
        a.filter.clone()
    };
    let cases: Vec<Case> = suite_cases_seeded(manifest.seed)
        .into_iter()
        .filter(|c| selected(&filters, &c.to_string()))
        .collect();
    if cases.is_empty() {
        return Err(CliError::Usage(format!("no case id starts with `{}`", filter_text(&filters))));
    }
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(ProgressStyle::with_template("judging {bar:30} {pos}/{len}").expect("valid template"));
    let judging = Judging {
        pack,
        outputs: &outputs,
        manifest: &manifest,
        profile: &profile,
        cases,
    };
    let results = judge(&judging, |_| bar.inc(1)).map_err(bad);
    bar.finish_and_clear();
    let results = results?;
    let (identity, kernel_env) = match info {
        Some(k) => (
            KernelIdentity {
                name: k.name,
                version: k.version,
                description: format!(
                    "{} (outputs read from {}, pack {})",
                    k.description,
                    outputs.display(),
                    pack.display()
                ),
            },
            k.environment,
        ),
        None => (
            KernelIdentity {
                name: format!("external:{}", outputs.display()),
                version: "-".into(),
                description: format!("outputs read from {} (no kernel.json)", outputs.display()),
            },
            BTreeMap::new(),
        ),
    };
    finish(
        Report::new(
            identity,
            Environment::detect(kernel_env),
            &filter_text(&filters),
            manifest.seed,
            profile,
            results,
        ),
        &a.out,
    )
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
    for c in &report.coverage {
        for (axis, n) in &c.left_out {
            println!("  {}: {n} NOT_SUPPORTED ({axis} is not in the declared profile)", c.operation);
        }
    }
    for r in report.results.iter().filter(|r| r.status.failed()) {
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

/// Run every mutant until a case rejects it.
fn mutation_summary(prepared: &[Prepared], timeout: Duration) -> MutationSummary {
    let mut results = BTreeMap::new();
    for bug in Bug::ALL {
        let mut session = Session::new(Arc::new(FlashCpu::mutant(3, bug)), timeout);
        let first = prepared.iter().map(|p| session.run(p)).find(|r| !r.status.passed());
        results.insert(format!("{bug:?}"), first.map(|r| (r.id, r.status.name().to_string())));
    }
    let killed = results.values().filter(|r| r.is_some()).count();
    MutationSummary {
        mutants: results.len(),
        killed,
        kill_rate: killed as f64 / results.len() as f64,
        results,
    }
}
