//! The tensor-core layout probes: one product each, against the f64 product.

use super::*;
use crate::compile::{Entry, Family};
use crate::runtime::{Args, Launch, ProbeParams};
use crate::CudaError;
use gqla_conformance::case::DType;
use gqla_files::tensors::encode_f32;

/// Ways `mma_probe_*` computes the same product (register fragments, then three ldmatrix forms).
pub const MMA_PROBE_WAYS: usize = 4;

/// `n` seeded random values in [-1, 1), rounded to `dtype` (a small LCG: a probe needs varied
/// values, not statistical quality).
fn probe_operand(dtype: DType, seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            dtype.round_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// The f64 product of row-major `a [m][k]` and the first `n` columns of `b [k][ldb]`, row-major.
fn plain_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ldb: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| (0..k).map(|j| a[(i / n) * k + j] as f64 * b[j * ldb + i % n] as f64).sum())
        .collect()
}

/// Run probe kernel `family` (one block of `threads`) on operands `a`, `b` with `d_len` f32 outputs.
fn run_probe<R: Runtime>(
    rt: &R,
    family: Family,
    dtype: DType,
    a: &[f32],
    b: &[f32],
    d_len: usize,
    launch: Launch,
) -> Result<Vec<f32>, CudaError> {
    let (ab, bb) = (rt.upload(&encode_f32(dtype, a))?, rt.upload(&encode_f32(dtype, b))?);
    let mut d = rt.zeros::<f32>(d_len)?;
    let buffers = [rt.read(&ab), rt.read(&bb), rt.write(&mut d)];
    let p = ProbeParams {
        a: buffers[0].addr,
        b: buffers[1].addr,
        d: buffers[2].addr,
    };
    // SAFETY: the probes take ProbeParams and read the fixed-size operands and write the products
    // the callers size `a`, `b` and `d_len` for.
    unsafe { rt.launch(Entry::new(family, dtype), launch, Args::Probe(&p), &buffers) }?;
    drop(buffers);
    rt.synchronize()?;
    rt.download(&d)
}

/// Run `mma_probe_<dtype>` on seeded random 16-bit operands A, B `[16][16]`: (the kernel's
/// MMA_PROBE_WAYS products D `[16][16]`, one after the other; the f64 product of the same rounded
/// operands). Checks the tensor-core fragment and ldmatrix layouts on their own.
pub fn mma_probe<R: Runtime>(rt: &R, dtype: DType, seed: u64) -> Result<(Vec<f32>, Vec<f64>), CudaError> {
    if dtype == DType::F32 {
        return Err(CudaError::Unsupported("mma_probe takes bf16 or f16".into()));
    }
    let a = probe_operand(dtype, seed, 256);
    let b = probe_operand(dtype, seed ^ 0x5eed, 256);
    let launch = Launch {
        grid: (1, 1, 1),
        threads: 32,
        shared_bytes: 3 * 256 * 2,
    };
    let got = run_probe(rt, Family::MmaProbe, dtype, &a, &b, MMA_PROBE_WAYS * 256, launch)?;
    Ok((got, plain_product(&a, &b, 16, 16, 16, 16)))
}

/// The shapes (rows, columns) of the products `wgmma_probe_*` writes one after the other:
/// D[:, 0:32] with B K-major (m64n32k16), then D with B MN-major (m64n64k16, then eight m64n8k16).
pub const WGMMA_PROBE_WAYS: [(usize, usize); 3] = [(64, 32), (64, 64), (64, 64)];

/// Run `wgmma_probe_<dtype>` on seeded random A `[64][32]`, B `[32][64]`: (the kernel's products,
/// the f64 products of the same rounded operands, both laid out as [`WGMMA_PROBE_WAYS`]). Checks
/// the wgmma descriptors, core-matrix layouts and accumulator layout the wgmma kernel uses.
pub fn wgmma_probe<R: Runtime>(rt: &R, dtype: DType, seed: u64) -> Result<(Vec<f32>, Vec<f64>), CudaError> {
    if dtype == DType::F32 {
        return Err(CudaError::Unsupported("wgmma_probe takes bf16 or f16".into()));
    }
    if let Some(need) = Variant::Wgmma.missing(rt) {
        return Err(CudaError::Unsupported(format!("wgmma needs {need}")));
    }
    let a = probe_operand(dtype, seed, 64 * 32);
    let b = probe_operand(dtype, seed ^ 0x5eed, 32 * 64);
    let want: Vec<f64> = WGMMA_PROBE_WAYS
        .iter()
        .flat_map(|&(m, n)| plain_product(&a, &b, m, 32, n, 64))
        .collect();
    let launch = Launch {
        grid: (1, 1, 1),
        threads: 128,
        shared_bytes: (64 * 32 + 32 * 32 + 32 * 64) * 2,
    };
    let got = run_probe(rt, Family::WgmmaProbe, dtype, &a, &b, want.len(), launch)?;
    Ok((got, want))
}

/// The elements of probe products `got` that differ from the f64 products `want` (both laid out
/// as `ways`, (rows, columns) each) by more than 1e-5 of the largest magnitude, as
/// "way W (row R, col C): got vs want".
pub fn probe_mismatches(got: &[f32], want: &[f64], ways: &[(usize, usize)]) -> Vec<String> {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut out = Vec::new();
    if got.len() != want.len() {
        out.push(format!("{} results for {} expected", got.len(), want.len()));
    }
    let mut offset = 0;
    for (way, &(_, cols)) in ways.iter().enumerate() {
        let n = ways[way].0 * cols;
        for i in offset..(offset + n).min(got.len()).min(want.len()) {
            let (g, w) = (got[i], want[i]);
            let close = (g as f64 - w).abs() <= 1e-5 * scale; // false for NaN
            if !close {
                out.push(format!(
                    "way {way} (row {}, col {}): {g} vs {w}",
                    (i - offset) / cols,
                    (i - offset) % cols
                ));
            }
        }
        offset += n;
    }
    out
}

/// [`probe_mismatches`] of an `mma_probe` result: MMA_PROBE_WAYS products of the one `[16][16]`
/// product `want` (way 0: register fragments; 1-3: ldmatrix x4.trans, x2.trans, x4 of the
/// transpose).
pub fn mma_probe_mismatches(got: &[f32], want: &[f64]) -> Vec<String> {
    let all: Vec<f64> = want.iter().copied().cycle().take(MMA_PROBE_WAYS * want.len()).collect();
    probe_mismatches(got, &all, &[(16, 16); MMA_PROBE_WAYS])
}
