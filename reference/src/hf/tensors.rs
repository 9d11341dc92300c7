//! A read-only view of a checkpoint's tensors across one or many safetensors files.

use super::gguf::GgufModel;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::files::{self, Limit, TensorFile};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where a checkpoint's shards may lie once symlinks are followed: the checkpoint directory, or
/// for a Hugging Face hub cache snapshot (`models--ORG--NAME/snapshots/REV/`, whose files are
/// symlinks to `../../blobs/`) the model's cache directory.
pub(crate) fn confinement_root(dir: &Path) -> PathBuf {
    let real = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match (real.parent(), real.parent().and_then(Path::parent)) {
        (Some(snapshots), Some(model)) if snapshots.file_name().is_some_and(|n| n == "snapshots") && model.join("blobs").is_dir() => {
            model.to_path_buf()
        }
        _ => real,
    }
}

/// The file `name` of checkpoint `dir`, symlinks followed and confined (see
/// [`confinement_root`]); `None` when absent.
pub(crate) fn checkpoint_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    // The path as the user sees it, for messages; its resolution was checked.
    Ok(files::read::resolve_within(dir, name, &confinement_root(dir))?.map(|_| dir.join(name)))
}

/// All tensors of a checkpoint directory (or of one safetensors file).
pub struct TensorStore {
    /// A GGUF model instead of safetensors files (then `files` is empty).
    gguf: Option<GgufModel>,
    files: Vec<TensorFile>,
    /// Tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

impl TensorStore {
    /// Open `model.safetensors.index.json` + its shards, or `model.safetensors`, or the single
    /// `*.safetensors` in `dir`; or `dir` itself when it is a file.
    pub fn open(dir: &Path) -> Result<Self> {
        // Anything but a directory is taken as one tensor file (a FIFO or device is refused there).
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            if super::gguf::is_gguf(dir) {
                return Ok(Self {
                    gguf: Some(GgufModel::open(dir)?),
                    files: Vec::new(),
                    index: BTreeMap::new(),
                });
            }
            return Self::from_files(vec![dir.to_path_buf()]);
        }
        crate::files::write::note_input_dir(dir);
        let index = dir.join("model.safetensors.index.json");
        if std::fs::symlink_metadata(&index).is_ok() {
            let text = files::read_to_string(&index, Limit::INDEX)?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&index, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::file(&index, "expected an object `weight_map`"))?;
            let mut shards: Vec<&str> = Vec::new();
            for (name, shard) in map {
                let shard = shard
                    .as_str()
                    .ok_or_else(|| Error::file(&index, format!("weight_map[`{name}`]: expected a shard file name")))?;
                shards.push(shard);
            }
            shards.sort_unstable();
            shards.dedup();
            let mut paths = Vec::new();
            let root = confinement_root(dir);
            for s in &shards {
                // A shard name comes from a file: it must stay inside the checkpoint.
                let real = files::read::resolve_within(dir, s, &root)
                    .map_err(|e| Error::file(&index, format!("shard `{s}`: {e}")))?
                    .ok_or_else(|| Error::file(dir.join(s), format!("shard named in {} is missing", index.display())))?;
                paths.push((dir.join(s), real));
            }
            let store = Self::from_files(paths.iter().map(|(shown, _)| shown.clone()).collect())?;
            for (name, shard) in map {
                let want = shard.as_str().unwrap_or_default();
                let at = shards.binary_search(&want).expect("listed above");
                match store.index.get(name) {
                    Some(&i) if i == at => {}
                    _ => return Err(Error::file(&index, format!("tensor `{name}` is not in shard {want}"))),
                }
            }
            return Ok(store);
        }
        if let Some(single) = checkpoint_file(dir, "model.safetensors")? {
            return Self::from_files(vec![single]);
        }
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir, format!("cannot list checkpoint directory: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        match found.len() {
            1 => {
                let name = found[0].file_name().expect("listed").to_string_lossy().into_owned();
                Self::from_files(checkpoint_file(dir, &name)?.into_iter().collect())
            }
            0 => Err(Error::file(
                dir,
                "no safetensors weights found (expected model.safetensors or model.safetensors.index.json)",
            )),
            n => Err(Error::file(
                dir,
                format!("{n} safetensors files but no model.safetensors.index.json to say which tensor is where"),
            )),
        }
    }

    fn from_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = TensorFile::open(p)?;
            for name in f.names() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(Error::file(p, format!("tensor `{name}` appears in more than one file")));
                }
            }
            files.push(f);
        }
        Ok(Self { gguf: None, files, index })
    }

    /// An error if any file changed since it was opened (see [`TensorFile::unchanged`]).
    pub fn unchanged(&self) -> Result<()> {
        if let Some(g) = &self.gguf {
            g.unchanged()?;
        }
        self.files.iter().try_for_each(TensorFile::unchanged)
    }

    /// The GGUF model behind this store, if it is one.
    pub fn gguf(&self) -> Option<&GgufModel> {
        self.gguf.as_ref()
    }

    /// Tensor `name` from the GGUF model, as f64, checked to have `shape` and finite values.
    fn gguf_get(&self, g: &GgufModel, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let got = g.shape(name).ok_or_else(|| Error::MissingTensor {
            path: g.path().to_path_buf(),
            tensor: name.into(),
            expected: format!("shape {shape:?}"),
        })?;
        if got != shape {
            return Err(Error::Shape {
                path: g.path().to_path_buf(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got,
            });
        }
        let values: Vec<f64> = g.read(name)?.into_iter().map(f64::from).collect();
        if let Some(first) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                path: g.path().to_path_buf(),
                tensor: name.into(),
                count: values.iter().filter(|v| !v.is_finite()).count(),
                first,
            });
        }
        Ok(values)
    }

    /// A copy of tensor `name`'s stored bytes, dtype and shape (for copying unchanged tensors).
    pub fn raw(&self, name: &str) -> Result<Option<RawTensor>> {
        if let Some(g) = &self.gguf {
            let Some(shape) = g.shape(name) else {
                return Ok(None);
            };
            let values = g.read(name)?;
            return Ok(Some(RawTensor {
                dtype: Dtype::F32,
                shape,
                bytes: encode_f32(DType::F32, &values),
            }));
        }
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let file = &self.files[i];
        let info = file.info(name).expect("indexed");
        Ok(Some(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: file.read(name)?,
        }))
    }

    /// Tensor `name`'s stored dtype (`BF16`, or a GGUF type such as `Q4_1`), shape and the
    /// SHA-256 of its stored bytes (hex), read in bounded chunks; `None` if absent.
    pub fn stored_digest(&self, name: &str) -> Result<Option<(String, Vec<usize>, String)>> {
        use sha2::{Digest, Sha256};
        const CHUNK: usize = 16 << 20;
        let mut hasher = Sha256::new();
        let dtype = if let Some(g) = &self.gguf {
            if g.shape(name).is_none() {
                return Ok(None);
            }
            format!("gguf:{}", g.stored_bytes(name, CHUNK, &mut |b| hasher.update(b))?)
        } else {
            let Some(&i) = self.index.get(name) else {
                return Ok(None);
            };
            let file = &self.files[i];
            let info = file.info(name).expect("indexed");
            let len = info.data_offsets.1 - info.data_offsets.0;
            let mut at = 0;
            while at < len {
                let n = CHUNK.min(len - at);
                hasher.update(file.read_bytes(name, at, n)?);
                at += n;
            }
            format!("{:?}", info.dtype)
        };
        let shape = self.shape(name).expect("present");
        let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Some((dtype, shape, hex)))
    }

    /// The files this store reads, in the order opened (shards sorted by name).
    pub fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.gguf
            .iter()
            .map(|g| g.path().to_path_buf())
            .chain(self.files.iter().map(|f| f.path().to_path_buf()))
    }

    /// The shape tensor `name` declares, if present (nothing is read).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(g) = &self.gguf {
            return g.shape(name);
        }
        let &i = self.index.get(name)?;
        self.files[i].info(name).map(|info| info.shape.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.gguf.as_ref().is_some_and(|g| g.shape(name).is_some())
    }
    pub fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.gguf {
            Some(g) => Box::new(g.names()),
            None => Box::new(self.index.keys().map(String::as_str)),
        }
    }
    /// The file holding `name`, or the first file (for error messages about absent tensors).
    pub fn file_of(&self, name: &str) -> &Path {
        if let Some(g) = &self.gguf {
            return g.path();
        }
        let i = self.index.get(name).copied().unwrap_or(0);
        self.files[i].path()
    }

    /// Read tensor `name` as f64 with exactly `shape`, rejecting other dtypes and non-finite values.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<ArrayD<f64>> {
        if let Some(g) = &self.gguf {
            let values = self.gguf_get(g, name, shape)?;
            return Ok(ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape checked"));
        }
        let (file, info) = self.info_checked(name, shape)?;
        let values = decode_floats(info.dtype, &file.read(name)?).ok_or_else(|| dtype_error(file, name, info.dtype))?;
        let bad: Vec<usize> = values.iter().enumerate().filter(|(_, x)| !x.is_finite()).map(|(k, _)| k).collect();
        if let Some(&first) = bad.first() {
            return Err(Error::NonFinite {
                path: file.path().to_path_buf(),
                tensor: name.into(),
                count: bad.len(),
                first,
            });
        }
        Ok(ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape checked"))
    }

    /// Rows `rows` of the 2-D tensor `name` [n, cols], reading only those rows (embedding lookups).
    pub fn get_rows(&self, name: &str, n: usize, cols: usize, rows: &[usize]) -> Result<Array2<f64>> {
        if let Some(g) = &self.gguf {
            let all = Array2::from_shape_vec((n, cols), self.gguf_get(g, name, &[n, cols])?).expect("shape checked");
            if let Some(&r) = rows.iter().find(|&&r| r >= n) {
                return Err(Error::Shape {
                    path: g.path().to_path_buf(),
                    tensor: name.into(),
                    expected: vec![r + 1, cols],
                    got: vec![n, cols],
                });
            }
            return Ok(all.select(ndarray::Axis(0), rows));
        }
        let (file, info) = self.info_checked(name, &[n, cols])?;
        let width = info.dtype.bitsize() / 8;
        let mut out = Array2::zeros((rows.len(), cols));
        for (k, &r) in rows.iter().enumerate() {
            if r >= n {
                return Err(Error::Shape {
                    path: file.path().to_path_buf(),
                    tensor: name.into(),
                    expected: vec![r + 1, cols],
                    got: vec![n, cols],
                });
            }
            let bytes = file.read_bytes(name, r * cols * width, cols * width)?;
            let values = decode_floats(info.dtype, &bytes).ok_or_else(|| dtype_error(file, name, info.dtype))?;
            if let Some(first) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    path: file.path().to_path_buf(),
                    tensor: name.into(),
                    count: values.iter().filter(|v| !v.is_finite()).count(),
                    first: r * cols + first,
                });
            }
            out.row_mut(k).assign(&Array1::from(values));
        }
        Ok(out)
    }

    /// Token ids: an integer tensor `[S, L]` (or `[L]`, one sequence), each id below `vocab`.
    pub fn get_ids(&self, name: &str, vocab: usize) -> Result<Vec<Vec<u32>>> {
        if let Some(g) = &self.gguf {
            return Err(Error::file(
                g.path(),
                "token ids are read from a safetensors file, not a GGUF model",
            ));
        }
        let Some(&i) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                path: self.file_of(name).to_path_buf(),
                tensor: name.into(),
                expected: "integer token ids [sequences, tokens]".into(),
            });
        };
        let file = &self.files[i];
        let info = file.info(name).expect("indexed");
        let (s, l) = match info.shape[..] {
            [l] => (1, l),
            [s, l] => (s, l),
            _ => {
                return Err(Error::Shape {
                    path: file.path().to_path_buf(),
                    tensor: name.into(),
                    expected: vec![1, 1],
                    got: info.shape.clone(),
                })
            }
        };
        if s == 0 || l == 0 {
            return Err(Error::Shape {
                path: file.path().to_path_buf(),
                tensor: name.into(),
                expected: vec![s.max(1), l.max(1)],
                got: info.shape.clone(),
            });
        }
        let data = file.read(name)?;
        let ids: Vec<i64> = match info.dtype {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                .collect(),
            Dtype::U32 => data
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                .collect(),
            other => {
                return Err(Error::Dtype {
                    path: file.path().to_path_buf(),
                    tensor: name.into(),
                    expected: "I64, I32, U32".into(),
                    got: format!("{other:?}"),
                })
            }
        };
        if let Some((k, bad)) = ids.iter().enumerate().find(|(_, &v)| v < 0 || v as u64 >= vocab as u64) {
            return Err(Error::file(
                file.path(),
                format!("tensor `{name}`: token id {bad} at flat index {k} is outside the vocabulary 0..{vocab}"),
            ));
        }
        Ok(ids.chunks(l).map(|c| c.iter().map(|&v| v as u32).collect()).collect())
    }

    /// The file and header entry of `name`, checked to have `shape`.
    fn info_checked(&self, name: &str, shape: &[usize]) -> Result<(&TensorFile, &TensorInfo)> {
        let Some(&i) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                path: self.file_of(name).to_path_buf(),
                tensor: name.into(),
                expected: format!("shape {shape:?}"),
            });
        };
        let file = &self.files[i];
        let info = file.info(name).expect("indexed");
        if info.shape != shape {
            return Err(Error::Shape {
                path: file.path().to_path_buf(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got: info.shape.clone(),
            });
        }
        Ok((file, info))
    }

    pub fn get2(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f64>> {
        Ok(self.get(name, &[rows, cols])?.into_dimensionality().expect("2-D"))
    }
    pub fn get1(&self, name: &str, n: usize) -> Result<Array1<f64>> {
        Ok(self.get(name, &[n])?.into_dimensionality().expect("1-D"))
    }
    /// Read the only tensor of a single-tensor file, or the one named `name`.
    pub fn get_any2(&self, name: &str) -> Result<(String, Array2<f64>)> {
        let chosen = if self.contains(name) {
            name.to_string()
        } else if self.index.len() == 1 {
            self.index.keys().next().expect("one").clone()
        } else {
            return Err(Error::MissingTensor {
                path: self.files[0].path().to_path_buf(),
                tensor: name.into(),
                expected: "a [tokens, hidden] tensor (or a file holding exactly one tensor)".into(),
            });
        };
        let file = &self.files[self.index[&chosen]];
        let shape = file.info(&chosen).expect("indexed").shape.clone();
        if shape.len() != 2 {
            return Err(Error::Shape {
                path: file.path().to_path_buf(),
                tensor: chosen,
                expected: vec![0, 0],
                got: shape,
            });
        }
        let a = self.get2(&chosen, shape[0], shape[1])?;
        Ok((chosen, a))
    }
}

fn dtype_error(file: &TensorFile, name: &str, got: Dtype) -> Error {
    Error::Dtype {
        path: file.path().to_path_buf(),
        tensor: name.into(),
        expected: "BF16, F16, F32, F64".into(),
        got: format!("{got:?}"),
    }
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
        let dtype = dtype.safetensors();
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

/// Write `tensors` to `path` through the one writer ([`crate::files::write_file`]). The bytes
/// depend only on the tensors and metadata: the metadata is written in key order.
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a RawTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = serialize_tensors(tensors, metadata).map_err(|e| Error::file(path, format!("cannot serialize: {e}")))?;
    crate::files::write_file(path, &bytes)
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
