//! `gqla plan`: which decode path a GPU should run, from a roofline model of both paths.

use super::CliError;
use gqla_cuda::plan::{gpu, mtp_gain, plan, validate, DType, Deployment, GpuSpec, MeasuredRun, Plan, Prediction, Scenario, Step, GPUS};
use gqla_model::hf::config::AttentionConfig;
use gqla_model::hf::ModelConfig;
use gqla_reference::cache::GroupCacheLayout;
use gqla_reference::{LatentDims, LatentShape};
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// HF config.json (or a checkpoint directory holding one): GQLA/MLA, or a GQA model as
    /// TransGQLA would convert it.
    #[arg(long, required_unless_present = "validate")]
    config: Option<PathBuf>,
    /// GPU: h100, h800, h20, h200, a100, l40s, b200, rtx4090.
    #[arg(long, required_unless_present = "validate")]
    gpu: Option<String>,
    /// Instead of planning: compare the planner with a measured run (`gqla bench decode --json`).
    #[arg(long, conflicts_with_all = ["config", "gpu", "sweep", "chart"])]
    validate: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    sq: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Keys per sequence.
    #[arg(long, default_value_t = 8192)]
    context: usize,
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Groups G of the GQLA model (default: the config's kv heads).
    #[arg(long)]
    groups: Option<usize>,
    /// Latent rank d_c (GQA sources: default 512).
    #[arg(long)]
    kv_lora_rank: Option<usize>,
    /// Rope dim d_r (GQA sources: default 64).
    #[arg(long)]
    rope_dim: Option<usize>,
    /// Store the rope key in each group's key (stock GQA kernels) instead of once per token.
    #[arg(long)]
    rope_per_group: bool,
    /// Measured bf16 matrix rate, TFLOP/s (overrides the datasheet).
    #[arg(long, value_parser = finite_positive)]
    peak_tflops: Option<f64>,
    /// Measured memory bandwidth, GB/s (overrides the datasheet).
    #[arg(long, value_parser = finite_positive)]
    bandwidth_gbps: Option<f64>,
    /// Print the crossover table over s_q and context instead.
    #[arg(long)]
    sweep: bool,
    /// Draw the roofline chart (both paths at s_q 1 and 2 on H100, H200 and H20) as SVG.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The GQLA geometry the config describes (GQA sources: as TransGQLA converts them).
/// A measured ceiling: a finite number above zero.
fn finite_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a finite number above zero")),
    }
}

fn dims(config: &ModelConfig, a: &Args) -> Result<LatentDims, CliError> {
    let d = match &config.attention {
        AttentionConfig::Gqa(c) => {
            let (h, kv, d) = (c.dims.h(), c.dims.kv(), c.dims.d());
            LatentDims::new(LatentShape {
                h,
                g: a.groups.unwrap_or(kv),
                d_c: a.kv_lora_rank.unwrap_or(512),
                d_n: d,
                d_r: a.rope_dim.unwrap_or(64),
                d_v: d,
            })?
        }
        AttentionConfig::Latent(c) => {
            let s = c.dims;
            LatentDims::new(LatentShape {
                h: s.h(),
                g: a.groups.unwrap_or(s.g()),
                d_c: a.kv_lora_rank.unwrap_or(s.d_c()),
                d_n: s.d_n(),
                d_r: a.rope_dim.unwrap_or(s.d_r()),
                d_v: s.d_v(),
            })?
        }
    };
    Ok(d)
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<(), CliError> {
    if let Some(path) = &a.validate {
        return validation(path, a.json);
    }
    let (Some(config_path), Some(gpu_key)) = (&a.config, &a.gpu) else {
        return Err(CliError::Usage("--config and --gpu are required".into()));
    };
    let config = ModelConfig::load(config_path)?;
    let dims = dims(&config, &a)?;
    // The plan measures cache bytes from caches it allocates (a few tokens on each path).
    budget.check(&[gqla_model::budget::Need::caches(&dims, 4, 4)])?;
    let known: Vec<&str> = GPUS.iter().map(|g| g.key).collect();
    let gpu = gpu(gpu_key)
        .ok_or_else(|| CliError::Usage(format!("unknown GPU `{gpu_key}`: expected one of {}", known.join(", "))))?
        .with_measured(a.peak_tflops, a.bandwidth_gbps);
    let layout = if a.rope_per_group {
        GroupCacheLayout::RopePerGroup
    } else {
        GroupCacheLayout::RopeOnce
    };
    let step = Step {
        sq: a.sq,
        batch: a.batch,
        context: a.context,
    };
    let deployment = Deployment {
        tp: a.tp,
        dtype: DType::Bf16,
        layout,
    };
    let s = Scenario::new(&dims, config.hidden_size, step, deployment)?;
    if let Some(path) = &a.chart {
        chart(&s, path)?;
        eprintln!("roofline chart written to {}", path.display());
    }
    if a.sweep {
        print!("{}", sweep(&s, &gpu)?);
        return Ok(());
    }
    let p = plan(&s, &gpu)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p).expect("plans serialize"));
    } else {
        print!("{}", report(&p, mtp_gain(&s.with_step(Step { sq: a.sq.max(2), ..step })?, &gpu)?));
    }
    Ok(())
}

/// `--validate`: how often the planner picks the measured-faster path, and its time errors.
fn validation(path: &Path, json: bool) -> Result<(), CliError> {
    let text = gqla_files::read_to_string(path, gqla_files::Limit::CONFIG)?;
    let run: MeasuredRun =
        serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{}: not a measured run: {e}", path.display())))?;
    let v = validate(&run)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("validations serialize"));
        return Ok(());
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Planner against measurement on {} (ceilings from the same run: copy {:.0} GB/s, bf16 {:.0} TFLOP/s)\n",
        v.device,
        run.copy_gbps,
        run.bf16_tflops.unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        t,
        "| H | G | s_q | batch | context | absorb µs meas / pred | gqa µs meas / pred | faster | planned | margin |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|");
    for c in &v.comparisons {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {}{} | {:.2}x |",
            c.h,
            c.g,
            c.sq,
            c.batch,
            c.context,
            us(c.measured_s[0]),
            us(c.predicted_s[0]),
            us(c.measured_s[1]),
            us(c.predicted_s[1]),
            c.faster.name(),
            c.predicted.name(),
            if c.hit() { "" } else { " (MISS)" },
            c.measured_margin
        );
    }
    let misses: Vec<String> = v
        .comparisons
        .iter()
        .filter_map(|c| {
            let why = c.explanation()?;
            Some(format!("- H={} s_q={} batch={} context={}: {why}", c.h, c.sq, c.batch, c.context))
        })
        .collect();
    if !misses.is_empty() {
        let _ = writeln!(
            t,
            "\nMisses (a kernel's % of its roof: its predicted over its measured time):\n{}",
            misses.join("\n")
        );
    }
    let _ = writeln!(
        t,
        "\nmeasured-faster path chosen on {} of {} points ({:.1}%); predicted time error: median {:.0}%, max {:.0}%",
        v.hits,
        v.comparisons.len(),
        100.0 * v.hit_rate,
        100.0 * v.median_relative_error,
        100.0 * v.max_relative_error
    );
    print!("{t}");
    Ok(())
}

fn us(s: f64) -> String {
    format!("{:.1}", s * 1e6)
}

/// The plan as text: geometry, both paths, the choice and the GQA+MTP gain.
pub fn report(p: &Plan, gain: f64) -> String {
    let (s, g, d) = (&p.scenario, &p.gpu, p.scenario.dims());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "H={} G={} d_c={} d_r={} d_n={} d_v={}, bf16 cache, TP={}, on {} ({} TFLOP/s bf16, {} GB/s, {}); ridge {:.1} FLOP/B",
        d.h(),
        d.g(),
        d.d_c(),
        d.d_r(),
        d.d_n(),
        d.d_v(),
        s.tp(),
        g.name,
        g.bf16_tflops,
        g.bandwidth_gbps,
        g.source,
        p.ridge
    );
    let _ = writeln!(
        t,
        "s_q={}, batch={}, context={} (one layer, one decode step, per rank)\n",
        s.sq(),
        s.batch(),
        s.context()
    );
    let _ = writeln!(
        t,
        "| path | cache B/token | MB/step | GFLOP/step | FLOP/B | / ridge | memory µs | compute µs | all-reduce µs | launches µs | step µs | per token µs | bound |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in [&p.absorb, &p.gqa] {
        let _ = writeln!(t, "{}", row(x, p.ridge));
    }
    let other = if p.chosen == p.absorb.path { &p.gqa } else { &p.absorb };
    let _ = writeln!(
        t,
        "\nchosen: {} ({:.2}x faster than {} at s_q={})",
        p.chosen.name(),
        other.time_s / p.chosen_prediction().time_s,
        other.path.name(),
        s.sq()
    );
    let _ = writeln!(
        t,
        "GQA+MTP (GQA path, s_q={}) over absorb at s_q=1, per generated token: {gain:.2}x",
        s.sq().max(2)
    );
    t
}

fn row(x: &Prediction, ridge: f64) -> String {
    format!(
        "| {} | {} | {:.2} | {:.3} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
        x.path.name(),
        x.cost.cache_bytes_per_token,
        x.cost.bytes() / 1e6,
        x.cost.flops() / 1e9,
        x.intensity,
        x.intensity / ridge,
        us(x.memory_s),
        us(x.compute_s),
        us(x.comm_s),
        us(x.overhead_s),
        us(x.time_s),
        us(x.time_per_token_s),
        x.bound.name()
    )
}

/// The crossover table over s_q and context.
pub fn sweep(s: &Scenario, gpu: &GpuSpec) -> Result<String, CliError> {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} (ridge {:.1} FLOP/B), batch {}, TP {}: per-token µs of each path, the choice, and the GQA+MTP gain over absorb at s_q=1\n",
        gpu.name,
        gpu.ridge(),
        s.batch(),
        s.tp()
    );
    let _ = writeln!(
        t,
        "| s_q | context | absorb µs/token (bound) | gqa µs/token (bound) | chosen | gqa vs absorb, same s_q | GQA+MTP gain |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for sq in 1..=4 {
        for context in [1024, 4096, 16384, 65536, 131072] {
            let x = s.with_step(Step { sq, context, ..s.step() })?;
            let p = plan(&x, gpu)?;
            let _ = writeln!(
                t,
                "| {sq} | {context} | {} ({}) | {} ({}) | {} | {:.2}x | {:.2}x |",
                us(p.absorb.time_per_token_s),
                p.absorb.bound.name(),
                us(p.gqa.time_per_token_s),
                p.gqa.bound.name(),
                p.chosen.name(),
                p.gqa_speedup(),
                mtp_gain(&x, gpu)?
            );
        }
    }
    Ok(t)
}

/// Roofline chart: each GPU's roofs, and both paths at s_q 1 and 2 placed at their intensity and
/// predicted attained rate.
pub fn chart(s: &Scenario, path: &Path) -> Result<(), CliError> {
    use plotters::prelude::*;
    let gpus: Vec<GpuSpec> = ["h100", "h200", "h20"].iter().filter_map(|k| gpu(k)).collect();
    let mut points = Vec::new();
    for g in &gpus {
        for sq in [1, 2] {
            let p = plan(&s.with_step(Step { sq, ..s.step() })?, g)?;
            for x in [p.absorb, p.gqa] {
                points.push((g.key, x.path.name(), sq, x.intensity, x.cost.flops() / x.time_s / 1e12));
            }
        }
    }
    let mut svg = String::new();
    let mut draw = || -> Result<(), Box<dyn std::error::Error>> {
        {
            let root = SVGBackend::with_string(&mut svg, (960, 640)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut c = ChartBuilder::on(&root)
                .caption(
                    format!(
                        "GQLA decode roofline: H={} G={}, batch {}, context {}",
                        s.dims().h(),
                        s.dims().g(),
                        s.batch(),
                        s.context()
                    ),
                    ("sans-serif", 20),
                )
                .margin(20)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((1f64..2000f64).log_scale(), (1f64..2000f64).log_scale())?;
            c.configure_mesh()
                .x_desc("arithmetic intensity (FLOP/byte)")
                .y_desc("attained TFLOP/s")
                .draw()?;
            let colors = [RED, BLUE, GREEN];
            // Labels of GPUs with the same roof would sit on each other: stagger them downwards.
            for ((g, color), drop) in gpus.iter().zip(colors).zip([0.93, 0.8, 0.69]) {
                let roof: Vec<(f64, f64)> = (0..=100)
                    .map(|i| 10f64.powf(i as f64 * 3.3 / 100.0))
                    .map(|x| (x, (g.bandwidth_gbps * x / 1e3).min(g.bf16_tflops)))
                    .collect();
                c.draw_series(LineSeries::new(roof, color.stroke_width(2)))?
                    .label(format!("{} roof", g.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                for &(key, path_name, sq, x, y) in points.iter().filter(|p| p.0 == g.key) {
                    let style = color.filled();
                    let marker: DynElement<_, _> = if path_name == "absorb" {
                        Circle::new((x, y), 6, style).into_dyn()
                    } else {
                        TriangleMarker::new((x, y), 7, style).into_dyn()
                    };
                    c.draw_series(std::iter::once(marker))?;
                    c.draw_series(std::iter::once(Text::new(
                        format!("{key} {path_name} s_q={sq}"),
                        (x * 1.08, y * drop),
                        ("sans-serif", 11).into_font().color(&color),
                    )))?;
                }
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
        }
        Ok(())
    };
    draw().map_err(|e| CliError::Failed(format!("cannot draw the chart {}: {e}", path.display())))?;
    Ok(gqla_files::write_file(path, svg.as_bytes())?)
}
