//! The tokenizer of a checkpoint: an explicit `tokenizer.json`, the checkpoint directory's
//! `tokenizer.json`, or the one a GGUF file embeds.

use gqla_reference::error::{Error, Result};
use std::path::Path;
pub use tokenizers::Tokenizer;

/// Load the tokenizer for `checkpoint` (explicit file first).
pub fn load(checkpoint: &Path, explicit: Option<&Path>) -> Result<tokenizers::Tokenizer> {
    let from_json = |p: &Path| -> Result<tokenizers::Tokenizer> {
        let bytes = gqla_files::read_file(p, gqla_files::Limit::INDEX)?;
        tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::file(p, format!("not a tokenizer.json: {e}")))
    };
    if let Some(p) = explicit {
        return from_json(p);
    }
    if checkpoint.is_dir() {
        return match super::tensors::checkpoint_file(checkpoint, "tokenizer.json")? {
            Some(p) => from_json(&p),
            None => Err(Error::file(checkpoint, "no tokenizer.json here; give one explicitly")),
        };
    }
    if super::gguf::is_gguf(checkpoint) {
        return super::gguf::GgufModel::open(checkpoint)?.tokenizer();
    }
    Err(Error::file(checkpoint, "no tokenizer found; give a tokenizer.json explicitly"))
}

/// Token ids of `text` (no special tokens added).
pub fn encode(tokenizer: &tokenizers::Tokenizer, text: &str, source: &Path) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::file(source, format!("cannot tokenize: {e}")))
}
