//! `gqla snapshot`: a regression digest of a checkpoint as YAML, and `--check` against one.

use super::CliError;
use gqla_model::budget::Budget;
use gqla_model::snapshot::{Snapshot, TensorPolicy};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint: an HF directory or a GGUF file.
    checkpoint: PathBuf,
    /// Compare with this snapshot (its probe and tolerances) instead of printing one; exit 1 on a
    /// regression.
    #[arg(long, value_name = "SNAPSHOT")]
    check: Option<PathBuf>,
    /// Write the snapshot to this file (atomically) instead of standard output.
    #[arg(long, conflicts_with = "check")]
    output: Option<PathBuf>,
    /// Seed of the attention probe, its projections and the default token ids.
    #[arg(long, default_value_t = 0, conflicts_with = "check")]
    seed: u64,
    /// Token ids run through the whole model (default: 8 drawn from the seed).
    #[arg(long, value_delimiter = ',', conflicts_with = "check")]
    token_ids: Option<Vec<u32>>,
    /// Whether changed tensor bytes fail a later --check, or are only listed.
    #[arg(long, value_enum, default_value_t = PolicyArg::MustMatch, conflicts_with = "check")]
    tensors: PolicyArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyArg {
    MustMatch,
    Report,
}

/// A check's verdict (exit 0 or 1).
pub enum Outcome {
    Unchanged,
    Regressed,
}

fn progress() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("snapshot {bar:30} {pos}/{len} (tensors hashed, then layers) [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    bar
}

pub fn run(a: Args, budget: &Budget) -> Result<Outcome, CliError> {
    let bar = progress();
    let mut on_step = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    if let Some(file) = &a.check {
        let text = gqla_files::read_to_string(file, gqla_files::Limit::INDEX)?;
        let stored = Snapshot::from_yaml(&text, file)?;
        let report = stored.check(&a.checkpoint, file, budget, &mut on_step)?;
        bar.finish_and_clear();
        println!("{} against {}:", a.checkpoint.display(), file.display());
        println!("{report}");
        return Ok(if report.passed() { Outcome::Unchanged } else { Outcome::Regressed });
    }
    let mut snap = Snapshot::take_seeded(&a.checkpoint, a.seed, a.token_ids, budget, &mut on_step)?;
    bar.finish_and_clear();
    snap.tolerances.tensors = match a.tensors {
        PolicyArg::MustMatch => TensorPolicy::MustMatch,
        PolicyArg::Report => TensorPolicy::Report,
    };
    let yaml = snap.to_yaml();
    match &a.output {
        Some(path) => {
            gqla_files::write_file(path, yaml.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{yaml}"),
    }
    Ok(Outcome::Unchanged)
}
