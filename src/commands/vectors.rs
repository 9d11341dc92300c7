//! `gqla vectors export`: write a vector pack for kernels outside this process.

use super::CliError;
use gqla_conformance::case::Case;
use gqla_conformance::lattice::suite_cases;
use gqla_conformance::pack::export;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Write manifest.json and one inputs file per case into DIR.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Only cases whose id starts with this prefix.
        #[arg(long, default_value = "")]
        filter: String,
    },
}

pub fn run(a: Args) -> Result<(), CliError> {
    let Which::Export { out, filter } = a.which;
    let cases: Vec<Case> = suite_cases().into_iter().filter(|c| c.matches(&filter)).collect();
    if cases.is_empty() {
        return Err(CliError::Usage(format!("no case id starts with `{filter}`")));
    }
    let m = export(&cases, &out).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("wrote {} cases to {} (manifest.json + NNNNN.inputs.safetensors); write NNNNN.outputs.safetensors beside them, then `gqla certify --kernel external:{}`", m.cases.len(), out.display(), out.display());
    Ok(())
}
