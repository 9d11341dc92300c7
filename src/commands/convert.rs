//! `gqla convert`: TransGQLA conversion of a GQA checkpoint into a GQLA checkpoint.

use super::CliError;
use gqla_model::hf::ModelConfig;
use gqla_model::transgqla::checkpoint::{
    convert_checkpoint, Calibration, CalibrationFlow, CalibrationPrecision, CheckpointOptions, ConversionReport, Emit, LayerConversion,
    Progress,
};
use gqla_model::transgqla::{FoldRequest, Method, MethodError, Request};
use gqla_reference::DType;
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Source: an HF checkpoint directory or a GGUF file. LLaMA, Qwen2 or Mistral (TransGQLA), or
    /// a DeepSeek-V2/V3 or GLM-4.7-Flash MLA checkpoint, dense or MoE (per-group PCA, needs
    /// --groups).
    #[arg(long)]
    input: PathBuf,
    /// Output directory; must not exist. Written to a temporary directory and renamed when done.
    #[arg(long)]
    output: PathBuf,
    /// Number of groups G: for a GQA source its num_key_value_heads (the default); for an MLA
    /// source a divisor of the query heads (required).
    #[arg(long)]
    groups: Option<usize>,
    /// Latent rank d_c (GQA sources; default: the paper's budget, d_c + d_r = 28.125% of the
    /// source's 2·KV·D cache elements, 512 for LLaMA-3-8B).
    #[arg(long, conflicts_with = "no_truncation")]
    kv_lora_rank: Option<usize>,
    /// Rope dims d_r kept on the shared key (GQA sources; default: min(64, D/2)).
    #[arg(long, conflicts_with = "no_truncation")]
    rope_dim: Option<usize>,
    /// FreqFold: `search` (convert at the smallest valid fold, then at double it while the
    /// held-out KL falls, and keep the best, as TransMLA's `auto`), `smallest` (least
    /// approximation, one conversion) or a number.
    #[arg(long, default_value = "search", conflicts_with = "no_truncation")]
    freqfold: FoldArg,
    /// Keep every RoPE frequency and the full kv rank with freqfold 1: the exact conversion.
    #[arg(long)]
    no_truncation: bool,
    /// Calibration token ids: a safetensors file with an integer `input_ids` [sequences, tokens].
    /// Without it, seeded random ids are used (weaker, and reported as such).
    #[arg(long, conflicts_with = "calib_text")]
    calib: Option<PathBuf>,
    /// Calibration text (UTF-8): tokenized with the checkpoint's tokenizer (its tokenizer.json,
    /// or the one a GGUF file embeds) and cut into sequences of --calib-tokens; the last is held
    /// out for the KL and error figures.
    #[arg(long)]
    calib_text: Option<PathBuf>,
    /// Random calibration: sequences, tokens per sequence, seed.
    #[arg(long, default_value_t = 8)]
    calib_sequences: usize,
    #[arg(long, default_value_t = 128)]
    calib_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Precision of the calibration forward pass (f32 is about twice as fast; f64 is bit-stable
    /// across CPUs). Held-out checks always run in f64.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    calib_precision: PrecisionArg,
    /// Output dtype (default: the source's).
    #[arg(long, value_parser = super::dtype_parser(&[DType::Bf16, DType::F32, DType::F64]))]
    dtype: Option<DType>,
    /// Output layout: `gqla` (kv_b per group, exact, with modeling_gqla.py for HF's
    /// trust_remote_code) or `mla` (stock DeepSeek-V3: kv_b repeated per head and a latent RMSNorm,
    /// which unmodified transformers loads; the norm is approximate for GQA sources).
    #[arg(long, value_enum, default_value_t = EmitArg::Gqla)]
    emit: EmitArg,
    /// The hidden states that calibrate each next layer: the source model's, the converted
    /// model's, or the model with RoPE cut at the full kv rank (TransMLA's second pass).
    #[arg(long, value_enum, default_value_t = FlowArg::RopeCut)]
    calib_flow: FlowArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FlowArg {
    Source,
    Converted,
    RopeCut,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EmitArg {
    Gqla,
    Mla,
}

/// `--freqfold`.
#[derive(Clone, Copy, Debug)]
enum FoldArg {
    Search,
    Smallest,
    Fixed(usize),
}

impl std::str::FromStr for FoldArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "search" => Ok(Self::Search),
            "smallest" => Ok(Self::Smallest),
            _ => match s.parse() {
                Ok(0) | Err(_) => Err(format!("expected `search`, `smallest` or a positive integer, got `{s}`")),
                Ok(f) => Ok(Self::Fixed(f)),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PrecisionArg {
    F32,
    F64,
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<(), CliError> {
    let config = ModelConfig::load(&a.input)?;
    let request = Request {
        groups: a.groups,
        rope_dim: a.rope_dim,
        kv_rank: a.kv_lora_rank,
        fold: match a.freqfold {
            FoldArg::Search => FoldRequest::Search,
            FoldArg::Smallest => FoldRequest::Smallest,
            FoldArg::Fixed(f) => FoldRequest::Given(f),
        },
        exact: a.no_truncation,
    };
    let method = Method::for_source(&config, &request).map_err(|e| flag_error(e, &config))?;
    let calibration = match (&a.calib, &a.calib_text) {
        (Some(p), _) => Calibration::File(p.clone()),
        (None, Some(text)) => {
            if a.calib_tokens == 0 {
                return Err(CliError::Usage("--calib-tokens must be positive".into()));
            }
            let tok = gqla_model::hf::tokenizer::load(&a.input, None)?;
            let body = gqla_files::read_to_string(text, gqla_files::Limit::INDEX)?;
            let ids = gqla_model::hf::tokenizer::encode(&tok, &body, text)?;
            Calibration::Text {
                text: text.clone(),
                sequences: ids.chunks(a.calib_tokens).map(<[u32]>::to_vec).collect(),
            }
        }
        (None, None) => {
            eprintln!(
                "NOTE: no --calib given: calibrating on {} x {} seeded random token ids (seed {}). Random ids are a weaker calibration than real text; pass --calib for a real conversion.",
                a.calib_sequences, a.calib_tokens, a.seed
            );
            Calibration::Random {
                sequences: a.calib_sequences,
                tokens: a.calib_tokens,
                seed: a.seed,
            }
        }
    };
    let dtype = a.dtype;
    let calibration_precision = match a.calib_precision {
        PrecisionArg::F32 => CalibrationPrecision::F32,
        PrecisionArg::F64 => CalibrationPrecision::F64,
    };
    let opt = CheckpointOptions {
        method,
        dtype,
        calibration,
        calibration_precision,
        budget: budget.clone(),
        calibration_flow: match a.calib_flow {
            FlowArg::Source => CalibrationFlow::Source,
            FlowArg::Converted => CalibrationFlow::Converted,
            FlowArg::RopeCut => CalibrationFlow::RopeCut,
        },
        emit: match a.emit {
            EmitArg::Gqla => Emit::Gqla,
            EmitArg::Mla => Emit::Mla,
        },
    };
    let bar = ProgressBar::new(config.num_layers as u64);
    let style = |what: &str| {
        ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} layers {{msg}} [{{elapsed}}]")).expect("valid template")
    };
    bar.set_style(style("converting"));
    let report = convert_checkpoint(&a.input, &a.output, &opt, &mut |p| match p {
        Progress::Fold(f) => {
            bar.set_style(style(&format!("freqfold {f}: converting")));
            bar.reset();
        }
        Progress::Layer(row) => {
            bar.set_message(format!(
                "(layer {}: attention rel err {:.2e})",
                row.layer, row.held_out_attention_rel_err
            ));
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    let report = report?;
    print!("{}", table(&report));
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

/// A request the source refused, in the flags' words (`(default)` where the paper's budget gave
/// the value).
fn flag_error(e: MethodError, config: &ModelConfig) -> CliError {
    let named = |flag: &str, defaulted: bool| if defaulted { format!("{flag} (default)") } else { flag.to_string() };
    CliError::Usage(match e {
        MethodError::GqaGroups { kv, given } => {
            format!("GQA → GQLA keeps one group per kv head: --groups must be {kv} (num_key_value_heads), got {given}")
        }
        MethodError::GroupsRequired { heads } => format!("MLA → GQLA needs --groups G (a divisor of the {heads} query heads)"),
        MethodError::GroupsNotDividing { groups, heads } => format!("--groups {groups} must divide the number of query heads H={heads}"),
        MethodError::AlreadyGqla { .. } => format!("{}: {e}", config.path.display()),
        MethodError::TruncatingMla => {
            "--rope-dim and --kv-lora-rank apply to GQA sources: an MLA source keeps its own d_c and d_r (per-group PCA changes only the groups)".into()
        }
        MethodError::RopeDim { rope_dim, max, kv, d, defaulted } => format!(
            "{} = {rope_dim}: expected an even number in 2..={max} (KV·D, KV = {kv}, D = {d})",
            named("--rope-dim", defaulted)
        ),
        MethodError::KvRank { kv_rank, max, kv, d, rope_dim, defaulted } => format!(
            "{} = {kv_rank}: expected 1..={max}, the no-rope keys and the values (2·KV·D − d_r, KV = {kv}, D = {d}, d_r = {rope_dim})",
            named("--kv-lora-rank", defaulted)
        ),
        MethodError::NoFold { rope_dim, d, kv } => format!("no freqfold makes --rope-dim {rope_dim} valid for head dim {d} and {kv} kv heads"),
        MethodError::FoldDoesNotFit { fold, rope_dim, d, kv } => {
            format!("--freqfold {fold} does not fit --rope-dim {rope_dim} for head dim {d} and {kv} kv heads")
        }
    })
}

fn table(r: &ConversionReport) -> String {
    let mut s = String::new();
    if let Some(best) = r.layers.iter().find_map(|l| match &l.report {
        LayerConversion::TransGqla(p) => Some(p.freqfold),
        LayerConversion::GroupPca(_) => None,
    }) {
        for t in &r.freqfold_trials {
            let _ = writeln!(
                s,
                "freqfold {:>2}: held-out KL {:.6e}{}",
                t.freqfold,
                t.held_out_kl,
                if t.freqfold == best { "  <- chosen" } else { "" }
            );
        }
    }
    for row in &r.layers {
        match &row.report {
            LayerConversion::TransGqla(p) => {
                if row.layer == 0 {
                    let _ = writeln!(
                        s,
                        "{:>5} {:>8} {:>9} {:>13} {:>10} {:>13} {:>13}",
                        "layer", "freqfold", "rope kept", "alpha", "kv kept", "rope-only err", "attn rel err"
                    );
                }
                let _ = writeln!(
                    s,
                    "{:>5} {:>8} {:>8.4}% {:>13.6e} {:>9.4}% {:>13.4e} {:>13.4e}",
                    row.layer,
                    p.freqfold,
                    100.0 * p.rope_energy_kept,
                    p.alpha,
                    100.0 * p.kv_energy_kept,
                    row.held_out_rope_only_rel_err.unwrap_or(f64::NAN),
                    row.held_out_attention_rel_err
                );
            }
            LayerConversion::GroupPca(p) => {
                if row.layer == 0 {
                    let _ = writeln!(
                        s,
                        "{:>5} {:>7} {:>10} {:>12} {:>13}",
                        "layer", "groups", "keys kept", "values kept", "attn rel err"
                    );
                }
                let _ = writeln!(
                    s,
                    "{:>5} {:>7} {:>9.4}% {:>11.4}% {:>13.4e}",
                    row.layer,
                    p.groups,
                    100.0 * p.key_energy_kept,
                    100.0 * p.value_energy_kept,
                    row.held_out_attention_rel_err
                );
            }
        }
    }
    if r.layers.iter().any(|l| l.held_out_rope_only_rel_err.is_some()) {
        let _ = writeln!(
            s,
            "rope-only err: the held-out attention error with RoPE truncated at the full kv rank; attn rel err: with the kv truncation too (the two need not add)"
        );
    }
    let _ = writeln!(
        s,
        "held-out KL(source || converted): {:.6e} nats/token; logits rel err {:.4e}",
        r.held_out_kl, r.held_out_logits_rel_err
    );
    let _ = writeln!(
        s,
        "cache per token per layer (measured): source {} -> absorb {} ({:.3}%), gqa path {}",
        r.source_cache_elements,
        r.absorb_cache_elements,
        100.0 * r.absorb_cache_elements as f64 / r.source_cache_elements.max(1) as f64,
        r.gqa_cache_elements
    );
    let rank = r.layers.iter().find_map(|l| match &l.report {
        LayerConversion::TransGqla(p) => Some(p.kv_rank),
        LayerConversion::GroupPca(_) => None,
    });
    if let Some(rank) = rank.filter(|&k| r.calibration_tokens < k) {
        let _ = writeln!(s, "WARNING: {} calibration tokens < d_c = {rank}: the latent's trailing directions are not determined by the data; calibrate on more tokens", r.calibration_tokens);
    }
    if r.weak_calibration {
        let _ = writeln!(s, "NOTE: calibrated on random token ids (weaker than real text)");
        if !r.freqfold_trials.is_empty() {
            let _ = writeln!(
                s,
                "NOTE: the freqfold was chosen on random ids too; with --calib-text it is chosen on real text"
            );
        }
    }
    if r.freqfold_trials.len() > 1 {
        let _ = writeln!(
            s,
            "(the held-out KL chose the freqfold, so it is optimistic: `gqla eval` on other text gives an unbiased figure)"
        );
    }
    s
}
