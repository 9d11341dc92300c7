//! `gqla certify`: run a kernel over the conformance suite and write its certificate.

use super::CliError;
use gqla_conformance::case::Case;
use gqla_conformance::kernels::{Bug, CandleCpu, FlashCpu, ReferenceF32};
use gqla_conformance::lattice::{suite_cases, SUITE_VERSION};
use gqla_conformance::pack::{judge, read_kernel_info, read_manifest};
use gqla_conformance::report::{Environment, MutationSummary, Report};
use gqla_conformance::runner::Prepared;
use gqla_conformance::{Kernel, KernelIdentity};
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
    /// `external:DIR` (a vector pack whose outputs a kernel has written).
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Only cases whose id starts with this prefix (e.g. `gqla.decode.gqa`); repeat for several.
    #[arg(long)]
    filter: Vec<String>,
    /// Where report.json, report.md and junit.xml go.
    #[arg(long, default_value = "certificate")]
    out: PathBuf,
    /// Per-case time limit in seconds (in-process kernels).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Whether case `id` is selected by the prefixes (all cases when there are none).
fn selected(prefixes: &[String], id: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| p == "*" || id.starts_with(p.as_str()))
}

/// The prefixes as the report records them.
fn filter_text(prefixes: &[String]) -> String {
    prefixes.join(" | ")
}

/// Exit status of a certification: 0 conformant, 1 rejected.
pub enum Outcome {
    Conformant,
    Rejected,
}

/// An in-process kernel to certify, and whether its certificate carries the mutation catalogue.
struct Candidate {
    kernel: Arc<dyn Kernel>,
    with_mutants: bool,
}

fn candidate(kernel: Arc<dyn Kernel>, with_mutants: bool) -> Candidate {
    Candidate { kernel, with_mutants }
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

pub fn run(a: Args) -> Result<Outcome, CliError> {
    let candidates = match a.kernel.as_str() {
        "auto" => match CudaKernel::open(0) {
            Ok(k) => {
                println!("CUDA device found: certifying the CUDA kernels ({})", k.gpu().info.name);
                vec![candidate(Arc::new(k), false)]
            }
            Err(why) => {
                println!("no CUDA kernels to certify ({why}): certifying the built-in kernels");
                builtin()
            }
        },
        "builtin" => builtin(),
        k if k.starts_with("cuda") && !k.starts_with("cuda-emu") => {
            let variant = variant_of(k, "cuda").ok_or_else(|| unknown_kernel(k))?;
            match CudaKernel::open(0) {
                Ok(k) => vec![candidate(Arc::new(k.with_variant(variant)), false)],
                Err(why) => return Err(CliError::Usage(format!("cannot certify the CUDA kernels: {why}"))),
            }
        }
        k if k.starts_with("cuda-emu") => {
            let variant = variant_of(k, "cuda-emu").ok_or_else(|| unknown_kernel(k))?;
            vec![candidate(Arc::new(EmuKernel::emulated().with_variant(variant)), false)]
        }
        "flash-cpu" => vec![candidate(Arc::new(FlashCpu::correct(3)), false)],
        "reference-f32" => vec![candidate(Arc::new(ReferenceF32), false)],
        "candle" => vec![candidate(Arc::new(CandleCpu), false)],
        k if k.starts_with("external:") => return external(Path::new(&k["external:".len()..]), &a),
        other => return Err(unknown_kernel(other)),
    };
    let cases: Vec<Case> = suite_cases().into_iter().filter(|c| selected(&a.filter, &c.to_string())).collect();
    if cases.is_empty() {
        return Err(CliError::Usage(format!("no case id starts with `{}`", filter_text(&a.filter))));
    }
    let timeout = Duration::from_secs(a.timeout);
    // A kernel's panic is reported as RUNTIME_ERROR in the certificate; keep it off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(gqla_conformance::runner::KERNEL_THREAD) {
            default_hook(info);
        }
    }));
    let bar = ProgressBar::new((cases.len() * candidates.len()) as u64);
    bar.set_style(ProgressStyle::with_template("certifying {bar:30} {pos}/{len} {msg}").expect("valid template"));
    // References are computed once per case and shared by every kernel (and mutant).
    let mut prepared = Vec::with_capacity(cases.len());
    let mut results = vec![Vec::with_capacity(cases.len()); candidates.len()];
    for case in &cases {
        bar.set_message(case.op.name());
        let p = Prepared::new(case);
        for (c, r) in candidates.iter().zip(&mut results) {
            r.push(p.run(&c.kernel, timeout));
            bar.inc(1);
        }
        prepared.push(p);
    }
    bar.finish_and_clear();
    let several = candidates.len() > 1;
    let mut all_conformant = true;
    for (c, results) in candidates.iter().zip(results) {
        let identity = c.kernel.identity();
        let dir = if several { a.out.join(&identity.name) } else { a.out.clone() };
        let mut report = Report::new(
            SUITE_VERSION,
            identity,
            Environment::detect(c.kernel.environment()),
            &filter_text(&a.filter),
            results,
        );
        if c.with_mutants {
            report.mutation = Some(mutation_summary(&prepared, timeout));
        }
        all_conformant &= matches!(finish(report, &dir)?, Outcome::Conformant);
    }
    Ok(if all_conformant { Outcome::Conformant } else { Outcome::Rejected })
}

/// Certify the outputs a kernel wrote into a vector pack.
fn external(dir: &Path, a: &Args) -> Result<Outcome, CliError> {
    let mut manifest = read_manifest(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    manifest.cases.retain(|c| selected(&a.filter, &c.id));
    if manifest.cases.is_empty() {
        return Err(CliError::Usage(format!(
            "no case of the pack starts with `{}`",
            filter_text(&a.filter)
        )));
    }
    let bar = ProgressBar::new(manifest.cases.len() as u64);
    bar.set_style(ProgressStyle::with_template("judging {bar:30} {pos}/{len}").expect("valid template"));
    let results = judge(dir, &manifest, |_| bar.inc(1));
    bar.finish_and_clear();
    // The author's kernel.json names the kernel and its environment; without it, the pack does.
    let info = read_kernel_info(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let (identity, kernel_env) = match info {
        Some(k) => (
            KernelIdentity {
                name: k.name,
                version: k.version,
                description: format!("{} (outputs read from the vector pack {})", k.description, dir.display()),
            },
            k.environment,
        ),
        None => (
            KernelIdentity {
                name: format!("external:{}", dir.display()),
                version: "-".into(),
                description: "outputs read from a vector pack (no kernel.json)".into(),
            },
            BTreeMap::new(),
        ),
    };
    finish(
        Report::new(
            SUITE_VERSION,
            identity,
            Environment::detect(kernel_env),
            &filter_text(&a.filter),
            results,
        ),
        &a.out,
    )
}

/// Write the certificate, print the summary, and say whether it is conformant.
fn finish(report: Report, out: &Path) -> Result<Outcome, CliError> {
    report
        .write(out)
        .map_err(|e| CliError::Usage(format!("cannot write the certificate to {}: {e}", out.display())))?;
    println!(
        "kernel {} — suite {SUITE_VERSION}, {} cases",
        report.kernel.name,
        report.results.len()
    );
    for (status, n) in &report.summary {
        println!("  {status:<24} {n}");
    }
    if let Some(m) = &report.mutation {
        println!(
            "  mutation catalogue: {} of {} seeded bugs rejected ({:.1}%)",
            m.killed,
            m.mutants,
            100.0 * m.kill_rate
        );
    }
    println!(
        "{} — certificate in {}",
        if report.conformant { "CONFORMANT" } else { "NOT CONFORMANT" },
        out.display()
    );
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
        let mutant: Arc<dyn Kernel> = Arc::new(FlashCpu { splits: 3, bug: Some(bug) });
        let first = prepared.iter().map(|p| p.run(&mutant, timeout)).find(|r| !r.status.is_conformant());
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
