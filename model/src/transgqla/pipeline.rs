//! The whole layer conversion, T1–T6, with every intermediate stage kept for checking.

use super::balance::balance_kv;
use super::latent_form::{latent_form, KeyMap};
use super::partial_rope::partial_rope;
use super::pca::joint_pca;
use super::query::rescale_query;
use super::rorope::rorope;
use gqla_reference::error::{Error, Result};
use gqla_reference::gqa::GqaWeights;
use gqla_reference::latent::LatentWeights;
use ndarray::{concatenate, ArrayView2, Axis};

/// What to keep. `None` keeps everything: with `freqfold = 1` that is the exact conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// d_r, the rope dims kept (None: every pair, KV·D).
    pub rope_dim: Option<usize>,
    /// d_c, the latent rank kept (None: the full latent).
    pub kv_rank: Option<usize>,
    /// FreqFold f (1 is exact).
    pub freqfold: usize,
}

impl ConvertOptions {
    /// No truncation and freqfold 1: the converted layer equals the source exactly.
    pub fn exact() -> Self {
        Self {
            rope_dim: None,
            kv_rank: None,
            freqfold: 1,
        }
    }
}

/// Figures of one layer's conversion.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerReport {
    pub freqfold: usize,
    pub rope_dim: usize,
    pub kv_rank: usize,
    /// Fraction of calibration key energy (after RoRoPE) in the pairs that keep RoPE.
    pub rope_energy_kept: f64,
    /// The BKV ratio α.
    pub alpha: f64,
    /// Fraction of calibration latent energy ([K_N/α; V]) the PCA keeps.
    pub kv_energy_kept: f64,
}

/// Each stage of T1–T6 as an evaluable layer.
#[derive(Clone, Debug)]
pub struct Stages {
    /// T1: identity up-projections per group, every pair roped. Exact.
    pub latent_form: LatentWeights<f64>,
    /// T2: after RoRoPE, every pair roped. Exact when freqfold = 1.
    pub rorope: LatentWeights<f64>,
    /// T3: RoPE kept on d_r dims only. Lossy unless every pair is kept.
    pub partial_rope: LatentWeights<f64>,
    /// T4: balanced KV. Exact.
    pub balanced: LatentWeights<f64>,
    /// T5: joint PCA to d_c. Exact at full rank.
    pub pca: LatentWeights<f64>,
    /// T6: query rescaled, default softmax scale. Exact. The converted layer.
    pub output: LatentWeights<f64>,
}

/// Convert one GQA layer, calibrated on the hidden states that reach it: one [L, hidden] array per
/// calibration sequence, at positions 0..L. Keeps every stage, for checking each step.
pub fn convert_stages(gqa: &GqaWeights<f64>, sequences: &[ArrayView2<f64>], opt: ConvertOptions) -> Result<(Stages, LayerReport)> {
    let Converted { output, report, kept, .. } = run(gqa, sequences, opt, true)?;
    let s = kept.expect("kept");
    Ok((
        Stages {
            latent_form: s.0,
            rorope: s.1,
            partial_rope: s.2,
            balanced: s.3,
            pca: s.4,
            output,
        },
        report,
    ))
}

/// Convert one GQA layer; see [`convert_stages`]. Builds only what the output needs.
pub fn convert_layer(
    gqa: &GqaWeights<f64>,
    sequences: &[ArrayView2<f64>],
    opt: ConvertOptions,
) -> Result<(LatentWeights<f64>, LayerReport)> {
    run(gqa, sequences, opt, false).map(|c| (c.output, c.report))
}

/// [`convert_layer`], and the layer after partial RoPE alone (T3: RoPE truncated, no kv
/// truncation yet), so that a loss can be split between the two truncations.
pub fn convert_layer_with_rope_stage(
    gqa: &GqaWeights<f64>,
    sequences: &[ArrayView2<f64>],
    opt: ConvertOptions,
) -> Result<(LatentWeights<f64>, LayerReport, LatentWeights<f64>)> {
    run(gqa, sequences, opt, false).map(|c| (c.output, c.report, c.rope_stage))
}

type Kept = (
    LatentWeights<f64>,
    LatentWeights<f64>,
    LatentWeights<f64>,
    LatentWeights<f64>,
    LatentWeights<f64>,
);

/// What [`run`] produces: the converted layer, its figures, the stages when kept, and T3.
struct Converted {
    output: LatentWeights<f64>,
    report: LayerReport,
    kept: Option<Kept>,
    rope_stage: LatentWeights<f64>,
}

fn run(gqa: &GqaWeights<f64>, sequences: &[ArrayView2<f64>], opt: ConvertOptions, keep: bool) -> Result<Converted> {
    let (kv, d) = (gqa.dims().kv(), gqa.dims().d());
    if let Some(bad) = sequences.iter().find(|x| x.nrows() == 0 || x.ncols() != gqa.hidden()) {
        return Err(Error::ShapeMismatch {
            what: "calibration hidden states [L, hidden]".into(),
            expected: vec![bad.nrows().max(1), gqa.hidden()],
            got: bad.shape().to_vec(),
        });
    }
    let stacked = concatenate(Axis(0), sequences).map_err(|_| Error::NoCalibration {
        what: "no sequences to fit the layer on".into(),
    })?;
    let x = stacked.view();
    let full_pairs = kv * d / 2;
    let rope_dim = opt.rope_dim.unwrap_or(2 * full_pairs);
    if !rope_dim.is_multiple_of(2) || rope_dim > 2 * full_pairs {
        return Err(Error::OutOfRange {
            name: "d_r",
            value: rope_dim,
            expected: format!("even and at most KV·D = {}", 2 * full_pairs),
        });
    }
    let rr = rorope(gqa, sequences, opt.freqfold)?;
    let early = if keep {
        Some((
            latent_form(gqa, &KeyMap::identity(gqa))?,
            latent_form(gqa, &rr.key_map(full_pairs)?.0)?,
        ))
    } else {
        None
    };
    let (partial_w, rope_energy_kept) = partial_rope(gqa, &rr, rope_dim)?;
    drop(rr);
    let n_k = partial_w.dims().d_c() - kv * d;
    let mut latents = partial_w.latent(x);
    let (balanced, alpha) = balance_kv(&partial_w, n_k, &mut latents)?;
    let kv_rank = opt.kv_rank.unwrap_or(balanced.dims().d_c());
    let (pca, kv_energy_kept) = joint_pca(&balanced, kv_rank, &latents)?;
    let output = rescale_query(&pca);
    let report = LayerReport {
        freqfold: opt.freqfold,
        rope_dim,
        kv_rank,
        rope_energy_kept,
        alpha,
        kv_energy_kept,
    };
    let kept = early.map(|(t1, t2)| (t1, t2, partial_w.clone(), balanced, pca));
    Ok(Converted {
        output,
        report,
        kept,
        rope_stage: partial_w,
    })
}
