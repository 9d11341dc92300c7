//! The roofs a run is measured against: a device-to-device copy and a cuBLAS bf16 product.

use super::*;
use crate::device::Gpu;
use crate::runtime::Runtime;
use crate::{driver, CudaError};
use gqla_conformance::case::DType;

/// Ceilings measured in the same run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// Device-to-device copy, counting bytes read plus bytes written, GB/s.
    pub copy_gbps: f64,
    /// bf16 matrix product through cuBLAS, TFLOP/s (None when cuBLAS cannot be loaded).
    pub bf16_tflops: Option<f64>,
}

impl Gpu {
    /// The copy and matrix-product ceilings.
    pub fn ceilings(&self) -> Result<Ceilings, CudaError> {
        let bytes = 1usize << 31;
        let src = random(self, DType::F32, bytes / 4, 1, 1.0)?;
        let mut dst = unsafe { self.stream.alloc::<u8>(bytes) }.map_err(driver("allocating a buffer"))?;
        let ms = Runtime::time(self, 200.0, 50, &mut || {
            self.stream.memcpy_dtod(&src, &mut dst).map_err(driver("copying on the device"))
        })?
        .median_ms;
        let copy_gbps = 2.0 * bytes as f64 / (ms * 1e-3) / 1e9;
        drop((src, dst));
        Ok(Ceilings {
            copy_gbps,
            bf16_tflops: self.matmul_tflops()?,
        })
    }

    /// An 8192³ bf16 product through cuBLAS (f32 accumulation), or None without cuBLAS.
    fn matmul_tflops(&self) -> Result<Option<f64>, CudaError> {
        use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Ok(None);
        }
        let n = 8192usize;
        let blas = CudaBlas::new(self.stream.clone()).map_err(|source| CudaError::Blas {
            what: "creating a cuBLAS handle".into(),
            source,
        })?;
        let a = random(self, DType::Bf16, n * n, 2, 1.0)?;
        let b = random(self, DType::Bf16, n * n, 3, 1.0)?;
        let mut c = unsafe { self.stream.alloc::<u8>(n * n * 2) }.map_err(driver("allocating a buffer"))?;
        // cuBLAS wants typed slices: view the byte buffers as bf16.
        let size = || CudaError::Unsupported("buffer size".into());
        // SAFETY: each buffer holds n·n bf16 values (2 bytes each), written by fill_random.
        let (a, b, mut c) = unsafe {
            (
                a.transmute::<half::bf16>(n * n).ok_or_else(size)?,
                b.transmute::<half::bf16>(n * n).ok_or_else(size)?,
                c.transmute_mut::<half::bf16>(n * n).ok_or_else(size)?,
            )
        };
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: n as i32,
            k: n as i32,
            alpha: half::bf16::ONE,
            lda: n as i32,
            ldb: n as i32,
            beta: half::bf16::ZERO,
            ldc: n as i32,
        };
        let ms = Runtime::time(self, 500.0, 20, &mut || {
            // SAFETY: the three n×n matrices are allocated above.
            unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|source| CudaError::Blas {
                what: "running cuBLAS gemm".into(),
                source,
            })
        })?
        .median_ms;
        Ok(Some(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12))
    }
}
