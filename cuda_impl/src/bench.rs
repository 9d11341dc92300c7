//! The decode benchmark: both paths over a grid of geometries, s_q, batch and context, timed with
//! CUDA events on a cold L2 (median of runs, [`crate::timing`]), against ceilings measured in the
//! same run (a device-to-device copy and a large bf16 matrix product through cuBLAS). Caches are
//! contiguous, or paged with the pages of all sequences shuffled over the pool, and filled with
//! pseudo-random values on the device (never zeros). Every timed kernel's output is spot-checked
//! against the f64 reference (two query rows of the last sequence, whose contiguous cache sits at
//! the largest offsets), since the benchmark's contexts, batches and split counts reach past the
//! conformance lattice.

use crate::device::Gpu;
use crate::launch::{self, Decode, Guarded, KeySource, Paging, Segment, Variant, Workspace};
use crate::runtime::Runtime;
use crate::timing::Timing;
use crate::{driver, CudaError};
use gqla_conformance::case::DType;
use gqla_reference::attention::{attend_row, causal_ranges};
use gqla_reference::config::LatentDims;
use ndarray::{s, Array1, Array2};
use std::collections::hash_map::{Entry, HashMap};
use std::fmt::Write;

/// The largest relative L2 error of a spot-checked output row against the f64 reference: 16-bit
/// outputs and probabilities (2^-8 relative rounding each) stay well below it, while a wrong
/// address, mask or split merge gives errors of order 1.
pub const CHECK_TOLERANCE: f64 = 2e-2;

/// A model's attention geometry, by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub name: &'static str,
    pub dims: LatentDims,
}

impl Geometry {
    /// LLaMA-3-8B converted to GQLA.
    pub fn llama3_8b() -> Self {
        Self::of("llama3-8b-gqla", 32)
    }
    /// DeepSeek-V3 with 8 groups.
    pub fn deepseek_v3() -> Self {
        Self::of("deepseek-v3-gqla", 128)
    }
    /// `h` query heads over 8 groups, d_c 512, d_n = d_v = 128, d_r 64.
    fn of(name: &'static str, h: usize) -> Self {
        let dims = LatentDims::new(h, 8, 512, 128, 64, 128).expect("a valid built-in geometry");
        Self { name, dims }
    }
    /// The geometries the benchmark knows.
    pub fn all() -> Vec<Geometry> {
        vec![Self::llama3_8b(), Self::deepseek_v3()]
    }
    /// One of [`Geometry::all`] by its name.
    pub fn by_name(name: &str) -> Option<Geometry> {
        Self::all().into_iter().find(|g| g.name == name)
    }
}

/// Which decode path: the reference's.
pub use gqla_reference::decode::DecodePath as Path;

/// One decode step's minimal traffic and arithmetic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// Each cache byte read once, queries read, outputs and LSEs written.
    pub bytes: f64,
    /// 2 multiply-adds per (query row, key, key or value element).
    pub flops: f64,
}

impl Geometry {
    /// Cache elements per token on `path`, measured on a reference cache allocated with this
    /// geometry (the layout the kernels read: the rope key stored once on the GQA path).
    pub fn cache_elems(&self, path: Path) -> usize {
        let sizes = gqla_reference::cache::CacheSizes::measure::<half::bf16>(&self.dims);
        match path {
            Path::Absorb => sizes.absorb,
            Path::Gqa => sizes.gqa_rope_once,
        }
        .elements_per_token
    }
    /// Query and output width per head on `path`.
    pub fn widths(&self, path: Path) -> (usize, usize) {
        match path {
            Path::Absorb => (self.dims.d_c() + self.dims.d_r(), self.dims.d_c()),
            Path::Gqa => (self.dims.d_n() + self.dims.d_r(), self.dims.d_v()),
        }
    }
    pub fn work(&self, path: Path, dtype: DType, sq: usize, batch: usize, context: usize) -> Work {
        let eb = dtype.size_in_bytes() as f64;
        let (dk, dv) = self.widths(path);
        let rows = (batch * sq * self.dims.h()) as f64;
        let bytes = (batch * context * self.cache_elems(path)) as f64 * eb + rows * (dk + dv) as f64 * eb + rows * 4.0;
        let flops = 2.0 * rows * context as f64 * (dk + dv) as f64;
        Work { bytes, flops }
    }
}

/// Ceilings measured in the same run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// Device-to-device copy, counting bytes read plus bytes written, GB/s.
    pub copy_gbps: f64,
    /// bf16 matrix product through cuBLAS, TFLOP/s (None when cuBLAS cannot be loaded).
    pub bf16_tflops: Option<f64>,
}

/// One measured point.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub geometry: &'static str,
    pub path: Path,
    pub sq: usize,
    pub batch: usize,
    pub context: usize,
    /// Tokens per cache page (None: contiguous).
    pub page: Option<usize>,
    pub splits: usize,
    /// The attention kernel timed.
    pub variant: Variant,
    pub timing: Timing,
    pub work: Work,
    /// Spot check: the largest relative error of the checked output rows (NaN or infinite when
    /// the kernel wrote a non-finite value).
    pub check_err: f64,
}

impl Row {
    /// The measured point in one line: geometry, path, kernel, s_q, batch, context (and page).
    pub fn label(&self) -> String {
        format!(
            "{} {} {} s_q={} batch={} context={}{}",
            self.geometry,
            self.path.name(),
            self.variant.name(),
            self.sq,
            self.batch,
            self.context,
            self.page.map_or(String::new(), |p| format!(" page={p}"))
        )
    }
    /// The median time, ms.
    pub fn ms(&self) -> f64 {
        self.timing.median_ms
    }
    /// Whether the spot check passed.
    pub fn checked(&self) -> bool {
        self.check_err <= CHECK_TOLERANCE
    }
    pub fn gbps(&self) -> f64 {
        self.work.bytes / (self.ms() * 1e-3) / 1e9
    }
    pub fn tflops(&self) -> f64 {
        self.work.flops / (self.ms() * 1e-3) / 1e12
    }
}

/// The grid to time.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub geometries: Vec<Geometry>,
    pub paths: Vec<Path>,
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
            geometries: Geometry::all(),
            paths: Path::ALL.to_vec(),
            sqs: vec![1, 2],
            batches: vec![1, 16, 64, 128],
            contexts: vec![1024, 4096, 16384, 65536],
            page: None,
            dtype: DType::Bf16,
            variants: vec![Variant::Mma, Variant::Wgmma],
        }
    }
}

/// A buffer of `n` elements of `dtype` holding pseudo-random values in amp·[-1, 1).
pub fn random<R: Runtime>(rt: &R, dtype: DType, n: usize, seed: u32, amp: f32) -> Result<R::Buf<u8>, CudaError> {
    let mut buf = rt.zeros::<u8>(n.max(1) * dtype.size_in_bytes())?;
    launch::fill_random(rt, &mut buf, dtype, n, seed, amp)?;
    Ok(buf)
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

/// The batch, context and cache paging of one benchmark point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub context: usize,
    /// Tokens per cache page (None: contiguous).
    pub page: Option<usize>,
}

/// Where each sequence's tokens live: sequence b's token t is slot
/// `table[b · max_pages + t / page] · page + t % page`.
#[derive(Clone, Debug, PartialEq)]
pub struct PageTable {
    pub table: Vec<i32>,
    pub max_pages: usize,
    pub page: usize,
    /// Slots of the cache buffers.
    pub slots: usize,
}

impl PageTable {
    /// Contiguous caches are one page of `context` tokens per sequence, in order. Paged caches
    /// spread each sequence's pages over the pool in a seeded random order, as an allocator that
    /// has served many requests would.
    pub fn new(shape: Shape) -> Self {
        let Shape { batch, context, page } = shape;
        match page {
            None => Self {
                table: (0..batch as i32).collect(),
                max_pages: 1,
                page: context.max(1),
                slots: batch * context,
            },
            Some(page) => {
                use rand::seq::SliceRandom;
                use rand::SeedableRng;
                let per = context.div_ceil(page);
                let mut table: Vec<i32> = (0..(batch * per) as i32).collect();
                table.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x7061_6765));
                Self {
                    table,
                    max_pages: per,
                    page,
                    slots: batch * per * page,
                }
            }
        }
    }

    /// The runs of consecutive slots that hold tokens `0..len` of sequence b, in token order:
    /// (first slot, length) per page.
    pub fn runs(&self, b: usize, len: usize) -> Vec<(usize, usize)> {
        (0..len.div_ceil(self.page))
            .map(|p| {
                let slot = self.table[b * self.max_pages + p] as usize * self.page;
                (slot, self.page.min(len - p * self.page))
            })
            .collect()
    }
}

/// Time one (geometry, path) at every s_q and attention kernel of `(sqs, variants)` for one
/// batch, context and paging.
pub fn bench_point<R: Runtime>(
    rt: &R,
    geo: &Geometry,
    path: Path,
    dtype: DType,
    (sqs, variants): (&[usize], &[Variant]),
    shape: Shape,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), CudaError> {
    let Shape { batch, context, page } = shape;
    let pages = PageTable::new(shape);
    let slots = pages.slots;
    let (key, shared, value) = match path {
        Path::Absorb => (random(rt, dtype, slots * (geo.dims.d_c() + geo.dims.d_r()), 11, 1.0)?, None, None),
        Path::Gqa => (
            random(rt, dtype, slots * geo.dims.g() * geo.dims.d_n(), 12, 1.0)?,
            Some(random(rt, dtype, slots * geo.dims.d_r(), 13, 1.0)?),
            Some(random(rt, dtype, slots * geo.dims.g() * geo.dims.d_v(), 14, 1.0)?),
        ),
    };
    let lens = rt.upload(&vec![context as i32; batch])?;
    let table = rt.upload(&pages.table)?;
    let (dk, dv) = geo.widths(path);
    let sq_max = sqs.iter().copied().max().unwrap_or(1);
    let q = random(rt, dtype, batch * sq_max * geo.dims.h() * dk, 15, 1.0)?;
    let mut out = rt.zeros::<u8>(batch * sq_max * geo.dims.h() * dv * dtype.size_in_bytes())?;
    let mut lse = rt.zeros::<u8>(batch * sq_max * geo.dims.h() * 4)?;
    // The last sequence's keys and values per stream, in f64, fetched once for the spot checks.
    let mut host: Option<HostSeq> = None;
    let mut streams: HashMap<usize, (Array2<f64>, Array2<f64>)> = HashMap::new();
    for (&sq, &variant) in sqs.iter().flat_map(|s| variants.iter().map(move |v| (s, v))) {
        let keys = match path {
            Path::Absorb => KeySource {
                key: Segment {
                    buf: &key,
                    row_stride: geo.dims.d_c() + geo.dims.d_r(),
                    head_stride: 0,
                    width: geo.dims.d_c() + geo.dims.d_r(),
                },
                shared_key: None,
                value: None,
                dv: geo.dims.d_c(),
                streams: 1,
            },
            Path::Gqa => KeySource {
                key: Segment {
                    buf: &key,
                    row_stride: geo.dims.g() * geo.dims.d_n(),
                    head_stride: geo.dims.d_n(),
                    width: geo.dims.d_n(),
                },
                shared_key: shared.as_ref().map(|s| Segment {
                    buf: s,
                    row_stride: geo.dims.d_r(),
                    head_stride: 0,
                    width: geo.dims.d_r(),
                }),
                value: value.as_ref().map(|v| Segment {
                    buf: v,
                    row_stride: geo.dims.g() * geo.dims.d_v(),
                    head_stride: geo.dims.d_v(),
                    width: geo.dims.d_v(),
                }),
                dv: geo.dims.d_v(),
                streams: geo.dims.g(),
            },
        };
        let scale = 1.0 / ((geo.dims.d_n() + geo.dims.d_r()) as f32).sqrt();
        let mut call = Decode {
            dtype,
            q: &q,
            keys,
            paging: Paging {
                seq_lens: &lens,
                block_table: &table,
                max_pages: pages.max_pages,
                page: pages.page,
            },
            batch,
            sq,
            h: geo.dims.h(),
            scale,
            num_splits: 1,
            variant,
            out: Guarded { buf: &mut out, margin: 0 },
            lse: Guarded { buf: &mut lse, margin: 0 },
        };
        call.num_splits = call.default_splits(rt, context);
        let splits = call.num_splits;
        let mut ws: Option<Workspace<R>> = if splits > 1 {
            Some(launch::workspace(rt, batch * sq * geo.dims.h(), dv, splits)?)
        } else {
            None
        };
        launch::check_addressing(
            &vec![context as i32; batch],
            &pages.table,
            pages.max_pages,
            pages.page,
            call.cache_slots(),
        )?;
        // SAFETY: the addressing was checked above; the buffers outlive the timed runs, which
        // `time` waits for.
        let timing = rt.time(300.0, 100, &mut || unsafe { launch::decode(rt, &mut call, ws.as_mut()) })?;
        let mut check_err = 0.0f64;
        for (j, head) in [(0, 0), (sq - 1, geo.dims.h() - 1)] {
            let stream = if path == Path::Absorb {
                0
            } else {
                head / (geo.dims.h() / geo.dims.g())
            };
            if let Entry::Vacant(e) = streams.entry(stream) {
                let seq = match &mut host {
                    Some(seq) => seq,
                    none => none.insert(HostSeq::fetch(
                        rt,
                        dtype,
                        (&key, shared.as_ref(), value.as_ref()),
                        geo,
                        path,
                        &pages.runs(batch - 1, context),
                    )?),
                };
                e.insert(seq.stream(geo, stream));
            }
            let (keys, values) = &streams[&stream];
            let row = ((batch - 1) * sq + j) * geo.dims.h() + head;
            let qr = Array1::from(fetch(rt, &q, dtype, row * dk, dk)?);
            let want = attend_row(
                qr.view(),
                keys.view(),
                values.view(),
                scale as f64,
                causal_ranges(sq, context, None)[j],
            )
            .0;
            let got = Array1::from(fetch(rt, &out, dtype, row * dv, dv)?);
            let err = (&got - &want).mapv(|x| x * x).sum().sqrt() / want.mapv(|x| x * x).sum().sqrt();
            check_err = if err.is_finite() { check_err.max(err) } else { f64::INFINITY };
        }
        on_row(Row {
            geometry: geo.name,
            path,
            sq,
            batch,
            context,
            page,
            splits,
            variant,
            timing,
            work: geo.work(path, dtype, sq, batch, context),
            check_err,
        });
    }
    Ok(())
}

/// `len` elements of `dtype` from element `start` of `buf`, as f64.
fn fetch<R: Runtime>(rt: &R, buf: &R::Buf<u8>, dtype: DType, start: usize, len: usize) -> Result<Vec<f64>, CudaError> {
    let eb = dtype.size_in_bytes();
    let bytes = rt.download_range(buf, start * eb, len * eb)?;
    Ok(launch::from_bytes(dtype, &bytes).into_iter().map(f64::from).collect())
}

/// One sequence's cache on the host, in f64, one row per key, downloaded once per benchmark point.
enum HostSeq {
    /// The latent [c; k^R].
    Absorb { latent: Array2<f64> },
    /// All groups' keys, the rope key, all groups' values.
    Gqa {
        key: Array2<f64>,
        rope: Array2<f64>,
        value: Array2<f64>,
    },
}

/// A point's cache buffers: key, rope key (GQA), values (GQA).
type CacheBufs<'a, R> = (
    &'a <R as Runtime>::Buf<u8>,
    Option<&'a <R as Runtime>::Buf<u8>>,
    Option<&'a <R as Runtime>::Buf<u8>>,
);

impl HostSeq {
    fn fetch<R: Runtime>(
        rt: &R,
        dtype: DType,
        (key, rope, value): CacheBufs<R>,
        geo: &Geometry,
        path: Path,
        runs: &[(usize, usize)],
    ) -> Result<Self, CudaError> {
        // The sequence's tokens in order, gathered page by page ([`PageTable::runs`]).
        let rows = |buf: &R::Buf<u8>, width: usize| -> Result<Array2<f64>, CudaError> {
            let mut v = Vec::new();
            for &(slot, len) in runs {
                v.extend(fetch(rt, buf, dtype, slot * width, len * width)?);
            }
            let tokens = v.len() / width;
            Ok(Array2::from_shape_vec((tokens, width), v).expect("tokens × width elements"))
        };
        let missing = || CudaError::Unsupported("GQA cache without rope keys or values".into());
        Ok(match path {
            Path::Absorb => Self::Absorb {
                latent: rows(key, geo.dims.d_c() + geo.dims.d_r())?,
            },
            Path::Gqa => Self::Gqa {
                key: rows(key, geo.dims.g() * geo.dims.d_n())?,
                rope: rows(rope.ok_or_else(missing)?, geo.dims.d_r())?,
                value: rows(value.ok_or_else(missing)?, geo.dims.g() * geo.dims.d_v())?,
            },
        })
    }

    /// Keys [context, d_k] and values [context, d_v] of `stream`, as the reference reads them.
    fn stream(&self, geo: &Geometry, stream: usize) -> (Array2<f64>, Array2<f64>) {
        match self {
            Self::Absorb { latent } => (latent.clone(), latent.slice(s![.., ..geo.dims.d_c()]).to_owned()),
            Self::Gqa { key, rope, value } => {
                let k_nope = key.slice(s![.., stream * geo.dims.d_n()..(stream + 1) * geo.dims.d_n()]);
                (
                    ndarray::concatenate![ndarray::Axis(1), k_nope, rope.view()],
                    value
                        .slice(s![.., stream * geo.dims.d_v()..(stream + 1) * geo.dims.d_v()])
                        .to_owned(),
                )
            }
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

/// The run in the planner's format, for `gqla plan --validate`: each (geometry, path, s_q, batch,
/// context) once, at the time of its fastest tensor-core kernel (of any kernel when none ran),
/// since a runtime serves each path with its best kernel.
pub fn measured_run(device: &str, grid: &Grid, rows: &[Row], ceilings: &Ceilings) -> crate::plan::MeasuredRun {
    use crate::plan::{MeasuredPoint, MeasuredRun, Step};
    let any_tc = rows.iter().any(|r| r.variant.tensor_cores());
    let mut best: Vec<&Row> = Vec::new();
    for r in rows.iter().filter(|r| r.variant.tensor_cores() || !any_tc) {
        let key = |x: &Row| (x.geometry, x.path, x.sq, x.batch, x.context);
        match best.iter_mut().find(|b| key(b) == key(r)) {
            Some(b) if r.ms() < b.ms() => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    let points = best
        .into_iter()
        .filter_map(|r| {
            let geo = grid.geometries.iter().find(|g| g.name == r.geometry)?;
            Some(MeasuredPoint {
                dims: geo.dims,
                path: r.path,
                step: Step {
                    sq: r.sq,
                    batch: r.batch,
                    context: r.context,
                },
                seconds: r.ms() * 1e-3,
            })
        })
        .collect();
    MeasuredRun {
        device: device.into(),
        copy_gbps: ceilings.copy_gbps,
        bf16_tflops: ceilings.bf16_tflops,
        points,
    }
}

/// The results as a markdown table, with the percentage of each measured ceiling.
pub fn table(rows: &[Row], ceilings: &Ceilings) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Ceilings measured in this run: copy {:.0} GB/s (read + write), bf16 matrix product {}.\n",
        ceilings.copy_gbps,
        ceilings
            .bf16_tflops
            .map_or("not measured (no cuBLAS)".to_string(), |t| format!("{t:.0} TFLOP/s"))
    );
    let _ = writeln!(
        s,
        "| geometry | path | kernel | s_q | batch | context | page | splits | time (µs) | p10–p90 (µs) | GB/s | % copy | TFLOP/s | % bf16 mma | FLOP/byte | check (rel. err) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1}–{:.1} | {:.0} | {:.1} | {:.2} | {} | {:.1} | {} {:.1e} |",
            r.geometry,
            r.path.name(),
            r.variant.name(),
            r.sq,
            r.batch,
            r.context,
            r.page.map_or("-".to_string(), |p| p.to_string()),
            r.splits,
            r.ms() * 1e3,
            r.timing.p10_ms * 1e3,
            r.timing.p90_ms * 1e3,
            r.gbps(),
            100.0 * r.gbps() / ceilings.copy_gbps,
            r.tflops(),
            ceilings
                .bf16_tflops
                .map_or("-".into(), |t| format!("{:.1}", 100.0 * r.tflops() / t)),
            r.work.flops / r.work.bytes,
            if r.checked() { "ok" } else { "FAILED" },
            r.check_err,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner sees each point once, at its fastest tensor-core kernel's time; SIMT rows count
    /// only when no tensor-core kernel ran.
    #[test]
    fn measured_run_takes_the_fastest_tensor_core_kernel() {
        let grid = Grid::full();
        let row = |path, variant, ms| Row {
            geometry: Geometry::llama3_8b().name,
            path,
            sq: 1,
            batch: 16,
            context: 4096,
            page: None,
            splits: 1,
            variant,
            timing: Timing::single(ms),
            work: Geometry::llama3_8b().work(path, DType::Bf16, 1, 16, 4096),
            check_err: 0.0,
        };
        let ceilings = Ceilings {
            copy_gbps: 3000.0,
            bf16_tflops: Some(700.0),
        };
        let rows = [
            row(Path::Absorb, Variant::Mma, 0.30),
            row(Path::Absorb, Variant::Wgmma, 0.20),
            row(Path::Absorb, Variant::Simt, 0.10),
            row(Path::Gqa, Variant::Mma, 0.25),
            row(Path::Gqa, Variant::Wgmma, 0.40),
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
                        // The kernel's slot_of, as decode.cu computes it.
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
        for g in Geometry::all() {
            assert_eq!(Geometry::by_name(g.name), Some(g));
        }
        for p in Path::ALL {
            assert_eq!(Path::from_name(p.name()), Some(p));
        }
        assert_eq!(Geometry::by_name("llama"), None);
        assert_eq!(Path::from_name("mla"), None);
    }

    #[test]
    fn work_counts() {
        let w = Geometry::llama3_8b().work(Path::Absorb, DType::Bf16, 1, 1, 1024);
        let q_out = 32.0 * (576.0 + 512.0) * 2.0 + 32.0 * 4.0;
        assert_eq!(w.bytes, 1024.0 * 576.0 * 2.0 + q_out);
        assert_eq!(w.flops, 2.0 * 32.0 * 1024.0 * (576.0 + 512.0));
        let g = Geometry::deepseek_v3().work(Path::Gqa, DType::Bf16, 2, 4, 100);
        assert_eq!(Geometry::deepseek_v3().cache_elems(Path::Gqa), 8 * 128 + 64 + 8 * 128);
        assert_eq!(g.flops, 2.0 * (4 * 2 * 128) as f64 * 100.0 * (192.0 + 128.0));
    }
}
