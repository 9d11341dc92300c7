//! The pinned reference of every operation, in two precisions:
//! - [`Precision::Exact`]: f64 arithmetic on the (already rounded) inputs, the ground truth;
//! - [`Precision::Naive`]: a straightforward kernel in the case's dtype — scores, probabilities
//!   and outputs rounded to the dtype, accumulation in f32 — whose error against the truth sets
//!   the scale of the tolerance. It never looks at a kernel's output.
//!
//! Decode semantics (all decode ops): sequence b holds ctx_b + s_q keys; new token j sees keys
//! t ≤ ctx_b + j (bottom-right causal); o = Σ_t softmax(scale · q·k_t) v_t; LSE in natural log;
//! a row with no visible key gives o = 0 and LSE = −∞.

use crate::case::{Case, DType, GroupCacheLayout, Op};
use crate::definition::TensorName;
use crate::inputs::CaseInputs;

/// How a reference computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    Exact,
    Naive(DType),
}

/// Output tensors by name, as f64.
pub type Tensors = Vec<(TensorName, Vec<f64>)>;

/// The keys and values group `g` (absorb: the one latent stream) sees in sequence b, one row per
/// cached token: keys [n, key width] and values [n, d_out], row-major.
fn group_rows(inputs: &CaseInputs, b: usize, g: usize) -> (Vec<f32>, Vec<f32>) {
    let c = &inputs.case;
    let cache = &inputs.cache;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for t in 0..c.seq_len(b) {
        match c.op() {
            Op::DecodeAbsorb => {
                let row = cache.row(TensorName::Kv, b, t);
                keys.extend_from_slice(row);
                values.extend_from_slice(&row[..c.dc()]);
            }
            Op::DecodeGqa => {
                values.extend_from_slice(&cache.row(TensorName::V, b, t)[g * c.dv()..(g + 1) * c.dv()]);
                match c.layout() {
                    GroupCacheLayout::RopeOnce => {
                        keys.extend_from_slice(&cache.row(TensorName::KNope, b, t)[g * c.dn()..(g + 1) * c.dn()]);
                        keys.extend_from_slice(cache.row(TensorName::KRope, b, t));
                    }
                    GroupCacheLayout::RopePerGroup => {
                        keys.extend_from_slice(&cache.row(TensorName::K, b, t)[g * (c.dn() + c.dr())..(g + 1) * (c.dn() + c.dr())])
                    }
                }
            }
            Op::GqaDecode => {
                keys.extend_from_slice(&cache.row(TensorName::K, b, t)[g * c.dn()..(g + 1) * c.dn()]);
                values.extend_from_slice(&cache.row(TensorName::V, b, t)[g * c.dv()..(g + 1) * c.dv()]);
            }
            Op::CacheExpand => unreachable!("no attention in cache.expand"),
        }
    }
    (keys, values)
}

/// The reference outputs of a case (the suite's conventions: an empty row gives out = 0 and
/// LSE = −∞, natural log, f32).
pub fn compute(inputs: &CaseInputs, precision: Precision) -> Tensors {
    match inputs.case.op() {
        Op::CacheExpand => expand(inputs, precision),
        _ => decode(inputs, precision),
    }
}

fn decode(inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c: &Case = &inputs.case;
    let (batch, sq, h, dout) = (c.batch(), c.sq(), c.h(), c.out_width());
    let width = c.q_width();
    // Heads per key stream: all of them for the absorb path (one latent stream), H/G otherwise.
    let (streams, per) = match c.op() {
        Op::DecodeAbsorb => (1, h),
        _ => (c.g(), h / c.g()),
    };
    let mut out = vec![0.0; batch * sq * h * dout];
    let mut lse = vec![0.0; batch * sq * h];
    for b in 0..batch {
        for g in 0..streams {
            let (keys, values) = group_rows(inputs, b, g);
            let n = keys.len() / width.max(1);
            let exact = (precision == Precision::Exact).then(|| {
                (
                    ndarray::Array2::from_shape_fn((n, width), |(t, d)| keys[t * width + d] as f64),
                    ndarray::Array2::from_shape_fn((n, dout), |(t, d)| values[t * dout + d] as f64),
                )
            });
            for j in 0..sq {
                let visible = c.visible(b, j);
                for i in g * per..(g + 1) * per {
                    let q = inputs.q_row(b, j, i);
                    let (o, l) = match (precision, &exact) {
                        (Precision::Exact, Some((k, v))) => attend_exact(q, k, v, inputs.scale as f64, visible),
                        (Precision::Naive(dtype), _) => {
                            attend_naive(q, &keys[..visible * width], &values[..visible * dout], dout, inputs.scale, dtype)
                        }
                        (Precision::Exact, None) => unreachable!("matrices built for the exact reference"),
                    };
                    let row = (b * sq + j) * h + i;
                    out[row * dout..(row + 1) * dout].copy_from_slice(&o);
                    lse[row] = l;
                }
            }
        }
    }
    vec![(TensorName::Out, out), (TensorName::Lse, lse)]
}

/// The truth: the reference crate's attention (SPEC.md §2) in f64, over the first `visible` keys.
fn attend_exact(q: &[f32], keys: &ndarray::Array2<f64>, values: &ndarray::Array2<f64>, scale: f64, visible: usize) -> (Vec<f64>, f64) {
    use gqla_reference::attention::{attend_row, KeyRange};
    let q = ndarray::Array1::from_iter(q.iter().map(|v| *v as f64));
    let (o, lse) = attend_row(q.view(), keys.view(), values.view(), scale, KeyRange { start: 0, end: visible });
    (o.to_vec(), lse)
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

fn expand(inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c = &inputs.case;
    let per = c.dn() + c.dv();
    let mut k = Vec::new();
    let mut v = Vec::new();
    for b in 0..c.batch() {
        for t in 0..c.seq_len(b) {
            let latent = inputs.cache.row(TensorName::Latent, b, t);
            for g in 0..c.g() {
                for r in 0..per {
                    let w = &inputs.w_ukv[(g * per + r) * c.dc()..(g * per + r + 1) * c.dc()];
                    let y = match precision {
                        Precision::Exact => w.iter().zip(latent).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
                        Precision::Naive(dtype) => dtype.round_f32(w.iter().zip(latent).map(|(a, b)| a * b).sum::<f32>()) as f64,
                    };
                    if r < c.dn() {
                        k.push(y);
                    } else {
                        v.push(y);
                    }
                }
            }
        }
    }
    vec![(TensorName::K, k), (TensorName::V, v)]
}
