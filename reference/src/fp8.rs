//! FP8 KV caches, exactly: the element types, the scale rules, and the two cache record formats
//! production MLA decodes (FlashMLA's tiled record, DeepSeek-V3.2's `ds_mla_656`, generalised to
//! any tile size; and vLLM/FlashInfer's per-tensor FP8).
//!
//! Dequantisation multiplies, x = fp8 × s, and is exact in f64 (a 4-bit significand times an f32
//! scale). The writers are the reference quantizers a kernel's writer is judged against bit for
//! bit: x / s in f32, then the cast PyTorch's `.to(float8_e4m3fn)` performs (round to nearest
//! even; past the format's range NaN, which is why per-tensor writers clamp first).

use crate::error::{Error, Result};
use half::bf16;

/// An FP8 element type. The conversions are `microfloat`'s, which follow ml-dtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fp8 {
    /// OCP E4M3 (`float8_e4m3fn`): bias 7, no infinities, NaN at S.1111.111, max 448.
    E4m3fn,
    /// AMD's E4M3 (`float8_e4m3fnuz`, ROCm MI300): bias 8, no infinities and no −0, NaN at
    /// 0x80 alone, max 240.
    E4m3fnuz,
}

impl Fp8 {
    pub const ALL: [Fp8; 2] = [Fp8::E4m3fn, Fp8::E4m3fnuz];

    pub fn name(self) -> &'static str {
        match self {
            Fp8::E4m3fn => "e4m3fn",
            Fp8::E4m3fnuz => "e4m3fnuz",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
    /// The byte of NaN (what poison holds).
    pub fn nan(self) -> u8 {
        match self {
            Fp8::E4m3fn => 0x7f,
            Fp8::E4m3fnuz => 0x80,
        }
    }

    /// The largest finite value: the constant a quantizer divides amax by.
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4m3fn => 448.0,
            Fp8::E4m3fnuz => 240.0,
        }
    }

    /// The value a byte holds, exactly; NaN for the NaN codes. From a table of microfloat's
    /// conversions, built once (the references decode every cached value).
    pub fn decode(self, byte: u8) -> f64 {
        static TABLES: std::sync::OnceLock<[[f64; 256]; 2]> = std::sync::OnceLock::new();
        let tables = TABLES.get_or_init(|| {
            [
                std::array::from_fn(|b| microfloat::f8e4m3fn::from_bits(b as u8).to_f64()),
                std::array::from_fn(|b| microfloat::f8e4m3fnuz::from_bits(b as u8).to_f64()),
            ]
        });
        tables[self as usize][byte as usize]
    }

    /// `x` cast to this type as PyTorch casts an f32: to the nearest value, ties to even; NaN
    /// past the range (from max + half an ulp on) and for NaN.
    pub fn encode(self, x: f32) -> u8 {
        match self {
            // The tie between max (448, even code) and the missing 480 goes to max, as PyTorch
            // and ml-dtypes cast it; microfloat 0.1.3 gives NaN there (measured against
            // ml-dtypes 0.7.0 on 4 million values: ±464 are its only differences).
            Fp8::E4m3fn if x.abs() == 464.0 => microfloat::f8e4m3fn::from_f32(448f32.copysign(x)).to_bits(),
            Fp8::E4m3fn => microfloat::f8e4m3fn::from_f32(x).to_bits(),
            Fp8::E4m3fnuz => microfloat::f8e4m3fnuz::from_f32(x).to_bits(),
        }
    }

    /// `x` clamped to ±max, then cast: the per-tensor writers' saturating conversion (vLLM,
    /// FlashInfer). NaN stays NaN.
    pub fn encode_clamped(self, x: f32) -> u8 {
        self.encode(x.clamp(-self.max(), self.max()))
    }
}

/// FlashMLA's floor on amax / max before the power of two is taken (tests/quant.py; "aligned
/// with HFAI FP8's FP8_AMAX_MARGIN"). An all-zero tile gets 2^-13.
pub const POW2_FLOOR: f32 = 1e-4;

/// FlashMLA's tile scale: s = 2^ceil(log2(max(amax / max, 1e-4))), the quotient and the floor in
/// f32. Taken here as the smallest power of two ≥ that f32 value, from its bits: exact where a
/// `log2f` may round a value just above a power of two down to it.
pub fn pow2_scale(amax: f32, fp8: Fp8) -> f32 {
    let bits = quotient(amax, fp8).to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    // Normal and positive (the floor keeps it so); a mantissa past the leading one rounds up.
    let k = if bits & 0x7f_ffff == 0 { exponent } else { exponent + 1 };
    2f32.powi(k)
}

/// A tile's amax over the format's max, floored at [`POW2_FLOOR`], in f32: the value its scale
/// covers (exactly, or rounded up to a power of two).
fn quotient(amax: f32, fp8: Fp8) -> f32 {
    (amax / fp8.max()).max(POW2_FLOOR)
}

/// The largest magnitude of a tile.
fn amax(tile: &[f32]) -> f32 {
    tile.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// How a writer chooses a tile's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScaleRule {
    /// A power of two: [`pow2_scale`] (FlashMLA's quantizer; E8M0-representable).
    Pow2,
    /// amax / max in f32, any value (a writer that does not round scales; FlashInfer's
    /// `arbitrary_fp32`). An all-zero tile takes the floor [`POW2_FLOOR`] / max's quotient floor.
    Amax,
}

impl ScaleRule {
    pub const ALL: [ScaleRule; 2] = [ScaleRule::Pow2, ScaleRule::Amax];
    /// As case ids and profiles spell it.
    pub fn name(self) -> &'static str {
        match self {
            ScaleRule::Pow2 => "pow2",
            ScaleRule::Amax => "amax",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
    /// The scale of a tile whose largest magnitude is `amax`.
    pub fn scale(self, amax: f32, fp8: Fp8) -> f32 {
        match self {
            ScaleRule::Pow2 => pow2_scale(amax, fp8),
            ScaleRule::Amax => quotient(amax, fp8),
        }
    }
}

/// The tiled FP8 record of one token: `d_c` FP8 latent values, then one little-endian f32 scale
/// per `tile` consecutive latent values, then `d_r` bf16 RoPE-key values, unquantized. FlashMLA's
/// `ds_mla_656` (DeepSeek-V3.2) is d_c = 512, tile = 128, d_r = 64: 512 + 16 + 128 = 656 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TiledRecord {
    d_c: usize,
    tile: usize,
    d_r: usize,
    fp8: Fp8,
    rule: ScaleRule,
}

impl TiledRecord {
    /// FlashMLA's record for DeepSeek-V3.2.
    pub const DS_MLA_656: TiledRecord = TiledRecord {
        d_c: 512,
        tile: 128,
        d_r: 64,
        fp8: Fp8::E4m3fn,
        rule: ScaleRule::Pow2,
    };

    /// A record format; the tile must divide d_c.
    pub fn new(d_c: usize, tile: usize, d_r: usize, fp8: Fp8, rule: ScaleRule) -> Result<Self> {
        if d_c == 0 || tile == 0 || !d_c.is_multiple_of(tile) {
            return Err(Error::OutOfRange {
                name: "tile",
                value: tile,
                expected: format!("a positive divisor of d_c = {d_c}"),
            });
        }
        Ok(Self { d_c, tile, d_r, fp8, rule })
    }

    pub fn d_c(&self) -> usize {
        self.d_c
    }
    pub fn tile(&self) -> usize {
        self.tile
    }
    pub fn d_r(&self) -> usize {
        self.d_r
    }
    pub fn fp8(&self) -> Fp8 {
        self.fp8
    }
    pub fn rule(&self) -> ScaleRule {
        self.rule
    }
    pub fn tiles(&self) -> usize {
        self.d_c / self.tile
    }
    /// Byte offset of the scales (the latent's bytes come first).
    pub fn scales_offset(&self) -> usize {
        self.d_c
    }
    /// Byte offset of the RoPE key.
    pub fn rope_offset(&self) -> usize {
        self.d_c + 4 * self.tiles()
    }
    /// Bytes per token: the token stride within a page.
    pub fn bytes(&self) -> usize {
        self.rope_offset() + 2 * self.d_r
    }

    /// Quantize one token, `c` [d_c] and `k_rope` [d_r], into `record` [bytes]: per tile the
    /// scale of its amax, then each value divided by it in f32 and cast.
    pub fn write(&self, c: &[f32], k_rope: &[bf16], record: &mut [u8]) {
        assert_eq!(
            (c.len(), k_rope.len(), record.len()),
            (self.d_c, self.d_r, self.bytes()),
            "record shape"
        );
        for (t, tile) in c.chunks(self.tile).enumerate() {
            let s = self.rule.scale(amax(tile), self.fp8);
            let at = self.scales_offset() + 4 * t;
            record[at..at + 4].copy_from_slice(&s.to_le_bytes());
            for (i, x) in tile.iter().enumerate() {
                record[t * self.tile + i] = self.fp8.encode(x / s);
            }
        }
        for (i, v) in k_rope.iter().enumerate() {
            let at = self.rope_offset() + 2 * i;
            record[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }

    /// The scale of tile `t` as the record stores it.
    pub fn scale(&self, record: &[u8], t: usize) -> f32 {
        let at = self.scales_offset() + 4 * t;
        f32::from_le_bytes(record[at..at + 4].try_into().expect("four bytes"))
    }

    /// Dequantize one record, exactly: c_i = fp8_i × s_tile(i), k^R as its bf16 values.
    pub fn read(&self, record: &[u8], c: &mut [f64], k_rope: &mut [f64]) {
        assert_eq!(
            (c.len(), k_rope.len(), record.len()),
            (self.d_c, self.d_r, self.bytes()),
            "record shape"
        );
        for (i, v) in c.iter_mut().enumerate() {
            *v = self.fp8.decode(record[i]) * self.scale(record, i / self.tile) as f64;
        }
        for (i, v) in k_rope.iter_mut().enumerate() {
            let at = self.rope_offset() + 2 * i;
            *v = bf16::from_bits(u16::from_le_bytes([record[at], record[at + 1]])).to_f64();
        }
    }
}

impl TiledRecord {
    /// Dequantize one record as a kernel that multiplies in f32 does: c_i = f32(fp8_i) × s in
    /// f32, rounded once (exact when s is a power of two, as every e4m3 value times 2^k within
    /// f32's range is an f32).
    pub fn read_f32(&self, record: &[u8], c: &mut [f32], k_rope: &mut [f32]) {
        assert_eq!(
            (c.len(), k_rope.len(), record.len()),
            (self.d_c, self.d_r, self.bytes()),
            "record shape"
        );
        for (t, tile) in c.chunks_mut(self.tile).enumerate() {
            let s = self.scale(record, t);
            for (i, v) in tile.iter_mut().enumerate() {
                *v = self.fp8.decode(record[t * self.tile + i]) as f32 * s;
            }
        }
        for (i, v) in k_rope.iter_mut().enumerate() {
            let at = self.rope_offset() + 2 * i;
            *v = bf16::from_bits(u16::from_le_bytes([record[at], record[at + 1]])).to_f32();
        }
    }

    /// Dequantize one record as FlashMLA's SM90 kernel does: the FP8 value (exact in bf16) times
    /// the scale rounded to bf16, the product rounded to bf16. Exact for power-of-two scales.
    pub fn read_bf16_scales(&self, record: &[u8], c: &mut [f32], k_rope: &mut [f32]) {
        self.read_f32(record, c, k_rope);
        for (t, tile) in c.chunks_mut(self.tile).enumerate() {
            let s = bf16::from_f32(self.scale(record, t)).to_f32();
            for (i, v) in tile.iter_mut().enumerate() {
                *v = bf16::from_f32(self.fp8.decode(record[t * self.tile + i]) as f32 * s).to_f32();
            }
        }
    }

    /// Fill a record a correct reader never reads with NaN in every field: the FP8 NaN code for
    /// each latent value, NaN scales, bf16 NaN RoPE values (all-ones bytes would be finite
    /// scales).
    pub fn poison(&self, record: &mut [u8]) {
        assert_eq!(record.len(), self.bytes(), "record shape");
        record[..self.d_c].fill(self.fp8.nan());
        for t in 0..self.tiles() {
            let at = self.scales_offset() + 4 * t;
            record[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        for i in 0..self.d_r {
            let at = self.rope_offset() + 2 * i;
            record[at..at + 2].copy_from_slice(&bf16::NAN.to_bits().to_le_bytes());
        }
    }
}

/// Where a byte of a tiled record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordField {
    /// Latent value `index` (of tile `index / tile`).
    Latent { index: usize },
    /// Byte `byte` (0..4) of tile `tile`'s f32 scale.
    Scale { tile: usize, byte: usize },
    /// Byte `byte` (0..2) of RoPE-key value `index`.
    Rope { index: usize, byte: usize },
}

/// The first byte where a written record differs from the reference writer's.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordMismatch {
    pub offset: usize,
    pub field: RecordField,
    pub got: u8,
    pub want: u8,
}

/// How far above a power of two FlashMLA's f32 `log2` may round a tile's amax/max down to it
/// (measured: one f32 ulp, docs/results/2026-12-07-fp8-casts-and-scales.md); 2^-20 leaves room
/// for other `log2f`s.
pub const POW2_SLACK: f64 = 1.0 / (1u64 << 20) as f64;

impl TiledRecord {
    /// What lies at byte `offset` of a record.
    pub fn field(&self, offset: usize) -> RecordField {
        if offset < self.scales_offset() {
            RecordField::Latent { index: offset }
        } else if offset < self.rope_offset() {
            let o = offset - self.scales_offset();
            RecordField::Scale { tile: o / 4, byte: o % 4 }
        } else {
            let o = offset - self.rope_offset();
            RecordField::Rope { index: o / 2, byte: o % 2 }
        }
    }

    /// Judge a record a writer produced for the token (`c`, `k_rope`) against the reference
    /// writer, bit for bit. One allowance, for power-of-two scales only: a tile whose amax/max v
    /// lies within [`POW2_SLACK`] above a power of two p may be written at scale p (where the
    /// exact rule gives 2p), as FlashMLA's f32 `log2().ceil()` does; its bytes are then judged
    /// against the reference's write at p. Returns the tiles written so.
    pub fn check(&self, c: &[f32], k_rope: &[bf16], written: &[u8]) -> std::result::Result<Vec<usize>, RecordMismatch> {
        let mut want = vec![0u8; self.bytes()];
        self.write(c, k_rope, &mut want);
        assert_eq!(written.len(), want.len(), "record shape");
        let mismatch = |offset: usize, want: u8| RecordMismatch {
            offset,
            field: self.field(offset),
            got: written[offset],
            want,
        };
        // The first byte in `range` where the record differs from `expected` (that range's bytes).
        let first_difference =
            |range: std::ops::Range<usize>, expected: &[u8]| range.clone().find(|&i| written[i] != expected[i - range.start]);
        let mut halved = Vec::new();
        for (t, tile) in c.chunks(self.tile).enumerate() {
            let latent = t * self.tile..(t + 1) * self.tile;
            let scale = self.scales_offset() + 4 * t..self.scales_offset() + 4 * t + 4;
            let differs =
                first_difference(scale.clone(), &want[scale.clone()]).or_else(|| first_difference(latent.clone(), &want[latent.clone()]));
            let Some(first) = differs else { continue };
            // The allowance: the same tile written at half the exact rule's scale.
            let half = self.scale(&want, t) / 2.0;
            if self.rule == ScaleRule::Pow2 && quotient(amax(tile), self.fp8) as f64 <= half as f64 * (1.0 + POW2_SLACK) {
                let alt_latent: Vec<u8> = tile.iter().map(|x| self.fp8.encode(x / half)).collect();
                if first_difference(scale.clone(), &half.to_le_bytes()).is_none() && first_difference(latent.clone(), &alt_latent).is_none()
                {
                    halved.push(t);
                    continue;
                }
            }
            return Err(mismatch(first, want[first]));
        }
        let rope = self.rope_offset()..self.bytes();
        if let Some(i) = rope.clone().find(|&i| written[i] != want[i]) {
            return Err(mismatch(i, want[i]));
        }
        Ok(halved)
    }
}

/// Per-tensor FP8 (vLLM `kv_cache_dtype=fp8`, FlashInfer's trtllm MLA decode): every value of a
/// layer's cache in FP8 against one f32 scale, written as clamp(x / scale, ±max) and cast.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerTensor {
    fp8: Fp8,
    scale: f32,
}

impl PerTensor {
    /// The scale must be finite and positive.
    pub fn new(fp8: Fp8, scale: f32) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Value {
                what: "the per-tensor FP8 scale".into(),
                value: scale as f64,
                expected: "a finite positive f32",
            });
        }
        Ok(Self { fp8, scale })
    }
    pub fn fp8(&self) -> Fp8 {
        self.fp8
    }
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// One value as the writer stores it.
    pub fn write(&self, x: f32) -> u8 {
        self.fp8.encode_clamped(x / self.scale)
    }
    /// One stored value, exactly: fp8 × scale.
    pub fn read(&self, byte: u8) -> f64 {
        self.fp8.decode(byte) * self.scale as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// The value of a code from the format's definition: sign, 4 exponent bits (bias 7 or 8),
    /// 3 mantissa bits, subnormals at the lowest exponent; the NaN codes as None.
    fn by_definition(fp8: Fp8, byte: u8) -> Option<f64> {
        let (sign, exp, man) = (byte >> 7, ((byte >> 3) & 0xf) as i32, (byte & 7) as f64);
        let bias = match fp8 {
            Fp8::E4m3fn if byte & 0x7f == 0x7f => return None,
            Fp8::E4m3fnuz if byte == 0x80 => return None,
            Fp8::E4m3fn => 7,
            Fp8::E4m3fnuz => 8,
        };
        let magnitude = if exp == 0 {
            man / 8.0 * 2f64.powi(1 - bias)
        } else {
            (1.0 + man / 8.0) * 2f64.powi(exp - bias)
        };
        Some(if sign == 1 { -magnitude } else { magnitude })
    }

    /// The finite values of a format, with their codes.
    fn finite(fp8: Fp8) -> Vec<(u8, f64)> {
        (0..=255u8).filter_map(|b| by_definition(fp8, b).map(|v| (b, v))).collect()
    }

    #[test]
    fn every_code_decodes_as_the_format_defines_it() {
        for fp8 in Fp8::ALL {
            for b in 0..=255u8 {
                match by_definition(fp8, b) {
                    None => assert!(fp8.decode(b).is_nan(), "{fp8:?} {b:#04x}"),
                    Some(v) => assert_eq!(fp8.decode(b), v, "{fp8:?} {b:#04x}"),
                }
            }
            let max = finite(fp8).iter().map(|(_, v)| *v).fold(0.0, f64::max);
            assert_eq!(max, fp8.max() as f64, "{fp8:?}");
        }
        // fnuz has one zero; fn two.
        assert_eq!(finite(Fp8::E4m3fnuz).iter().filter(|(_, v)| *v == 0.0).count(), 1);
        assert_eq!(finite(Fp8::E4m3fn).iter().filter(|(_, v)| *v == 0.0).count(), 2);
    }

    /// The oracle: the nearest value, ties to the even code, among the finite values and the
    /// one past max that the format lacks (480 for fn, code 0x7f, odd; 256 for fnuz, the code
    /// 0x80 that an exponent carry would give, even): rounding to it is NaN (None).
    fn nearest(fp8: Fp8, x: f32) -> Option<u8> {
        let x = x as f64;
        let past = match fp8 {
            Fp8::E4m3fn => (0x7f, 480.0f64),
            Fp8::E4m3fnuz => (0x80, 256.0),
        };
        let mut candidates: Vec<(u8, Option<f64>)> = finite(fp8).into_iter().map(|(b, v)| (b, Some(v))).collect();
        candidates.push((past.0, None));
        let value = |c: &(u8, Option<f64>)| c.1.unwrap_or(past.1.copysign(x));
        let mut best = candidates[0];
        for c in candidates.iter().skip(1) {
            let (d, bd) = ((value(c) - x).abs(), (value(&best) - x).abs());
            if d < bd || (d == bd && c.0 % 2 == 0 && best.0 % 2 == 1) {
                best = *c;
            }
        }
        best.1.map(|_| best.0)
    }

    proptest! {
        /// Casting rounds to the nearest value, ties to even, and past the range gives NaN.
        #[test]
        fn encode_rounds_to_nearest_even(mantissa in -1.0f32..1.0, exponent in -12i32..10) {
            let x = mantissa * 2f32.powi(exponent);
            for fp8 in Fp8::ALL {
                let got = fp8.encode(x);
                match nearest(fp8, x) {
                    None => prop_assert!(fp8.decode(got).is_nan(), "{fp8:?} {x}: {got:#04x}"),
                    Some(want) => prop_assert_eq!(fp8.decode(got), fp8.decode(want), "{:?} {}", fp8, x),
                }
            }
        }
    }

    #[test]
    fn ties_go_to_even_and_overflow_is_nan_unless_clamped() {
        for fp8 in Fp8::ALL {
            let values = finite(fp8);
            for pair in values.windows(2) {
                let ((b0, v0), (b1, v1)) = (pair[0], pair[1]);
                if v0 >= 0.0 && v1 > v0 && (b1 == b0 + 1) {
                    let mid = ((v0 + v1) / 2.0) as f32;
                    let even = if b0 % 2 == 0 { v0 } else { v1 };
                    assert_eq!(fp8.decode(fp8.encode(mid)), even, "{fp8:?} midpoint {mid}");
                }
            }
            let max = fp8.max();
            // The tie between max and the value past it: 464 goes to 448 (even code 0x7e);
            // 248 goes to 256, past fnuz's range (the carry's code is even): NaN.
            for sign in [1.0f32, -1.0] {
                let (tie, want) = match fp8 {
                    Fp8::E4m3fn => (464.0 * sign, Some(448.0 * sign as f64)),
                    Fp8::E4m3fnuz => (248.0 * sign, None),
                };
                assert_eq!(nearest(fp8, tie).map(|b| fp8.decode(b)), want, "{fp8:?} oracle at {tie}");
                match want {
                    Some(v) => assert_eq!(fp8.decode(fp8.encode(tie)), v, "{fp8:?} {tie}"),
                    None => assert!(fp8.decode(fp8.encode(tie)).is_nan(), "{fp8:?} {tie}"),
                }
                let above = f32::from_bits(tie.to_bits() + 1);
                assert!(fp8.decode(fp8.encode(above)).is_nan(), "{fp8:?} {above}");
            }
            assert!(fp8.decode(fp8.encode(max * 1.1)).is_nan(), "{fp8:?}");
            assert_eq!(fp8.decode(fp8.encode_clamped(max * 1.1)), max as f64);
            assert_eq!(fp8.decode(fp8.encode_clamped(-max * 10.0)), -max as f64);
            assert!(fp8.decode(fp8.encode_clamped(f32::NAN)).is_nan());
        }
    }

    #[test]
    fn pow2_scales_are_flashmla_s() {
        let fp8 = Fp8::E4m3fn;
        // amax exactly 448·2^k: the scale is 2^k, and the tile's largest value is 448 exactly.
        for k in -10..10 {
            assert_eq!(pow2_scale(448.0 * 2f32.powi(k), fp8), 2f32.powi(k), "k = {k}");
        }
        // Just above: the next power.
        let above = f32::from_bits((448.0f32).to_bits() + 1);
        assert_eq!(pow2_scale(above, fp8), 2.0);
        // An all-zero tile: 2^ceil(log2(1e-4)) = 2^-13.
        assert_eq!(pow2_scale(0.0, fp8), 2f32.powi(-13));
        for amax in [0.3f32, 1.0, 7.5, 123.456, 1e-3, 5e4] {
            let s = pow2_scale(amax, fp8);
            let v = (amax / 448.0).max(POW2_FLOOR);
            assert!(s >= v && s < 2.0 * v, "{amax}: {s}");
            assert_eq!(s.to_bits() & 0x7f_ffff, 0, "a power of two");
        }
        assert_eq!(pow2_scale(240.0 * 4.0, Fp8::E4m3fnuz), 4.0);
    }

    #[test]
    fn ds_mla_656_lays_out_as_flashmla_does() {
        let r = TiledRecord::DS_MLA_656;
        assert_eq!((r.bytes(), r.scales_offset(), r.rope_offset(), r.tiles()), (656, 512, 528, 4));
        assert!(TiledRecord::new(512, 96, 64, Fp8::E4m3fn, ScaleRule::Pow2).is_err());
        let other = TiledRecord::new(256, 64, 32, Fp8::E4m3fnuz, ScaleRule::Amax).unwrap();
        assert_eq!(other.bytes(), 256 + 16 + 64);
    }

    /// Write then read: every value comes back within half an FP8 ulp of its tile's scale (a
    /// power-of-two scale never saturates), scales in their slots, the RoPE key untouched; an
    /// all-zero tile reads back zero with scale 2^-13.
    #[test]
    fn tiled_records_round_trip_within_half_an_ulp() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (fmt, spread) in [
            (TiledRecord::DS_MLA_656, 1.0f32),
            (TiledRecord::new(512, 64, 64, Fp8::E4m3fnuz, ScaleRule::Pow2).unwrap(), 30.0),
            (TiledRecord::new(256, 128, 32, Fp8::E4m3fn, ScaleRule::Amax).unwrap(), 1e-2),
        ] {
            let mut c: Vec<f32> = (0..fmt.d_c()).map(|_| rng.random_range(-spread..spread)).collect();
            c[..fmt.tile()].fill(0.0);
            let rope: Vec<bf16> = (0..fmt.d_r()).map(|_| bf16::from_f32(rng.random_range(-4.0..4.0))).collect();
            let mut rec = vec![0u8; fmt.bytes()];
            fmt.write(&c, &rope, &mut rec);
            let (mut back, mut rope_back) = (vec![0.0; fmt.d_c()], vec![0.0; fmt.d_r()]);
            fmt.read(&rec, &mut back, &mut rope_back);
            if fmt.rule() == ScaleRule::Pow2 {
                assert_eq!(fmt.scale(&rec, 0), 2f32.powi(-13));
            }
            for (i, (x, y)) in c.iter().zip(&back).enumerate() {
                let s = fmt.scale(&rec, i / fmt.tile()) as f64;
                // Half an ulp of the value's binade (3 mantissa bits), in units of the scale.
                let q = (*x as f64 / s).abs();
                let ulp = if q < 2f64.powi(-6) {
                    2f64.powi(-9)
                } else {
                    2f64.powi(q.log2().floor() as i32 - 3)
                };
                assert!(
                    (x.to_owned() as f64 - y).abs() <= s * ulp / 2.0 * (1.0 + 1e-12),
                    "{fmt:?} {i}: {x} -> {y}"
                );
                assert!(y.is_finite());
            }
            assert_eq!(rope_back, rope.iter().map(|v| v.to_f64()).collect::<Vec<_>>());
        }
    }

    /// The writer's judge: the reference's own record passes; FlashMLA's log2f rounding (a tile
    /// one ulp above 448·2^k written at 2^k) passes as a halved tile; a flipped byte, a scale a
    /// quarter of the rule's, and the same rounding under arbitrary scales fail, naming the field.
    #[test]
    fn written_records_are_judged_bit_for_bit_with_the_log2_allowance() {
        let fmt = TiledRecord::DS_MLA_656;
        let mut c: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        // Tile 1's amax one f32 ulp above 448·2^-3: the exact rule gives 2^-2, log2f gives 2^-3.
        let edge = f32::from_bits((448.0f32 * 0.125).to_bits() + 1);
        c[128..256].iter_mut().for_each(|x| *x = x.clamp(-50.0, 50.0));
        c[130] = edge;
        let rope: Vec<bf16> = (0..64).map(|i| bf16::from_f32(i as f32 / 9.0 - 3.0)).collect();
        let mut exact = vec![0u8; fmt.bytes()];
        fmt.write(&c, &rope, &mut exact);
        assert_eq!(fmt.scale(&exact, 1), 0.25);
        assert_eq!(fmt.check(&c, &rope, &exact), Ok(vec![]));
        // FlashMLA's rounding: tile 1 at 2^-3, its bytes cast at that scale.
        let mut flashmla = exact.clone();
        flashmla[512 + 4..512 + 8].copy_from_slice(&0.125f32.to_le_bytes());
        for i in 128..256 {
            flashmla[i] = fmt.fp8().encode(c[i] / 0.125);
        }
        assert_ne!(flashmla, exact);
        assert_eq!(fmt.check(&c, &rope, &flashmla), Ok(vec![1]));
        // A flipped latent byte, a RoPE byte, a scale of 2^-4.
        for (offset, field) in [
            (7, RecordField::Latent { index: 7 }),
            (600, RecordField::Rope { index: 36, byte: 0 }),
        ] {
            let mut bad = exact.clone();
            bad[offset] ^= 1;
            let m = fmt.check(&c, &rope, &bad).unwrap_err();
            assert_eq!((m.offset, m.field), (offset, field));
        }
        let mut quarter = flashmla.clone();
        quarter[512 + 4..512 + 8].copy_from_slice(&0.0625f32.to_le_bytes());
        let m = fmt.check(&c, &rope, &quarter).unwrap_err();
        assert!(matches!(m.field, RecordField::Scale { tile: 1, .. }), "{m:?}");
        // Arbitrary scales have no allowance.
        let amax = TiledRecord::new(512, 128, 64, Fp8::E4m3fn, ScaleRule::Amax).unwrap();
        let mut written = vec![0u8; amax.bytes()];
        amax.write(&c, &rope, &mut written);
        assert_eq!(amax.check(&c, &rope, &written), Ok(vec![]));
        let halved = amax.scale(&written, 1) / 2.0;
        written[512 + 4..512 + 8].copy_from_slice(&halved.to_le_bytes());
        assert!(amax.check(&c, &rope, &written).is_err());
    }

    #[test]
    fn per_tensor_writers_clamp_and_scales_must_be_positive() {
        let pt = PerTensor::new(Fp8::E4m3fn, 0.37).unwrap();
        assert_eq!(pt.read(pt.write(1e6)), 448.0 * 0.37f32 as f64);
        assert_eq!(pt.read(pt.write(-1e6)), -448.0 * 0.37f32 as f64);
        let x = 3.1f32;
        // 3.1 / 0.37 = 8.38 lies where the FP8 ulp is 1: within half of it, times the scale.
        assert!((pt.read(pt.write(x)) - x as f64).abs() <= 0.5 * 0.37 * (1.0 + 1e-6));
        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            assert!(PerTensor::new(Fp8::E4m3fnuz, bad).is_err(), "{bad}");
        }
    }

    /// The bf16-scale reader (FlashMLA SM90): fp8 × bf16(s) rounded to bf16, which is the f32
    /// reader's value wherever s is a power of two.
    #[test]
    fn the_bf16_scale_reader_rounds_the_scale_and_the_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for rule in [ScaleRule::Pow2, ScaleRule::Amax] {
            let r = TiledRecord::new(64, 16, 8, Fp8::E4m3fn, rule).unwrap();
            let c: Vec<f32> = (0..64).map(|i| rng.random_range(-3.0f32..3.0) * (1 + i / 16) as f32).collect();
            let k: Vec<bf16> = (0..8).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0))).collect();
            let mut rec = vec![0u8; r.bytes()];
            r.write(&c, &k, &mut rec);
            let (mut a, mut ka, mut b, mut kb) = (vec![0f32; 64], vec![0f32; 8], vec![0f32; 64], vec![0f32; 8]);
            r.read_f32(&rec, &mut a, &mut ka);
            r.read_bf16_scales(&rec, &mut b, &mut kb);
            assert_eq!(ka, kb);
            for i in 0..64 {
                let s = bf16::from_f32(r.scale(&rec, i / 16)).to_f32();
                let want = bf16::from_f32(Fp8::E4m3fn.decode(rec[i]) as f32 * s).to_f32();
                assert_eq!(b[i].to_bits(), want.to_bits(), "{rule:?} {i}");
            }
            assert_eq!(a == b, rule == ScaleRule::Pow2, "{rule:?}");
        }
    }
}
