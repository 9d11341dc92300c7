//! A read-only view of a checkpoint's tensors across one or many safetensors files.

use super::gguf::GgufModel;
use gqla_files::tensors::{decode_floats, encode_f32, RawTensor};
use gqla_files::{self as files, Limit, TensorFile};
use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use std::collections::BTreeMap;
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
        gqla_files::write::note_input_dir(dir);
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
