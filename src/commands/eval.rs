//! `gqla eval`: a model's perplexity on a text, and against its source model the KL divergence
//! and top-1 agreement of the next-token distributions.

use super::CliError;
use gqla_reference::budget::{Budget, Need};
use gqla_reference::eval::{evaluate, TextScore};
use gqla_reference::hf::{tokenizer, Checkpoint};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

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
    /// Score at most this many tokens of the text (0: all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, budget: &Budget) -> Result<(), CliError> {
    let model = Checkpoint::open(&a.checkpoint)?;
    let source = a.against.as_deref().map(Checkpoint::open).transpose()?;
    let tok = match tokenizer::load(&a.checkpoint, a.tokenizer.as_deref()) {
        Ok(t) => t,
        Err(e) => match &a.against {
            Some(src) if a.tokenizer.is_none() => tokenizer::load(src, None).map_err(|_| e)?,
            _ => return Err(e.into()),
        },
    };
    let text = gqla_reference::files::read_to_string(&a.text, gqla_reference::files::Limit::INDEX)?;
    let mut ids = tokenizer::encode(&tok, &text, &a.text)?;
    if a.max_tokens > 0 {
        ids.truncate(a.max_tokens);
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
    let batch = (gqla_reference::eval::batches_of(window) * w).min(ids.len());
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
    let batches = windows.div_ceil(gqla_reference::eval::batches_of(window));
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
