//! Seeded random device buffers for the benchmark.

use super::*;
use crate::runtime::{Args, FillParams, Launch};
use crate::CudaError;
use gqla_conformance::case::DType;

/// Fill the first `n` elements (of `dtype`) of `buf` with pseudo-random values in amp·[-1, 1)
/// (`fill_*`; deterministic in `seed`).
pub fn fill_random<R: Runtime>(rt: &R, buf: &mut R::Buf<u8>, dtype: DType, n: usize, seed: u32, amp: f32) -> Result<(), CudaError> {
    if n * dtype.size_in_bytes() > R::len(buf) {
        return Err(CudaError::Unsupported(format!(
            "{n} elements of {} in a buffer of {} bytes",
            dtype.name(),
            R::len(buf)
        )));
    }
    let buf = rt.write(buf);
    let p = FillParams {
        p: buf.addr,
        n: n as i64,
        seed,
        amp,
    };
    let launch = Launch {
        grid: (4 * rt.multiprocessors() as u32, 1, 1),
        threads: 256,
        shared_bytes: 0,
    };
    // SAFETY: the parameters are FillParams; the kernel writes elements 0..n of `buf`, which
    // holds them (checked above).
    unsafe {
        rt.launch(
            crate::compile::Entry::new(crate::compile::Family::Fill, dtype),
            launch,
            Args::Fill(&p),
            &[buf],
        )
    }
}
