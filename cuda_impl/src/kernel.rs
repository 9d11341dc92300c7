//! The CUDA kernels behind the conformance harness's [`Kernel`] trait, on any [`Runtime`] (a GPU,
//! or the host emulator): inputs are uploaded as the harness made them (poisoned slots, invalid
//! block-table entries and all), outputs are allocated with canary margins in the runtime's
//! memory, and disturbed canaries there are reported to the harness by disturbing its own.

use crate::device::Gpu;
use crate::emu::Emulator;
use crate::launch::{self, from_bytes, BlockTable, Decode, ExpandDims, Guarded, KeySource, Segment, Tokens, Variant};
use crate::runtime::Runtime;
use crate::CudaError;
use gqla_conformance::case::{CacheOp, DType, DecodeOp, GroupCacheLayout, OpKind};
use gqla_conformance::definition::TensorName;
use gqla_conformance::inputs::{self, CaseInputs};
use gqla_conformance::kernel::{OutputTensor, MARGIN};
use gqla_conformance::profile::Profile;
use gqla_conformance::{Kernel, KernelError, KernelIdentity, Outputs};
use gqla_files::tensors::encode_f32;
use std::collections::BTreeMap;

/// Canary element of a device output in each storage dtype (a NaN no arithmetic produces).
fn canary_bytes(d: DType) -> Vec<u8> {
    match d {
        DType::F32 => gqla_conformance::kernel::CANARY.to_le_bytes().to_vec(),
        DType::Bf16 => 0x7fcau16.to_le_bytes().to_vec(),
        DType::F16 => 0x7ecau16.to_le_bytes().to_vec(),
        DType::F64 => 0x7ff8_0000_7fca_7fcau64.to_le_bytes().to_vec(),
    }
}

/// An output buffer: canaries, then the tensor filled with NaN, then canaries.
fn guarded_output<R: Runtime>(rt: &R, d: DType, n: usize) -> Result<R::Buf<u8>, CudaError> {
    let canary = canary_bytes(d);
    let mut host = Vec::with_capacity((n + 2 * MARGIN) * canary.len());
    (0..MARGIN).for_each(|_| host.extend_from_slice(&canary));
    host.extend(encode_f32(d, &vec![f32::NAN; n]));
    (0..MARGIN).for_each(|_| host.extend_from_slice(&canary));
    rt.upload(&host)
}

/// Copy a device output into the harness's tensor; a disturbed device canary disturbs the
/// harness's canary at the same place.
fn collect<R: Runtime>(rt: &R, d: DType, buf: &R::Buf<u8>, out: &mut OutputTensor) -> Result<(), CudaError> {
    let bytes = rt.download(buf)?;
    let eb = d.size_in_bytes();
    let canary = canary_bytes(d);
    let n = out.len();
    let values = from_bytes(d, &bytes[MARGIN * eb..(MARGIN + n) * eb]);
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

/// The CUDA kernels on runtime `R`, as a kernel under test.
pub struct DeviceKernel<R: Runtime> {
    rt: R,
    /// The attention kernel every decode runs; None: [`Variant::choose`] per dtype.
    variant: Option<Variant>,
}

/// The CUDA kernels on a GPU (`gqla certify --kernel cuda`).
pub type CudaKernel = DeviceKernel<Gpu>;

/// A case's sequence lengths and block table, uploaded.
struct DevicePaging<R: Runtime> {
    seq_lens: R::Buf<i32>,
    block_table: R::Buf<i32>,
    max_pages: usize,
    page: usize,
    /// The host copies the device buffers were uploaded from, to check the addressing.
    host_lens: Vec<i32>,
    host_table: Vec<i32>,
}

impl<R: Runtime> DevicePaging<R> {
    fn view(&self) -> BlockTable<'_, R> {
        BlockTable {
            seq_lens: &self.seq_lens,
            block_table: &self.block_table,
            max_pages: self.max_pages,
            page: self.page,
        }
    }
}
/// The same kernel source on the host emulator (`gqla certify --kernel cuda-emu`).
pub type EmuKernel = DeviceKernel<Emulator>;

impl CudaKernel {
    /// Open GPU `ordinal` and compile the kernels for it.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        Ok(Self {
            rt: Gpu::open(ordinal)?,
            variant: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.rt
    }
}

impl EmuKernel {
    /// The kernels on the host emulator, spread over every core.
    pub fn emulated() -> Self {
        Self::on(Emulator::default())
    }

    /// The kernels on emulator `rt` (with its checking options).
    pub fn on(rt: Emulator) -> Self {
        Self { rt, variant: None }
    }
}

impl<R: Runtime> DeviceKernel<R> {
    /// Run every decode on attention kernel `variant` (cases it cannot run are NOT_SUPPORTED);
    /// None: the default choice per dtype ([`Variant::choose`]).
    pub fn with_variant(self, variant: impl Into<Option<Variant>>) -> Self {
        Self {
            variant: variant.into(),
            ..self
        }
    }

    /// Block table and sequence lengths on the device; a contiguous cache is one page of
    /// `capacity` per sequence.
    fn paging(&self, inp: &CaseInputs) -> Result<DevicePaging<R>, CudaError> {
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
        Ok(DevicePaging {
            seq_lens: self.rt.upload(if lens.is_empty() { &[0][..] } else { &lens })?,
            block_table: self.rt.upload(&table)?,
            max_pages,
            page,
            host_lens: lens,
            host_table: table,
        })
    }

    fn component(&self, inp: &CaseInputs, name: TensorName) -> Result<R::Buf<u8>, CudaError> {
        let values = inp
            .cache
            .component(name)
            .values()
            .ok_or_else(|| CudaError::Unsupported(format!("cache component `{name}` in FP8 records")))?;
        self.rt.upload(&encode_f32(inp.case.dtype(), values))
    }

    /// Copy back what the kernels may have written to a device input, so that the harness's
    /// digest sees a kernel that writes to its inputs.
    fn write_back(&self, d: DType, buf: &R::Buf<u8>, host: &mut Vec<f32>) -> Result<(), CudaError> {
        let bytes = self.rt.download(buf)?;
        if bytes != encode_f32(d, host) {
            *host = from_bytes(d, &bytes);
        }
        Ok(())
    }

    fn decode(&self, op: DecodeOp, inp: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), CudaError> {
        let c = &inp.case;
        let d = c.dtype();
        let names: Vec<TensorName> = inputs::components(c).iter().map(|(n, _)| *n).collect();
        let comps: Vec<R::Buf<u8>> = names.iter().map(|&n| self.component(inp, n)).collect::<Result<_, _>>()?;
        // Cache components by the names the operation's definition gives them.
        let at = |name: TensorName| names.iter().position(|n| *n == name).expect("a cache component of this case");
        let seg = |name: TensorName, row_stride: usize, head_stride: usize, width: usize| Segment {
            buf: &comps[at(name)],
            row_stride,
            head_stride,
            width,
        };
        let keys = match (op, c.layout()) {
            (DecodeOp::Absorb, _) => KeySource {
                key: seg(TensorName::Kv, c.dc() + c.dr(), 0, c.dc() + c.dr()),
                shared_key: None,
                value: None,
                dv: c.dc(),
                streams: 1,
            },
            (DecodeOp::Gqa, GroupCacheLayout::RopeOnce) => KeySource {
                key: seg(TensorName::KNope, c.g() * c.dn(), c.dn(), c.dn()),
                shared_key: Some(seg(TensorName::KRope, c.dr(), 0, c.dr())),
                value: Some(seg(TensorName::V, c.g() * c.dv(), c.dv(), c.dv())),
                dv: c.dv(),
                streams: c.g(),
            },
            (DecodeOp::Gqa, GroupCacheLayout::RopePerGroup) => KeySource {
                key: seg(TensorName::K, c.g() * (c.dn() + c.dr()), c.dn() + c.dr(), c.dn() + c.dr()),
                shared_key: None,
                value: Some(seg(TensorName::V, c.g() * c.dv(), c.dv(), c.dv())),
                dv: c.dv(),
                streams: c.g(),
            },
            (DecodeOp::PlainGqa, _) => KeySource {
                key: seg(TensorName::K, c.g() * c.dn(), c.dn(), c.dn()),
                shared_key: None,
                value: Some(seg(TensorName::V, c.g() * c.dv(), c.dv(), c.dv())),
                dv: c.dv(),
                streams: c.g(),
            },
        };
        let paging = self.paging(inp)?;
        let q = self.rt.upload(&encode_f32(d, &inp.q))?;
        let (n_out, n_lse) = (outputs.get(TensorName::Out)?.len(), outputs.get(TensorName::Lse)?.len());
        let mut out = guarded_output(&self.rt, d, n_out)?;
        let mut lse = guarded_output(&self.rt, DType::F32, n_lse)?;
        let variant = self.variant.unwrap_or_else(|| Variant::choose(&self.rt, d));
        let mut call = Decode {
            dtype: d,
            q: &q,
            keys,
            paging: paging.view(),
            batch: c.batch(),
            sq: c.sq(),
            h: c.h(),
            scale: inp.scale,
            num_splits: 1,
            variant,
            out: Guarded {
                buf: &mut out,
                margin: MARGIN,
            },
            lse: Guarded {
                buf: &mut lse,
                margin: MARGIN,
            },
        };
        // The case's split count, or the device's default for this shape.
        let longest = inp.cache.seq_lens.iter().copied().max().unwrap_or(0);
        call.num_splits = c.splits().unwrap_or_else(|| call.default_splits(&self.rt, longest));
        let mut ws = if call.num_splits > 1 {
            Some(launch::workspace(
                &self.rt,
                c.batch() * c.sq() * c.h(),
                call.keys.dv,
                call.num_splits,
            )?)
        } else {
            None
        };
        launch::check_addressing(
            &paging.host_lens,
            &paging.host_table,
            paging.max_pages,
            paging.page,
            call.cache_slots(),
        )?;
        // SAFETY: the addressing was checked above; the buffers live past the synchronize.
        unsafe { launch::decode(&self.rt, &mut call, ws.as_mut()) }?;
        self.rt.synchronize()?;
        collect(&self.rt, d, &out, outputs.get_mut(TensorName::Out)?)?;
        if outputs.has(TensorName::Lse) {
            collect(&self.rt, DType::F32, &lse, outputs.get_mut(TensorName::Lse)?)?;
        }
        self.write_back(d, &q, &mut inp.q)?;
        for (buf, name) in comps.iter().zip(&names) {
            let i = inp.cache.components.iter().position(|c| c.name == *name).expect("uploaded from it");
            if let Some(values) = inp.cache.components[i].values_mut() {
                self.write_back(d, buf, values)?;
            }
        }
        Ok(())
    }

    fn expand(&self, inp: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), CudaError> {
        let c = &inp.case;
        let d = c.dtype();
        let latent = self.component(inp, TensorName::Latent)?;
        let w = self.rt.upload(&encode_f32(d, &inp.w_ukv))?;
        let paging = self.paging(inp)?;
        let (mut tb, mut tt) = (Vec::new(), Vec::new());
        for b in 0..c.batch() {
            for t in 0..c.seq_len(b) {
                tb.push(b as i32);
                tt.push(t as i32);
            }
        }
        let n = tb.len();
        let tok_b = self.rt.upload(if n == 0 { &[0][..] } else { &tb })?;
        let tok_t = self.rt.upload(if n == 0 { &[0][..] } else { &tt })?;
        let mut k = guarded_output(&self.rt, d, outputs.get(TensorName::K)?.len())?;
        let mut v = guarded_output(&self.rt, d, outputs.get(TensorName::V)?.len())?;
        // Each row's length for the addressing check: its largest listed position + 1.
        let mut reach = vec![0i32; c.batch()];
        for (&b, &t) in tb.iter().zip(&tt) {
            reach[b as usize] = reach[b as usize].max(t + 1);
        }
        let latent_slots = R::len(&latent) / (c.dc().max(1) * d.size_in_bytes());
        launch::check_addressing(&reach, &paging.host_table, paging.max_pages, paging.page, latent_slots)?;
        // SAFETY: every token is (row, position) of a row below the batch, and the addressing was
        // checked above; the buffers live past the synchronize.
        unsafe {
            launch::expand_cache(
                &self.rt,
                d,
                &latent,
                &w,
                &Tokens {
                    sequences: &tok_b,
                    positions: &tok_t,
                    count: n,
                },
                &paging.view(),
                ExpandDims {
                    g: c.g(),
                    dc: c.dc(),
                    dn: c.dn(),
                    dv: c.dv(),
                },
                &mut Guarded {
                    buf: &mut k,
                    margin: MARGIN,
                },
                &mut Guarded {
                    buf: &mut v,
                    margin: MARGIN,
                },
            )
        }?;
        self.rt.synchronize()?;
        collect(&self.rt, d, &k, outputs.get_mut(TensorName::K)?)?;
        collect(&self.rt, d, &v, outputs.get_mut(TensorName::V)?)?;
        if let Some(values) = inp.cache.components[0].values_mut() {
            self.write_back(d, &latent, values)?;
        }
        self.write_back(d, &w, &mut inp.w_ukv)
    }
}

impl<R: Runtime> Kernel for DeviceKernel<R> {
    fn identity(&self) -> KernelIdentity {
        KernelIdentity {
            name: match self.variant {
                None => self.rt.kernel_name().into(),
                Some(v) => format!("{}-{}", self.rt.kernel_name(), v.name()),
            },
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!("gqla-cuda grouped-attention kernels (split-KV, paged) on {}", self.rt.description()),
        }
    }
    fn environment(&self) -> BTreeMap<String, String> {
        self.rt.environment()
    }
    /// Every case of the suite with its conventions, except that the tensor-core kernels take
    /// 16-bit storage only, and a kernel the runtime cannot run at all declares nothing.
    fn profile(&self) -> Profile {
        // FP8 caches: not read by the CUDA kernels yet (issue 33, step 5).
        let mut p = Profile::everything().without_fp8();
        if let Some(v) = self.variant {
            if v.missing(&self.rt).is_some() {
                p.operations.clear();
            }
            if v.tensor_cores() {
                p.dtypes.remove(&DType::F32);
            }
        }
        p
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        let r = self.rt.bind().and_then(|()| match inputs.case.op().kind() {
            OpKind::Cache(CacheOp::Expand) => self.expand(inputs, outputs),
            OpKind::Decode(op) => self.decode(op, inputs, outputs),
        });
        r.map_err(|e| match e {
            CudaError::Unsupported(why) => KernelError::Declined(why),
            other => KernelError::Runtime(other.to_string()),
        })
    }
}
