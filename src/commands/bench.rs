//! `gqla bench`: benchmarks that print a table (never timed tests).

use super::CliError;
use gqla_model::hf::synthetic::{write_random_llama, LlamaGeometry};
use gqla_model::transgqla::checkpoint::{convert_checkpoint, Calibration, CheckpointOptions, Progress};
use gqla_model::transgqla::rorope::smallest_freqfold;
use gqla_model::transgqla::{Fold, Method, Truncation};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Convert a random LLaMA-3-8B-geometry checkpoint (2 layers: the second is the steady-state
    /// per-layer figure) and estimate a whole 32-layer conversion.
    Convert {
        #[arg(long, default_value_t = 512)]
        kv_lora_rank: usize,
        #[arg(long, default_value_t = 64)]
        rope_dim: usize,
        #[arg(long, default_value_t = 8)]
        calib_sequences: usize,
        #[arg(long, default_value_t = 128)]
        calib_tokens: usize,
        /// Vocabulary size of the synthetic source (LLaMA-3-8B's is 128256; the default keeps the
        /// benchmark about the layers).
        #[arg(long, default_value_t = 1024)]
        vocab: usize,
    },
    /// Time both CUDA decode paths (LLaMA-3-8B and DeepSeek-V3 GQLA geometry, s_q 1–2, batch
    /// 1–128, context 1k–64k) against the copy and bf16 matrix-product ceilings measured in the
    /// same run. Needs a GPU.
    Decode {
        /// A small grid (batch {1, 16}, context {1k, 4k}) for a quick look.
        #[arg(long)]
        quick: bool,
        /// Only these geometries (llama3-8b-gqla, deepseek-v3-gqla).
        #[arg(long, value_delimiter = ',')]
        geometry: Vec<String>,
        /// Only these paths (absorb, gqa).
        #[arg(long, value_delimiter = ',')]
        path: Vec<String>,
        /// Only these query lengths s_q.
        #[arg(long, value_delimiter = ',')]
        sq: Vec<usize>,
        /// Only these batch sizes.
        #[arg(long, value_delimiter = ',')]
        batch: Vec<usize>,
        /// Only these context lengths.
        #[arg(long, value_delimiter = ',')]
        context: Vec<usize>,
        /// Paged caches of this many tokens per page, the pages shuffled over the pool (default:
        /// contiguous caches).
        #[arg(long)]
        page: Option<usize>,
        /// Also write the table (markdown) to this file.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Also write the measurements as JSON (input of `gqla plan --validate`).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Attention kernels to time, of simt, mma and wgmma (those the GPU cannot run are
        /// left out with a note).
        #[arg(long, value_delimiter = ',', default_value = "mma,wgmma")]
        kernels: Vec<String>,
    },
}

pub fn run(a: Args, budget: &gqla_model::budget::Budget) -> Result<(), CliError> {
    match a.which {
        Which::Convert {
            kv_lora_rank,
            rope_dim,
            calib_sequences,
            calib_tokens,
            vocab,
        } => convert(kv_lora_rank, rope_dim, calib_sequences, calib_tokens, vocab, budget),
        Which::Decode {
            quick,
            geometry,
            path,
            sq,
            batch,
            context,
            page,
            out,
            json,
            kernels,
        } => {
            let mut grid = decode_grid(quick, &geometry, &path, (sq, batch, context))?;
            if page == Some(0) {
                return Err(CliError::Usage("--page must be positive".into()));
            }
            grid.page = page;
            decode(&mut grid, out.as_deref(), json.as_deref(), &kernels)
        }
    }
}

/// The benchmark grid: the full one, or the quick one, narrowed to the values asked for (each
/// list empty: all). Validated here, before a GPU is opened.
fn decode_grid(
    quick: bool,
    geometries: &[String],
    paths: &[String],
    (sqs, batches, contexts): (Vec<usize>, Vec<usize>, Vec<usize>),
) -> Result<gqla_cuda::bench::Grid, CliError> {
    use gqla_cuda::bench::{DecodePath, Grid, ModelGeometry};
    let mut grid = Grid::full();
    if quick {
        grid.batches = vec![1, 16];
        grid.contexts = vec![1024, 4096];
    }
    if !geometries.is_empty() {
        let names: Vec<&str> = ModelGeometry::all().iter().map(|g| g.name).collect();
        grid.geometries = geometries
            .iter()
            .map(|n| {
                ModelGeometry::by_name(n)
                    .ok_or_else(|| CliError::Usage(format!("unknown geometry `{n}`: expected one of {}", names.join(", "))))
            })
            .collect::<Result<_, _>>()?;
    }
    if !paths.is_empty() {
        grid.paths = paths
            .iter()
            .map(|n| DecodePath::from_name(n).ok_or_else(|| CliError::Usage(format!("unknown path `{n}`: expected absorb or gqa"))))
            .collect::<Result<_, _>>()?;
    }
    for (name, given, field) in [
        ("--sq", sqs, &mut grid.sqs),
        ("--batch", batches, &mut grid.batches),
        ("--context", contexts, &mut grid.contexts),
    ] {
        if given.contains(&0) {
            return Err(CliError::Usage(format!("{name} values must be positive")));
        }
        if !given.is_empty() {
            *field = given;
        }
    }
    // Sizes the kernels' 32-bit token indices hold, and caches whose byte count does not overflow
    // (the GPU's allocator then says whether they fit).
    let (batch, context) = (grid.batches.iter().max(), grid.contexts.iter().max());
    if let (Some(&batch), Some(&context)) = (batch, context) {
        let widest = grid
            .geometries
            .iter()
            .flat_map(|g| DecodePath::ALL.map(|p| g.cache_elems(p)))
            .max()
            .unwrap_or(0);
        let bytes = batch.checked_mul(context).and_then(|n| n.checked_mul(2 * widest));
        if context > i32::MAX as usize || batch > i32::MAX as usize || bytes.is_none_or(|b| b > 1 << 40) {
            return Err(CliError::Usage(format!(
                "--batch {batch} with --context {context} is out of range: expected at most {} tokens each and a cache of at most 1 TiB",
                i32::MAX
            )));
        }
    }
    Ok(grid)
}

fn decode(
    grid: &mut gqla_cuda::bench::Grid,
    out: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
    kernels: &[String],
) -> Result<(), CliError> {
    use gqla_cuda::bench::{measured_run, table};
    use gqla_cuda::launch::Variant;
    use gqla_files::write_file;
    let wanted = kernels
        .iter()
        .map(|k| Variant::from_name(k).ok_or_else(|| CliError::Usage(format!("unknown kernel `{k}`: expected simt, mma or wgmma"))))
        .collect::<Result<Vec<_>, _>>()?;
    let gpu = gqla_cuda::Gpu::open(0).map_err(CliError::cuda("the decode benchmark needs a GPU"))?;
    let (runnable, unavailable): (Vec<Variant>, Vec<Variant>) = wanted.into_iter().partition(|v| v.available(&gpu));
    for v in unavailable {
        eprintln!("note: this GPU cannot run the {} kernel: left out", v.name());
    }
    grid.variants = runnable;
    if grid.variants.is_empty() {
        return Err(CliError::Usage("none of the requested kernels runs on this GPU".into()));
    }
    let info = &gpu.info;
    let device = format!(
        "Device: {} (compute capability {}.{}, {} SMs), CUDA driver {}, NVRTC {}, options `{}`.",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.multiprocessors,
        info.driver_version,
        info.nvrtc_version,
        info.compile_options.join(" "),
    );
    println!("{device}");
    let ceilings = gpu.ceilings().map_err(CliError::cuda("measuring the copy and GEMM ceilings"))?;
    let mut rows = Vec::new();
    // On an error (a hung kernel, a fault) the rows measured so far are still written.
    let ran = gqla_cuda::bench::bench(&gpu, grid, &mut |r| {
        eprintln!(
            "{}: {:.1} us (p10–p90 {:.1}–{:.1}, {} runs), {:.0} GB/s, {:.2} TFLOP/s, check {:.1e}{}",
            r.label(),
            r.ms() * 1e3,
            r.timing.p10_ms * 1e3,
            r.timing.p90_ms * 1e3,
            r.timing.reps,
            r.gbps(),
            r.tflops(),
            r.check_err,
            if r.checked() { "" } else { " FAILED" },
        );
        rows.push(r);
    })
    .map_err(CliError::cuda("the decode benchmark"));
    let text = format!("{device}\n\n{}", table(&rows, &ceilings));
    println!("{text}");
    if let Some(path) = out {
        write_file(path, text.as_bytes())?;
    }
    if let Some(path) = json {
        let run = measured_run(&info.name, grid, &rows, &ceilings);
        write_file(
            path,
            (serde_json::to_string_pretty(&run).expect("runs serialize") + "\n").as_bytes(),
        )?;
    }
    ran?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.checked())
        .map(|r| format!("{}: {:.2e}", r.label(), r.check_err))
        .collect();
    if !failed.is_empty() {
        return Err(CliError::Failed(format!(
            "{} timed kernels gave wrong outputs (relative error above {:.0e} against the f64 reference):\n  {}",
            failed.len(),
            gqla_cuda::bench::CHECK_TOLERANCE,
            failed.join("\n  ")
        )));
    }
    Ok(())
}

/// Peak resident memory of this process (Linux VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak-RSS counter (Linux: writing 5 to clear_refs), so the figure covers what follows.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn convert(
    kv_lora_rank: usize,
    rope_dim: usize,
    calib_sequences: usize,
    calib_tokens: usize,
    vocab: usize,
    budget: &gqla_model::budget::Budget,
) -> Result<(), CliError> {
    // Refused before the source checkpoint is written.
    for (flag, v) in [
        ("--kv-lora-rank", kv_lora_rank),
        ("--rope-dim", rope_dim),
        ("--calib-sequences", calib_sequences),
        ("--calib-tokens", calib_tokens),
        ("--vocab", vocab),
    ] {
        if v == 0 {
            return Err(CliError::Usage(format!("{flag} must be positive")));
        }
    }
    if vocab > 1 << 24 {
        return Err(CliError::Usage(format!(
            "--vocab {vocab} is above the largest supported, {}",
            1 << 24
        )));
    }
    let g = LlamaGeometry {
        vocab,
        ..LlamaGeometry::llama3_8b(2)
    };
    let tmp = tempfile::tempdir().map_err(CliError::io("cannot create a temporary directory"))?;
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let t = Instant::now();
    write_random_llama(&src, g, 1)?;
    let write_s = t.elapsed().as_secs_f64();
    let freqfold = smallest_freqfold(g.head_dim / 2, g.kv_heads, rope_dim / 2)
        .ok_or_else(|| CliError::Usage(format!("--rope-dim {rope_dim} fits no freqfold")))?;
    // The fold is fixed: this measures one conversion (a search converts the model 2-3 times).
    let method = Method::TransGqla(Truncation::To {
        rope_dim,
        kv_rank: kv_lora_rank,
        fold: Fold::Given(freqfold),
    });
    let opt = CheckpointOptions {
        method,
        dtype: None,
        calibration: Calibration::Random {
            sequences: calib_sequences,
            tokens: calib_tokens,
            seed: 0,
        },
        calibration_precision: Default::default(),
        budget: budget.clone(),
        emit: Default::default(),
        calibration_flow: Default::default(),
    };
    let reset = reset_peak_rss();
    let start = Instant::now();
    let mut done = Vec::new();
    let bar = indicatif::ProgressBar::new(g.layers as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("converting layer {pos}/{len} {elapsed}").expect("valid template"));
    let result = convert_checkpoint(&src, &out, &opt, &mut |p| {
        if let Progress::Layer(_) = p {
            done.push(start.elapsed().as_secs_f64());
            bar.inc(1);
        }
    });
    bar.finish_and_clear();
    let total = start.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    drop(tmp); // removes the source and the output
    result?;
    let per_layer = done[1] - done[0];
    let fixed = total - 2.0 * per_layer;
    println!("TransGQLA conversion, LLaMA-3-8B geometry (hidden 4096, 32/8 heads, head dim 128, MLP 14336, vocab {vocab}), bf16 source");
    println!("d_c = {kv_lora_rank}, d_r = {rope_dim}, freqfold {freqfold}, calibration {calib_sequences} x {calib_tokens} tokens (+1 held-out sequence), {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<44} {:>10}", "measure", "value");
    println!("{:<44} {:>9.2}s", "writing the 2-layer random source", write_s);
    println!("{:<44} {:>9.2}s", "first layer (with setup: hash, embeddings)", done[0]);
    println!("{:<44} {:>9.2}s", "one layer, steady state (target < 10 s)", per_layer);
    println!("{:<44} {:>9.2}s", "total for 2 layers (with head, KL, writing)", total);
    match (peak, reset) {
        (Some(p), true) => println!("{:<44} {:>8.0}MiB", "peak resident memory during conversion", p),
        (Some(p), false) => println!("{:<44} {:>8.0}MiB", "peak resident memory (whole process)", p),
        (None, _) => println!("{:<44} {:>10}", "peak resident memory", "n/a"),
    }
    println!(
        "{:<44} {:>9.1}s",
        "estimate, 32 layers (fixed + 32 x per layer)",
        fixed + 32.0 * per_layer
    );
    println!("(the estimate leaves out hashing and reading a real 16 GB checkpoint, which a 2-layer source is too small to show)");
    Ok(())
}
