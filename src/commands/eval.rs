//! `gqla eval`: a model's perplexity on a text, and against its source model the KL divergence
//! and top-1 agreement of the next-token distributions.

use super::CliError;
use gqla_model::budget::{Budget, Need};
use gqla_model::eval::{evaluate, TextScore};
use gqla_model::hf::{tokenizer, Checkpoint};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The model: an HF checkpoint directory or a GGUF file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// A UTF-8 text file to score.
    #[arg(long)]
    text: PathBuf,
    /// Compare with this source model (KL(source ‖ model) and top-1 agreement).
    #[arg(long)]
    against: Option<PathBuf>,
    /// tokenizer.json to use (default: the checkpoint's, or the one a GGUF file embeds; else the
    /// source's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens per window: the text is cut into windows, each scored from position 0.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(2..=65536))]
    window: u64,
    /// Score at most this many tokens of the text (at least 2; default: all of it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    max_tokens: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, budget: &Budget) -> Result<(), CliError> {
    let model = Checkpoint::open(&a.checkpoint)?;
    let source = a.against.as_deref().map(Checkpoint::open).transpose()?;
    // The model's and the source's own tokenizers, each read once: the vocabulary check compares
    // them, and the text is encoded with --tokenizer, else the model's, else the source's.
    let own = (a.tokenizer.is_none() || a.against.is_some()).then(|| tokenizer::load(&a.checkpoint, None));
    let source_own = a.against.as_deref().map(|p| tokenizer::load(p, None));
    if let (Some(src), Some(path)) = (&source, &a.against) {
        same_vocabulary(&a.checkpoint, &model, loaded(&own), path, src, loaded(&source_own))?;
    }
    let tok = match &a.tokenizer {
        Some(explicit) => tokenizer::load(&a.checkpoint, Some(explicit))?,
        None => match (own.unwrap_or_else(|| tokenizer::load(&a.checkpoint, None)), source_own) {
            (Ok(t), _) | (Err(_), Some(Ok(t))) => t,
            (Err(e), _) => return Err(e.into()),
        },
    };
    let text = gqla_files::read_to_string(&a.text, gqla_files::Limit::INDEX)?;
    let mut ids = tokenizer::encode(&tok, &text, &a.text)?;
    if let Some(n) = a.max_tokens {
        ids.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if ids.len() < 2 {
        return Err(CliError::Usage(format!(
            "{}: {} token(s); at least 2 are needed",
            a.text.display(),
            ids.len()
        )));
    }
    let vocab = model.config.vocab_size;
    if let Some((i, bad)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
        return Err(CliError::Usage(format!(
            "{}: token {i} has id {bad}, outside the model's vocabulary of {vocab}: wrong tokenizer?",
            a.text.display()
        )));
    }
    let window = a.window as usize;
    let w = window.min(ids.len());
    let batch = (gqla_model::eval::batches_of(window) * w).min(ids.len());
    let hidden = model.config.hidden_size;
    budget.check(&[
        Need::elements(
            format!("logits of a {w}-token window × vocab_size {vocab} (2 models)"),
            &[4, w, vocab],
            8,
        ),
        Need::elements(
            format!("activations of a batch of {batch} tokens × hidden_size {hidden} (2 models)"),
            &[16, batch, hidden.max(model.config.intermediate_size)],
            4,
        ),
    ])?;
    let windows = ids.chunks(window).filter(|c| c.len() >= 2).count();
    let batches = windows.div_ceil(gqla_model::eval::batches_of(window));
    let models = 1 + source.is_some() as usize;
    let bar = ProgressBar::new((batches * models * model.config.num_layers) as u64);
    bar.set_style(ProgressStyle::with_template("scoring {bar:30} {pos}/{len} layer passes [{elapsed}<{eta}]").expect("valid template"));
    let score = evaluate::<f32>(&model, source.as_ref(), &ids, window, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&score).expect("scores serialize"));
    } else {
        print!("{}", table(&a, &score));
    }
    Ok(())
}

/// A tokenizer that was looked for and found.
fn loaded(t: &Option<gqla_reference::Result<tokenizer::Tokenizer>>) -> Option<&tokenizer::Tokenizer> {
    t.as_ref().and_then(|r| r.as_ref().ok())
}

/// KL and top-1 agreement compare distributions over the same tokens: refuse a source with
/// another vocabulary (its size, or, where both models carry a tokenizer, its tokens).
fn same_vocabulary(
    model_path: &Path,
    model: &Checkpoint,
    model_tokenizer: Option<&tokenizer::Tokenizer>,
    source_path: &Path,
    source: &Checkpoint,
    source_tokenizer: Option<&tokenizer::Tokenizer>,
) -> Result<(), CliError> {
    let (m, s) = (model.config.vocab_size, source.config.vocab_size);
    if m != s {
        return Err(CliError::Usage(format!(
            "--against {}: vocab_size {s}, but {} has vocab_size {m}: KL and top-1 agreement need the same vocabulary",
            source_path.display(),
            model_path.display()
        )));
    }
    if let (Some(tm), Some(ts)) = (model_tokenizer, source_tokenizer) {
        let (vm, vs) = (tm.get_vocab(true), ts.get_vocab(true));
        if let Some((token, id)) = vs.iter().filter(|(t, id)| vm.get(*t) != Some(id)).min_by_key(|(_, id)| **id) {
            return Err(CliError::Usage(format!(
                "--against {}: its tokenizer maps {token:?} to id {id}, {}'s to {}: KL and top-1 agreement need the same vocabulary",
                source_path.display(),
                model_path.display(),
                vm.get(token).map_or("nothing".to_string(), |i| format!("id {i}"))
            )));
        }
    }
    Ok(())
}

fn table(a: &Args, s: &TextScore) -> String {
    let mut out = format!(
        "{} on {}: {} tokens in {} window(s) of at most {}, f32\n",
        a.checkpoint.display(),
        a.text.display(),
        s.tokens,
        s.windows,
        a.window
    );
    out += &format!("perplexity                {:>12.4}\n", s.perplexity);
    if let (Some(src), Some(kl), Some(top1)) = (s.source_perplexity, s.kl_from_source, s.top1_agreement) {
        out += &format!(
            "source perplexity         {src:>12.4}   ({})\n",
            a.against.as_ref().expect("compared").display()
        );
        out += &format!("KL(source || model)       {kl:>12.6} nats/token\n");
        out += &format!("top-1 agreement           {:>11.2}%\n", 100.0 * top1);
    }
    out
}
