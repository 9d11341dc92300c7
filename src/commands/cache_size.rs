//! `gqla cache-size`: per-token KV-cache elements and bytes on each path, measured from caches
//! allocated with the checkpoint's storage dtype.

use super::CliError;
use gqla_model::budget::{Budget, Need};
use gqla_model::hf::config::AttentionConfig;
use gqla_model::hf::ModelConfig;
use gqla_reference::cache::{measure_gqa_cache, CacheSizes};
use gqla_reference::tp::tp_footprint;
use gqla_reference::DType;
use gqla_reference::{Footprint, GroupCacheLayout, LatentDims, LatentShape};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// HF config.json (or a checkpoint directory holding one).
    #[arg(long)]
    config: PathBuf,
    /// Latent rank d_c of the GQLA conversion (default 512 for GQA sources, the model's own for MLA).
    #[arg(long)]
    kv_lora_rank: Option<usize>,
    /// Rope dim d_r of the GQLA conversion (default 64 for GQA sources, the model's own for MLA).
    #[arg(long)]
    rope_dim: Option<usize>,
    /// TP degrees to report (those dividing G are shown).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    tp: Vec<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the table.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub cache: String,
    pub elements_per_token: usize,
    pub bytes_per_token: usize,
    pub percent_of_source: f64,
    pub note: String,
}

/// Tokens in the caches allocated for measurement.
const TOKENS: usize = 16;

pub fn run(a: Args, budget: &Budget) -> Result<(), CliError> {
    let config = ModelConfig::load(&a.config)?;
    let rows = match config.dtype {
        DType::Bf16 => rows::<half::bf16>(&config, &a, budget)?,
        DType::F16 => rows::<half::f16>(&config, &a, budget)?,
        DType::F32 => rows::<f32>(&config, &a, budget)?,
        DType::F64 => rows::<f64>(&config, &a, budget)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
    } else {
        print!("{}", table(&config, &rows));
    }
    Ok(())
}

/// The GQLA geometry reported for this config, and the source model's measured cache.
fn geometry<E: Copy + Default>(config: &ModelConfig, a: &Args) -> Result<(LatentDims, Footprint, String), CliError> {
    Ok(match &config.attention {
        AttentionConfig::Gqa(c) => {
            let (kv, d) = (c.dims.kv(), c.dims.d());
            let (d_c, d_r) = (a.kv_lora_rank.unwrap_or(512), a.rope_dim.unwrap_or(64));
            if d_r > d {
                return Err(CliError::Usage(format!("--rope-dim {d_r} exceeds the source head dim {d}")));
            }
            if d_c > 2 * kv * d {
                return Err(CliError::Usage(format!(
                    "--kv-lora-rank {d_c} exceeds the source KV width 2·KV·D = {}",
                    2 * kv * d
                )));
            }
            let dims = LatentDims::new(LatentShape::from_gqa(c.dims, d_c, d_r))?;
            (
                dims,
                measure_gqa_cache::<E>(&c.dims),
                format!("GQA source: {} q heads, {kv} kv heads x {d}", c.dims.h()),
            )
        }
        AttentionConfig::Latent(c) => {
            let s = c.dims;
            let dims = LatentDims::new(LatentShape {
                h: s.h(),
                g: s.g(),
                d_c: a.kv_lora_rank.unwrap_or(s.d_c()),
                d_n: s.d_n(),
                d_r: a.rope_dim.unwrap_or(s.d_r()),
                d_v: s.d_v(),
            })?;
            let kind = if s.is_mla() { "MLA" } else { "GQLA" };
            (
                dims,
                CacheSizes::measure::<E>(&s).absorb,
                format!("{kind} source: H={} G={} d_c={} d_r={}", s.h(), s.g(), s.d_c(), s.d_r()),
            )
        }
    })
}

pub fn rows<E: Copy + Default>(config: &ModelConfig, a: &Args, budget: &Budget) -> Result<Vec<Row>, CliError> {
    if let AttentionConfig::Gqa(c) = &config.attention {
        budget.check(&[Need::elements(
            "the source cache",
            &[TOKENS, 2, c.dims.kv(), c.dims.d()],
            std::mem::size_of::<E>(),
        )])?;
    }
    let (dims, source, source_note) = geometry::<E>(config, a)?;
    budget.check(&[Need::caches(&dims, TOKENS, std::mem::size_of::<E>())])?;
    let pct = |f: &Footprint| 100.0 * f.bytes_per_token as f64 / source.bytes_per_token as f64;
    let row = |cache: &str, f: Footprint, note: String| Row {
        cache: cache.into(),
        elements_per_token: f.elements_per_token,
        bytes_per_token: f.bytes_per_token,
        percent_of_source: pct(&f),
        note,
    };
    let (g, d_n, d_r, d_v) = (dims.g(), dims.d_n(), dims.d_r(), dims.d_v());
    let sizes = CacheSizes::measure::<E>(&dims);
    let mut out = vec![
        row("source", source, source_note),
        row("absorb", sizes.absorb, format!("[c; k^R], d_c={} d_r={d_r}", dims.d_c())),
        row(
            "gqa (rope once)",
            sizes.gqa_rope_once,
            format!("G={g} x (d_n={d_n} + d_v={d_v}) + d_r"),
        ),
        row(
            "gqa (rope per group)",
            sizes.gqa_rope_per_group,
            format!("G={g} x (d_n + d_r + d_v)"),
        ),
    ];
    for &t in a.tp.iter().filter(|&&t| t > 1 && g % t == 0) {
        let f = tp_footprint::<E>(dims, t, GroupCacheLayout::RopeOnce, TOKENS)?;
        out.push(row(
            &format!("gqa per rank, TP={t}"),
            f.gqa_per_rank,
            format!(
                "{} groups/rank; replicated {} B/token (rope key); redundancy {:.4}x",
                g / t,
                f.gqa_replicated_bytes_per_token,
                f.gqa_redundancy
            ),
        ));
        out.push(row(
            &format!("absorb per rank, TP={t}"),
            f.absorb_per_rank,
            format!("whole latent on every rank; redundancy {:.0}x", f.absorb_redundancy),
        ));
    }
    Ok(out)
}

fn table(config: &ModelConfig, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({:?}, {} layers, {:?} cache, {} B/element); per token per layer",
        config.path.display(),
        config.model_type,
        config.num_layers,
        config.dtype,
        config.dtype.size_in_bytes()
    );
    let _ = writeln!(s, "{:<24} {:>10} {:>10} {:>11}  note", "cache", "elements", "bytes", "% of source");
    for r in rows {
        let _ = writeln!(
            s,
            "{:<24} {:>10} {:>10} {:>10.3}%  {}",
            r.cache, r.elements_per_token, r.bytes_per_token, r.percent_of_source, r.note
        );
    }
    s
}
