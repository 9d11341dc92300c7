//! One benchmark point: caches filled on the device, every attention kernel timed, and each
//! output spot-checked against the f64 reference.

use super::*;
use crate::launch::{self, BlockTable, Decode, Guarded, KeySource, Segment, Variant, Workspace};
use crate::runtime::Runtime;
use crate::CudaError;
use gqla_conformance::case::DType;
use gqla_reference::attention::{attend_row, causal_ranges};
use ndarray::{s, Array1, Array2};
use std::collections::hash_map::{Entry, HashMap};

/// A buffer of `n` elements of `dtype` holding pseudo-random values in amp·[-1, 1).
pub fn random<R: Runtime>(rt: &R, dtype: DType, n: usize, seed: u32, amp: f32) -> Result<R::Buf<u8>, CudaError> {
    let mut buf = rt.zeros::<u8>(n.max(1) * dtype.size_in_bytes())?;
    launch::fill_random(rt, &mut buf, dtype, n, seed, amp)?;
    Ok(buf)
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
    geo: &ModelGeometry,
    path: DecodePath,
    dtype: DType,
    (sqs, variants): (&[usize], &[Variant]),
    shape: Shape,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), CudaError> {
    let Shape { batch, context, page } = shape;
    let pages = PageTable::new(shape);
    let slots = pages.slots;
    let (key, shared, value) = match path {
        DecodePath::Absorb => (random(rt, dtype, slots * (geo.dims.d_c() + geo.dims.d_r()), 11, 1.0)?, None, None),
        DecodePath::Gqa => (
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
            DecodePath::Absorb => KeySource {
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
            DecodePath::Gqa => KeySource {
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
            paging: BlockTable {
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
            let stream = if path == DecodePath::Absorb {
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
        geo: &ModelGeometry,
        path: DecodePath,
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
            DecodePath::Absorb => Self::Absorb {
                latent: rows(key, geo.dims.d_c() + geo.dims.d_r())?,
            },
            DecodePath::Gqa => Self::Gqa {
                key: rows(key, geo.dims.g() * geo.dims.d_n())?,
                rope: rows(rope.ok_or_else(missing)?, geo.dims.d_r())?,
                value: rows(value.ok_or_else(missing)?, geo.dims.g() * geo.dims.d_v())?,
            },
        })
    }

    /// Keys [context, d_k] and values [context, d_v] of `stream`, as the reference reads them.
    fn stream(&self, geo: &ModelGeometry, stream: usize) -> (Array2<f64>, Array2<f64>) {
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
