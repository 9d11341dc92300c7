//! The CUDA implementation's tests.
//!
//! - NVRTC compiles every kernel to PTX for sm_90a (with the wgmma kernels), sm_90 and sm_80. This needs the NVRTC library only, not
//!   a GPU; CI installs it (`.ci/run`) and sets `GQLA_REQUIRE_NVRTC=1`, so a compile error or a
//!   missing library fails CI. Elsewhere a missing NVRTC is reported as SKIPPED.
//! - With a device, `gqla certify`'s harness runs the CUDA kernel on the whole lattice. Without one
//!   the tests say "skipped: no CUDA device" and count what they skipped.

use gqla_conformance::lattice::suite_cases;
use gqla_conformance::runner::Prepared;
use gqla_conformance::{Kernel, Status};
use gqla_cuda::compile::{function_names, nvrtc_present};
use gqla_cuda::launch;
use gqla_cuda::ptx_cache::{compile_cached, entry_file, CacheUse};
use gqla_cuda::{CudaError, CudaKernel};
use std::sync::Arc;
use std::time::Duration;

/// Report a skipped check on the terminal, past libtest's output capture.
fn skipped(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {message}");
}

fn nvrtc_required() -> bool {
    std::env::var("GQLA_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

#[test]
fn kernels_compile_to_ptx_for_sm90_and_sm80() {
    if !nvrtc_present() {
        assert!(
            !nvrtc_required(),
            "GQLA_REQUIRE_NVRTC=1 but libnvrtc.so.13 cannot be loaded (LD_LIBRARY_PATH={:?})",
            std::env::var("LD_LIBRARY_PATH").ok()
        );
        skipped(
            "kernels_compile_to_ptx_for_sm90_and_sm80: NVRTC not found (install nvidia-cuda-nvrtc 13.0 and put its lib on LD_LIBRARY_PATH)",
        );
        return;
    }
    // Through the PTX cache (a fresh one): each arch is compiled once, a damaged entry is
    // compiled afresh and replaced, a planted one (complete, but writable by others) is never
    // used and is replaced, and a second lookup is a hit with the same text.
    let c = compiled();
    for (arch, ptx, used) in &c.ptx {
        let arch = arch.as_str();
        assert_eq!(*used, CacheUse::Compiled, "{arch}: a fresh cache hit");
        let (again, used) = compile_cached(arch, Some(&c.cache)).unwrap();
        assert!(
            used == CacheUse::Hit && &again.to_src() == ptx,
            "{arch}: the second lookup was not a hit with the same PTX"
        );
        for name in function_names(arch) {
            assert!(ptx.contains(&format!(".entry {name}(")), "{arch}: PTX lacks the entry {name}");
        }
        // The wgmma kernels exist for sm_90a only (elsewhere wgmma is not an instruction).
        assert_eq!(ptx.contains(".entry attn_wgmma_bf16("), arch == "compute_90a", "{arch}");
        assert!(
            ptx.contains(&format!(".target sm_{}", &arch["compute_".len()..])),
            "{arch}: wrong target"
        );
    }
}

/// Every architecture's PTX, compiled once per test process (the two PTX tests share it; NVRTC
/// takes ~20 s an architecture), the three in parallel, through a fresh cache seeded with a
/// damaged entry (sm_80) and a planted one (sm_90: every entry name, but writable by others).
struct Compiled {
    cache: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// (arch, PTX, what the cache did).
    ptx: Vec<(String, String, CacheUse)>,
}

fn compiled() -> &'static Compiled {
    static C: std::sync::OnceLock<Compiled> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        // Under target/tmp: a static is never dropped, so the directory outlives the process.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let cache = dir.path().join("ptx");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(entry_file(&cache, "compute_80").unwrap(), ".version 9.0\n.target sm_80\n").unwrap();
        let planted = entry_file(&cache, "compute_90").unwrap();
        let entries: String = function_names("compute_90").iter().map(|n| format!(".entry {n}(\n")).collect();
        std::fs::write(&planted, format!(".version 9.0\n.target sm_90\n{entries}")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let ptx = std::thread::scope(|s| {
            let jobs: Vec<_> = ["compute_90a", "compute_90", "compute_80"]
                .into_iter()
                .map(|arch| {
                    let cache = &cache;
                    s.spawn(move || {
                        let (ptx, used) = compile_cached(arch, Some(cache)).unwrap_or_else(|e| panic!("{e}"));
                        (arch.to_string(), ptx.to_src(), used)
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        Compiled { cache, _dir: dir, ptx }
    })
}

/// The ptxas to assemble with: `GQLA_PTXAS`, else `ptxas` on PATH.
fn ptxas() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("GQLA_PTXAS") {
        return Some(p.into());
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("ptxas")).find(|p| p.is_file()))
}

/// ptxas assembles every kernel for sm_90a, sm_90 and sm_80, with no register spills. NVRTC passes inline
/// PTX (mma.sync, cvt) through unread, so this is where a wrong instruction shows without a GPU.
/// CI installs ptxas 13.0 from PyPI and sets `GQLA_REQUIRE_PTXAS=1`. Prints the register report.
#[test]
fn kernels_assemble_for_sm90_and_sm80_without_spills() {
    let required = std::env::var("GQLA_REQUIRE_PTXAS").is_ok_and(|v| v == "1");
    let Some(ptxas) = ptxas().filter(|_| nvrtc_present()) else {
        assert!(!required, "GQLA_REQUIRE_PTXAS=1 but no ptxas (GQLA_PTXAS) or no NVRTC");
        skipped("kernels_assemble_for_sm90_and_sm80_without_spills: no ptxas or NVRTC (set GQLA_PTXAS)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("gqla-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The three assemblies run at once (ptxas is single-threaded), then are checked in order.
    let assembled: Vec<(&str, std::process::Output)> = std::thread::scope(|s| {
        let jobs: Vec<_> = compiled()
            .ptx
            .iter()
            .map(|(compute, ptx, _)| {
                let (dir, ptxas) = (&dir, &ptxas);
                s.spawn(move || {
                    let arch = &compute["compute_".len()..];
                    let ptx_path = dir.join(format!("decode_{arch}.ptx"));
                    std::fs::write(&ptx_path, ptx).unwrap();
                    let out = std::process::Command::new(ptxas)
                        .args([format!("-arch=sm_{arch}").as_str(), "-v", "-o"])
                        .arg(dir.join(format!("decode_{arch}.cubin")))
                        .arg(&ptx_path)
                        .output()
                        .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
                    (arch, out)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (arch, out) in assembled {
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas sm_{arch} failed:\n{log}");
        // ptxas warnings and performance advisories (e.g. wgmma serialised by the compiler) do
        // not fail the test, but show.
        for line in log.lines().filter(|l| l.contains("warning") || l.contains("Performance")) {
            eprintln!("sm_{arch} ptxas: {line}");
        }
        // Serialised wgmma (each waits for the previous: ptxas's C75xx advisories) would undo the
        // wgmma kernel's point; it happens when accumulators are touched inside a pipeline stage,
        // on warpgroup-dependent paths, or without the registers for the pipeline.
        let serialised: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("wgmma.mma_async instructions are serialized"))
            .collect();
        assert!(
            serialised.is_empty(),
            "sm_{arch}: ptxas serialises wgmma:\n{}",
            serialised.join("\n")
        );
        let report = gqla_cuda::compile::parse_ptxas_report(&log);
        for name in function_names(&format!("compute_{arch}")) {
            let f = report
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("sm_{arch}: ptxas did not report {name}"));
            assert_eq!(f.spill_bytes, 0, "sm_{arch}: {name} spills: {f:?}");
            // The blocks per SM the host assumes for stage and split counts.
            let declared = if name.starts_with("attn_mma_narrow_") {
                Some(launch::MMA_NARROW_BLOCKS_PER_SM)
            } else if name.starts_with("attn_mma_") {
                Some(launch::MMA_BLOCKS_PER_SM)
            } else if name.starts_with("attn_wgmma_narrow_") {
                Some(launch::WGMMA_NARROW_BLOCKS_PER_SM)
            } else if name.starts_with("attn_wgmma_") {
                Some(launch::WGMMA_BLOCKS_PER_SM)
            } else {
                None
            };
            if let Some(declared) = declared {
                let blocks = blocks_by_registers(f.registers as usize, launch::MMA_THREADS);
                assert_eq!(
                    blocks, declared,
                    "sm_{arch}: {name} has {} registers: {blocks} blocks per SM",
                    f.registers
                );
            }
            let tensor_cores = name.starts_with("attn_mma") || name.starts_with("attn_wgmma");
            if name.starts_with("attn_") && !tensor_cores && !name.starts_with("attn_combine") {
                let blocks = blocks_by_registers(f.registers as usize, launch::THREADS);
                assert!(blocks >= launch::SIMT_BLOCKS_PER_SM, "sm_{arch}: {name}: {blocks} blocks per SM");
            }
            eprintln!("sm_{arch} {name}: {} registers, {} bytes stack", f.registers, f.stack_bytes);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Blocks of `threads` threads that one SM's 64K registers hold at `registers` a thread (registers
/// are allocated per warp in units of 256).
fn blocks_by_registers(registers: usize, threads: usize) -> usize {
    let per_warp = (registers * 32).next_multiple_of(256);
    65_536 / (per_warp * threads.div_ceil(32))
}

/// A broken source must be a compile error with NVRTC's log, not a panic.
#[test]
fn compile_errors_carry_the_log() {
    if !nvrtc_present() {
        assert!(!nvrtc_required(), "GQLA_REQUIRE_NVRTC=1 but libnvrtc.so.13 cannot be loaded");
        skipped("compile_errors_carry_the_log: NVRTC not found");
        return;
    }
    let broken = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    match gqla_cuda::compile::compile_source(broken, "compute_90") {
        Err(e @ CudaError::Compile { .. }) => {
            let text = e.to_string();
            assert!(text.contains("undefined_name") && text.contains("compute_90"), "{text}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a source with an undefined name compiled"),
    }
}

/// Opening the GPU never panics. With a device, the kernel names it and declares a valid profile;
/// without one, the error is one of the "this machine cannot serve it" kinds (exit 2 in the CLI,
/// never a driver failure), says what is missing, and opening again gives the same answer.
#[test]
fn opening_without_a_device_is_an_error_not_a_panic() {
    match CudaKernel::open(0) {
        Ok(k) => {
            let id = k.identity();
            assert!(id.description.contains(&k.gpu().info.name), "{}", id.description);
            k.profile().validate().expect("the CUDA kernel's profile is valid");
            assert!(CudaKernel::open(99).is_err(), "there is no GPU 99");
        }
        Err(e) => {
            assert!(
                matches!(e, CudaError::NoDriver | CudaError::NoNvrtc | CudaError::NoDevice(_)),
                "opening without a usable GPU must say which part is missing, not fail: {e:?}"
            );
            let again = CudaKernel::open(0).err().expect("still no device");
            assert_eq!(std::mem::discriminant(&again), std::mem::discriminant(&e), "{again} vs {e}");
            assert!(e.to_string().starts_with("no "), "{e}");
        }
    }
}

/// Every case of `cases` passes on `kernel`, except that those `may_decline` picks may instead be
/// NOT_SUPPORTED.
fn assert_lattice_passes(
    kernel: &Arc<dyn Kernel>,
    cases: &[gqla_conformance::case::Case],
    may_decline: impl Fn(&gqla_conformance::case::Case) -> bool,
) {
    let mut failures = Vec::new();
    for case in cases {
        // The CUDA kernels read no FP8 cache yet: those cases must be NOT_SUPPORTED by declaration.
        let fp8 = case.kv() != gqla_conformance::case::KvFormat::Native;
        let (r, _) = Prepared::new(case).run(kernel, &kernel.profile(), Duration::from_secs(120));
        let declined = (fp8 || may_decline(case)) && matches!(r.status, Status::NotSupported { .. });
        if (fp8 || !matches!(r.status, Status::Pass { .. })) && !declined {
            failures.push(format!("{}: {:?}", r.id, r.status));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The CUDA kernels pass every case of the suite, poisoned memory and canaries included.
#[test]
fn cuda_kernel_passes_the_whole_lattice() {
    let cases = suite_cases();
    let kernel = match CudaKernel::open(0) {
        Ok(k) => Arc::new(k) as Arc<dyn Kernel>,
        Err(e) => {
            skipped(&format!("no CUDA device: {} lattice cases not run on CUDA ({e})", cases.len()));
            return;
        }
    };
    assert_lattice_passes(&kernel, &cases, |_| false);
}

/// The tensor-core fragment layout on the hardware: one m16n8k16 product through mma_probe equals
/// the plain product (the emulator's test checks the same probe against PTX's documented layout).
#[test]
fn mma_probe_matches_the_plain_product_on_the_gpu() {
    let kernel = match CudaKernel::open(0) {
        Ok(k) => k,
        Err(e) => {
            skipped(&format!("no CUDA device: mma_probe not run ({e})"));
            return;
        }
    };
    for dtype in [gqla_conformance::case::DType::Bf16, gqla_conformance::case::DType::F16] {
        let (got, want) = gqla_cuda::launch::mma_probe(kernel.gpu(), dtype, 7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), launch::MMA_PROBE_WAYS * want.len());
        let bad = launch::mma_probe_mismatches(&got, &want);
        assert!(bad.is_empty(), "{dtype:?}: {}", bad.join("; "));
    }
}

/// Every compute-sanitizer case of scripts/gpu-round.sh (three for memcheck, one for racecheck)
/// selects at least one lattice case.
#[test]
fn sanitizer_subset_selects_lattice_cases() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gpu-round.sh")).unwrap();
    let quoted = |l: &str| -> Option<String> { Some(l.trim().strip_prefix('"')?.strip_suffix('"')?.to_string()) };
    let block = script.split("memcheck_cases=(").nth(1).unwrap().split("\n)").next().unwrap();
    let memcheck: Vec<String> = block.lines().filter_map(quoted).collect();
    assert_eq!(memcheck.len(), 3, "{memcheck:?}");
    let race_line = script.lines().find_map(|l| l.strip_prefix("racecheck_case=")).unwrap();
    let racecheck = quoted(race_line).unwrap();
    let ids: Vec<String> = suite_cases().iter().map(|c| c.to_string()).collect();
    for f in memcheck.iter().chain([&racecheck]) {
        assert!(ids.iter().any(|id| id.starts_with(f.as_str())), "no lattice case starts with `{f}`");
    }
}

/// The wgmma descriptors and layouts on the hardware: the probe's three products through the
/// layouts the wgmma kernel uses equal the plain product (the emulator checks the same probe
/// against PTX's documented canonical layouts). Hopper only.
#[test]
fn wgmma_probe_matches_the_plain_product_on_the_gpu() {
    let kernel = match CudaKernel::open(0) {
        Ok(k) => k,
        Err(e) => {
            skipped(&format!("no CUDA device: wgmma_probe not run ({e})"));
            return;
        }
    };
    if !gqla_cuda::runtime::Runtime::has_wgmma(kernel.gpu()) {
        skipped("wgmma_probe: the device is not sm_90 (no wgmma)");
        return;
    }
    for dtype in [gqla_conformance::case::DType::Bf16, gqla_conformance::case::DType::F16] {
        let (got, want) = launch::wgmma_probe(kernel.gpu(), dtype, 7).unwrap_or_else(|e| panic!("{e}"));
        let bad = launch::probe_mismatches(&got, &want, &launch::WGMMA_PROBE_WAYS);
        assert!(
            bad.is_empty(),
            "{dtype:?}: {} mismatches, first: {}",
            bad.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
        );
    }
}

/// The wgmma kernel passes (or declines, for f32) every case of the suite. Hopper only.
#[test]
fn cuda_wgmma_kernel_passes_the_whole_lattice() {
    let cases = suite_cases();
    let kernel = match CudaKernel::open(0) {
        Ok(k) if gqla_cuda::runtime::Runtime::has_wgmma(k.gpu()) => Arc::new(k.with_variant(launch::Variant::Wgmma)) as Arc<dyn Kernel>,
        Ok(_) => {
            skipped("the device is not sm_90: wgmma lattice not run");
            return;
        }
        Err(e) => {
            skipped(&format!(
                "no CUDA device: {} lattice cases not run on the wgmma kernel ({e})",
                cases.len()
            ));
            return;
        }
    };
    assert_lattice_passes(&kernel, &cases, |c| c.dtype() == gqla_conformance::case::DType::F32);
}
