//! An independent implementation of every operation with candle-core tensor ops on the CPU: the
//! suite's first "third-party" kernel. It gathers each sequence's cache rows through the block
//! table (so poisoned slots are never touched), then runs dense matmuls, a masked max-subtracted
//! softmax and a natural-log LSE in f32, and rounds outputs to the case dtype with candle's own
//! casts. It shares no arithmetic with the reference or the flash kernel.

use crate::case::{CacheOp, Case, DType, DecodeOp, GroupCacheLayout, OpKind};
use crate::definition::TensorName;
use crate::inputs::CaseInputs;
use crate::kernel::{Kernel, KernelError, KernelIdentity, Outputs};
use candle_core::{DType as CandleDType, Device, Tensor, D};

/// candle-core's version, read from Cargo.lock at build time.
const CANDLE_VERSION: &str = env!("GQLA_CANDLE_VERSION");

pub struct CandleCpu;

type Result<T> = candle_core::Result<T>;

fn candle_dtype(d: DType) -> CandleDType {
    match d {
        DType::F32 => CandleDType::F32,
        DType::Bf16 => CandleDType::BF16,
        DType::F16 => CandleDType::F16,
        DType::F64 => CandleDType::F64,
    }
}

/// Round an f32 tensor to the storage dtype and back.
fn round_to(t: &Tensor, d: DType) -> Result<Tensor> {
    t.to_dtype(candle_dtype(d))?.to_dtype(CandleDType::F32)
}

/// The first `len` rows of sequence b of cache component `comp` ([slots, width]): [len, width].
fn gather(inp: &CaseInputs, comp: &Tensor, b: usize, len: usize) -> Result<Tensor> {
    let slots: Vec<u32> = (0..len).map(|t| inp.cache.slot(b, t) as u32).collect();
    comp.index_select(&Tensor::from_vec(slots, len, &Device::Cpu)?, 0)
}

/// A cache component as a [slots, width] tensor; FP8 records dequantised first (each value times
/// its tile's scale in f32, as `fp8.to(float32) * scale` does in a framework).
fn component(inp: &CaseInputs, name: TensorName) -> Result<Tensor> {
    let c = inp.cache.component(name);
    if let Some((fp8, scale, bytes)) = c.per_tensor() {
        let values: Vec<f32> = bytes.iter().map(|&q| fp8.decode(q) as f32 * scale).collect();
        return Tensor::from_vec(values, (inp.cache.slots(), c.width), &Device::Cpu);
    }
    match c.records() {
        None => Tensor::from_slice(c.values().unwrap_or(&[]), (inp.cache.slots(), c.width), &Device::Cpu),
        Some((record, bytes)) => {
            let width = record.d_c() + record.d_r();
            let mut values = vec![0.0f32; inp.cache.slots() * width];
            for (row, bytes) in values.chunks_exact_mut(width).zip(bytes.chunks_exact(c.width)) {
                let (latent, k_rope) = row.split_at_mut(record.d_c());
                record.read_f32(bytes, latent, k_rope);
            }
            Tensor::from_vec(values, (inp.cache.slots(), width), &Device::Cpu)
        }
    }
}

/// softmax(scale·q kᵀ + mask) v and the LSE for query rows q [r, w] over keys k [L, w] and values
/// v [L, d]; row i sees keys t < visible[i] (at least one: callers handle keyless rows).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, visible: &[usize]) -> Result<(Tensor, Tensor)> {
    let keys = k.dim(0)?;
    let mask: Vec<f32> = visible
        .iter()
        .flat_map(|&n| (0..keys).map(move |t| if t < n { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::from_vec(mask, (visible.len(), keys), &Device::Cpu)?;
    let scores = (q.matmul(&k.t()?)?.affine(scale, 0.0)? + mask)?;
    let m = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&m)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let out = e.broadcast_div(&sum)?.matmul(v)?;
    let lse = (m + sum.log()?)?.squeeze(D::Minus1)?;
    Ok((out, lse))
}

/// Keys and values of group g (all heads for the absorb path) from the gathered cache rows.
fn group_kv(op: DecodeOp, case: &Case, rows: &[Tensor], g: usize) -> Result<(Tensor, Tensor)> {
    let (dn, dr, dv) = (case.dn(), case.dr(), case.dv());
    match op {
        DecodeOp::Absorb => Ok((rows[0].clone(), rows[0].narrow(1, 0, case.dc())?)),
        DecodeOp::Gqa => match case.layout() {
            GroupCacheLayout::RopeOnce => {
                let k = Tensor::cat(&[&rows[0].narrow(1, g * dn, dn)?, &rows[1]], 1)?;
                Ok((k, rows[2].narrow(1, g * dv, dv)?))
            }
            GroupCacheLayout::RopePerGroup => Ok((rows[0].narrow(1, g * (dn + dr), dn + dr)?, rows[1].narrow(1, g * dv, dv)?)),
        },
        DecodeOp::PlainGqa => Ok((rows[0].narrow(1, g * dn, dn)?, rows[1].narrow(1, g * dv, dv)?)),
    }
}

/// Output `name`'s elements (an error, not a panic, if the case has no such output).
fn region(outputs: &mut Outputs, name: TensorName) -> Result<&mut [f32]> {
    Ok(outputs
        .get_mut(name)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .region_mut())
}

fn decode(op: DecodeOp, inp: &CaseInputs, outputs: &mut Outputs) -> Result<()> {
    let c = &inp.case;
    let (sq, h, w, dout) = (c.sq(), c.h(), c.q_width(), c.out_width());
    // Query heads sharing one key/value stream: all of them on the absorb path (MQA).
    let (streams, per) = if op == DecodeOp::Absorb { (1, h) } else { (c.g(), h / c.g()) };
    let names: Vec<TensorName> = inp.cache.components.iter().map(|x| x.name).collect();
    let comps: Vec<Tensor> = names.iter().map(|&n| component(inp, n)).collect::<Result<_>>()?;
    let q = Tensor::from_slice(&inp.q, (c.batch(), sq, h, w), &Device::Cpu)?;
    let row_out = sq * h * dout;
    for b in 0..c.batch() {
        let len = c.seq_len(b);
        if len == 0 {
            region(outputs, TensorName::Out)?[b * row_out..(b + 1) * row_out].fill(0.0);
            region(outputs, TensorName::Lse)?[b * sq * h..(b + 1) * sq * h].fill(f32::NEG_INFINITY);
            continue;
        }
        let rows: Vec<Tensor> = comps.iter().map(|t| gather(inp, t, b, len)).collect::<Result<_>>()?;
        let qb = q.get(b)?; // [sq, h, w]
        let (mut outs, mut lses) = (Vec::new(), Vec::new());
        for g in 0..streams {
            let qg = qb.narrow(1, g * per, per)?.contiguous()?.reshape((sq * per, w))?;
            let (k, v) = group_kv(op, c, &rows, g)?;
            let visible: Vec<usize> = (0..sq * per).map(|r| c.visible(b, r / per)).collect();
            let (o, l) = attend(&qg, &k.contiguous()?, &v.contiguous()?, inp.scale as f64, &visible)?;
            outs.push(o.reshape((sq, per, dout))?);
            lses.push(l.reshape((sq, per))?);
        }
        let o = round_to(&Tensor::cat(&outs, 1)?, c.dtype())?.flatten_all()?.to_vec1::<f32>()?;
        let l = Tensor::cat(&lses, 1)?.flatten_all()?.to_vec1::<f32>()?;
        region(outputs, TensorName::Out)?[b * row_out..(b + 1) * row_out].copy_from_slice(&o);
        region(outputs, TensorName::Lse)?[b * sq * h..(b + 1) * sq * h].copy_from_slice(&l);
    }
    Ok(())
}

fn expand(inp: &CaseInputs, outputs: &mut Outputs) -> Result<()> {
    let c = &inp.case;
    let latent = component(inp, TensorName::Latent)?;
    let w = Tensor::from_slice(&inp.w_ukv, (c.g() * (c.dn() + c.dv()), c.dc()), &Device::Cpu)?;
    let (mut k_at, mut v_at) = (0, 0);
    for b in 0..c.batch() {
        let len = c.seq_len(b);
        if len == 0 {
            continue;
        }
        let y = gather(inp, &latent, b, len)?
            .matmul(&w.t()?)?
            .reshape((len, c.g(), c.dn() + c.dv()))?;
        let k = round_to(&y.narrow(2, 0, c.dn())?.contiguous()?, c.dtype())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let v = round_to(&y.narrow(2, c.dn(), c.dv())?.contiguous()?, c.dtype())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        region(outputs, TensorName::K)?[k_at..k_at + k.len()].copy_from_slice(&k);
        region(outputs, TensorName::V)?[v_at..v_at + v.len()].copy_from_slice(&v);
        (k_at, v_at) = (k_at + k.len(), v_at + v.len());
    }
    Ok(())
}

impl Kernel for CandleCpu {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: "candle".into(),
            version: format!("candle-core {CANDLE_VERSION}"),
            description: "gather + dense matmul + masked softmax with candle-core tensor ops (CPU, f32 compute)".into(),
        }
    }
    fn environment(&self) -> std::collections::BTreeMap<String, String> {
        [("candle_core".to_string(), CANDLE_VERSION.to_string())].into_iter().collect()
    }
    fn profile(&self) -> crate::profile::Profile {
        crate::profile::Profile::everything()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> std::result::Result<(), KernelError> {
        let r = match inputs.case.op().kind() {
            OpKind::Cache(CacheOp::Expand) => expand(inputs, outputs),
            OpKind::Decode(op) => decode(op, inputs, outputs),
        };
        r.map_err(|e| KernelError::Runtime(format!("candle: {e}")))
    }
}
