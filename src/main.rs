//! `gqla`: the GQLA conformance suite's command-line program.
//!
//! Exit codes: 0 success (certify: conformant); 1 certify: not conformant, or snapshot --check: a
//! regression; 2 bad input or configuration, or a request this machine cannot serve (no GPU);
//! 3 the run failed (I/O, a CUDA driver error, a benchmark's wrong output); 124 a GPU kernel hung
//! (after the certificate or results are written); 130 and 143 after SIGINT and SIGTERM, once the
//! temporary outputs in flight are removed. Errors print their cause on stderr.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gqla",
    version,
    about = "Reference, conversion and certification for Group-Query Latent Attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The most memory a command may plan to use (e.g. 8G, 512M; default: the memory available).
    /// A command that would need more exits 2 before allocating, naming what drives the need.
    #[arg(long, global = true, value_parser = gqla_model::budget::parse_size)]
    max_memory: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one layer's self-attention of an HF checkpoint on given hidden states.
    Forward(commands::forward::Args),
    /// Convert a GQA checkpoint (LLaMA/Qwen2/Mistral) to GQLA with TransGQLA.
    Convert(commands::convert::Args),
    /// Perplexity of a model (HF directory or GGUF) on a text; with --against, KL and top-1
    /// agreement with its source.
    Eval(commands::eval::Args),
    /// Certify a decode kernel against the reference on the conformance suite.
    Certify(commands::certify::Args),
    /// Vector packs for kernels outside this process (PyTorch, Triton, CUDA C++).
    Vectors(commands::vectors::Args),
    /// Benchmarks, printed as tables.
    Bench(commands::bench::Args),
    /// Which decode path a GPU should run: a roofline model of both paths.
    Plan(commands::plan::Args),
    /// Check the tensor-core layouts on the device: the mma.sync and wgmma probes, each one product
    /// against the f64 product.
    Probe(commands::probe::Args),
    /// A regression digest of a checkpoint (YAML); with --check, compare against one.
    Snapshot(commands::snapshot::Args),
    /// Per-token KV-cache sizes of a model on each GQLA path, measured from allocated caches.
    CacheSize(commands::cache_size::Args),
}

/// The system allocator, except that an allocation it refuses ends the command with exit 2 and a
/// message instead of an abort (SIGABRT, exit 134). Commands check their planned memory against
/// the budget before allocating; this catches what no plan foresaw (a cgroup or `ulimit -v`
/// tighter than the plan's margin, another process taking memory meanwhile).
struct ExitWhenRefused;

// SAFETY: every call is passed to `System` unchanged; only a null result is acted on, and
// `refused` never returns.
unsafe impl std::alloc::GlobalAlloc for ExitWhenRefused {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if p.is_null() {
            refused(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if p.is_null() {
            refused(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            refused(new_size);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: ExitWhenRefused = ExitWhenRefused;

/// An allocation of `bytes` was refused: remove the temporary outputs in flight, say so, exit 2.
/// Formatting an integer allocates nothing; removing a temporary file allocates little, and a
/// refused allocation is almost always a large one.
fn refused(bytes: usize) -> ! {
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ONCE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // Refused again while reporting (or on another thread): say the least, allocating nothing.
        const MSG: &[u8] = b"error: out of memory: an allocation was refused\n";
        // SAFETY: write(2) of a static buffer; _exit ends the process at once.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(2)
        }
    }
    let _held = gqla_files::temps::remove_all();
    let limits = gqla_model::budget::MemoryLimit::detect();
    let tightest = limits.iter().min_by_key(|l| l.bytes);
    eprintln!(
        "error: out of memory: an allocation of {bytes} bytes was refused{}; nothing was written (lower the input's \
         sizes, or free memory)",
        tightest.map_or(String::new(), |l| format!(" ({} bytes left under {})", l.bytes, l.what))
    );
    // SAFETY: _exit ends the process at once; no destructor or atexit handler runs (they could
    // allocate again).
    unsafe { libc::_exit(2) }
}

/// Serve large allocations from the heap and keep what is freed, so that the next one reuses it.
///
/// A conversion allocates and frees buffers of hundreds of MB for every layer (one LLaMA-3-8B
/// layer in f64 is 1.7 GB). glibc serves each from a fresh mmap, which the kernel zeroes page by
/// page: that was a third of a layer's conversion time (13.6 s a layer, 8.4 s with this). Peak
/// resident memory moved by under 2%. Other C libraries keep their own policy.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// On SIGINT or SIGTERM: remove the temporary outputs in flight, then exit 128 + the signal.
/// Nothing that looks finished is left behind: a rename into place either happened before the
/// signal (the output is whole) or never will.
fn exit_cleanly_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return; // without a handler the default action still stops the process
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _held = gqla_files::temps::remove_all();
            eprintln!("interrupted: no output was written");
            std::process::exit(128 + sig);
        }
    });
}

fn main() -> ExitCode {
    keep_freed_memory();
    exit_cleanly_on_signals();
    let cli = Cli::parse();
    let budget = gqla_model::budget::Budget::new(cli.max_memory).overridden_by("--max-memory");
    let result = match cli.command {
        Command::Forward(a) => commands::forward::run(a, &budget),
        Command::CacheSize(a) => commands::cache_size::run(a, &budget),
        Command::Plan(a) => commands::plan::run(a, &budget),
        Command::Probe(a) => commands::probe::run(a),
        Command::Convert(a) => commands::convert::run(a, &budget),
        Command::Eval(a) => commands::eval::run(a, &budget),
        Command::Bench(a) => commands::bench::run(a, &budget),
        Command::Vectors(a) => commands::vectors::run(a, &budget),
        Command::Snapshot(a) => match commands::snapshot::run(a, &budget) {
            Ok(commands::snapshot::Outcome::Unchanged) => Ok(()),
            Ok(commands::snapshot::Outcome::Regressed) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Certify(a) => match commands::certify::run(a, &budget) {
            Ok(commands::certify::Outcome::Conformant) => Ok(()),
            Ok(commands::certify::Outcome::Rejected) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let code = e.exit_code();
            if code == gqla_cuda::device::HUNG_EXIT_CODE as u8 {
                // A context with a kernel that never ends cannot be torn down: leave at once.
                std::process::exit(code.into());
            }
            ExitCode::from(code)
        }
    }
}
