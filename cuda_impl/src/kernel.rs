//! The CUDA kernels behind the conformance harness's [`Kernel`] trait: inputs are uploaded as
//! the harness made them (poisoned slots, invalid block-table entries and all), outputs are
//! allocated with canary margins on the device, and disturbed device canaries are reported to
//! the harness by disturbing its own.

use crate::device::Gpu;
use crate::launch::{decode, elem_bytes, encode, Decode, Guarded, KeySource, Paging, Segment};
use crate::CudaError;
use cudarc::driver::CudaSlice;
use gqla_conformance::case::{Dtype, Op, RopeLayout};
use gqla_conformance::inputs::{self, CaseInputs};
use gqla_conformance::kernel::{OutputTensor, MARGIN};
use gqla_conformance::{Kernel, KernelError, KernelIdentity, Outputs};
use std::collections::BTreeMap;

/// Canary element of a device output in each storage dtype (a NaN no arithmetic produces).
fn canary_bytes(d: Dtype) -> Vec<u8> {
    match d {
        Dtype::F32 => gqla_conformance::kernel::CANARY.to_le_bytes().to_vec(),
        Dtype::Bf16 => 0x7fcau16.to_le_bytes().to_vec(),
        Dtype::F16 => 0x7ecau16.to_le_bytes().to_vec(),
    }
}

/// A device output buffer: canaries, then the tensor filled with NaN, then canaries.
fn guarded_output(gpu: &Gpu, d: Dtype, n: usize) -> Result<CudaSlice<u8>, CudaError> {
    let canary = canary_bytes(d);
    let mut host = Vec::with_capacity((n + 2 * MARGIN) * canary.len());
    (0..MARGIN).for_each(|_| host.extend_from_slice(&canary));
    host.extend(encode(d, &vec![f32::NAN; n]));
    (0..MARGIN).for_each(|_| host.extend_from_slice(&canary));
    gpu.upload(&host)
}

/// Copy a device output into the harness's tensor; a disturbed device canary disturbs the
/// harness's canary at the same place.
fn collect(gpu: &Gpu, d: Dtype, buf: &CudaSlice<u8>, out: &mut OutputTensor) -> Result<(), CudaError> {
    let bytes = gpu.download(buf)?;
    let eb = elem_bytes(d);
    let canary = canary_bytes(d);
    let n = out.len();
    let values = decode(d, &bytes[MARGIN * eb..(MARGIN + n) * eb]);
    out.region_mut().copy_from_slice(&values);
    // The device buffer has the harness buffer's layout: element i of one is element i of the other.
    let (host, offset) = out.with_margins_mut();
    debug_assert_eq!((offset, host.len()), (MARGIN, n + 2 * MARGIN));
    for i in (0..MARGIN).chain(MARGIN + n..2 * MARGIN + n) {
        if bytes[i * eb..(i + 1) * eb] != canary[..] {
            host[i] = 0.0;
        }
    }
    Ok(())
}

/// The CUDA implementation as a kernel under test.
pub struct CudaKernel {
    gpu: Gpu,
}

impl CudaKernel {
    /// Open GPU `ordinal` and compile the kernels for it.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        Ok(Self { gpu: Gpu::open(ordinal)? })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Block table and sequence lengths; a contiguous cache is one page of `capacity` per sequence.
    fn paging(&self, inp: &CaseInputs) -> Result<(CudaSlice<i32>, CudaSlice<i32>, usize, usize), CudaError> {
        let lens: Vec<i32> = inp.cache.seq_lens.iter().map(|&l| l as i32).collect();
        let (table, max_pages, page) = match &inp.cache.paging {
            inputs::Paging::Contiguous { capacity } => ((0..lens.len() as i32).collect(), 1, *capacity),
            inputs::Paging::Paged {
                page,
                max_pages,
                block_table,
                ..
            } => (block_table.clone(), *max_pages, *page),
        };
        // Never an empty device buffer.
        let table = if table.is_empty() { vec![0] } else { table };
        let lens_d = self.gpu.upload(if lens.is_empty() { &[0][..] } else { &lens })?;
        Ok((lens_d, self.gpu.upload(&table)?, max_pages, page))
    }

    fn component(&self, inp: &CaseInputs, name: &str) -> Result<CudaSlice<u8>, CudaError> {
        self.gpu.upload(&encode(inp.case.dtype, &inp.cache.component(name).data))
    }

    /// Split count: the case's request, or the device's default for this shape.
    fn splits(&self, inp: &CaseInputs, streams: usize) -> usize {
        let c = &inp.case;
        let longest = inp.cache.seq_lens.iter().copied().max().unwrap_or(0);
        c.splits
            .unwrap_or_else(|| self.gpu.default_splits(c.batch(), c.sq, c.h, streams, longest))
    }

    fn decode(&self, inp: &CaseInputs, outputs: &mut Outputs) -> Result<(), CudaError> {
        let c = &inp.case;
        let d = c.dtype;
        let names: Vec<&str> = inputs::components(c).iter().map(|(n, _)| *n).collect();
        let comps: Vec<CudaSlice<u8>> = names.iter().map(|n| self.component(inp, n)).collect::<Result<_, _>>()?;
        let seg = |i: usize, row_stride: usize, head_stride: usize, width: usize| Segment {
            buf: &comps[i],
            row_stride,
            head_stride,
            width,
        };
        let keys = match (c.op, c.layout) {
            (Op::DecodeAbsorb, _) => KeySource {
                key: seg(0, c.dc + c.dr, 0, c.dc + c.dr),
                shared_key: None,
                value: None,
                dv: c.dc,
                streams: 1,
            },
            (Op::DecodeGqa, RopeLayout::Once) => KeySource {
                key: seg(0, c.g * c.dn, c.dn, c.dn),
                shared_key: Some(seg(1, c.dr, 0, c.dr)),
                value: Some(seg(2, c.g * c.dv, c.dv, c.dv)),
                dv: c.dv,
                streams: c.g,
            },
            (Op::DecodeGqa, RopeLayout::PerGroup) => KeySource {
                key: seg(0, c.g * (c.dn + c.dr), c.dn + c.dr, c.dn + c.dr),
                shared_key: None,
                value: Some(seg(1, c.g * c.dv, c.dv, c.dv)),
                dv: c.dv,
                streams: c.g,
            },
            (Op::GqaDecode, _) => KeySource {
                key: seg(0, c.g * c.dn, c.dn, c.dn),
                shared_key: None,
                value: Some(seg(1, c.g * c.dv, c.dv, c.dv)),
                dv: c.dv,
                streams: c.g,
            },
            (Op::CacheExpand, _) => unreachable!("expand is not a decode"),
        };
        let streams = keys.streams;
        let (lens, table, max_pages, page) = self.paging(inp)?;
        let q = self.gpu.upload(&encode(d, &inp.q))?;
        let (n_out, n_lse) = (outputs.get("out").len(), outputs.get("lse").len());
        let mut out = guarded_output(&self.gpu, d, n_out)?;
        let mut lse = guarded_output(&self.gpu, Dtype::F32, n_lse)?;
        let num_splits = self.splits(inp, streams);
        let mut ws = if num_splits > 1 {
            Some(self.gpu.workspace(c.batch() * c.sq * c.h, keys.dv, num_splits)?)
        } else {
            None
        };
        let mut call = Decode {
            dtype: d,
            q: &q,
            keys,
            paging: Paging {
                seq_lens: &lens,
                block_table: &table,
                max_pages,
                page,
            },
            batch: c.batch(),
            sq: c.sq,
            h: c.h,
            scale: inp.scale,
            num_splits,
            out: Guarded {
                buf: &mut out,
                margin: MARGIN,
            },
            lse: Guarded {
                buf: &mut lse,
                margin: MARGIN,
            },
        };
        self.gpu.decode(&mut call, ws.as_mut())?;
        self.gpu.synchronize()?;
        collect(&self.gpu, d, &out, outputs.get_mut("out"))?;
        collect(&self.gpu, Dtype::F32, &lse, outputs.get_mut("lse"))
    }

    fn expand(&self, inp: &CaseInputs, outputs: &mut Outputs) -> Result<(), CudaError> {
        let c = &inp.case;
        let d = c.dtype;
        let latent = self.component(inp, "latent")?;
        let w = self.gpu.upload(&encode(d, &inp.w_ukv))?;
        let (_lens, table, max_pages, page) = self.paging(inp)?;
        let (mut tb, mut tt) = (Vec::new(), Vec::new());
        for b in 0..c.batch() {
            for t in 0..c.seq_len(b) {
                tb.push(b as i32);
                tt.push(t as i32);
            }
        }
        let n = tb.len();
        let tok_b = self.gpu.upload(if n == 0 { &[0][..] } else { &tb })?;
        let tok_t = self.gpu.upload(if n == 0 { &[0][..] } else { &tt })?;
        let mut k = guarded_output(&self.gpu, d, outputs.get("k").len())?;
        let mut v = guarded_output(&self.gpu, d, outputs.get("v").len())?;
        let paging = Paging {
            seq_lens: &tok_b,
            block_table: &table,
            max_pages,
            page,
        };
        self.gpu.expand_cache(
            d,
            &latent,
            &w,
            (&tok_b, &tok_t, n),
            &paging,
            (c.g, c.dc, c.dn, c.dv),
            &mut Guarded {
                buf: &mut k,
                margin: MARGIN,
            },
            &mut Guarded {
                buf: &mut v,
                margin: MARGIN,
            },
        )?;
        self.gpu.synchronize()?;
        collect(&self.gpu, d, &k, outputs.get_mut("k"))?;
        collect(&self.gpu, d, &v, outputs.get_mut("v"))
    }
}

impl Kernel for CudaKernel {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: "cuda".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "gqla-cuda grouped-attention kernels (split-KV, paged) on {} ({}), NVRTC {}",
                self.gpu.info.name, self.gpu.info.arch, self.gpu.info.nvrtc_version
            ),
        }
    }
    fn environment(&self) -> BTreeMap<String, String> {
        self.gpu.info.environment()
    }
    fn run(&self, inputs: &CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        let r = self.gpu.bind().and_then(|()| match inputs.case.op {
            Op::CacheExpand => self.expand(inputs, outputs),
            _ => self.decode(inputs, outputs),
        });
        r.map_err(|e| match e {
            CudaError::Unsupported(why) => KernelError::NotSupported(why),
            other => KernelError::Runtime(other.to_string()),
        })
    }
}
