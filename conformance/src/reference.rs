//! The pinned reference of every operation, in two precisions:
//! - [`Precision::Exact`]: f64 arithmetic on the (already rounded) inputs, the ground truth;
//! - [`Precision::Naive`]: a straightforward kernel in the case's dtype — scores, probabilities
//!   and outputs rounded to the dtype, accumulation in f32 — whose error against the truth sets
//!   the scale of the tolerance. It never looks at a kernel's output.
//!
//! Decode semantics (all decode ops): sequence b holds ctx_b + s_q keys; new token j sees keys
//! t ≤ ctx_b + j (bottom-right causal); o = Σ_t softmax(scale · q·k_t) v_t; LSE in natural log;
//! a row with no visible key gives o = 0 and LSE = −∞.

use crate::case::{CacheOp, Case, DType, DecodeOp, GroupCacheLayout, OpKind};
use crate::definition::TensorName;
use crate::inputs::CaseInputs;
use crate::profile::ScaleRead;
use std::ops::Range;

/// How a reference computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    Exact,
    /// The naive kernel in this dtype; an FP8 cache read with f32 scales.
    Naive(DType),
    /// The naive kernel in this dtype, reading an FP8 cache's scales as a kernel's profile
    /// declares (`fp8.scale_read`).
    NaiveReading(DType, ScaleRead),
}

/// Output tensors by name, as f64.
pub type Tensors = Vec<(TensorName, Vec<f64>)>;

/// The keys and values group `g` (absorb: the one latent stream) sees in sequence b, one row per
/// cached token: keys [n, key width] and values [n, d_out], row-major. `read(name, t, cols)` is
/// columns `cols` of row t of cache component `name` as this reference reads them (exactly, or as
/// a naive f32 kernel does).
fn group_rows<T: Copy, R: AsRef<[T]>>(
    op: DecodeOp,
    inputs: &CaseInputs,
    b: usize,
    g: usize,
    read: impl Fn(TensorName, usize, Range<usize>) -> R,
) -> (Vec<T>, Vec<T>) {
    let c = &inputs.case;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for t in 0..c.seq_len(b) {
        match op {
            DecodeOp::Absorb => {
                let row = read(TensorName::Kv, t, 0..c.dc() + c.dr());
                keys.extend_from_slice(row.as_ref());
                values.extend_from_slice(&row.as_ref()[..c.dc()]);
            }
            DecodeOp::Gqa => {
                values.extend_from_slice(read(TensorName::V, t, g * c.dv()..(g + 1) * c.dv()).as_ref());
                match c.layout() {
                    GroupCacheLayout::RopeOnce => {
                        keys.extend_from_slice(read(TensorName::KNope, t, g * c.dn()..(g + 1) * c.dn()).as_ref());
                        keys.extend_from_slice(read(TensorName::KRope, t, 0..c.dr()).as_ref());
                    }
                    GroupCacheLayout::RopePerGroup => {
                        let w = c.dn() + c.dr();
                        keys.extend_from_slice(read(TensorName::K, t, g * w..(g + 1) * w).as_ref())
                    }
                }
            }
            DecodeOp::PlainGqa => {
                keys.extend_from_slice(read(TensorName::K, t, g * c.dn()..(g + 1) * c.dn()).as_ref());
                values.extend_from_slice(read(TensorName::V, t, g * c.dv()..(g + 1) * c.dv()).as_ref());
            }
        }
    }
    (keys, values)
}

/// The reference outputs of a case (the suite's conventions: an empty row gives out = 0 and
/// LSE = −∞, natural log, f32).
pub fn compute(inputs: &CaseInputs, precision: Precision) -> Tensors {
    match inputs.case.op().kind() {
        OpKind::Cache(CacheOp::Expand) => expand(inputs, precision),
        OpKind::Decode(op) => decode(op, inputs, precision),
    }
}

fn decode(op: DecodeOp, inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c: &Case = &inputs.case;
    let (batch, sq, h, dout) = (c.batch(), c.sq(), c.h(), c.out_width());
    let width = c.q_width();
    // Heads per key stream: all of them for the absorb path (one latent stream), H/G otherwise.
    let (streams, per) = match op {
        DecodeOp::Absorb => (1, h),
        DecodeOp::Gqa | DecodeOp::PlainGqa => (c.g(), h / c.g()),
    };
    let mut out = vec![0.0; batch * sq * h * dout];
    let mut lse = vec![0.0; batch * sq * h];
    for b in 0..batch {
        for g in 0..streams {
            let heads = g * per..(g + 1) * per;
            // Every query row of the group in this sequence, (j, i) in order.
            let rows: Vec<(usize, usize)> = (0..sq).flat_map(|j| heads.clone().map(move |i| (j, i))).collect();
            let results: Vec<(Vec<f64>, f64)> = match precision {
                Precision::Exact => {
                    let (keys, values) = group_rows(op, inputs, b, g, |name, t, cols| inputs.cache.exact_values(name, b, t, cols));
                    attend_exact(inputs, b, &rows, &keys, &values, width, dout)
                }
                Precision::Naive(dtype) | Precision::NaiveReading(dtype, _) => {
                    let read = match precision {
                        Precision::NaiveReading(_, read) => read,
                        _ => ScaleRead::ArbitraryF32,
                    };
                    let (keys, values) = group_rows(op, inputs, b, g, |name, t, cols| inputs.cache.f32_values(name, b, t, cols, read));
                    rows.iter()
                        .map(|&(j, i)| {
                            let visible = c.visible(b, j);
                            let q = inputs.q_row(b, j, i);
                            attend_naive(q, &keys[..visible * width], &values[..visible * dout], dout, inputs.scale, dtype)
                        })
                        .collect()
                }
            };
            for (&(j, i), (o, l)) in rows.iter().zip(results) {
                let row = (b * sq + j) * h + i;
                out[row * dout..(row + 1) * dout].copy_from_slice(&o);
                lse[row] = l;
            }
        }
    }
    vec![(TensorName::Out, out), (TensorName::Lse, lse)]
}

/// The truth: the reference crate's attention (SPEC.md §2) in f64, each query row (j, i) of
/// sequence b over the first `visible(b, j)` keys. Keys [n, width] and values [n, d_out],
/// row-major. All rows of a group go through one blocked call (matrix products, equal to the
/// one-row definition to rounding).
fn attend_exact(
    inputs: &CaseInputs,
    b: usize,
    rows: &[(usize, usize)],
    keys: &[f64],
    values: &[f64],
    width: usize,
    dout: usize,
) -> Vec<(Vec<f64>, f64)> {
    use gqla_reference::attention::{attend, KeyRange};
    let n = keys.len() / width.max(1);
    let k = ndarray::ArrayView2::from_shape((n, width), keys).expect("keys are [n, width]");
    let v = ndarray::ArrayView2::from_shape((n, dout), values).expect("values are [n, d_out]");
    let q = ndarray::Array2::from_shape_fn((rows.len(), width), |(r, d)| {
        let (j, i) = rows[r];
        inputs.q_row(b, j, i)[d] as f64
    });
    let ranges: Vec<KeyRange> = rows
        .iter()
        .map(|&(j, _)| KeyRange {
            start: 0,
            end: inputs.case.visible(b, j),
        })
        .collect();
    let (o, lse) = attend(q.view(), k, v, inputs.scale as f64, &ranges);
    o.outer_iter().zip(lse).map(|(row, l)| (row.to_vec(), l)).collect()
}

/// The naive same-precision kernel: scores rounded to the dtype, probabilities rounded to it, f32
/// accumulation, output rounded. Keys [n, width] and values [n, d_out], row-major.
fn attend_naive(q: &[f32], keys: &[f32], values: &[f32], dout: usize, scale: f32, dtype: DType) -> (Vec<f64>, f64) {
    let width = q.len();
    if keys.is_empty() {
        return (vec![0.0; dout], f64::NEG_INFINITY);
    }
    let s: Vec<f32> = keys
        .chunks_exact(width)
        .map(|k| dtype.round_f32(q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()) * scale)
        .collect();
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
    let z: f32 = p.iter().sum();
    let mut o = vec![0.0f32; dout];
    for (w, v) in p.iter().zip(values.chunks_exact(dout)) {
        let w = dtype.round_f32(*w);
        for (acc, x) in o.iter_mut().zip(v) {
            *acc += w * x;
        }
    }
    (o.iter().map(|x| dtype.round_f32(x / z) as f64).collect(), (m + z.ln()) as f64)
}

/// cache.expand: for each token's latent c_t and group g, [k_g; v_g] = W^UKV_g c_t (row r < d_n
/// of W^UKV_g makes k, the rest v).
fn expand(inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c = &inputs.case;
    let (per, dc) = (c.dn() + c.dv(), c.dc());
    let latents: Vec<&[f32]> = (0..c.batch())
        .flat_map(|b| (0..c.seq_len(b)).map(move |t| (b, t)))
        .map(|(b, t)| inputs.cache.row(TensorName::Latent, b, t))
        .collect();
    let w = |row: usize| &inputs.w_ukv[row * dc..(row + 1) * dc];
    // Y[token, g·per + r] = W^UKV row (g·per + r) · c_token.
    let y: Vec<f64> = match precision {
        // f64 products of f32 inputs, as one matrix product (exact to f64 rounding).
        Precision::Exact => {
            let l = ndarray::Array2::from_shape_fn((latents.len(), dc), |(t, d)| latents[t][d] as f64);
            let wt = ndarray::Array2::from_shape_fn((dc, c.g() * per), |(d, r)| w(r)[d] as f64);
            l.dot(&wt).into_iter().collect()
        }
        // The naive kernel: one f32 dot product per output, summed in order, rounded to the dtype.
        Precision::Naive(dtype) | Precision::NaiveReading(dtype, _) => {
            let rows: Vec<&[f32]> = (0..c.g() * per).map(w).collect();
            let blocks: Vec<Interleaved> = rows.chunks(DOT_LANES).map(|b| Interleaved::new(b, dc)).collect();
            let mut y = Vec::with_capacity(latents.len() * rows.len());
            for latent in &latents {
                for block in &blocks {
                    y.extend(block.dots(latent).iter().take(block.rows).map(|s| dtype.round_f32(*s) as f64));
                }
            }
            y
        }
    };
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for (r, y) in y.into_iter().enumerate() {
        if r % per < c.dn() {
            k.push(y);
        } else {
            v.push(y);
        }
    }
    vec![(TensorName::K, k), (TensorName::V, v)]
}

/// Rows one [`Interleaved`] block holds.
const DOT_LANES: usize = 8;

/// Up to [`DOT_LANES`] matrix rows stored element-interleaved (`w[d·LANES + j]` = row j, element
/// d), so that their dot products with one vector advance together.
struct Interleaved {
    w: Vec<f32>,
    rows: usize,
}

impl Interleaved {
    fn new(rows: &[&[f32]], width: usize) -> Self {
        let mut w = vec![0.0; width * DOT_LANES];
        for (j, row) in rows.iter().enumerate() {
            for (d, x) in row.iter().enumerate() {
                w[d * DOT_LANES + j] = *x;
            }
        }
        Self { w, rows: rows.len() }
    }

    /// Each row · x, summed in order from −0.0 exactly as `iter().map(|(a, b)| a * b).sum::<f32>()`
    /// does (no reassociation, no fused multiply-add): the lanes only hide the addition latency,
    /// the bits are the sequential sum's. Lanes past `rows` hold zeros.
    fn dots(&self, x: &[f32]) -> [f32; DOT_LANES] {
        let mut acc = [-0.0f32; DOT_LANES];
        for (w, &xd) in self.w.chunks_exact(DOT_LANES).zip(x) {
            for j in 0..DOT_LANES {
                acc[j] += w[j] * xd;
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The interleaved dot products are the sequential sums bit for bit: full and partial blocks,
    /// widths that are not a multiple of anything, values of very different magnitudes (where a
    /// reordered sum would round differently), and all-negative-zero products.
    #[test]
    fn interleaved_dots_are_the_in_order_sums() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (rows, width) in [(8, 512), (5, 77), (1, 3), (8, 1)] {
            let w: Vec<Vec<f32>> = (0..rows)
                .map(|_| {
                    (0..width)
                        .map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-6..6)))
                        .collect()
                })
                .collect();
            let x: Vec<f32> = (0..width)
                .map(|_| rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-6..6)))
                .collect();
            let refs: Vec<&[f32]> = w.iter().map(|r| r.as_slice()).collect();
            let got = Interleaved::new(&refs, width).dots(&x);
            for (j, row) in w.iter().enumerate() {
                let want = row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
                assert_eq!(got[j].to_bits(), want.to_bits(), "rows {rows}, width {width}, row {j}");
            }
        }
        let zeros = vec![-0.0f32; 4];
        let got = Interleaved::new(&[&zeros], 4).dots(&[1.0; 4]);
        assert_eq!(got[0].to_bits(), zeros.iter().map(|a| a * 1.0).sum::<f32>().to_bits());
    }

    /// The exact expand (one matrix product) is the definition, each output a dot product of
    /// W^UKV's row with the token's latent, to f64 rounding; the naive one is it rounded to bf16.
    #[test]
    fn expand_is_the_per_output_dot_product() {
        let case: Case = "gqla.cache.expand:g=2;dc=40;dn=8;dv=4;ctx=9,5;page=4;dtype=bf16;seed=3"
            .parse()
            .unwrap();
        let inputs = CaseInputs::generate(&case);
        let (exact, naive) = (compute(&inputs, Precision::Exact), compute(&inputs, Precision::Naive(DType::Bf16)));
        let per = case.dn() + case.dv();
        let (mut k, mut v) = (0, 0);
        for b in 0..case.batch() {
            for t in 0..case.seq_len(b) {
                let latent = inputs.cache.row(TensorName::Latent, b, t);
                for r in 0..case.g() * per {
                    let w = &inputs.w_ukv[r * case.dc()..(r + 1) * case.dc()];
                    let want: f64 = w.iter().zip(latent).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let (name, i) = if r % per < case.dn() { (0, &mut k) } else { (1, &mut v) };
                    let got = exact[name].1[*i];
                    assert!((got - want).abs() <= 1e-14 * want.abs().max(1.0), "{got} vs {want}");
                    let rounded = DType::Bf16.round_f32(w.iter().zip(latent).map(|(a, b)| a * b).sum::<f32>()) as f64;
                    assert_eq!(naive[name].1[*i].to_bits(), rounded.to_bits());
                    *i += 1;
                }
            }
        }
        assert_eq!((k, v), (exact[0].1.len(), exact[1].1.len()));
    }

    /// A tiled FP8 case decodes the values its records hold: its exact reference is, bit for bit,
    /// the reference of the same case with a native f32 cache holding those values (exact in f32
    /// for power-of-two scales), so the decode equations are the native ones.
    #[test]
    fn a_tiled_cache_decodes_its_dequantised_values() {
        use crate::inputs::Storage;
        let id = "gqla.decode.absorb:h=16;dc=256;dn=64;dr=32;sq=2;ctx=0,40,pad,9;page=16;dtype=bf16;kv=tiled;tile=64;scales=pow2;seed=8";
        let tiled = CaseInputs::generate(&id.parse().unwrap());
        let mut native = tiled.clone();
        let kv = &mut native.cache.components[0];
        let (record, bytes) = kv.records().map(|(r, b)| (*r, b.to_vec())).unwrap();
        let mut values = vec![0f32; bytes.len() / record.bytes() * (record.d_c() + record.d_r())];
        for (row, r) in values
            .chunks_exact_mut(record.d_c() + record.d_r())
            .zip(bytes.chunks_exact(record.bytes()))
        {
            let (c, k) = row.split_at_mut(record.d_c());
            record.read_f32(r, c, k);
        }
        kv.width = record.d_c() + record.d_r();
        kv.storage = Storage::Values(values);
        for precision in [Precision::Exact, Precision::Naive(DType::Bf16)] {
            let (a, b) = (compute(&tiled, precision), compute(&native, precision));
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} ({precision:?})");
                assert!(x.iter().any(|v| v.is_finite() && *v != 0.0), "{name}");
            }
        }
        // With arbitrary scales the f32 reading rounds, so the exact reference reads in f64.
        let amax = CaseInputs::generate(&id.replace("scales=pow2", "scales=amax").parse().unwrap());
        let (exact, naive) = (
            amax.cache.exact_values(TensorName::Kv, 1, 0, 0..256),
            amax.cache.f32_values(TensorName::Kv, 1, 0, 0..256, ScaleRead::ArbitraryF32),
        );
        assert!(exact.iter().zip(naive.iter()).any(|(e, n)| *e != *n as f64), "f32 products round");
        assert!(exact
            .iter()
            .zip(naive.iter())
            .all(|(e, n)| (e - *n as f64).abs() <= e.abs() * f32::EPSILON as f64));
    }

    /// A reader that rounds scales to bf16 (FlashMLA SM90) gets a naive reference that reads the
    /// same way: different from the f32 reader's where scales are arbitrary, the same where they
    /// are powers of two.
    #[test]
    fn the_naive_reference_reads_scales_as_declared() {
        let id = "gqla.decode.absorb:h=16;dc=256;dn=64;dr=32;sq=1;ctx=40,9;page=16;dtype=bf16;kv=tiled;tile=64;scales=amax;seed=4";
        let naive = |id: &str, precision| compute(&CaseInputs::generate(&id.parse().unwrap()), precision);
        let (f32_scales, bf16_scales) = (
            naive(id, Precision::Naive(DType::Bf16)),
            naive(id, Precision::NaiveReading(DType::Bf16, ScaleRead::ArbitraryBf16)),
        );
        assert_ne!(f32_scales, bf16_scales);
        assert_eq!(naive(id, Precision::NaiveReading(DType::Bf16, ScaleRead::ArbitraryF32)), f32_scales);
        let pow2 = id.replace("scales=amax", "scales=pow2");
        assert_eq!(
            naive(&pow2, Precision::Naive(DType::Bf16)),
            naive(&pow2, Precision::NaiveReading(DType::Bf16, ScaleRead::ArbitraryBf16))
        );
    }

    /// `logits=dominant`: every query row's output is its sequence's dominant key's value (here
    /// one tiled record's dequantised latent) to within 1% of its largest value, on both paths.
    #[test]
    fn a_dominant_key_is_the_output() {
        use crate::case::Op;
        for id in [
            "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=65,31;page=64;dtype=bf16;kv=tiled;tile=128;scales=pow2;logits=dominant;seed=3",
            "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65,0;page=64;dtype=bf16;kv=fp8;fp8=e4m3fn;kscale=0.37;vscale=3.1;logits=dominant;seed=3",
        ] {
            let case: Case = id.parse().unwrap();
            let inputs = CaseInputs::generate(&case);
            let out = &compute(&inputs, Precision::Exact)[0].1;
            let (dout, per) = (case.out_width(), if case.op() == Op::DecodeAbsorb { case.h() } else { case.h() / case.g() });
            for b in 0..case.batch() {
                let t = crate::inputs::dominant_key(&case, b).unwrap();
                for j in 0..case.sq() {
                    for i in 0..case.h() {
                        let value = match case.op() {
                            Op::DecodeAbsorb => inputs.cache.exact_values(TensorName::Kv, b, t, 0..dout),
                            _ => inputs.cache.exact_values(TensorName::V, b, t, (i / per) * dout..(i / per + 1) * dout),
                        };
                        let row = ((b * case.sq() + j) * case.h() + i) * dout;
                        let big = value.iter().fold(0f64, |m, x| m.max(x.abs()));
                        let err = out[row..row + dout].iter().zip(&value).fold(0f64, |m, (o, v)| m.max((o - v).abs()));
                        assert!(err <= 0.01 * big, "{id}: row ({b}, {j}, {i}): {err} of {big}");
                    }
                }
            }
        }
    }
}
