//! A flash-decoding kernel on the CPU: keys in `splits` chunks, an online softmax per chunk, and a
//! log-sum-exp merge — the structure of FlashMLA/FlashInfer decode kernels. [`Bug`] injects one
//! known failure mode at a time; the suite must reject every mutant.

use crate::case::{CacheOp, DecodeOp, GroupCacheLayout, OpKind};
use crate::definition::TensorName;
use crate::inputs::{CaseInputs, Paging};
use crate::kernel::{Kernel, KernelError, KernelIdentity, Outputs};
use crate::pack::{inputs_file, sha256_hex};
use crate::profile::Profile;
use gqla_reference::fp8::{Fp8, TiledRecord};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// Injectable bugs: the mutation catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Scale by 1/sqrt(key width) instead of the given scale.
    ScaleFromKeyWidth,
    /// Scores without the rope part of the key (missing RoPE term).
    RopeTermDropped,
    /// Head i reads group i % G instead of i / (H/G).
    GroupMapping,
    /// Values from the next group.
    ValueFromWrongGroup,
    /// Query j sees one key too many.
    CausalOffByOne,
    /// Top-left causal alignment (query j sees keys ≤ j).
    TopLeftAlignment,
    /// The last partial page is skipped.
    DropLastPartialPage,
    /// One key past the context is read (weight included).
    ReadPastContext,
    /// exp(s) without subtracting the running max.
    NoMaxSubtraction,
    /// The output accumulator is rounded to bf16 after every update.
    AccumulateInBf16,
    /// LSE in base 2.
    Log2Lse,
    /// Split partials merged without rescaling by e^{m_s − m}.
    SplitMergeNoRescale,
    /// Whole pages are processed with masked scores: 0 · NaN from poisoned slots leaks.
    NanLeakFromPoison,
    /// Outputs written head-major ([B, H, s_q]) instead of [B, s_q, H].
    TransposedHeads,
    /// In the per-group layout, the rope key read from the front of the group's key.
    RopeLayoutSwapped,
    /// An empty row returns NaN instead of 0 and −∞.
    EmptyRowNan,
    /// One element written past the end of the LSE tensor.
    OutOfBoundsWrite,
    /// Expand: value rows taken with the key rows' offsets.
    ExpandValueOffset,
    /// A panic on batches with a zero-length sequence.
    PanicOnEmptySequence,
    /// Splits chosen from the context length, but the last split dropped when it is shorter.
    SplitTailDropped,
    /// Each split normalised on its own and merged by e^{lse_s − lse}: an empty split's 0/0
    /// leaks NaN through its zero weight.
    EmptySplitNan,
    /// Keys past a sequence's length are read up to the end of its allocation and masked by
    /// testing for NaN instead of by length: right wherever dead memory is NaN.
    MaskByNan,
    /// Gaming: declines every case at run time ("unsupported").
    DeclineEverything,
    /// Gaming: answers from a table of outputs keyed by the SHA-256 of the inputs file, learned
    /// on the published suite (seed 0, whose digests the must-pass list publishes); anything else
    /// gets zeros.
    LookupTable,
    /// Gaming: computes the right answer, then writes to its inputs.
    WritesInputs,
    /// Gaming: computes each output shape once, then leaves the output buffer untouched for later
    /// cases of the same shape (as if it still held the previous case's answer).
    StaleOutput,
    /// FP8 tiled cache: the latent read without its scale (x = fp8).
    Fp8ScaleIgnored,
    /// FP8 tiled cache: each scale truncated to the power of two below it, 2^floor(log2 s), as a
    /// reader that only takes E8M0 scales does with an arbitrary-scale cache.
    Fp8ScaleTruncatedToPow2,
    /// FP8 tiled cache: the RoPE key's bytes read as FP8 under the last tile's scale, as if the
    /// whole record were quantized.
    Fp8RopeReadAsFp8,
    /// FP8 tiled cache: the last value of each tile scaled by the next tile's scale (a scale
    /// index off by one at the tile boundary).
    Fp8ScaleIndexOffByOne,
    /// Per-tensor FP8 on the GQA path: the values read with `k_scale` (`v_scale` ignored).
    Fp8KScaleOnValues,
    /// Per-tensor FP8: e4m3fnuz bytes read as e4m3fn (bias 7 instead of 8: every value doubled).
    Fp8FnuzReadAsFn,
}

impl Bug {
    pub const ALL: [Bug; 32] = [
        Bug::ScaleFromKeyWidth,
        Bug::RopeTermDropped,
        Bug::GroupMapping,
        Bug::ValueFromWrongGroup,
        Bug::CausalOffByOne,
        Bug::TopLeftAlignment,
        Bug::DropLastPartialPage,
        Bug::ReadPastContext,
        Bug::NoMaxSubtraction,
        Bug::AccumulateInBf16,
        Bug::Log2Lse,
        Bug::SplitMergeNoRescale,
        Bug::NanLeakFromPoison,
        Bug::TransposedHeads,
        Bug::RopeLayoutSwapped,
        Bug::EmptyRowNan,
        Bug::OutOfBoundsWrite,
        Bug::ExpandValueOffset,
        Bug::PanicOnEmptySequence,
        Bug::SplitTailDropped,
        Bug::EmptySplitNan,
        Bug::MaskByNan,
        Bug::DeclineEverything,
        Bug::LookupTable,
        Bug::WritesInputs,
        Bug::StaleOutput,
        Bug::Fp8ScaleIgnored,
        Bug::Fp8ScaleTruncatedToPow2,
        Bug::Fp8RopeReadAsFp8,
        Bug::Fp8ScaleIndexOffByOne,
        Bug::Fp8KScaleOnValues,
        Bug::Fp8FnuzReadAsFn,
    ];

    /// Whether the bug lies in reading an FP8 cache, so that only FP8 cases can show it (the
    /// mutation catalogue runs it on those alone: elsewhere it is the correct kernel).
    pub fn reads_fp8(self) -> bool {
        matches!(
            self,
            Bug::Fp8ScaleIgnored
                | Bug::Fp8ScaleTruncatedToPow2
                | Bug::Fp8RopeReadAsFp8
                | Bug::Fp8ScaleIndexOffByOne
                | Bug::Fp8KScaleOnValues
                | Bug::Fp8FnuzReadAsFn
        )
    }
}

/// The kernel; `bug: None` is the correct one.
pub struct FlashCpu {
    pub splits: usize,
    pub bug: Option<Bug>,
    /// [`Bug::StaleOutput`]: the output shapes computed so far.
    computed: Mutex<HashSet<Vec<usize>>>,
}

/// The inputs-file digests of the published suite (seed 0), which [`Bug::LookupTable`]
/// "learned": the must-pass list publishes them.
fn learned_digests() -> &'static HashSet<&'static str> {
    static TABLE: OnceLock<HashSet<&'static str>> = OnceLock::new();
    TABLE.get_or_init(|| crate::pack::published_digests().into_values().collect())
}

impl FlashCpu {
    pub fn correct(splits: usize) -> Self {
        Self {
            splits,
            bug: None,
            computed: Mutex::default(),
        }
    }
    /// The kernel with one bug of the catalogue.
    pub fn mutant(splits: usize, bug: Bug) -> Self {
        Self {
            bug: Some(bug),
            ..Self::correct(splits)
        }
    }
    fn has(&self, b: Bug) -> bool {
        self.bug == Some(b)
    }
}

/// The query being processed: sequence b, head i.
struct QueryRow<'a> {
    op: DecodeOp,
    b: usize,
    i: usize,
    q: &'a [f32],
}

/// The e4m3fn values of every byte (NaN for 0x7f and 0xff).
fn e4m3fn_table() -> &'static [f32; 256] {
    static E4M3FN: OnceLock<[f32; 256]> = OnceLock::new();
    E4M3FN.get_or_init(|| std::array::from_fn(|b| Fp8::E4m3fn.decode(b as u8) as f32))
}

/// The e4m3fnuz values of every byte (NaN for 0x80).
fn e4m3fnuz_table() -> &'static [f32; 256] {
    static E4M3FNUZ: OnceLock<[f32; 256]> = OnceLock::new();
    E4M3FNUZ.get_or_init(|| std::array::from_fn(|b| Fp8::E4m3fnuz.decode(b as u8) as f32))
}

impl FlashCpu {
    /// Row (b, t) of cache component `name` as this kernel reads it: values as stored; FP8
    /// dequantised on load (tiled records, or per-tensor bytes times their scale in f32).
    fn read_row<'a>(&self, inp: &'a CaseInputs, name: TensorName, b: usize, t: usize) -> std::borrow::Cow<'a, [f32]> {
        use std::borrow::Cow;
        let cache = &inp.cache;
        if let Some((fp8, scale, bytes)) = cache.per_tensor_row(name, b, t) {
            let table = match fp8 {
                Fp8::E4m3fnuz if !self.has(Bug::Fp8FnuzReadAsFn) => e4m3fnuz_table(),
                _ => e4m3fn_table(),
            };
            let scale = match inp.case.kv().per_tensor() {
                _ if self.has(Bug::Fp8ScaleIgnored) => 1.0,
                Some((_, k_scale, _)) if self.has(Bug::Fp8KScaleOnValues) => k_scale,
                _ => scale,
            };
            return Cow::Owned(bytes.iter().map(|&q| table[q as usize] * scale).collect());
        }
        match cache.record(name, b, t) {
            None => Cow::Borrowed(cache.row(name, b, t)),
            Some((record, bytes)) => Cow::Owned(self.dequantize(record, bytes)),
        }
    }

    /// A tiled FP8 record dequantised on load, as a GPU kernel does: each e4m3fn byte through a
    /// 256-entry table, times its tile's f32 scale in f32; the RoPE key widened from bf16.
    fn dequantize(&self, record: &TiledRecord, bytes: &[u8]) -> Vec<f32> {
        let table = e4m3fn_table();
        assert_eq!(record.fp8(), Fp8::E4m3fn, "tiled records are e4m3fn");
        let tiles = record.tiles();
        let scale = |t: usize| {
            let s = record.scale(bytes, t);
            if self.has(Bug::Fp8ScaleIgnored) {
                1.0
            } else if self.has(Bug::Fp8ScaleTruncatedToPow2) {
                f32::from_bits(s.to_bits() & 0xff80_0000)
            } else {
                s
            }
        };
        let mut row = Vec::with_capacity(record.d_c() + record.d_r());
        for t in 0..tiles {
            let s = scale(t);
            row.extend(
                bytes[t * record.tile()..(t + 1) * record.tile()]
                    .iter()
                    .map(|&q| table[q as usize] * s),
            );
            if self.has(Bug::Fp8ScaleIndexOffByOne) && t + 1 < tiles {
                let last = (t + 1) * record.tile() - 1;
                row[last] = table[bytes[last] as usize] * scale(t + 1);
            }
        }
        let rope = &bytes[record.rope_offset()..record.bytes()];
        if self.has(Bug::Fp8RopeReadAsFp8) {
            let s = scale(tiles - 1);
            row.extend(rope[..record.d_r()].iter().map(|&q| table[q as usize] * s));
        } else {
            row.extend(
                rope.chunks_exact(2)
                    .map(|h| half::bf16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32()),
            );
        }
        row
    }
}

/// One chunk's online-softmax state.
struct Partial {
    m: f32,
    l: f32,
    acc: Vec<f32>,
}

/// The [`Bug::EmptySplitNan`] merge: each split is normalised (acc/l, which is 0/0 for an empty
/// split) before the merge weighs it back; an empty split's weight is 0, but 0·NaN is NaN.
fn normalise_each(parts: &mut [Partial]) {
    for p in parts {
        let l = p.l;
        p.acc.iter_mut().for_each(|a| *a = *a / l * l);
    }
}

impl FlashCpu {
    fn key_value(&self, op: DecodeOp, inp: &CaseInputs, b: usize, t: usize, i: usize) -> (Vec<f32>, Vec<f32>) {
        let c = &inp.case;
        match op {
            DecodeOp::Absorb => {
                let row = self.read_row(inp, TensorName::Kv, b, t);
                let mut k = row.to_vec();
                if self.has(Bug::RopeTermDropped) {
                    k[c.dc()..].iter_mut().for_each(|v| *v = 0.0);
                }
                (k, row[..c.dc()].to_vec())
            }
            DecodeOp::Gqa | DecodeOp::PlainGqa => {
                let per = c.h() / c.g();
                let g = if self.has(Bug::GroupMapping) { i % c.g() } else { i / per };
                let gv = if self.has(Bug::ValueFromWrongGroup) { (g + 1) % c.g() } else { g };
                let v = self.read_row(inp, TensorName::V, b, t)[gv * c.dv()..(gv + 1) * c.dv()].to_vec();
                let k = if op == DecodeOp::PlainGqa {
                    self.read_row(inp, TensorName::K, b, t)[g * c.dn()..(g + 1) * c.dn()].to_vec()
                } else {
                    match c.layout() {
                        GroupCacheLayout::RopeOnce => {
                            let mut k = self.read_row(inp, TensorName::KNope, b, t)[g * c.dn()..(g + 1) * c.dn()].to_vec();
                            let rope = self.read_row(inp, TensorName::KRope, b, t);
                            k.extend(rope.iter().map(|v| if self.has(Bug::RopeTermDropped) { 0.0 } else { *v }));
                            k
                        }
                        GroupCacheLayout::RopePerGroup => {
                            let row = &self.read_row(inp, TensorName::K, b, t)[g * (c.dn() + c.dr())..(g + 1) * (c.dn() + c.dr())];
                            if self.has(Bug::RopeLayoutSwapped) {
                                row[c.dr()..].iter().chain(&row[..c.dr()]).copied().collect()
                            } else {
                                let mut k = row.to_vec();
                                if self.has(Bug::RopeTermDropped) {
                                    k[c.dn()..].iter_mut().for_each(|v| *v = 0.0);
                                }
                                k
                            }
                        }
                    }
                };
                (k, v)
            }
        }
    }

    /// Online softmax of query row `row` over keys `keys`; keys from `valid` on are masked.
    fn chunk(&self, inp: &CaseInputs, row: &QueryRow, keys: std::ops::Range<usize>, valid: usize, scale: f32) -> Partial {
        let (b, i, q) = (row.b, row.i, row.q);
        let dout = inp.case.out_width();
        let mut p = Partial {
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: vec![0.0; dout],
        };
        let len = inp.case.seq_len(b);
        for t in keys {
            let (k, v) = self.key_value(row.op, inp, b, t, i);
            if self.has(Bug::MaskByNan) && t >= len && k.iter().chain(&v).any(|x| x.is_nan()) {
                continue;
            }
            let mut s = scale * q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>();
            if t >= valid && !(self.has(Bug::MaskByNan) && t >= len) {
                s = f32::NEG_INFINITY; // masked, but its value row is still multiplied in
            }
            let (m_new, w, rescale) = if self.has(Bug::NoMaxSubtraction) {
                (0.0, s.exp(), 1.0)
            } else {
                let m_new = p.m.max(s);
                let rescale = if p.m == f32::NEG_INFINITY { 0.0 } else { (p.m - m_new).exp() };
                (m_new, if s == f32::NEG_INFINITY { 0.0 } else { (s - m_new).exp() }, rescale)
            };
            p.l = p.l * rescale + w;
            for (a, x) in p.acc.iter_mut().zip(&v) {
                *a = *a * rescale + w * x;
                if self.has(Bug::AccumulateInBf16) {
                    *a = half::bf16::from_f32(*a).to_f32();
                }
            }
            p.m = m_new;
        }
        p
    }

    fn decode(&self, op: DecodeOp, inp: &CaseInputs, out: &mut Outputs) -> Result<(), KernelError> {
        let c = &inp.case;
        let (batch, sq, h, dout) = (c.batch(), c.sq(), c.h(), c.out_width());
        let scale = if self.has(Bug::ScaleFromKeyWidth) {
            1.0 / (c.q_width() as f32).sqrt()
        } else {
            inp.scale
        };
        let page = match inp.cache.paging {
            Paging::Paged { page, .. } => Some(page),
            Paging::Contiguous { .. } => None,
        };
        let mut o = vec![0.0f32; batch * sq * h * dout];
        let mut lse = vec![0.0f32; batch * sq * h];
        for b in 0..batch {
            if self.has(Bug::PanicOnEmptySequence) && c.seq_len(b) <= c.sq() {
                panic!("sequence {b} is empty");
            }
            for j in 0..sq {
                let mut valid = if self.has(Bug::TopLeftAlignment) {
                    (j + 1).min(c.seq_len(b))
                } else {
                    c.visible(b, j)
                };
                if (self.has(Bug::CausalOffByOne) || self.has(Bug::ReadPastContext)) && c.seq_len(b) > 0 {
                    valid += 1;
                }
                if self.has(Bug::DropLastPartialPage) {
                    if let Some(p) = page {
                        valid -= valid % p;
                    }
                }
                // Keys actually visited: whole pages when leaking (masked beyond `valid`).
                let end = match (self.has(Bug::NanLeakFromPoison), page) {
                    (true, Some(p)) => valid.div_ceil(p) * p,
                    (true, None) => valid + 1,
                    _ => valid,
                };
                // Past the length to the end of the allocation: the last page, or the capacity.
                let end = match (&inp.cache.paging, self.has(Bug::MaskByNan)) {
                    (Paging::Paged { page, .. }, true) => c.seq_len(b).div_ceil(*page) * page,
                    (Paging::Contiguous { capacity }, true) => *capacity,
                    _ => end,
                };
                // The requested split count, even when it leaves splits empty (short rows).
                let splits = c.splits().unwrap_or(self.splits).max(1);
                let bounds: Vec<usize> = (0..=splits).map(|s| s * end / splits).collect();
                for i in 0..h {
                    let row = QueryRow {
                        op,
                        b,
                        i,
                        q: inp.q_row(b, j, i),
                    };
                    let mut parts: Vec<Partial> = bounds.windows(2).map(|w| self.chunk(inp, &row, w[0]..w[1], valid, scale)).collect();
                    if self.has(Bug::SplitTailDropped) && parts.len() > 1 && end % splits != 0 {
                        parts.pop();
                    }
                    let m = parts.iter().map(|p| p.m).fold(f32::NEG_INFINITY, f32::max);
                    let mut l = 0.0;
                    let mut acc = vec![0.0f32; dout];
                    if self.has(Bug::EmptySplitNan) {
                        normalise_each(&mut parts);
                    }
                    for p in &parts {
                        let f = if self.has(Bug::SplitMergeNoRescale) || p.m == f32::NEG_INFINITY {
                            if p.m == f32::NEG_INFINITY {
                                0.0
                            } else {
                                1.0
                            }
                        } else {
                            (p.m - m).exp()
                        };
                        l += p.l * f;
                        for (a, x) in acc.iter_mut().zip(&p.acc) {
                            *a += x * f;
                        }
                    }
                    let row = if self.has(Bug::TransposedHeads) {
                        (b * h + i) * sq + j
                    } else {
                        (b * sq + j) * h + i
                    };
                    let empty = m == f32::NEG_INFINITY && !self.has(Bug::NoMaxSubtraction) || l == 0.0;
                    for (d, a) in o[row * dout..(row + 1) * dout].iter_mut().zip(&acc) {
                        *d = if empty {
                            if self.has(Bug::EmptyRowNan) {
                                f32::NAN
                            } else {
                                0.0
                            }
                        } else {
                            a / l
                        };
                    }
                    lse[row] = if empty {
                        if self.has(Bug::EmptyRowNan) {
                            f32::NAN
                        } else {
                            f32::NEG_INFINITY
                        }
                    } else {
                        let e = m + l.ln();
                        if self.has(Bug::Log2Lse) {
                            e / std::f32::consts::LN_2
                        } else {
                            e
                        }
                    };
                }
            }
        }
        for (dst, v) in out.get_mut(TensorName::Out)?.region_mut().iter_mut().zip(&o) {
            *dst = c.dtype().round_f32(*v);
        }
        if out.has(TensorName::Lse) {
            out.get_mut(TensorName::Lse)?.region_mut().copy_from_slice(&lse);
        }
        if self.has(Bug::OutOfBoundsWrite) {
            let (buf, offset) = out.get_mut(TensorName::Lse)?.with_margins_mut();
            buf[offset + lse.len()] = 0.0;
        }
        Ok(())
    }

    fn expand(&self, inp: &CaseInputs, out: &mut Outputs) -> Result<(), KernelError> {
        let c = &inp.case;
        let per = c.dn() + c.dv();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for b in 0..c.batch() {
            for t in 0..c.seq_len(b) {
                let latent = inp.cache.row(TensorName::Latent, b, t);
                for g in 0..c.g() {
                    for r in 0..per {
                        let row = if self.has(Bug::ExpandValueOffset) && r >= c.dn() {
                            r - c.dn()
                        } else {
                            r
                        };
                        let w = &inp.w_ukv[(g * per + row) * c.dc()..(g * per + row + 1) * c.dc()];
                        let y = c.dtype().round_f32(w.iter().zip(latent).map(|(a, b)| a * b).sum::<f32>());
                        if r < c.dn() {
                            k.push(y)
                        } else {
                            v.push(y)
                        }
                    }
                }
            }
        }
        out.get_mut(TensorName::K)?.region_mut().copy_from_slice(&k);
        out.get_mut(TensorName::V)?.region_mut().copy_from_slice(&v);
        Ok(())
    }
}

impl Kernel for FlashCpu {
    fn identity(&self) -> KernelIdentity {
        let name = match self.bug {
            None => "flash-cpu".to_string(),
            Some(b) => format!("flash-cpu-mutant-{b:?}"),
        };
        KernelIdentity {
            name,
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!(
                "flash-decoding on the CPU, {} KV splits unless the case asks for a count",
                self.splits
            ),
        }
    }
    fn profile(&self) -> Profile {
        Profile::everything()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        if self.has(Bug::DeclineEverything) {
            return Err(KernelError::Declined("this kernel supports nothing".into()));
        }
        if self.has(Bug::LookupTable) && !learned_digests().contains(sha256_hex(&inputs_file(inputs)).as_str()) {
            outputs.tensors.iter_mut().for_each(|t| t.region_mut().fill(0.0));
            return Ok(());
        }
        if self.has(Bug::StaleOutput) {
            let shapes: Vec<usize> = outputs.tensors.iter().flat_map(|t| t.shape.clone()).collect();
            if !self.computed.lock().expect("not poisoned").insert(shapes) {
                return Ok(());
            }
        }
        match inputs.case.op().kind() {
            OpKind::Cache(CacheOp::Expand) => self.expand(inputs, outputs)?,
            OpKind::Decode(op) => self.decode(op, inputs, outputs)?,
        }
        if self.has(Bug::WritesInputs) {
            if let Some(values) = inputs.cache.components.first_mut().and_then(|c| c.values_mut()) {
                values.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0);
            }
            inputs.q.iter_mut().take(1).for_each(|x| *x += 1.0);
        }
        Ok(())
    }
}
