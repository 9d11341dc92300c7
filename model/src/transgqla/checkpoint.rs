//! Converting a whole HF GQA checkpoint to a GQLA checkpoint in the DeepSeek-V3 layout, one layer
//! at a time.
//!
//! Calibration is real: token ids run through the source model's embedding and decoder layers, and
//! each layer's attention is calibrated on the hidden states that reach it. Only one layer's weights
//! (plus the calibration activations) are held at a time. The output is written to a temporary
//! directory beside the target and renamed when complete, so an interrupted run leaves nothing that
//! looks finished.

use super::fold_search::{search_freqfold, FoldTrial};
use super::group_pca::{group_pca, GroupPcaReport};
use super::method::{Fold, Method, Truncation};
use super::pipeline::{convert_layer_with_rope_stage, LayerReport};
use super::rorope::fold_fits;
use crate::budget::{Budget, Need};
use crate::eval::mean_kl;
use crate::hf::config::{AttentionConfig, ModelConfig};
use crate::hf::names::{self, Module};
use crate::hf::writer::{
    check_stock_mla, check_stock_rope, copy_tokenizer, encode, layer_tensors, output_config, remote_classes, write_json,
};
pub use crate::hf::writer::{Emit, REMOTE_CODE};
use crate::hf::{Checkpoint, TensorStore};
use crate::transformer::{Attention, DecoderLayer};
use gqla_files::tensors::{RawTensor, ShardWriter};
use gqla_files::OutputDir;
use gqla_reference::cache::CacheSizes;
use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use gqla_reference::latent::LatentWeights;
use gqla_reference::real::rel_err;
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where calibration token ids come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Calibration {
    /// A safetensors file with an integer `input_ids` tensor `[sequences, tokens]` (or `[tokens]`).
    File(PathBuf),
    /// Seeded uniformly random ids: weaker than real text, and reported as such.
    Random { sequences: usize, tokens: usize, seed: u64 },
    /// Token ids of a text (`text` names it), as sequences; the last one is held out.
    Text { text: PathBuf, sequences: Vec<Vec<u32>> },
}

/// Everything `convert_checkpoint` needs besides the paths.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointOptions {
    /// TransGQLA (GQA sources) or per-group PCA (MLA sources): [`Method::for_source`].
    pub method: Method,
    /// Output dtype (None: the source's).
    pub dtype: Option<DType>,
    pub calibration: Calibration,
    /// Precision of the calibration forward pass (held-out checks always run in f64).
    pub calibration_precision: CalibrationPrecision,
    /// The memory the conversion may plan to use.
    pub budget: Budget,
    /// The output layout.
    pub emit: Emit,
    /// Which hidden states calibrate the next layer.
    pub calibration_flow: CalibrationFlow,
}

/// How the written model's FreqFold was chosen, as gqla_meta.json records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldChoice {
    /// One conversion, at the fold given (or 1, without truncation).
    Given,
    /// [`search_freqfold`]: the model was converted at each fold tried, and the one with the
    /// lowest held-out KL was written.
    #[default]
    Search,
}

/// What a conversion reports while it runs.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// The FreqFold search starts converting the model at this fold.
    Fold(usize),
    /// A layer has been converted and written.
    Layer(&'a LayerRow),
}

/// The hidden states that reach layer i + 1's calibration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationFlow {
    /// The source model's: every layer is fitted to the source's activations.
    Source,
    /// The converted model's (layers 0..=i converted): each layer is fitted to the inputs it will
    /// see in the converted model, so earlier truncations are compensated rather than compounded.
    Converted,
    /// The model with RoPE cut in layers 0..=i but the full kv rank (TransGQLA's T3 stage), as
    /// TransMLA gathers its balance and PCA statistics. MLA sources: as `Converted`. The default:
    /// the best measured (docs/results/2026-12-04-smollm2-sherlock.md).
    #[default]
    RopeCut,
}

/// The precision the calibration activations are computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum CalibrationPrecision {
    /// About twice as fast; the statistics only steer rotations and truncation, never exactness.
    #[default]
    F32,
    /// Bit-stable across CPUs to far more digits (used by the regression snapshots).
    F64,
}

/// One layer's row of the conversion table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerRow {
    pub layer: usize,
    #[serde(flatten)]
    pub report: LayerConversion,
    /// ‖y_conv − y_src‖/‖y_src‖ of the attention output on held-out tokens (same inputs).
    pub held_out_attention_rel_err: f64,
    /// The same for the layer with RoPE truncated but no kv truncation (TransGQLA's T3 stage):
    /// what the rope truncation alone loses (the kv truncation's effect is the difference, which
    /// can have either sign). None for MLA sources.
    pub held_out_rope_only_rel_err: Option<f64>,
}

/// How a layer was converted, with its figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "method")]
pub enum LayerConversion {
    /// GQA → GQLA (T1–T6).
    #[serde(rename = "transgqla")]
    TransGqla(LayerReport),
    /// MLA → GQLA by per-group PCA.
    #[serde(rename = "group_pca")]
    GroupPca(GroupPcaReport),
}

/// The whole conversion's figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConversionReport {
    pub layers: Vec<LayerRow>,
    /// Mean KL(source ‖ converted) of next-token distributions on held-out tokens, nats. After a
    /// FreqFold search this is the smallest of the trials on the same tokens, so it is
    /// optimistic; `gqla eval` on other text gives an unbiased figure.
    pub held_out_kl: f64,
    /// Relative error of the converted logits on held-out tokens.
    pub held_out_logits_rel_err: f64,
    /// Per-token, per-layer cache elements, measured from allocated caches.
    pub source_cache_elements: usize,
    pub absorb_cache_elements: usize,
    pub gqa_cache_elements: usize,
    /// True when calibration used random ids.
    pub weak_calibration: bool,
    /// Calibration tokens (all sequences): fewer than d_c leaves the PCA's trailing directions
    /// undetermined by data.
    pub calibration_tokens: usize,
    /// The folds the FreqFold search tried, in order (empty when the fold was given).
    pub freqfold_trials: Vec<FoldTrial>,
}

/// Convert the GQA checkpoint in `input` to a GQLA checkpoint written to `output` (which must not
/// exist). `on_progress` hears of each fold the search converts at, and of each layer converted.
pub fn convert_checkpoint(
    input: &Path,
    output: &Path,
    opt: &CheckpointOptions,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ConversionReport> {
    let ckpt = Checkpoint::open(input)?;
    let config = &ckpt.config;
    // The method must fit this source (a caller may have built it for another).
    let checked = Method::for_source(config, &opt.method.request()).map_err(|e| Error::file(&config.path, e.to_string()))?;
    if checked != opt.method {
        return Err(Error::file(
            &config.path,
            format!("{:?} does not fit this source, which takes {checked:?}", opt.method),
        ));
    }
    if opt.emit == Emit::Mla {
        check_stock_mla(config, opt.method.layer_options(1).rope_dim)?;
    }
    let (sequences, tokens) = calibration_shape(&opt.calibration, config)?;
    opt.budget.check(&memory_needs(config, sequences, tokens))?;
    // Refused before any work if the target exists; a search's other candidates get their own.
    let mut first_out = Some(OutputDir::create(output, false)?);
    let ids = calibration_ids(&opt.calibration, config)?;
    let source_sha256 = source_hash(&ckpt, &config.path)?;
    // Each candidate returns the options it ran with: gqla_meta.json records the winner's, as its
    // shards do.
    type Candidate = (OutputDir, ConversionReport, usize, bool);
    let mut convert_at = |fold: usize, searching: bool| -> Result<(f64, Candidate)> {
        let out = match first_out.take() {
            Some(out) => out,
            None => OutputDir::create(output, false)?,
        };
        if searching {
            on_progress(Progress::Fold(fold));
        }
        let report = convert_into(
            Conversion {
                ckpt: &ckpt,
                out: out.path(),
                opt,
                fold,
                searched: searching,
                ids: &ids,
                source_sha256: &source_sha256,
            },
            &mut |row| on_progress(Progress::Layer(row)),
        )?;
        Ok((report.held_out_kl, (out, report, fold, searching)))
    };
    let ((out, mut report, fold, searched), trials) = match (opt.method, &config.attention) {
        (
            Method::TransGqla(Truncation::To {
                rope_dim,
                fold: Fold::Search { from },
                ..
            }),
            AttentionConfig::Gqa(c),
        ) => {
            let (half, kv) = (c.dims.d() / 2, c.dims.kv());
            let fits = |f: usize| rope_dim.is_multiple_of(2) && fold_fits(half, kv, f, rope_dim / 2);
            search_freqfold(from, fits, |f| convert_at(f, true))?
        }
        (method, _) => (convert_at(method.fold().start(), false)?.1, Vec::new()),
    };
    report.freqfold_trials = trials;
    let dtype = opt.dtype.unwrap_or(config.dtype);
    write_json(
        &out.path().join("gqla_meta.json"),
        &json!({
            "tool": format!("gqla {}", env!("CARGO_PKG_VERSION")),
            "source": { "path": config.path.parent().map(|p| p.display().to_string()), "model_type": config.model_type.hf_name(), "sha256": source_sha256 },
            "options": options_json(opt, fold, searched, dtype),
            "calibration": calibration_json(&opt.calibration, &ids),
            "report": report,
        }),
    )?;
    // Nothing computed from a source that changed while it was read is published.
    ckpt.store.unchanged()?;
    out.commit()?;
    Ok(report)
}

/// Calibration sequences and tokens per sequence, from the flags or the file's header (before
/// anything is allocated).
fn calibration_shape(cal: &Calibration, config: &ModelConfig) -> Result<(usize, usize)> {
    match cal {
        Calibration::Random { sequences, tokens, .. } => Ok((*sequences, *tokens)),
        Calibration::Text { sequences, .. } => Ok((sequences.len(), sequences.iter().map(Vec::len).max().unwrap_or(0))),
        Calibration::File(path) => {
            let store = TensorStore::open(path)?;
            let shape = store.shape("input_ids").ok_or_else(|| Error::MissingTensor {
                path: path.clone(),
                tensor: "input_ids".into(),
                expected: format!("integer token ids [sequences, tokens] below vocab_size {}", config.vocab_size),
            })?;
            Ok(match shape[..] {
                [l] => (1, l),
                [s, l, ..] => (s, l),
                [] => (1, 1),
            })
        }
    }
}

/// What a conversion allocates, estimated generously from the config and the calibration size:
/// one decoder layer in f64 (5 copies: the source, its f32 cast, the converted layer's tensors,
/// and the previous layer's shard being written, tensors and file bytes), the calibration
/// activations (inputs, outputs and both models' hidden states), one sequence's projections and
/// MLP activations, and the LM head with the held-out logits.
pub fn memory_needs(config: &ModelConfig, sequences: usize, tokens: usize) -> Vec<Need> {
    let hidden = config.hidden_size;
    let (h, head) = match &config.attention {
        AttentionConfig::Gqa(c) => (c.dims.h(), c.dims.d()),
        AttentionConfig::Latent(c) => (c.dims.h(), c.dims.d_n() + c.dims.d_r() + c.dims.d_v()),
    };
    let attn_width = hidden.max(h.saturating_mul(head));
    let mlp = match &config.moe {
        Some(m) => Need::f64s(
            format!(
                "{} experts of moe_intermediate_size {} (5 copies)",
                m.experts, m.moe_intermediate_size
            ),
            &[5 * 3, m.experts + m.shared_experts, hidden, m.moe_intermediate_size],
        ),
        None => Need::f64s(
            format!(
                "the MLP of intermediate_size {} × hidden_size {hidden} (5 copies)",
                config.intermediate_size
            ),
            &[5 * 3, hidden, config.intermediate_size.max(1)],
        ),
    };
    vec![
        Need::f64s(
            format!("the attention weights of hidden_size {hidden} (5 copies)"),
            &[5 * 4, hidden, attn_width],
        ),
        mlp,
        Need::f64s(
            format!("calibration activations of {sequences} sequences × {tokens} tokens × hidden_size {hidden}"),
            &[4, sequences, tokens, hidden],
        ),
        // Attention runs row by row (no [T, T] scores): the projections dominate.
        Need::f64s(
            format!("one sequence's query, key and value projections ({tokens} tokens × {h} heads)"),
            &[4, tokens, h, head],
        ),
        Need::f64s(
            format!("one sequence's MLP activations ({tokens} tokens)"),
            &[3, tokens, config.intermediate_size.max(hidden)],
        ),
        Need::f64s(
            format!("the LM head of vocab_size {} × hidden_size {hidden}", config.vocab_size),
            &[2, config.vocab_size, hidden],
        ),
        Need::f64s(
            format!("the held-out logits ({HELD_OUT_TOKENS} tokens × vocab_size {})", config.vocab_size),
            &[2, HELD_OUT_TOKENS, config.vocab_size],
        ),
        Need::elements(
            format!("the calibration token ids ({sequences} × {tokens})"),
            &[sequences, tokens],
            4,
        ),
    ]
}

type Ids = Vec<Vec<u32>>;

/// Length of the random held-out sequence: enough for the KL and error figures, and it is run
/// through both models in f64.
const HELD_OUT_TOKENS: usize = 64;

/// The hidden states entering self-attention, RMSNorm_in(h), for each calibration sequence, in
/// the chosen precision (widened to f64 for the conversion's statistics). They do not depend on
/// the attention, so the layer's forward runs once, after conversion, with the flow's attention.
fn attention_inputs(layer: &DecoderLayer<f64>, h: &[Array2<f64>], precision: CalibrationPrecision) -> Vec<Array2<f64>> {
    fn norm<T: gqla_reference::real::Real>(n: &gqla_reference::linear::RmsNorm<T>, h: &[Array2<f64>]) -> Vec<Array2<f64>> {
        h.iter().map(|seq| n.forward(seq.mapv(T::of).view()).mapv(|v| v.f64())).collect()
    }
    match precision {
        CalibrationPrecision::F32 => norm(&layer.input_norm.cast::<f32>(), h),
        CalibrationPrecision::F64 => norm(&layer.input_norm, h),
    }
}

/// The outputs of `layer` with its attention replaced by `attention`, in the chosen precision.
fn calibration_outputs(
    layer: &DecoderLayer<f64>,
    attention: &Attention<f64>,
    h: &[Array2<f64>],
    precision: CalibrationPrecision,
) -> Result<Vec<Array2<f64>>> {
    fn pass<T: gqla_reference::real::Real>(
        layer: &DecoderLayer<T>,
        attention: &Attention<T>,
        h: &[Array2<f64>],
    ) -> Result<Vec<Array2<f64>>> {
        let cast: Vec<Array2<T>> = h.iter().map(|seq| seq.mapv(T::of)).collect();
        let traces = layer.forward_sequences(attention, &cast.iter().map(|x| x.view()).collect::<Vec<_>>())?;
        Ok(traces.into_iter().map(|t| t.output.mapv(|v| v.f64())).collect())
    }
    match precision {
        CalibrationPrecision::F32 => pass(&layer.cast::<f32>(), &attention.cast::<f32>(), h),
        CalibrationPrecision::F64 => pass(layer, attention, h),
    }
}

/// Token ids a conversion runs on.
struct CalibrationIds {
    calibration: Ids,
    /// One sequence: the KL and error figures, and the FreqFold search's score.
    held_out: Ids,
    /// Random ids (a weaker calibration, reported as such).
    weak: bool,
}

/// Calibration and held-out sequences. A file with several sequences holds its last one out.
fn calibration_ids(cal: &Calibration, config: &ModelConfig) -> Result<CalibrationIds> {
    let vocab = u32::try_from(config.vocab_size).map_err(|_| {
        Error::file(
            &config.path,
            format!("config key `vocab_size`: {} does not fit token ids", config.vocab_size),
        )
    })?;
    let random = |sequences: usize, tokens: usize, seed: u64| -> Ids {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..sequences)
            .map(|_| (0..tokens).map(|_| rng.random_range(0..vocab)).collect())
            .collect()
    };
    match cal {
        Calibration::File(path) => {
            let mut ids = TensorStore::open(path)?.get_ids("input_ids", config.vocab_size)?;
            let held = if ids.len() >= 2 {
                vec![ids.pop().expect("two or more")]
            } else {
                random(1, ids[0].len().min(HELD_OUT_TOKENS), 0x5eed)
            };
            Ok(CalibrationIds {
                calibration: ids,
                held_out: held,
                weak: false,
            })
        }
        Calibration::Text { text, sequences } => {
            if sequences.len() < 2 || sequences.iter().any(|s| s.is_empty()) {
                return Err(Error::file(
                    text,
                    "calibration text: at least two sequences are needed (the last is held out)",
                ));
            }
            if let Some(bad) = sequences.iter().flatten().find(|&&t| t >= vocab) {
                return Err(Error::file(text, format!("token id {bad} is outside the vocabulary 0..{vocab}")));
            }
            let mut ids = sequences.clone();
            let held = vec![ids.pop().expect("two or more")];
            Ok(CalibrationIds {
                calibration: ids,
                held_out: held,
                weak: false,
            })
        }
        Calibration::Random { sequences, tokens, seed } => {
            if *sequences == 0 || *tokens == 0 {
                return Err(Error::NoCalibration {
                    what: format!("random calibration of {sequences} sequence(s) of {tokens} token(s); it needs at least one of one"),
                });
            }
            Ok(CalibrationIds {
                calibration: random(*sequences, *tokens, *seed),
                held_out: random(1, (*tokens).min(HELD_OUT_TOKENS), seed.wrapping_add(1)),
                weak: true,
            })
        }
    }
}

/// What one conversion reads and where it writes: the same for the layers and the tail.
#[derive(Clone, Copy)]
struct Conversion<'a> {
    ckpt: &'a Checkpoint,
    out: &'a Path,
    opt: &'a CheckpointOptions,
    /// The FreqFold this conversion runs at, and whether a search chose it.
    fold: usize,
    searched: bool,
    ids: &'a CalibrationIds,
    source_sha256: &'a str,
}

/// Convert every layer, then the tail, into `job.out`; the shards are written on a thread of their own.
fn convert_into(job: Conversion, on_layer: &mut dyn FnMut(&LayerRow)) -> Result<ConversionReport> {
    std::thread::scope(|scope| {
        let writer = ShardWriter::spawn(scope);
        let report = convert_layers(job, on_layer, &writer);
        // A failed write is why a hand-over failed: report it first.
        writer.finish()?;
        report
    })
}

/// The body of [`convert_into`]: shards go to `writer`, the small JSON files are written here.
fn convert_layers(job: Conversion, on_layer: &mut dyn FnMut(&LayerRow), writer: &ShardWriter) -> Result<ConversionReport> {
    let Conversion {
        ckpt,
        out,
        opt,
        fold,
        searched,
        ids,
        source_sha256,
    } = job;
    let config = &ckpt.config;
    let dtype = opt.dtype.unwrap_or(config.dtype);
    let n_layers = config.num_layers;
    let shard_name = |k: usize| format!("model-{:05}-of-{:05}.safetensors", k + 1, n_layers + 1);
    let mut weight_map = BTreeMap::new();
    let mut meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("gqla_source_sha256".to_string(), source_sha256.to_string()),
        ("gqla_options".to_string(), options_json(opt, fold, searched, dtype).to_string()),
        ("gqla_calibration".to_string(), calibration_json(&opt.calibration, ids).to_string()),
    ]);
    let embed_rows_of = |ids: &Ids| -> Result<Vec<Array2<f64>>> { ids.iter().map(|s| ckpt.embed_rows(s)).collect() };
    // Calibration activations run in f32 by default: they only feed covariance estimates (the
    // conversion's exactness comes from orthogonality, not from them). Held-out checks stay in f64.
    let mut h_cal = embed_rows_of(&ids.calibration)?;
    let mut h_src = embed_rows_of(&ids.held_out)?;
    let mut h_conv = h_src.clone();
    let mut rows = Vec::with_capacity(n_layers);
    let mut converted_geometry = None;
    for i in 0..n_layers {
        let layer = ckpt.decoder_layer(i)?;
        let inputs = attention_inputs(&layer, &h_cal, opt.calibration_precision);
        let views: Vec<ArrayView2<f64>> = inputs.iter().map(|x| x.view()).collect();
        let (latent, report, rope_stage) = match &layer.attention {
            Attention::Gqa(gqa) => {
                let (w, r, partial) = convert_layer_with_rope_stage(gqa, &views, opt.method.layer_options(fold))?;
                (w, LayerConversion::TransGqla(r), Some(partial))
            }
            Attention::Latent(mla) => {
                let stacked = ndarray::concatenate(ndarray::Axis(0), &views).expect("calibration rows share the hidden size");
                let Method::GroupPca { groups } = opt.method else {
                    return Err(Error::file(
                        &config.path,
                        "an MLA source converts by per-group PCA (checked at entry)",
                    ));
                };
                let (w, r) = group_pca(mla, groups, stacked.view())?;
                (w, LayerConversion::GroupPca(r), None)
            }
        };
        let latent = match opt.emit {
            Emit::Gqla => latent,
            Emit::Mla => {
                let stock = super::stock_mla::to_stock_mla(&latent, &views, config.rms_norm_eps)?;
                check_stock_rope(config, &stock)?;
                stock
            }
        };
        let converted = Attention::Latent(latent);
        let rope_cut = rope_stage.map(Attention::Latent);
        let next = match opt.calibration_flow {
            CalibrationFlow::Source => &layer.attention,
            CalibrationFlow::Converted => &converted,
            CalibrationFlow::RopeCut => rope_cut.as_ref().unwrap_or(&converted),
        };
        h_cal = calibration_outputs(&layer, next, &h_cal, opt.calibration_precision)?;
        let src_trace = layer.forward(h_src[0].view())?;
        let held_out_err = |a: &Attention<f64>| {
            a.prefill(src_trace.attention_input.view())
                .map(|o| rel_err(&o.y, &src_trace.attention_output))
        };
        let held_out_attention_rel_err = held_out_err(&converted)?;
        let held_out_rope_only_rel_err = rope_cut.as_ref().map(held_out_err).transpose()?;
        drop(rope_cut);
        let Attention::Latent(latent) = &converted else {
            unreachable!("built as a latent layer above")
        };
        meta.insert("gqla_layer".into(), i.to_string());
        let tensors = layer_tensors(i, &ckpt.store, config.dtype, &layer, latent, dtype, &changed_by(&layer.attention))?;
        let shard = shard_name(i);
        weight_map.extend(tensors.iter().map(|(n, _)| (n.clone(), shard.clone())));
        writer.write(out.join(&shard), tensors, Some(meta.clone()))?;
        h_src[0] = src_trace.output;
        h_conv[0] = layer.forward_with(&converted, h_conv[0].view())?.output;
        let row = LayerRow {
            layer: i,
            report,
            held_out_attention_rel_err,
            held_out_rope_only_rel_err,
        };
        on_layer(&row);
        rows.push(row);
        let Attention::Latent(latent) = converted else { unreachable!() };
        converted_geometry = Some(latent);
    }
    let head = ckpt.head()?;
    let (logits_src, logits_conv) = (head.logits(h_src[0].view()), head.logits(h_conv[0].view()));
    let held_out_kl = mean_kl(&logits_src, &logits_conv);
    let held_out_logits_rel_err = rel_err(&logits_conv, &logits_src);
    // Embedding, final norm and LM head, in the last shard.
    let shard = shard_name(n_layers);
    meta.remove("gqla_layer");
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    let copy_or = |name: &str, make: &dyn Fn() -> Result<RawTensor>| -> Result<(String, RawTensor)> {
        let copied = ckpt
            .store
            .raw(name)?
            .filter(|t| t.dtype == gqla_files::tensors::safetensors_dtype(dtype));
        Ok((
            name.to_string(),
            match copied {
                Some(t) => t,
                None => make()?,
            },
        ))
    };
    let mut tail = vec![
        copy_or(names::EMBED_TOKENS, &|| Ok(encode(dtype, &ckpt.embedding()?)))?,
        copy_or(names::FINAL_NORM, &|| {
            Ok(RawTensor::encode(dtype, vec![hidden], head.norm.weight.iter().copied()))
        })?,
    ];
    if !config.tie_word_embeddings {
        tail.push(copy_or(names::LM_HEAD, &|| Ok(encode(dtype, &head.lm_head.weight)))?);
    }
    debug_assert_eq!(head.lm_head.weight.dim(), (vocab, hidden));
    weight_map.extend(tail.iter().map(|(n, _)| (n.clone(), shard.clone())));
    writer.write(out.join(&shard), tail, Some(meta))?;
    let latent = converted_geometry.ok_or_else(|| Error::file(&config.path, "the checkpoint has no layers"))?;
    let report = ConversionReport {
        source_cache_elements: measured_source_cache(config),
        absorb_cache_elements: measured_latent_cache(&latent),
        gqa_cache_elements: measured_group_cache(&latent),
        layers: rows,
        held_out_kl,
        held_out_logits_rel_err,
        weak_calibration: ids.weak,
        calibration_tokens: ids.calibration.iter().map(Vec::len).sum(),
        freqfold_trials: Vec::new(),
    };
    write_json(
        &out.join("model.safetensors.index.json"),
        &json!({ "metadata": {}, "weight_map": weight_map }),
    )?;
    write_json(&out.join("config.json"), &output_config(config, &latent, dtype, opt.emit, fold)?)?;
    copy_tokenizer(ckpt, out)?;
    if opt.emit == Emit::Gqla && remote_classes(config).is_some() {
        for (name, code) in REMOTE_CODE {
            gqla_files::write_file(&out.join(name), code.as_bytes())?;
        }
    }
    Ok(report)
}

/// The tensor names (after `model.layers.N.`) a conversion of `source` rewrites; every other
/// tensor of the layer is unchanged.
fn changed_by(source: &Attention<f64>) -> Vec<Module> {
    match source {
        Attention::Gqa(_) => vec![Module::QProj, Module::KvAProj, Module::KvBProj],
        Attention::Latent(_) => vec![Module::QProj, Module::QBProj, Module::KvBProj, Module::OProj],
    }
}

/// The options as gqla_meta.json and the shards record them, at FreqFold `fold` (`searched`: a
/// search chose it).
fn options_json(opt: &CheckpointOptions, fold: usize, searched: bool, dtype: DType) -> Value {
    let layer = opt.method.layer_options(fold);
    let groups = match opt.method {
        Method::GroupPca { groups } => Some(groups),
        Method::TransGqla(_) => None,
    };
    json!({
        "groups": groups,
        "kv_lora_rank": layer.kv_rank,
        "rope_dim": layer.rope_dim,
        "freqfold": layer.freqfold,
        "freqfold_choice": if searched { FoldChoice::Search } else { FoldChoice::Given },
        "dtype": dtype.hf_name(),
        "emit": opt.emit,
        "calibration_flow": opt.calibration_flow,
    })
}

fn calibration_json(cal: &Calibration, ids: &CalibrationIds) -> Value {
    let (cal_ids, held, weak) = (&ids.calibration, &ids.held_out, ids.weak);
    let source = match cal {
        Calibration::File(p) => json!({ "file": p.display().to_string() }),
        Calibration::Random { seed, .. } => json!({ "random_seed": seed }),
        Calibration::Text { text, .. } => json!({ "text": text.display().to_string() }),
    };
    json!({ "source": source, "sequences": cal_ids.len(), "tokens_per_sequence": cal_ids[0].len(), "held_out_tokens": held[0].len(), "weak": weak })
}

/// SHA-256 over the source's config.json and its safetensors files, in name order.
fn source_hash(ckpt: &Checkpoint, config_path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut paths = vec![config_path.to_path_buf()];
    paths.extend(ckpt.store.files());
    for p in paths {
        let (mut f, _) = gqla_files::read::open_regular(&p)?;
        std::io::copy(&mut f, &mut h).map_err(|e| Error::file(&p, format!("cannot read for hashing: {e}")))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

fn measured_source_cache(config: &ModelConfig) -> usize {
    match &config.attention {
        AttentionConfig::Gqa(c) => gqla_reference::cache::measure_gqa_cache::<half::bf16>(&c.dims),
        AttentionConfig::Latent(c) => CacheSizes::measure::<half::bf16>(&c.dims).absorb,
    }
    .elements_per_token
}

fn measured_latent_cache(w: &LatentWeights<f64>) -> usize {
    CacheSizes::measure::<half::bf16>(&w.dims()).absorb.elements_per_token
}

fn measured_group_cache(w: &LatentWeights<f64>) -> usize {
    CacheSizes::measure::<half::bf16>(&w.dims()).gqa_rope_once.elements_per_token
}
