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
    },
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<(), CliError> {
    let Which::Export { out, filter, seed } = a.which;
    let seed = seed.unwrap_or_else(gqla_conformance::selection::fresh_seed);
    let cases = gqla_conformance::Selection::new(filter.clone())
        .indexed_cases(seed)
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
    let m = export(&cases, seed, &filter, &out, &mut |case| {
        bar.set_message(case.op().name());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let m = m?;
    println!(
        "wrote {} cases (suite seed {seed}) to {}: manifest.json, definitions.json, NNNNN.inputs.safetensors. \
         Write NNNNN.outputs.safetensors and kernel.json (with the kernel's profile) into an outputs directory, then \
         `gqla certify --kernel external:{} --outputs DIR`",
        m.cases.len(),
        out.display(),
        out.display()
    );
    Ok(())
}
