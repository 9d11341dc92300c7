//! The CUDA kernel source on the host emulator: the whole lattice must pass, and the emulator
//! must catch what it claims to catch (stray accesses, divergent barriers) rather than run them.

use gqla_conformance::case::{Case, DType, KvFormat, Op};
use gqla_conformance::lattice::suite_cases;
use gqla_conformance::runner::{Prepared, Session};
use gqla_conformance::{Kernel, Status};
use gqla_cuda::emu::Schedule;
use gqla_cuda::launch::{self, BlockTable, Decode, Guarded, KeySource, Segment, Variant};
use gqla_cuda::runtime::{Args, AttnParams, Launch, Runtime};
use gqla_cuda::{CudaError, EmuKernel, Emulator};
use gqla_files::tensors::encode_f32;
use std::sync::Arc;
use std::time::Duration;

/// Run `kernel` on the lattice cases `select` picks; the failures, given `expected(case)` says
/// whether a case must pass (true) or be NOT_SUPPORTED (false).
fn lattice_failures(kernel: EmuKernel, select: impl Fn(&Case) -> bool, expected: impl Fn(&Case) -> bool) -> (usize, Vec<String>) {
    let kernel = Arc::new(kernel) as Arc<dyn Kernel>;
    // The CUDA kernels read no FP8 cache yet: those cases are NOT_SUPPORTED by declaration, as
    // emulated_kernels_pass_the_whole_lattice checks.
    let cases: Vec<Case> = suite_cases()
        .into_iter()
        .filter(|c| select(c) && c.kv() == KvFormat::Native)
        .collect();
    let mut failures = Vec::new();
    let mut session = Session::new(kernel, Duration::from_secs(300));
    for case in &cases {
        let r = session.run(&Prepared::new(case));
        let ok = if expected(case) {
            matches!(r.status, Status::Pass { .. })
        } else {
            matches!(r.status, Status::NotSupported { .. })
        };
        if !ok {
            failures.push(format!("{}: {:?}", r.id, r.status));
        }
    }
    (cases.len(), failures)
}

fn assert_none_failed((n, failures): (usize, Vec<String>)) {
    assert!(n > 0, "no case selected");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every lattice case passes on the emulated kernels as `gqla certify --kernel cuda-emu` runs
/// them (tensor cores for bf16/f16, SIMT for f32), poisoned memory and canaries included; and the
/// wgmma kernel (`--kernel cuda-emu-wgmma`) passes every 16-bit decode case at s_q ≥ 2 and the
/// short ones at s_q = 1 (its tiles hold 64 query rows either way; the long s_q = 1 cases would
/// only repeat the s_q = 2 ones at the emulator's cost), and declares no f32. One reference per
/// case serves both.
#[test]
fn emulated_kernels_pass_the_whole_lattice() {
    let timeout = Duration::from_secs(300);
    let mut default = Session::new(Arc::new(EmuKernel::emulated()), timeout);
    let mut wgmma = Session::new(Arc::new(EmuKernel::emulated().with_variant(Variant::Wgmma)), timeout);
    let (mut failures, mut n) = (Vec::new(), 0);
    for case in suite_cases() {
        let p = Prepared::new(&case);
        n += 1;
        let r = default.run(&p);
        if case.kv() != KvFormat::Native {
            if r.status.selected() {
                failures.push(format!("cuda-emu reads no FP8 cache, yet selected {}: {:?}", r.id, r.status));
            }
            continue;
        }
        if !r.status.passed() {
            failures.push(format!("cuda-emu: {}: {:?}", r.id, r.status));
        }
        let short = (0..case.batch()).all(|b| case.seq_len(b) <= 135);
        if case.op() != Op::CacheExpand && (case.sq() > 1 || short) {
            let r = wgmma.run(&p);
            let ok = if case.dtype() == DType::F32 {
                !r.status.selected()
            } else {
                r.status.passed()
            };
            if !ok {
                failures.push(format!("cuda-emu-wgmma: {}: {:?}", r.id, r.status));
            }
        }
    }
    assert_none_failed((n, failures));
}

/// The SIMT kernel, forced on 16-bit storage too, passes every short decode case; forcing the
/// tensor-core kernel on f32 storage is NOT_SUPPORTED, never a wrong answer.
#[test]
fn each_variant_passes_or_declines() {
    let short = |c: &Case| c.op() != Op::CacheExpand && (0..c.batch()).all(|b| c.seq_len(b) <= 130);
    assert_none_failed(lattice_failures(EmuKernel::emulated().with_variant(Variant::Simt), short, |_| true));
    assert_none_failed(lattice_failures(
        EmuKernel::emulated().with_variant(Variant::Mma),
        |c| short(c) && (c.dtype() == DType::F32 || c.splits().is_some()),
        |c| c.dtype() != DType::F32,
    ));
}

/// The wgmma operand layouts and descriptors the wgmma kernel uses give the plain product under
/// the emulator's reading of PTX's canonical layouts (the GPU test runs the same probe).
#[test]
fn wgmma_probe_matches_the_plain_product() {
    let rt = Emulator {
        threads: 1,
        ..Emulator::default()
    };
    for dtype in [DType::Bf16, DType::F16] {
        let (got, want) = launch::wgmma_probe(&rt, dtype, 7).unwrap();
        let bad = launch::probe_mismatches(&got, &want, &launch::WGMMA_PROBE_WAYS);
        assert!(
            bad.is_empty(),
            "{dtype:?}: {} mismatches, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

/// One m16n8k16 product through the fragment layout the tensor-core kernel assumes equals the
/// plain product (the emulator's mma follows PTX's layout; the GPU test runs the same probe).
#[test]
fn mma_probe_matches_the_plain_product() {
    let rt = Emulator {
        threads: 1,
        ..Emulator::default()
    };
    for dtype in [DType::Bf16, DType::F16] {
        let (got, want) = gqla_cuda::launch::mma_probe(&rt, dtype, 7).unwrap();
        assert_eq!(got.len(), launch::MMA_PROBE_WAYS * want.len());
        let bad = launch::mma_probe_mismatches(&got, &want);
        assert!(bad.is_empty(), "{dtype:?}: {}", bad.join("; "));
    }
}

/// Buffers of a small GQA decode (G = 2 streams, 4 heads, head width d, 100 keys, 2 sequences).
struct Small {
    rt: Emulator,
    dtype: DType,
    d: usize,
    q: Vec<u8>,
    k: Vec<u8>,
    v: Vec<u8>,
    lens: Vec<i32>,
    table: Vec<i32>,
}

const G: usize = 2;
const H: usize = 4;
const T: usize = 100;
const B: usize = 2;

impl Small {
    fn new(dtype: DType, d: usize) -> Self {
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
                .collect()
        };
        Self {
            rt: Emulator {
                threads: 2,
                ..Emulator::default()
            },
            dtype,
            d,
            q: encode_f32(dtype, &values(B * H * d, 1)),
            k: encode_f32(dtype, &values(B * T * G * d, 2)),
            v: encode_f32(dtype, &values(B * T * G * d, 3)),
            lens: vec![T as i32; B],
            table: (0..B as i32).collect(),
        }
    }

    /// Run the decode on `variant` with `page` keys per page and `splits` splits; the output.
    fn run(&self, variant: Variant, page: usize, splits: usize) -> Result<Vec<f32>, CudaError> {
        self.run_staged(variant, page, splits).map(|(out, _)| out)
    }

    /// The output and the tensor-core kernel's stage count.
    fn run_staged(&self, variant: Variant, page: usize, splits: usize) -> Result<(Vec<f32>, usize), CudaError> {
        self.launch(variant, page, splits, true)
    }

    /// The same without the host's addressing check: the emulator checks every access itself.
    fn run_emulated(&self, variant: Variant, page: usize, splits: usize) -> Result<(Vec<f32>, usize), CudaError> {
        self.launch(variant, page, splits, false)
    }

    fn launch(&self, variant: Variant, page: usize, splits: usize, check_addressing: bool) -> Result<(Vec<f32>, usize), CudaError> {
        let (rt, d) = (&self.rt, self.d);
        let (q, k, v) = (rt.upload(&self.q)?, rt.upload(&self.k)?, rt.upload(&self.v)?);
        let (lens, table) = (rt.upload(&self.lens)?, rt.upload(&self.table)?);
        let mut out = rt.zeros::<u8>(B * H * d * self.dtype.size_in_bytes())?;
        let mut lse = rt.zeros::<u8>(B * H * 4)?;
        let mut ws = launch::workspace(rt, B * H, d, splits)?;
        let seg = |buf| Segment {
            buf,
            row_stride: G * d,
            head_stride: d,
            width: d,
        };
        let mut call = Decode {
            dtype: self.dtype,
            q: &q,
            keys: KeySource {
                key: seg(&k),
                shared_key: None,
                value: Some(seg(&v)),
                dv: d,
                streams: G,
            },
            paging: BlockTable {
                seq_lens: &lens,
                block_table: &table,
                max_pages: 1,
                page,
            },
            batch: B,
            sq: 1,
            h: H,
            scale: 0.3,
            num_splits: splits,
            variant,
            out: Guarded { buf: &mut out, margin: 0 },
            lse: Guarded { buf: &mut lse, margin: 0 },
        };
        let stages = call.stages(rt);
        if check_addressing {
            launch::check_addressing(&self.lens, &self.table, 1, page, call.cache_slots())?;
        }
        // SAFETY: the emulator checks every access against the buffers and fails the launch on one
        // outside them, so any addressing is safe here; the buffers live past the download.
        unsafe { launch::decode(rt, &mut call, Some(&mut ws)) }?;
        Ok((launch::from_bytes(self.dtype, &rt.download(&out)?), stages))
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Split counts agree; under the shared-memory checks with threads shuffled, so the combine
/// kernel's chunked weights (more splits than one chunk) are checked too.
#[test]
fn split_counts_agree() {
    let mut s = Small::new(DType::F32, 8);
    s.rt = Emulator {
        threads: 2,
        ..Emulator::checked(Schedule::Shuffled(3))
    };
    let one = s.run(Variant::Simt, T, 1).unwrap();
    // 300 splits: more than a combine block holds at once (COMBINE_CHUNK), most of them empty.
    for splits in [2, 3, 7, 40, 300] {
        let err = max_abs_diff(&one, &s.run(Variant::Simt, T, splits).unwrap());
        assert!(err < 1e-5, "{splits} splits differ from one by {err}");
    }
    assert!(one.iter().all(|x| x.is_finite()) && one.iter().any(|x| *x != 0.0));
}

/// The tensor-core kernel agrees with the SIMT one off the lattice's widths: 16 (16-byte loads),
/// 12 and 20 (element loads, and zero padding of the key to a multiple of 16).
#[test]
fn variants_agree_on_odd_widths() {
    for d in [16, 12, 20] {
        let s = Small::new(DType::Bf16, d);
        let simt = s.run(Variant::Simt, T, 1).unwrap();
        for (splits, variant) in [1, 3].into_iter().flat_map(|s| [(s, Variant::Mma), (s, Variant::Wgmma)]) {
            let tc = s.run(variant, T, splits).unwrap();
            let err = max_abs_diff(&simt, &tc);
            // bf16 outputs of magnitude < 0.5, P rounded to bf16 on the tensor-core path.
            assert!(
                err < 1.0 / 64.0,
                "d = {d}, {splits} splits, {variant:?}: tensor-core and SIMT outputs differ by {err}"
            );
        }
        assert!(simt.iter().all(|x| x.is_finite()) && simt.iter().any(|x| *x != 0.0));
    }
}

/// Three tiles in flight (an H100's shared memory) and two (an SM with room for two blocks of two
/// stages but not of three) give the same bits: the pipeline depth moves copies, not arithmetic.
/// With four key tiles, both depths refill buffers that earlier tiles used, so this runs under the
/// shared-memory checks with threads shuffled (a refill racing the reads of the buffer's last tile
/// is reported).
#[test]
fn stage_counts_agree() {
    let mut s = Small::new(DType::Bf16, 16);
    s.rt = Emulator {
        threads: 2,
        ..Emulator::checked(Schedule::Shuffled(5))
    };
    // Per-SM shared memory (KB) that holds two blocks of two stages but not of three (the wgmma
    // kernel pads values to 128 columns: its blocks are larger here).
    for (splits, variant, sm_shared) in [
        (1, Variant::Mma, 50),
        (3, Variant::Mma, 50),
        (1, Variant::Wgmma, 100),
        (3, Variant::Wgmma, 100),
    ] {
        let (deep, stages) = s.run_staged(variant, T, splits).unwrap();
        assert_eq!(stages, 3);
        s.rt.shared_per_multiprocessor = sm_shared * 1024;
        let (shallow, stages) = s.run_staged(variant, T, splits).unwrap();
        assert_eq!(stages, 2);
        s.rt.shared_per_multiprocessor = Emulator::default().shared_per_multiprocessor;
        assert!(
            deep.iter().zip(&shallow).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{splits} splits, {variant:?}"
        );
        assert!(deep.iter().all(|x| x.is_finite()) && deep.iter().any(|x| *x != 0.0));
    }
}

/// Default split counts fill one wave: every SM holding as many blocks as registers and shared
/// memory allow (the emulator is an H100: 132 SMs), and no split shorter than four key tiles.
#[test]
fn default_splits_fill_one_wave() {
    let rt = Emulator::default();
    let buf = || rt.zeros::<u8>(16).unwrap();
    let (q, k, r, v) = (buf(), buf(), buf(), buf());
    let (lens, table) = (rt.upload(&[0i32]).unwrap(), rt.upload(&[0i32]).unwrap());
    let (mut out, mut lse) = (buf(), buf());
    let seg = |buf, width, head_stride| Segment {
        buf,
        row_stride: 8 * width,
        head_stride,
        width,
    };
    // (absorb or GQA path, heads, s_q, batch, variant, longest, splits): DeepSeek-V3 and
    // LLaMA-3-8B geometry.
    let cases = [
        (true, 128, 1, 1, Variant::Mma, 65_536, 66),   // 2 row tiles, 1 block per SM
        (true, 128, 2, 1, Variant::Mma, 65_536, 33),   // 4 row tiles
        (true, 32, 1, 1, Variant::Mma, 65_536, 132),   // 1 row tile
        (true, 32, 1, 16, Variant::Mma, 65_536, 9),    // 16 blocks
        (true, 32, 1, 1, Variant::Mma, 1_000, 8),      // four tiles of 32 keys at least
        (false, 32, 1, 1, Variant::Mma, 65_536, 33),   // 8 groups, narrow: 2 blocks per SM
        (false, 32, 2, 64, Variant::Mma, 65_536, 1),   // 512 blocks: more than a wave
        (false, 32, 1, 1, Variant::Simt, 65_536, 33),  // SIMT: 2 blocks per SM
        (true, 128, 1, 1, Variant::Wgmma, 65_536, 66), // wgmma: as mma.sync, 1 block per SM
        (false, 32, 1, 1, Variant::Wgmma, 65_536, 33), // narrow wgmma: 2 blocks per SM
    ];
    for (absorb, h, sq, batch, variant, longest, want) in cases {
        let keys = if absorb {
            KeySource {
                key: seg(&k, 576, 0),
                shared_key: None,
                value: None,
                dv: 512,
                streams: 1,
            }
        } else {
            KeySource {
                key: seg(&k, 128, 128),
                shared_key: Some(seg(&r, 64, 0)),
                value: Some(seg(&v, 128, 128)),
                dv: 128,
                streams: 8,
            }
        };
        let call = Decode {
            dtype: DType::Bf16,
            q: &q,
            keys,
            paging: BlockTable {
                seq_lens: &lens,
                block_table: &table,
                max_pages: 1,
                page: longest,
            },
            batch,
            sq,
            h,
            scale: 1.0,
            num_splits: 1,
            variant,
            out: Guarded { buf: &mut out, margin: 0 },
            lse: Guarded { buf: &mut lse, margin: 0 },
        };
        let got = call.default_splits(&rt, longest);
        assert_eq!(
            got, want,
            "absorb {absorb}, h {h}, s_q {sq}, batch {batch}, {variant:?}, {longest} keys"
        );
    }
}

/// A block table that claims more keys than the cache holds: the kernel would read past the
/// cache. The emulator must refuse the access and say where, not read host memory.
#[test]
fn a_read_past_the_cache_is_reported() {
    let mut s = Small::new(DType::F32, 8);
    // Pages of T keys, and sequence 1's page points at page 5 of a 2-page cache.
    s.table = vec![0, 5];
    let e = s.run(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(e.contains("row 1 page 0 is page 5"), "the host check refuses it first: {e}");
    let e = s.run_emulated(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(
        e.contains("out-of-bounds load") && e.contains("attn_f32") && e.contains("common.cuh:"),
        "{e}"
    );
}

/// A decode whose buffers are too small for its shape, or whose block table or lengths reach
/// outside the cache, is refused before anything is launched.
#[test]
fn extents_and_addressing_are_checked_before_a_launch() {
    let s = Small::new(DType::Bf16, 16);
    assert!(s.run(Variant::Simt, T, 1).is_ok());
    let short_q = Small {
        q: s.q[..s.q.len() - 2].to_vec(),
        ..Small::new(DType::Bf16, 16)
    };
    let e = short_q.run(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(e.contains("the queries needs"), "{e}");
    let short_v = Small {
        v: s.v[..s.v.len() - 2].to_vec(),
        ..Small::new(DType::Bf16, 16)
    };
    let e = short_v.run(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(e.contains("row 1 page 0 is page 1; the cache holds pages 0..1"), "{e}");
    let far_page = Small {
        table: vec![0, 2],
        ..Small::new(DType::Bf16, 16)
    };
    let e = far_page.run(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(e.contains("row 1 page 0 is page 2"), "{e}");
    let long_row = Small {
        lens: vec![T as i32, T as i32 + 1],
        ..Small::new(DType::Bf16, 16)
    };
    let e = long_row.run(Variant::Simt, T, 1).unwrap_err().to_string();
    assert!(e.contains("row 1 has length 101"), "{e}");
    let negative = Small {
        table: vec![0, -1],
        ..Small::new(DType::Bf16, 16)
    };
    assert!(negative.run(Variant::Simt, T, 1).unwrap_err().to_string().contains("page -1"));
}

/// Launches with a wrong shared-memory size or a pointer outside every buffer are errors.
#[test]
fn a_pointer_outside_the_launch_buffers_is_reported() {
    let rt = Emulator {
        threads: 1,
        ..Emulator::default()
    };
    let lens = rt.upload(&[4i32]).unwrap();
    let p = AttnParams {
        seq_lens: 8, // not an address of any buffer of the launch
        batch: 1,
        sq: 1,
        h: 1,
        streams: 1,
        num_splits: 1,
        da: 4,
        dv: 4,
        ..Default::default()
    };
    let launch = Launch {
        grid: (1, 1, 1),
        threads: 128,
        shared_bytes: 4096,
    };
    // SAFETY: deliberately not: the emulator checks every access and refuses this launch.
    let attn_f32 = gqla_cuda::compile::Entry::new(gqla_cuda::compile::Family::Attn, gqla_conformance::case::DType::F32);
    let e = unsafe { rt.launch(attn_f32, launch, Args::Attn(&p), &[rt.read(&lens)]) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("in none of the launch's buffers"), "{e}");
    // SAFETY: no kernel runs. (A typed entry point cannot name a missing kernel; the emulator's
    // name lookup, below the entry points, still refuses one.)
    let e = unsafe { rt.launch_with("no_such_kernel", launch, &p, &[]) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("no kernel named no_such_kernel"), "{e}");
}

/// `{ float* out; int n; }`, the parameters of the emulator's `selftest_*` kernels.
#[repr(C)]
#[derive(Clone, Copy)]
struct SelftestParams {
    out: u64,
    n: i32,
}

/// Run test kernel `name` over one block of `threads` threads with an `n`-float output.
fn selftest(name: &str, threads: u32, n: usize) -> Result<Vec<f32>, CudaError> {
    selftest_with_shared(name, threads, n, 0)
}

/// The same with `shared_bytes` of dynamic shared memory.
fn selftest_with_shared(name: &str, threads: u32, n: usize, shared_bytes: u32) -> Result<Vec<f32>, CudaError> {
    selftest_on(&Emulator::default(), name, threads, n, shared_bytes)
}

/// The same on emulator `rt` (its checking options; one OS thread).
fn selftest_on(rt: &Emulator, name: &str, threads: u32, n: usize, shared_bytes: u32) -> Result<Vec<f32>, CudaError> {
    let rt = Emulator { threads: 1, ..rt.clone() };
    let mut out = rt.upload(&vec![f32::NAN; n])?;
    let bound = rt.write(&mut out);
    let (span, p) = (
        bound.span,
        SelftestParams {
            out: bound.addr,
            n: n as i32,
        },
    );
    let launch = Launch {
        grid: (1, 1, 1),
        threads,
        shared_bytes,
    };
    // SAFETY: SelftestParams is the struct the selftest kernels take.
    unsafe { rt.launch_with(name, launch, &p, &[span]) }?;
    rt.download(&out)
}

/// Shuffles exchange between the right lanes; in a last, partial warp, reading a lane that does
/// not exist is an error (its value is undefined on a GPU).
#[test]
fn warp_shuffles_reduce_within_each_warp() {
    let sums = selftest("selftest_warp_sum", 96, 3).unwrap();
    let expect = |lo: u32, hi: u32| (lo..hi).sum::<u32>() as f32;
    assert_eq!(sums, vec![expect(0, 32), expect(32, 64), expect(64, 96)]);
    let e = selftest("selftest_warp_sum", 80, 3).unwrap_err().to_string();
    assert!(
        e.contains("thread (64,0,0)") && e.contains("reads lane 16 of a 16-thread warp"),
        "{e}"
    );
}

#[test]
fn divergent_barriers_are_reported() {
    let e = selftest("selftest_divergent_sync", 128, 1).unwrap_err().to_string();
    assert!(e.contains("divergent __syncthreads"), "{e}");
    let e = selftest("selftest_skipped_sync", 128, 1).unwrap_err().to_string();
    assert!(
        e.contains("deadlock") && e.contains("64 threads wait at __syncthreads") && e.contains("64 have returned"),
        "{e}"
    );
}

#[test]
fn partial_warp_shuffles_are_reported() {
    let e = selftest("selftest_partial_shuffle", 64, 1).unwrap_err().to_string();
    assert!(e.contains("member mask 0xffff"), "{e}");
}

/// A store past the end is refused (the buffer is untouched) and reported with the place.
#[test]
fn stores_past_the_end_are_refused() {
    let e = selftest("selftest_store_past_end", 32, 4).unwrap_err().to_string();
    assert!(
        e.contains("out-of-bounds store of 4 bytes at element 4") && e.contains("selftest_store_past_end") && e.contains("selftest.cu:"),
        "{e}"
    );
}

/// ldmatrix rows must be 16 aligned bytes of the block's shared memory.
#[test]
fn ldmatrix_outside_shared_memory_is_reported() {
    let e = selftest("selftest_ldmatrix_outside_shared", 32, 1).unwrap_err().to_string();
    assert!(
        e.contains("selftest_ldmatrix_outside_shared") && e.contains("ldmatrix row") && e.contains("not 16 aligned bytes of shared memory"),
        "{e}"
    );
}

/// A wgmma operand must lie in the block's shared memory: one element past it is reported (read
/// once per operation, by its first thread), and the same wgmma with room for B runs (on B's
/// uninitialised shared memory, so its value is not checked).
#[test]
fn wgmma_operand_outside_shared_memory_is_reported() {
    let e = selftest_with_shared("selftest_wgmma_outside_shared", 128, 1, 2048)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("selftest_wgmma_outside_shared")
            && e.contains("wgmma operand element at shared address 0x800, outside the block's 2048 bytes"),
        "{e}"
    );
    assert!(selftest_with_shared("selftest_wgmma_outside_shared", 128, 1, 2304).is_ok());
}

/// cp.async destinations must be 16 aligned bytes of the block's shared memory (the emulator
/// allocates 16 bytes beyond what the launch asks for: a copy there is still refused).
#[test]
fn cp_async_outside_shared_memory_is_reported() {
    let e = selftest_with_shared("selftest_cp_async_outside_shared", 32, 1024, 1024)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cp.async destination") && e.contains("is not 16 aligned bytes of the block's shared memory"),
        "{e}"
    );
    // Inside: the same copy into the launch's last 16 bytes runs.
    assert!(selftest_with_shared("selftest_cp_async_outside_shared", 32, 1024, 1040).is_ok());
}

/// wgmma accumulators may only be touched after a wgmma.fence, and a wgmma must be waited for
/// before its threads return.
#[test]
fn wgmma_fence_and_wait_are_enforced() {
    let e = selftest_with_shared("selftest_wgmma_without_fence", 128, 1, 2304)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wgmma without wgmma.fence") && e.contains("selftest_wgmma_without_fence"),
        "{e}"
    );
    let e = selftest_with_shared("selftest_wgmma_unwaited", 128, 1, 2304)
        .unwrap_err()
        .to_string();
    assert!(e.contains("returned with a wgmma in flight"), "{e}");
    // Not whole warpgroups.
    let e = selftest_with_shared("selftest_wgmma_unwaited", 96, 1, 2304)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not whole warpgroups"), "{e}");
}

/// The decode benchmark's own code path (cache layouts, default splits, workspaces, timing and
/// the spot check against the f64 reference) on a small geometry: every timed kernel's output
/// passes the check, on both paths, all three kernels, s_q 1 and 2, contiguous and paged (shuffled
/// pages, a partial last page), with split KV. Under the shared-memory checks with threads
/// shuffled: 300 keys are 10 tiles, so every pipeline buffer is refilled several times.
#[test]
fn benchmark_points_run_and_pass_their_spot_checks() {
    use gqla_cuda::bench::{bench_point, DecodePath, ModelGeometry, Shape};
    let rt = Emulator::checked(Schedule::Shuffled(21));
    let tiny = ModelGeometry {
        name: "tiny",
        dims: gqla_reference::LatentDims::new(gqla_reference::LatentShape {
            h: 8,
            g: 2,
            d_c: 32,
            d_n: 16,
            d_r: 16,
            d_v: 16,
        })
        .unwrap(),
    };
    let mut rows = Vec::new();
    for path in [DecodePath::Absorb, DecodePath::Gqa] {
        for page in [None, Some(16)] {
            let shape = Shape {
                batch: 2,
                context: 300,
                page,
            };
            bench_point(
                &rt,
                &tiny,
                path,
                DType::Bf16,
                (&[1, 2], &[Variant::Mma, Variant::Wgmma, Variant::Simt]),
                shape,
                &mut |r| rows.push(r),
            )
            .unwrap();
        }
    }
    assert_eq!(rows.len(), 24);
    for r in &rows {
        assert!(r.checked(), "{r:?}");
        assert!(r.splits > 1, "{r:?}");
    }
}

/// With the shared-memory checks on, each kind of misuse they claim to catch is reported with its
/// place, and the same kernels without the misuse pass.
#[test]
fn shared_memory_checks_report_races_and_missing_fences() {
    let forward = Emulator::checked(Schedule::Forward);
    let reverse = Emulator::checked(Schedule::Reverse);
    // (order, kernel, threads, n, shared bytes, what the error must say)
    type Refusal<'a> = (&'a Emulator, &'a str, u32, usize, u32, &'a [&'a str]);
    let refused: [Refusal; 7] = [
        (
            &forward,
            "selftest_wgmma_without_proxy_fence",
            128,
            1,
            2304,
            &["wgmma reads shared byte", "without a fence.proxy.async"],
        ),
        (
            &forward,
            "selftest_wgmma_operand_overwritten",
            128,
            1,
            2304,
            &["thread (0,0,0)", "which a wgmma not yet waited for reads"],
        ),
        (
            &forward,
            "selftest_shared_store_race",
            64,
            1,
            4,
            &["thread (32,0,0)", "which thread 0 also wrote with no barrier between"],
        ),
        // Warp 0 reads first in index order, so the race shows at warp 1's stores; in reverse
        // order, at warp 0's read.
        (
            &forward,
            "selftest_ldmatrix_race",
            64,
            1,
            512,
            &["which warp 0's ldmatrix read with no barrier between (a race)"],
        ),
        (
            &reverse,
            "selftest_ldmatrix_race",
            64,
            1,
            512,
            &["ldmatrix reads shared byte", "with no barrier between (a race)"],
        ),
        (
            &forward,
            "selftest_cp_async_overwrite",
            32,
            4,
            16,
            &["thread (1,0,0)", "while the cp.async of thread 0 to it is in flight"],
        ),
        (
            &forward,
            "selftest_cp_async_overwrite",
            32,
            5,
            16,
            &["thread (0,0,0)", "while the cp.async of thread 0 to it is in flight"],
        ),
    ];
    for (rt, name, threads, n, shared, wants) in refused {
        let e = match selftest_on(rt, name, threads, n, shared) {
            Ok(out) => panic!("{name} (n = {n}) ran: {out:?}"),
            Err(e) => e.to_string(),
        };
        assert!(wants.iter().all(|w| e.contains(w)), "{name} (n = {n}): {e}");
    }
    assert_eq!(selftest_on(&forward, "selftest_wgmma_ok", 128, 1, 2304).unwrap(), vec![0.0]);
    assert_eq!(selftest_on(&forward, "selftest_shared_store_race", 64, 2, 4).unwrap()[0], 2.0);
    assert!(selftest_on(&forward, "selftest_ldmatrix_race", 64, 2, 512).is_ok());
    // Unchecked, the kernel with no proxy fence runs (the emulator's wgmma sees plain stores at once).
    assert_eq!(
        selftest_with_shared("selftest_wgmma_without_proxy_fence", 128, 1, 2304).unwrap(),
        vec![0.0]
    );
}

/// A read that misses its barrier passes when threads run in index order and reads shared
/// memory's NaN when the reader runs first: why the checked runs use other orders.
#[test]
fn other_thread_orders_expose_a_missing_barrier() {
    let n = 64;
    let want: Vec<f32> = (0..n).map(|i| i.max(1) as f32 - 1.0).collect();
    let forward = selftest_on(&Emulator::default(), "selftest_missing_barrier", n as u32, n, 4 * n as u32).unwrap();
    assert_eq!(forward, want);
    for schedule in [Schedule::Reverse, Schedule::Shuffled(7)] {
        let rt = Emulator {
            schedule,
            ..Emulator::default()
        };
        let got = selftest_on(&rt, "selftest_missing_barrier", n as u32, n, 4 * n as u32).unwrap();
        assert!(got.iter().any(|x| x.is_nan()), "{schedule:?}: {got:?}");
    }
}

/// Every kernel under the shared-memory checks, its threads in reverse or in shuffled order, on
/// the lattice's short cases (every op, dtype, paging and split count): no race, no missing
/// barrier or fence, and outputs that still pass. The checks compare shared memory at every
/// collective, so each kernel takes each order on half of the cases (by seed).
#[test]
fn kernels_pass_the_shared_memory_checks_in_any_thread_order() {
    let short = |c: &Case| (0..c.batch()).all(|b| c.seq_len(b) <= 70);
    // Which cases a run takes: all, or those whose seed has this parity.
    let runs = [
        (Schedule::Reverse, Variant::Simt, Some(1)),
        (Schedule::Shuffled(11), Variant::Simt, Some(0)),
        (Schedule::Reverse, Variant::Mma, Some(0)),
        (Schedule::Shuffled(12), Variant::Mma, Some(1)),
        (Schedule::Reverse, Variant::Wgmma, Some(1)),
        (Schedule::Shuffled(13), Variant::Wgmma, Some(0)),
    ];
    for (schedule, variant, parity) in runs {
        let kernel = EmuKernel::on(Emulator::checked(schedule)).with_variant(variant);
        let tensor_cores = variant != Variant::Simt;
        let (n, failures) = lattice_failures(
            kernel,
            |c| short(c) && parity.is_none_or(|p| c.seed() % 2 == p),
            // A forced tensor-core kernel's profile leaves out f32 (expand included: a profile
            // declares dtypes for the kernel as a whole).
            |c| !(tensor_cores && c.dtype() == DType::F32),
        );
        assert!(n >= 20, "{schedule:?}, {variant:?}: only {n} cases");
        assert!(
            failures.is_empty(),
            "{schedule:?}, {variant:?}: {} of {n} failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
