//! Tensors as safetensors bytes: decoding stored floats, encoding values in a [`DType`], and
//! writing safetensors files deterministically through the one writer ([`crate::write_file`]).

use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use ndarray::ArrayD;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The safetensors dtype a [`DType`] is stored as.
pub fn safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

/// The [`DType`] a safetensors dtype holds, if it is one of ours.
pub fn dtype_of(d: Dtype) -> Option<DType> {
    DType::ALL.into_iter().find(|&x| safetensors_dtype(x) == d)
}

/// Little-endian BF16/F16/F32/F64 bytes to f64 (exact); None for other dtypes.
pub fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        _ => return None,
    })
}

/// One tensor as little-endian bytes, for writing safetensors files.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An F64 tensor of `shape` holding `values` in row-major order.
    pub fn f64(shape: Vec<usize>, values: impl IntoIterator<Item = f64>) -> Self {
        Self::encode(DType::F64, shape, values)
    }

    /// A tensor stored as `dtype` (rounding to nearest) holding `values`.
    pub fn encode(dtype: DType, shape: Vec<usize>, values: impl IntoIterator<Item = f64>) -> Self {
        let values = values.into_iter();
        let bytes = match dtype {
            DType::Bf16 => pack(values, |v| half::bf16::from_f64(v).to_le_bytes()),
            DType::F16 => pack(values, |v| half::f16::from_f64(v).to_le_bytes()),
            DType::F32 => pack(values, |v| (v as f32).to_le_bytes()),
            DType::F64 => pack(values, f64::to_le_bytes),
        };
        let dtype = safetensors_dtype(dtype);
        Self { dtype, shape, bytes }
    }
}

/// Little-endian bytes of f32 `values` stored as `dtype`, rounded to nearest even: the same bytes
/// as [`RawTensor::encode`] of their (exact) f64 widening, by the faster f32 conversions.
pub fn encode_f32(dtype: DType, values: &[f32]) -> Vec<u8> {
    let values = values.iter().copied();
    match dtype {
        DType::Bf16 => pack(values, |v| half::bf16::from_f32(v).to_le_bytes()),
        DType::F16 => pack(values, |v| half::f16::from_f32(v).to_le_bytes()),
        DType::F32 => pack(values, f32::to_le_bytes),
        DType::F64 => pack(values, |v| f64::from(v).to_le_bytes()),
    }
}

/// The concatenated bytes `f` gives for each value (a slice copy per value: byte-wise pushes
/// dominated the emulator's input uploads).
fn pack<T, const N: usize>(values: impl Iterator<Item = T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.size_hint().0 * N);
    for v in values {
        bytes.extend_from_slice(&f(v));
    }
    bytes
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Write `tensors` to `path` through the one writer ([`crate::write_file`]). The bytes
/// depend only on the tensors and metadata: the metadata is written in key order.
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a RawTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = serialize_tensors(tensors, metadata).map_err(|e| Error::file(path, format!("cannot serialize: {e}")))?;
    crate::write_file(path, &bytes)
}

/// One safetensors file for [`ShardWriter`]: its path, named tensors and metadata.
type Shard = (PathBuf, Vec<(String, RawTensor)>, Option<HashMap<String, String>>);

/// Writes safetensors shards one at a time on a thread of its own, so that a conversion computes
/// its next layer while the last one is serialised, written and synced (a LLaMA-3-8B layer in bf16
/// is 436 MB, over a second of a layer's time). It holds at most one shard: [`ShardWriter::write`]
/// waits until the thread has taken the previous one.
pub struct ShardWriter<'scope> {
    jobs: std::sync::mpsc::SyncSender<Shard>,
    thread: std::thread::ScopedJoinHandle<'scope, Result<()>>,
}

impl<'scope> ShardWriter<'scope> {
    pub fn spawn<'env>(scope: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Shard>(0);
        let thread = scope.spawn(move || {
            // Stops at the first failure; `finish` reports it.
            for (path, tensors, metadata) in queue {
                write_tensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata)?;
            }
            Ok(())
        });
        Self { jobs, thread }
    }

    /// Hand a shard to the thread. An error here means the thread stopped on an earlier failure,
    /// which [`ShardWriter::finish`] returns.
    pub fn write(&self, path: PathBuf, tensors: Vec<(String, RawTensor)>, metadata: Option<HashMap<String, String>>) -> Result<()> {
        self.jobs
            .send((path.clone(), tensors, metadata))
            .map_err(|_| Error::file(&path, "not written: the shard writer stopped on an earlier failure"))
    }

    /// Wait for every shard handed over to be written: the first failure, if any.
    pub fn finish(self) -> Result<()> {
        drop(self.jobs);
        match self.thread.join() {
            Ok(written) => written,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// A safetensors file's bytes, deterministic: the crate writes `__metadata__` in hash-map order,
/// so the header is rewritten with its keys sorted (same entries, so the same length, and the
/// data offsets are unchanged).
pub fn serialize_tensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a RawTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut bytes = safetensors::serialize(tensors, metadata)?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).expect("the crate writes UTF-8 JSON");
    let entries: BTreeMap<String, serde_json::Value> = serde_json::from_str(header.trim_end()).expect("the crate writes a JSON object");
    let sorted = serde_json::to_string(&entries).expect("JSON values serialize");
    assert_eq!(sorted.len(), header.trim_end().len(), "a reordered header keeps its length");
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(bytes)
}

/// Write f64 arrays to `path` atomically as F64 tensors.
pub fn write_f64(path: &Path, tensors: &[(&str, &ArrayD<f64>)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let raw: Vec<(&str, RawTensor)> = tensors
        .iter()
        .map(|(n, a)| (*n, RawTensor::f64(a.shape().to_vec(), a.iter().copied())))
        .collect();
    write_tensors(path, raw.iter().map(|(n, t)| (*n, t)), metadata)
}

#[cfg(test)]
mod encoding {
    use super::*;

    #[test]
    fn each_dtype_encodes_in_its_size_and_maps_back() {
        for d in DType::ALL {
            assert_eq!(RawTensor::encode(d, vec![1], [1.5]).bytes.len(), d.size_in_bytes(), "{d}");
            assert_eq!(dtype_of(safetensors_dtype(d)), Some(d));
        }
        assert_eq!(dtype_of(Dtype::I32), None);
    }

    /// The f32 encoding is `RawTensor::encode`'s, bit for bit, including ties, NaN and
    /// values past the 16-bit ranges.
    #[test]
    fn encode_f32_matches_encode_of_the_f64_widening() {
        let mut values: Vec<f32> = (0..4096)
            .map(|i| ((i as f32) * 0.731).sin() * 1e3f32.powf((i % 7) as f32 - 3.0))
            .collect();
        values.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            65520.0,
            -1e30,
            f32::INFINITY,
            1e-40,
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
        ]);
        for d in DType::ALL {
            let want = RawTensor::encode(d, vec![values.len()], values.iter().map(|v| *v as f64)).bytes;
            assert_eq!(encode_f32(d, &values), want, "{d}");
        }
    }
}

#[cfg(test)]
mod determinism {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let t = RawTensor::f64(vec![2], [1.0, 2.0]);
        let files: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                // A fresh HashMap per file: a fresh random iteration order.
                let meta: HashMap<String, String> = (0..12).map(|k| (format!("key{k}"), format!("value{k}"))).collect();
                serialize_tensors([("a", &t), ("b", &t)], Some(meta)).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]));
        let st = SafeTensors::deserialize(&files[0]).unwrap();
        assert_eq!(st.names().len(), 2);
    }
}

#[cfg(test)]
mod shard_writer {
    use super::*;

    fn shard(values: &[f64]) -> Vec<(String, RawTensor)> {
        vec![("w".to_string(), RawTensor::f64(vec![values.len()], values.iter().copied()))]
    }

    #[test]
    fn writes_every_shard_in_full() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            let writer = ShardWriter::spawn(scope);
            for k in 0..3 {
                writer
                    .write(dir.path().join(format!("{k}.safetensors")), shard(&[k as f64, 0.5]), None)
                    .unwrap();
            }
            writer.finish().unwrap();
        });
        for k in 0..3 {
            let bytes = std::fs::read(dir.path().join(format!("{k}.safetensors"))).unwrap();
            assert_eq!(bytes, serialize_tensors([("w", &shard(&[k as f64, 0.5])[0].1)], None).unwrap());
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("0.safetensors");
        let err = std::thread::scope(|scope| {
            let writer = ShardWriter::spawn(scope);
            writer.write(missing.clone(), shard(&[1.0]), None).unwrap();
            // Once the thread has stopped, a hand-over fails; which one first fails is timing.
            let later: Vec<bool> = (0..4)
                .map(|k| {
                    writer
                        .write(dir.path().join(format!("{k}.safetensors")), shard(&[2.0]), None)
                        .is_err()
                })
                .collect();
            assert!(later.windows(2).all(|w| w[0] <= w[1]), "once refused, always refused: {later:?}");
            writer.finish().unwrap_err()
        });
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(written.is_empty(), "nothing after the failure: {written:?}");
    }
}
