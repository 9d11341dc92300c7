//! GGUF model files (llama.cpp), read as HF checkpoints: the config from the file's metadata,
//! the tensors dequantised by candle (`quantized::gguf_file`) and renamed to HF's names, with
//! llama.cpp's permutation of the q/k rows undone.
//!
//! llama.cpp's converter reorders each head's q and k rows from HF's rotate-half RoPE layout
//! (the pair (i, i + d/2)) to interleaved pairs (2i, 2i + 1): row `j·d/2 + i` of an HF head is
//! row `2i + j` of the GGUF head. [`unpermute`] inverts that, so the reference runs the model
//! exactly as HF does (tests hold our logits against HF's own GGUF loader).

use super::names::{self, MlpPath, MlpProj, Module};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use gqla_reference::error::{Error, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The GGUF magic, "GGUF" little-endian.
const MAGIC: &[u8; 4] = b"GGUF";

/// Whether `path` is a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    let Ok((file, len)) = gqla_files::read::open_regular(path) else {
        return false;
    };
    let mut magic = [0u8; 4];
    len >= 4 && std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok() && &magic == MAGIC
}

/// One GGUF tensor under its HF name.
#[derive(Clone, Debug)]
struct Entry {
    gguf: String,
    /// Heads whose q/k rows llama.cpp permuted (None: not permuted).
    permuted_heads: Option<usize>,
}

/// An open GGUF model of a supported architecture (LLaMA).
pub struct GgufModel {
    path: PathBuf,
    file: Mutex<File>,
    stamp: (u64, i64, i64, u64),
    content: Content,
    /// HF name → GGUF tensor.
    names: BTreeMap<String, Entry>,
    config: serde_json::Value,
}

fn stamp(meta: &std::fs::Metadata) -> (u64, i64, i64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino())
}

impl GgufModel {
    /// Open `path` and map its metadata and tensor names to HF's.
    pub fn open(path: &Path) -> Result<Self> {
        let (mut file, _) = gqla_files::read::open_regular(path)?;
        let meta = file.metadata().map_err(|e| Error::file(path, format!("cannot stat: {e}")))?;
        let content = Content::read(&mut file).map_err(|e| Error::file(path, format!("not a GGUF file we can read: {e}")))?;
        let bad = |key: &str, expected: &str| Error::file(path, format!("GGUF metadata `{key}`: expected {expected}"));
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(bad("general.architecture", "a string")),
        };
        if arch != "llama" {
            return Err(Error::file(
                path,
                format!("GGUF architecture `{arch}` is not supported (expected llama: LLaMA, SmolLM, Mistral-style models)"),
            ));
        }
        // Each integer has the range of the HF config key it becomes (`hf_key`): a GGUF file
        // gets no more room than a config.json (2^40 layers would loop for hours).
        let ranged = |key: &str, hf_key: &str, v: &Value| -> Result<usize> {
            let (lo, hi) = super::key_ranges::key_range(hf_key);
            match integer(v) {
                Some(x) if (lo..=hi).contains(&(x as u64)) => Ok(x),
                Some(x) => Err(bad(key, &format!("an integer in {lo}..={hi} (as HF's `{hf_key}`), got {x}"))),
                None => Err(bad(key, &format!("an integer, got {v:?}"))),
            }
        };
        let int = |key: &str, hf_key: &str| -> Result<usize> {
            let v = content.metadata.get(key).ok_or_else(|| bad(key, "an integer (missing)"))?;
            ranged(key, hf_key, v)
        };
        let opt_int =
            |key: &str, hf_key: &str| -> Result<Option<usize>> { content.metadata.get(key).map(|v| ranged(key, hf_key, v)).transpose() };
        let real = |key: &str, default: f64| -> Result<f64> {
            match content.metadata.get(key) {
                None => Ok(default),
                Some(v) => real(v).ok_or_else(|| bad(key, &format!("a number, got {v:?}"))),
            }
        };
        let p = |k: &str| format!("{arch}.{k}");
        let hidden = int(&p("embedding_length"), "hidden_size")?;
        let layers = int(&p("block_count"), "num_hidden_layers")?;
        let heads = int(&p("attention.head_count"), "num_attention_heads")?;
        let kv_heads = opt_int(&p("attention.head_count_kv"), "num_key_value_heads")?.unwrap_or(heads);
        if !hidden.is_multiple_of(heads) {
            return Err(bad(
                &p("attention.head_count"),
                &format!("a positive divisor of embedding_length {hidden}"),
            ));
        }
        let head_dim = opt_int(&p("attention.key_length"), "head_dim")?.unwrap_or(hidden / heads);
        if let Some(Value::String(kind)) = content.metadata.get(&p("rope.scaling.type")) {
            if kind != "none" {
                return Err(Error::file(
                    path,
                    format!("GGUF RoPE scaling `{kind}` is not supported (expected none)"),
                ));
            }
        }
        let vocab = match opt_int(&p("vocab_size"), "vocab_size")? {
            Some(v) => v,
            None => match content.metadata.get("tokenizer.ggml.tokens") {
                Some(Value::Array(tokens)) => ranged("tokenizer.ggml.tokens", "vocab_size", &Value::U64(tokens.len() as u64))?,
                _ => return Err(bad("tokenizer.ggml.tokens", "the token list (or llama.vocab_size)")),
            },
        };
        let intermediate = int(&p("feed_forward_length"), "intermediate_size")?;
        let context = opt_int(&p("context_length"), "max_position_embeddings")?.unwrap_or(2048);
        check_tensor_extents(path, &content, meta.len())?;
        let tied = !content.tensor_infos.contains_key("output.weight");
        let config = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": real(&p("attention.layer_norm_rms_epsilon"), 1e-5)?,
            "rope_theta": real(&p("rope.freq_base"), 10000.0)?,
            "max_position_embeddings": context,
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            // Dequantised values are exact in f32 (block scales times small integers).
            "dtype": "float32",
            "gguf_source": path.display().to_string(),
        });
        let mut names = BTreeMap::new();
        let mut add = |hf: String, gguf: String, permuted_heads: Option<usize>| {
            if content.tensor_infos.contains_key(&gguf) {
                names.insert(hf, Entry { gguf, permuted_heads });
            }
        };
        add(names::EMBED_TOKENS.into(), "token_embd.weight".into(), None);
        add(names::FINAL_NORM.into(), "output_norm.weight".into(), None);
        add(names::LM_HEAD.into(), "output.weight".into(), None);
        for i in 0..layers {
            let g = format!("blk.{i}.");
            for (m, q, permuted) in [
                (Module::InputNorm, "attn_norm.weight", None),
                (Module::QProj, "attn_q.weight", Some(heads)),
                (Module::KProj, "attn_k.weight", Some(kv_heads)),
                (Module::VProj, "attn_v.weight", None),
                (Module::OProj, "attn_output.weight", None),
                (Module::PostAttentionNorm, "ffn_norm.weight", None),
            ] {
                add(m.weight(i), format!("{g}{q}"), permuted);
            }
            for (p, q) in MlpProj::ALL
                .into_iter()
                .zip(["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"])
            {
                add(
                    format!("{}.{}.weight", names::layer(i), p.path(MlpPath::Dense)),
                    format!("{g}{q}"),
                    None,
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            stamp: stamp(&meta),
            content,
            names,
            config,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The HF `config.json` this model corresponds to.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// HF tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The HF shape of `name` ([rows, cols] for matrices), if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let e = self.names.get(name)?;
        Some(self.content.tensor_infos[&e.gguf].shape.dims().to_vec())
    }

    /// Tensor `name` dequantised to f32, in HF's row order.
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .names
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor `{name}` is not in this GGUF model")))?;
        let qt = {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            self.content.tensor(&mut *file, &e.gguf, &Device::Cpu)
        }
        .map_err(|err| {
            Error::file(
                &self.path,
                format!("tensor `{}`: cannot read ({err}); truncated, or changed while read?", e.gguf),
            )
        })?;
        let values: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|err| Error::file(&self.path, format!("tensor `{}`: cannot dequantise: {err}", e.gguf)))?;
        Ok(match e.permuted_heads {
            Some(heads) => {
                let shape = self.shape(name).expect("present");
                unpermute(&values, heads, shape[0], shape.get(1).copied().unwrap_or(1))
                    .map_err(|why| Error::file(&self.path, format!("tensor `{}`: {why}", e.gguf)))?
            }
            None => values,
        })
    }

    /// Tensor `name`'s stored (quantised) bytes as the file holds them, fed to `sink` in chunks
    /// of at most `chunk` bytes, and its GGML type's name (`Q4_1`, `F16`, ...).
    pub fn stored_bytes(&self, name: &str, chunk: usize, sink: &mut dyn FnMut(&[u8])) -> Result<String> {
        use std::os::unix::fs::FileExt;
        let e = self
            .names
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor `{name}` is not in this GGUF model")))?;
        let info = &self.content.tensor_infos[&e.gguf];
        let (elems, block) = (info.shape.elem_count(), info.ggml_dtype.block_size());
        let len = (elems / block.max(1)) as u64 * info.ggml_dtype.type_size() as u64;
        let start = self.content.tensor_data_offset.saturating_add(info.offset);
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0u8; chunk.max(1).min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], start + done).map_err(|err| {
                Error::file(
                    &self.path,
                    format!("tensor `{}`: cannot read ({err}); truncated, or changed while read?", e.gguf),
                )
            })?;
            sink(&buf[..n]);
            done += n as u64;
        }
        Ok(format!("{:?}", info.ggml_dtype).to_uppercase())
    }

    /// The tokenizer the file embeds, as HF transformers builds it from the same metadata: a
    /// byte-level BPE (`tokenizer.ggml.model` = gpt2) over `tokenizer.ggml.tokens` (ids in list
    /// order) and `tokenizer.ggml.merges`, no prefix space, control and user-defined tokens
    /// special.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        use tokenizers::models::bpe::{Merges, Vocab, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let m = &self.content.metadata;
        let bad = |key: &str, expected: &str| Error::file(&self.path, format!("GGUF metadata `{key}`: expected {expected}"));
        match m.get("tokenizer.ggml.model") {
            Some(Value::String(kind)) if kind == "gpt2" => {}
            Some(Value::String(kind)) => {
                return Err(Error::file(
                    &self.path,
                    format!("GGUF tokenizer `{kind}` is not supported (expected gpt2, a byte-level BPE); give a tokenizer.json explicitly"),
                ))
            }
            _ => return Err(bad("tokenizer.ggml.model", "a tokenizer kind")),
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match m.get(key) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(bad(key, "a list of strings")),
                    })
                    .collect(),
                _ => Err(bad(key, "a list of strings")),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Merges = strings("tokenizer.ggml.merges")?
            .iter()
            .map(|line| {
                line.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad("tokenizer.ggml.merges", &format!("pairs `a b`, got `{line}`")))
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::file(&self.path, format!("GGUF tokenizer: {e}")))?;
        let mut t = tokenizers::Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        t.with_decoder(Some(ByteLevel::default()));
        if let Some(Value::Array(types)) = m.get("tokenizer.ggml.token_type") {
            let special: Vec<tokenizers::AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| matches!(integer(ty), Some(3 | 4)))
                .map(|(_, tok)| tokenizers::AddedToken::from(tok.clone(), true))
                .collect();
            t.add_special_tokens(special)
                .map_err(|e| Error::file(&self.path, format!("GGUF tokenizer: special tokens: {e}")))?;
        }
        Ok(t)
    }

    /// An error if the file changed since it was opened.
    pub fn unchanged(&self) -> Result<()> {
        let now = std::fs::metadata(&self.path).map_err(|e| Error::file(&self.path, format!("changed while it was read: {e}")))?;
        if stamp(&now) != self.stamp {
            return Err(Error::file(
                &self.path,
                "changed while it was read (modified, resized or replaced); nothing was written",
            ));
        }
        Ok(())
    }
}

/// Refuse a file shorter than its tensors: every tensor's data must lie inside the file, so a
/// truncated download is caught when it is opened, not when (or whether) a tensor is read.
fn check_tensor_extents(path: &Path, content: &Content, file_len: u64) -> Result<()> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let (elems, block) = (info.shape.elem_count() as u128, info.ggml_dtype.block_size().max(1) as u128);
        let len = elems.div_ceil(block) * info.ggml_dtype.type_size() as u128;
        let end = content.tensor_data_offset as u128 + info.offset as u128 + len;
        if end > file_len as u128 {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` ({:?}, shape {:?}) ends at byte {end}, past the end of the file ({file_len} bytes): \
                     truncated?",
                    info.ggml_dtype,
                    info.shape.dims()
                ),
            ));
        }
    }
    Ok(())
}

fn integer(v: &Value) -> Option<usize> {
    match *v {
        Value::U8(x) => Some(x as usize),
        Value::U16(x) => Some(x as usize),
        Value::U32(x) => Some(x as usize),
        Value::U64(x) => usize::try_from(x).ok(),
        Value::I8(x) => usize::try_from(x).ok(),
        Value::I16(x) => usize::try_from(x).ok(),
        Value::I32(x) => usize::try_from(x).ok(),
        Value::I64(x) => usize::try_from(x).ok(),
        _ => None,
    }
}

fn real(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x as f64),
        Value::F64(x) => Some(x),
        _ => integer(v).map(|x| x as f64),
    }
}

/// llama.cpp's q/k row permutation (convert_hf_to_gguf.py reshapes to [heads, 2, d/2, cols] and
/// swaps the middle axes): within each of `heads` heads, HF row `j·d/2 + i` becomes row `2i + j`.
/// For writing test files; [`unpermute`] is its inverse.
pub fn permute(values: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for (hf, gg) in pair_rows(heads, d) {
        out[gg * cols..(gg + 1) * cols].copy_from_slice(&values[hf * cols..(hf + 1) * cols]);
    }
    out
}

/// (HF row, GGUF row) for every q/k row of `heads` heads of width `d`.
fn pair_rows(heads: usize, d: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..heads).flat_map(move |h| (0..2).flat_map(move |j| (0..d / 2).map(move |i| (h * d + j * d / 2 + i, h * d + 2 * i + j))))
}

/// Undo llama.cpp's q/k row permutation: within each of `heads` heads of `rows / heads` rows,
/// HF row `j·d/2 + i` is GGUF row `2i + j`.
pub fn unpermute(values: &[f32], heads: usize, rows: usize, cols: usize) -> std::result::Result<Vec<f32>, String> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) || values.len() != rows * cols {
        return Err(format!("{rows} rows do not split into {heads} heads of an even width"));
    }
    let mut out = vec![0f32; values.len()];
    for (hf, gg) in pair_rows(heads, rows / heads) {
        out[hf * cols..(hf + 1) * cols].copy_from_slice(&values[gg * cols..(gg + 1) * cols]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permutation, written out from its definition (reshape to [heads, 2, d/2, cols],
    /// swap the middle axes), agrees with `permute`, and `unpermute` undoes it.
    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (heads, d, cols) = (3, 8, 5);
        let hf: Vec<f32> = (0..heads * d * cols).map(|v| v as f32).collect();
        let mut swapped = vec![0f32; hf.len()];
        for (idx, v) in hf.iter().enumerate() {
            let (row, col) = (idx / cols, idx % cols);
            let (h, j, i) = (row / d, (row % d) / (d / 2), row % (d / 2));
            swapped[((h * (d / 2) + i) * 2 + j) * cols + col] = *v;
        }
        assert_eq!(permute(&hf, heads, heads * d, cols), swapped);
        assert_ne!(swapped, hf);
        assert_eq!(unpermute(&swapped, heads, heads * d, cols).unwrap(), hf);
        assert!(unpermute(&swapped, 5, heads * d, cols).is_err());
    }
}
