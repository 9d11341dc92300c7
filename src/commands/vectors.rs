//! `gqla vectors export`: write a vector pack for kernels outside this process.

use super::CliError;
use gqla_conformance::case::Case;
use gqla_conformance::lattice::suite_cases_seeded;
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

pub fn run(a: Args, budget: &gqla_reference::budget::Budget) -> Result<(), CliError> {
    let Which::Export { out, filter, seed } = a.which;
    let seed = seed.unwrap_or_else(|| rand::random::<u32>().max(1) as u64);
    let selected = |c: &Case| filter.is_empty() || filter.iter().any(|p| c.matches(p));
    let cases: Vec<(usize, Case)> = suite_cases_seeded(seed)
        .into_iter()
        .enumerate()
        .filter(|(_, c)| selected(c))
        .collect();
    if cases.is_empty() {
        return Err(CliError::Usage(format!("no case id starts with `{}`", filter.join(" | "))));
    }
    // One case at a time: its inputs, and the file they are serialised into.
    let largest = cases.iter().map(|(_, c)| c.memory_bytes()).max().unwrap_or(0);
    budget.check(&[gqla_reference::budget::Need {
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
