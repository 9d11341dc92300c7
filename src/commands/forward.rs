//! `gqla forward`: one layer's self-attention output from an HF checkpoint.

use super::CliError;
use gqla_files::tensors::write_f64;
use gqla_model::budget::{Budget, Need};
use gqla_model::hf::load_layer;
use gqla_model::transformer::Attention;
use gqla_reference::decode::DecodePath;
use gqla_reference::{absorb_decode, gqa_decode, DType, DecodeOutput, GroupCache, GroupCacheLayout, LatentCache, Real};
use ndarray::{Array2, IxDyn};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// HF checkpoint directory (config.json + safetensors, single or sharded).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Layer index.
    #[arg(long)]
    layer: usize,
    /// Safetensors file with the hidden states entering self-attention, [T, hidden], at positions
    /// 0..T (tensor `hidden_states`, or the file's only tensor).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `attn_output` [T, hidden] and `lse` [T, H] (float64).
    #[arg(long)]
    output: PathBuf,
    /// Decode path for MLA/GQLA checkpoints (GQA checkpoints have one path).
    #[arg(long, value_parser = super::named(&DecodePath::ALL, DecodePath::name))]
    path: Option<DecodePath>,
    /// GQA-path cache layout: the rope key stored once, or copied into every group's key.
    #[arg(long, value_parser = layout_parser(), default_value = "once")]
    layout: GroupCacheLayout,
    /// Arithmetic precision.
    #[arg(long, value_parser = super::dtype_parser(&[DType::F64, DType::F32]), default_value_t = DType::F64)]
    dtype: DType,
}

/// `once` or `per_group` (also `per-group`, the spelling of earlier releases).
fn layout_parser() -> impl clap::builder::TypedValueParser<Value = GroupCacheLayout> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([PossibleValue::new("once"), PossibleValue::new("per_group").alias("per-group")])
        .try_map(|s| GroupCacheLayout::from_name(&s.replace('-', "_")).ok_or_else(|| format!("`{s}` is not a layout")))
}

pub fn run(a: Args, budget: &Budget) -> Result<(), CliError> {
    let (config, layer) = load_layer(&a.checkpoint, a.layer)?;
    let store = gqla_model::hf::TensorStore::open(&a.input)?;
    let (name, x) = store.get_any2("hidden_states")?;
    if x.ncols() != config.hidden_size || x.nrows() == 0 {
        return Err(gqla_reference::Error::Shape {
            path: a.input.clone(),
            tensor: name,
            expected: vec![x.nrows().max(1), config.hidden_size],
            got: x.shape().to_vec(),
        }
        .into());
    }
    let t = x.nrows();
    let cache = match &config.attention {
        gqla_model::hf::config::AttentionConfig::Gqa(c) => {
            Need::f64s(format!("the K/V caches of {t} tokens"), &[t, 2, c.dims.kv(), c.dims.d()])
        }
        gqla_model::hf::config::AttentionConfig::Latent(c) => Need::caches(&c.dims, t, 8),
    };
    // Attention runs row by row: the caches and the per-token activations dominate.
    budget.check(&[
        Need::f64s(
            format!("activations of {t} tokens × hidden_size {}", config.hidden_size),
            &[8, t, config.hidden_size],
        ),
        cache,
    ])?;
    let (y, lse, path) = match a.dtype {
        DType::F32 => run_in::<f32>(&layer, &x, a.path, a.layout)?,
        // Only f64 and f32 pass the parser; f64 is the default.
        _ => run_in::<f64>(&layer, &x, a.path, a.layout)?,
    };
    let meta = HashMap::from([
        ("model_type".to_string(), config.model_type.hf_name().to_string()),
        ("layer".to_string(), a.layer.to_string()),
        ("path".to_string(), path.to_string()),
        ("dtype".to_string(), a.dtype.name().to_string()),
    ]);
    let (y, lse) = (
        y.into_dimensionality::<IxDyn>().expect("2-D"),
        lse.into_dimensionality::<IxDyn>().expect("2-D"),
    );
    write_f64(&a.output, &[("attn_output", &y), ("lse", &lse)], Some(meta))?;
    eprintln!("wrote {} ({} tokens, path {path}, {})", a.output.display(), x.nrows(), a.dtype);
    Ok(())
}

fn run_in<T: Real>(
    layer: &Attention<f64>,
    x: &Array2<f64>,
    path: Option<DecodePath>,
    layout: GroupCacheLayout,
) -> Result<(Array2<f64>, Array2<f64>, &'static str), CliError> {
    let xt = x.mapv(T::of);
    let widen = |o: DecodeOutput<T>| (o.y.mapv(|v| v.f64()), o.lse.mapv(|v| v.f64()));
    Ok(match layer {
        Attention::Gqa(w) => {
            if matches!(path, Some(DecodePath::Absorb)) {
                return Err(CliError::Usage(
                    "a GQA checkpoint has no absorb path (convert it to GQLA first); use --path gqa or omit --path".into(),
                ));
            }
            let (y, lse) = widen(w.cast::<T>().prefill(xt.view())?);
            (y, lse, "gqa")
        }
        Attention::Latent(w) => {
            let w = w.cast::<T>();
            let d = w.dims();
            match path.unwrap_or(DecodePath::Absorb) {
                DecodePath::Absorb => {
                    let (y, lse) = widen(absorb_decode(&w, xt.view(), &mut LatentCache::new(&d))?);
                    (y, lse, "absorb")
                }
                DecodePath::Gqa => {
                    let mut cache = GroupCache::new(&d, layout);
                    let (y, lse) = widen(gqa_decode(&w, xt.view(), &mut cache)?);
                    (y, lse, "gqa")
                }
            }
        }
    })
}
