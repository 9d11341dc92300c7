//! The pinned reference of every operation, in two precisions:
//! - [`Precision::Exact`]: f64 arithmetic on the (already rounded) inputs, the ground truth;
//! - [`Precision::Naive`]: a straightforward kernel in the case's dtype — scores, probabilities
//!   and outputs rounded to the dtype, accumulation in f32 — whose error against the truth sets
//!   the scale of the tolerance. It never looks at a kernel's output.
//!
//! Decode semantics (all decode ops): sequence b holds ctx_b + s_q keys; new token j sees keys
//! t ≤ ctx_b + j (bottom-right causal); o = Σ_t softmax(scale · q·k_t) v_t; LSE in natural log;
//! a row with no visible key gives o = 0 and LSE = −∞.

use crate::case::{Case, Dtype, Op, RopeLayout};
use crate::inputs::CaseInputs;

/// How a reference computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    Exact,
    Naive(Dtype),
}

/// Output tensors by name, as f64.
pub type Tensors = Vec<(&'static str, Vec<f64>)>;

/// The key and value of token t of sequence b for head i.
fn key_value(inputs: &CaseInputs, b: usize, t: usize, i: usize) -> (Vec<f32>, Vec<f32>) {
    let c = &inputs.case;
    let cache = &inputs.cache;
    match c.op {
        Op::DecodeAbsorb => {
            let row = cache.row("kv", b, t);
            (row.to_vec(), row[..c.dc].to_vec())
        }
        Op::DecodeGqa => {
            let g = i / (c.h / c.g);
            let v = cache.row("v", b, t)[g * c.dv..(g + 1) * c.dv].to_vec();
            let k = match c.layout {
                RopeLayout::Once => {
                    let mut k = cache.row("k_nope", b, t)[g * c.dn..(g + 1) * c.dn].to_vec();
                    k.extend_from_slice(cache.row("k_rope", b, t));
                    k
                }
                RopeLayout::PerGroup => cache.row("k", b, t)[g * (c.dn + c.dr)..(g + 1) * (c.dn + c.dr)].to_vec(),
            };
            (k, v)
        }
        Op::GqaDecode => {
            let g = i / (c.h / c.g);
            (
                cache.row("k", b, t)[g * c.dn..(g + 1) * c.dn].to_vec(),
                cache.row("v", b, t)[g * c.dv..(g + 1) * c.dv].to_vec(),
            )
        }
        Op::CacheExpand => unreachable!("no attention in cache.expand"),
    }
}

/// The reference outputs of a case.
pub fn compute(inputs: &CaseInputs, precision: Precision) -> Tensors {
    match inputs.case.op {
        Op::CacheExpand => expand(inputs, precision),
        _ => decode(inputs, precision),
    }
}

fn decode(inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c: &Case = &inputs.case;
    let (batch, sq, h, dout) = (c.batch(), c.sq, c.h, c.out_width());
    let mut out = vec![0.0; batch * sq * h * dout];
    let mut lse = vec![0.0; batch * sq * h];
    for b in 0..batch {
        for j in 0..sq {
            let visible = c.visible(b, j);
            for i in 0..h {
                let q = inputs.q_row(b, j, i);
                let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..visible).map(|t| key_value(inputs, b, t, i)).collect();
                let (o, l) = match precision {
                    Precision::Exact => attend_exact(q, &kv, inputs.scale as f64, dout),
                    Precision::Naive(dtype) => attend_naive(q, &kv, inputs.scale, dout, dtype),
                };
                let row = (b * sq + j) * h + i;
                out[row * dout..(row + 1) * dout].copy_from_slice(&o);
                lse[row] = l;
            }
        }
    }
    vec![("out", out), ("lse", lse)]
}

/// The truth: the reference crate's attention (SPEC.md §2) in f64.
fn attend_exact(q: &[f32], kv: &[(Vec<f32>, Vec<f32>)], scale: f64, dout: usize) -> (Vec<f64>, f64) {
    use gqla_reference::attention::{attend_row, KeyRange};
    use ndarray::{Array1, Array2};
    let n = kv.len();
    let width = q.len();
    let keys = Array2::from_shape_fn((n, width), |(t, d)| kv[t].0[d] as f64);
    let values = Array2::from_shape_fn((n, dout), |(t, d)| kv[t].1[d] as f64);
    let q = Array1::from_iter(q.iter().map(|v| *v as f64));
    let (o, lse) = attend_row(q.view(), keys.view(), values.view(), scale, KeyRange { start: 0, end: n });
    (o.to_vec(), lse)
}

fn attend_naive(q: &[f32], kv: &[(Vec<f32>, Vec<f32>)], scale: f32, dout: usize, dtype: Dtype) -> (Vec<f64>, f64) {
    if kv.is_empty() {
        return (vec![0.0; dout], f64::NEG_INFINITY);
    }
    let s: Vec<f32> = kv
        .iter()
        .map(|(k, _)| dtype.round(q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()) * scale)
        .collect();
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
    let z: f32 = p.iter().sum();
    let mut o = vec![0.0f32; dout];
    for (w, (_, v)) in p.iter().zip(kv) {
        let w = dtype.round(*w);
        for (acc, x) in o.iter_mut().zip(v) {
            *acc += w * x;
        }
    }
    (o.iter().map(|x| dtype.round(x / z) as f64).collect(), (m + z.ln()) as f64)
}

fn expand(inputs: &CaseInputs, precision: Precision) -> Tensors {
    let c = &inputs.case;
    let per = c.dn + c.dv;
    let mut k = Vec::new();
    let mut v = Vec::new();
    for b in 0..c.batch() {
        for t in 0..c.seq_len(b) {
            let latent = inputs.cache.row("latent", b, t);
            for g in 0..c.g {
                for r in 0..per {
                    let w = &inputs.w_ukv[(g * per + r) * c.dc..(g * per + r + 1) * c.dc];
                    let y = match precision {
                        Precision::Exact => w.iter().zip(latent).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>(),
                        Precision::Naive(dtype) => dtype.round(w.iter().zip(latent).map(|(a, b)| a * b).sum::<f32>()) as f64,
                    };
                    if r < c.dn {
                        k.push(y);
                    } else {
                        v.push(y);
                    }
                }
            }
        }
    }
    vec![("k", k), ("v", v)]
}
