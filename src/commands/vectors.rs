//! `gqla vectors export`: write a vector pack for kernels outside this process.

use super::CliError;
use gqla_conformance::pack::export;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Write manifest.json, definitions.json and one inputs file per case into a new (or empty)
    /// directory DIR.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Only cases whose id starts with this prefix; repeat for several.
        #[arg(long)]
        filter: Vec<String>,
        /// Draw the cases from this suite seed (0: the published suite, whose inputs
        /// mustpass/<version>.txt pins); default: a fresh seed, so that outputs learned from a
        /// published pack do not help.
        #[arg(long)]
        seed: Option<u64>,
        /// A set of N packs, each from its own fresh seed, in DIR/seed-S, for
        /// `certify --kernel external:DIR --seeds N` (per-case stability across seeds).
        #[arg(long, conflicts_with = "seed", value_parser = clap::value_parser!(u32).range(1..=1000))]
        seeds: Option<u32>,
        /// Draw the pack for this kernel profile (JSON): exactly the cases it selects, drawn as it
        /// declares (a fixed scale set as the `scale` input); the manifest records the profile,
        /// and certify judges only a kernel that declares it.
        #[arg(long)]
        profile: Option<PathBuf>,
    },
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<(), CliError> {
    let Which::Export {
        out,
        filter,
        seed,
        seeds,
        profile,
    } = a.which;
    let profile = profile.map(|path| super::read_profile(&path)).transpose()?;
    if let Some(n) = seeds {
        return export_set(&out, n, &filter, profile.as_ref(), budget);
    }
    let seed = seed.unwrap_or_else(gqla_conformance::selection::fresh_seed);
    let written = export_one(&out, seed, &filter, profile.as_ref(), budget)?;
    println!(
        "wrote {written} cases (suite seed {seed}) to {}: manifest.json, definitions.json, NNNNN.inputs.safetensors. \
         Write NNNNN.outputs.safetensors and kernel.json (with the kernel's profile) into an outputs directory, then \
         `gqla certify --kernel external:{} --outputs DIR`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// N packs from N distinct fresh seeds, built in a temporary directory beside `out` and renamed
/// into place whole.
fn export_set(
    out: &std::path::Path,
    n: u32,
    filter: &[String],
    profile: Option<&gqla_conformance::Profile>,
    budget: &gqla_model::budget::Budget,
) -> Result<(), CliError> {
    let dir = gqla_files::write::OutputDir::create(out, true)?;
    let mut seeds = std::collections::BTreeSet::new();
    while seeds.len() < n as usize {
        seeds.insert(gqla_conformance::selection::fresh_seed());
    }
    for &seed in &seeds {
        export_one(
            &dir.path().join(gqla_conformance::pack::set_member(seed)),
            seed,
            filter,
            profile,
            budget,
        )?;
    }
    dir.commit()?;
    println!(
        "wrote {n} packs to {}: seed-S for S in {}. Write each pack's outputs into OUTS/seed-S, then \
         `gqla certify --kernel external:{} --outputs OUTS --seeds {n}`",
        out.display(),
        seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        out.display()
    );
    Ok(())
}

/// One pack from `seed` into `out`; returns how many cases it holds.
fn export_one(
    out: &std::path::Path,
    seed: u64,
    filter: &[String],
    profile: Option<&gqla_conformance::Profile>,
    budget: &gqla_model::budget::Budget,
) -> Result<usize, CliError> {
    let selection = gqla_conformance::Selection::new(filter.to_vec());
    let cases = match profile {
        Some(p) => selection.drawn_for(seed, p),
        None => selection.indexed_cases(seed),
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    // One case at a time: its inputs, and the file they are serialised into.
    let largest = cases
        .iter()
        .map(|(_, c)| gqla_conformance::runner::Prepared::estimate_bytes(c))
        .max()
        .unwrap_or(0);
    budget.check(&[gqla_model::budget::Need {
        what: "the largest selected case's inputs".into(),
        bytes: largest.checked_mul(2),
    }])?;
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("exporting {bar:30} {pos}/{len} {msg}").expect("valid template"));
    let m = export(&cases, seed, filter, profile, out, &mut |case| {
        bar.set_message(case.op().name());
        bar.inc(1);
    });
    bar.finish_and_clear();
    Ok(m?.cases.len())
}
