//! The decode benchmark: both paths over a grid of geometries, s_q, batch and context, timed with
//! CUDA events on a cold L2 (median of runs, [`crate::timing`]), against ceilings measured in the
//! same run (a device-to-device copy and a large bf16 matrix product through cuBLAS). Caches are
//! contiguous, or paged with the pages of all sequences shuffled over the pool, and filled with
//! pseudo-random values on the device (never zeros). Every timed kernel's output is spot-checked
//! against the f64 reference (two query rows of the last sequence, whose contiguous cache sits at
//! the largest offsets), since the benchmark's contexts, batches and split counts reach past the
//! conformance lattice.
//!
//! One file per concern: [`geometry`] (what is decoded and its minimal work), [`point`] (one
//! timed and spot-checked point), [`ceilings`] (copy and GEMM roofs), [`report`] (rows, the
//! table and the measured-run file).

mod ceilings;
mod geometry;
mod point;
mod report;

pub use ceilings::Ceilings;
pub use geometry::{ModelGeometry, Work};
pub use gqla_reference::decode::DecodePath;
pub use point::{bench_point, random, PageTable, Shape};
pub use report::{measured_run, table, Row};

use crate::launch::Variant;
use crate::runtime::Runtime;
use crate::CudaError;
use gqla_conformance::case::DType;

/// The largest relative L2 error of a spot-checked output row against the f64 reference: 16-bit
/// outputs and probabilities (2^-8 relative rounding each) stay well below it, while a wrong
/// address, mask or split merge gives errors of order 1.
pub const CHECK_TOLERANCE: f64 = 2e-2;

/// The grid to time.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub geometries: Vec<ModelGeometry>,
    pub paths: Vec<DecodePath>,
    pub sqs: Vec<usize>,
    pub batches: Vec<usize>,
    pub contexts: Vec<usize>,
    /// Tokens per cache page (None: contiguous caches).
    pub page: Option<usize>,
    pub dtype: DType,
    /// Attention kernels to time (each path's time for the planner is its fastest tensor-core
    /// kernel's).
    pub variants: Vec<Variant>,
}

impl Grid {
    /// The grid: both geometries and paths, s_q {1, 2}, batch {1, 16, 64, 128}, context
    /// {1k, 4k, 16k, 64k}, bf16.
    pub fn full() -> Self {
        Self {
            geometries: ModelGeometry::all(),
            paths: DecodePath::ALL.to_vec(),
            sqs: vec![1, 2],
            batches: vec![1, 16, 64, 128],
            contexts: vec![1024, 4096, 16384, 65536],
            page: None,
            dtype: DType::Bf16,
            variants: vec![Variant::Mma, Variant::Wgmma],
        }
    }
}

/// Time the whole grid, calling `on_row` as each point is measured.
pub fn bench<R: Runtime>(rt: &R, grid: &Grid, on_row: &mut dyn FnMut(Row)) -> Result<(), CudaError> {
    for geo in &grid.geometries {
        for &path in &grid.paths {
            for &batch in &grid.batches {
                for &context in &grid.contexts {
                    let shape = Shape {
                        batch,
                        context,
                        page: grid.page,
                    };
                    bench_point(rt, geo, path, grid.dtype, (&grid.sqs, &grid.variants), shape, on_row)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::Timing;

    /// The planner sees each point once, at its fastest tensor-core kernel's time; SIMT rows count
    /// only when no tensor-core kernel ran.
    #[test]
    fn measured_run_takes_the_fastest_tensor_core_kernel() {
        let grid = Grid::full();
        let row = |path, variant, ms| Row {
            geometry: ModelGeometry::llama3_8b().name,
            path,
            sq: 1,
            batch: 16,
            context: 4096,
            page: None,
            splits: 1,
            variant,
            timing: Timing::single(ms),
            work: ModelGeometry::llama3_8b().work(path, DType::Bf16, 1, 16, 4096),
            check_err: 0.0,
        };
        let ceilings = Ceilings {
            copy_gbps: 3000.0,
            bf16_tflops: Some(700.0),
        };
        let rows = [
            row(DecodePath::Absorb, Variant::Mma, 0.30),
            row(DecodePath::Absorb, Variant::Wgmma, 0.20),
            row(DecodePath::Absorb, Variant::Simt, 0.10),
            row(DecodePath::Gqa, Variant::Mma, 0.25),
            row(DecodePath::Gqa, Variant::Wgmma, 0.40),
        ];
        let run = measured_run("test", &grid, &rows, &ceilings);
        let secs: Vec<f64> = run.points.iter().map(|p| p.seconds * 1e3).collect();
        assert_eq!(secs, vec![0.20, 0.25]);
        let simt_only = measured_run("test", &grid, &rows[2..3], &ceilings);
        assert_eq!(simt_only.points.len(), 1);
    }

    /// The minimal bytes come from the cache layout: 576 elements per token on the absorb path,
    /// G(d_n + d_v) + d_r on the GQA path.
    /// Every token of every sequence has its own slot inside the buffers, contiguous or paged, and
    /// the runs of a sequence cover its tokens in order.
    #[test]
    fn page_tables_place_every_token_once() {
        for page in [None, Some(1), Some(16), Some(64), Some(100)] {
            let shape = Shape {
                batch: 3,
                context: 250,
                page,
            };
            let pt = PageTable::new(shape);
            let mut seen = vec![false; pt.slots];
            for b in 0..3 {
                let runs = pt.runs(b, 250);
                assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), 250, "{page:?}");
                let mut t = 0;
                for (slot, len) in runs {
                    for i in 0..len {
                        // The kernel's slot_of, as kernels/common.cuh computes it.
                        let tok = t + i;
                        let kernel_slot = pt.table[b * pt.max_pages + tok / pt.page] as usize * pt.page + tok % pt.page;
                        assert_eq!(kernel_slot, slot + i, "{page:?}");
                        assert!(!std::mem::replace(&mut seen[slot + i], true), "{page:?}: slot used twice");
                    }
                    t += len;
                }
            }
        }
        // Paged pools are shuffled: not the identity.
        let pt = PageTable::new(Shape {
            batch: 4,
            context: 1024,
            page: Some(64),
        });
        assert_ne!(pt.table, (0..64).collect::<Vec<i32>>());
    }

    #[test]
    fn names_round_trip() {
        for g in ModelGeometry::all() {
            assert_eq!(ModelGeometry::by_name(g.name), Some(g));
        }
        for p in DecodePath::ALL {
            assert_eq!(DecodePath::from_name(p.name()), Some(p));
        }
        assert_eq!(ModelGeometry::by_name("llama"), None);
        assert_eq!(DecodePath::from_name("mla"), None);
    }

    #[test]
    fn work_counts() {
        let w = ModelGeometry::llama3_8b().work(DecodePath::Absorb, DType::Bf16, 1, 1, 1024);
        let q_out = 32.0 * (576.0 + 512.0) * 2.0 + 32.0 * 4.0;
        assert_eq!(w.bytes, 1024.0 * 576.0 * 2.0 + q_out);
        assert_eq!(w.flops, 2.0 * 32.0 * 1024.0 * (576.0 + 512.0));
        let g = ModelGeometry::deepseek_v3().work(DecodePath::Gqa, DType::Bf16, 2, 4, 100);
        assert_eq!(ModelGeometry::deepseek_v3().cache_elems(DecodePath::Gqa), 8 * 128 + 64 + 8 * 128);
        assert_eq!(g.flops, 2.0 * (4 * 2 * 128) as f64 * 100.0 * (192.0 + 128.0));
    }
}
