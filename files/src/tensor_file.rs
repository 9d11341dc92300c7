//! A safetensors file read with positioned reads. A memory map would turn a source truncated
//! while it is read into SIGBUS; a positioned read past the end is an error instead. The header
//! is validated when the file is opened (offsets contiguous, sizes matching dtypes and shapes,
//! no overflow), and the extent it declares must be the file's length. [`TensorFile::unchanged`]
//! tells a command whether the file was replaced, resized or modified since it was opened.

use super::read::open_regular;
use gqla_reference::error::{Error, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The largest header the safetensors format allows.
const MAX_HEADER: u64 = 100_000_000;

/// What identifies a file's contents cheaply: its length and modification time.
fn stamp(meta: &std::fs::Metadata) -> (u64, i64, i64) {
    (meta.len(), meta.mtime(), meta.mtime_nsec())
}

/// One safetensors file, its header parsed and checked.
pub struct TensorFile {
    path: PathBuf,
    file: File,
    data_start: u64,
    stamp: (u64, i64, i64),
    header: Metadata,
}

impl TensorFile {
    /// Open and validate `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |why: String| Error::file(path, format!("not a valid safetensors file: {why}"));
        let (file, len) = open_regular(path)?;
        let meta = file.metadata().map_err(|e| Error::file(path, format!("cannot stat: {e}")))?;
        let mut n8 = [0u8; 8];
        file.read_exact_at(&mut n8, 0)
            .map_err(|_| bad(format!("{len} bytes, shorter than the 8-byte header length")))?;
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER || n > len - 8 {
            return Err(bad(format!(
                "the header length {n} exceeds the file ({len} bytes) or the format's limit of {MAX_HEADER}"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| Error::file(path, format!("cannot read the header: {e}")))?;
        let header: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let declared = 8 + n + header.data_len() as u64;
        if declared != len {
            return Err(bad(format!(
                "the header declares {declared} bytes in all, the file holds {len} (truncated or padded?)"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start: 8 + n,
            stamp: stamp(&meta),
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, in the file's data order.
    pub fn names(&self) -> Vec<String> {
        self.header.offset_keys()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.info(name)
    }

    /// The header's `__metadata__` entries.
    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.header.metadata().as_ref()
    }

    /// `len` bytes of tensor `name`'s data from byte `offset` of it.
    pub fn read_bytes(&self, name: &str, offset: usize, len: usize) -> Result<Vec<u8>> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor `{name}` is not in this file")))?;
        let (start, end) = info.data_offsets;
        if offset.checked_add(len).is_none_or(|e| e > end - start) {
            return Err(Error::file(
                &self.path,
                format!("tensor `{name}`: bytes {offset}+{len} lie outside it"),
            ));
        }
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, self.data_start + (start + offset) as u64)
            .map_err(|e| {
                Error::file(
                    &self.path,
                    format!("tensor `{name}`: cannot read ({e}); the file changed while it was read"),
                )
            })?;
        Ok(bytes)
    }

    /// All of tensor `name`'s data.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (start, end) = self.info(name).map_or((0, 0), |i| i.data_offsets);
        self.read_bytes(name, 0, end - start)
    }

    /// An error if the file was modified, resized or replaced since it was opened: a command
    /// calls this before it commits an output computed from the file.
    pub fn unchanged(&self) -> Result<()> {
        let now = std::fs::metadata(&self.path).map_err(|e| Error::file(&self.path, format!("changed while it was read: {e}")))?;
        let opened = self
            .file
            .metadata()
            .map_err(|e| Error::file(&self.path, format!("cannot stat: {e}")))?;
        if stamp(&now) != self.stamp || stamp(&opened) != self.stamp || now.ino() != opened.ino() {
            return Err(Error::file(
                &self.path,
                "changed while it was read (modified, resized or replaced); nothing was written",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    fn file_with(dir: &Path, values: &[f32]) -> PathBuf {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![values.len()], &bytes).unwrap();
        let path = dir.join("t.safetensors");
        std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
        path
    }

    #[test]
    fn a_file_whose_length_disagrees_with_its_header_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file_with(tmp.path(), &[1.0, 2.0, 3.0]);
        let f = TensorFile::open(&path).unwrap();
        assert_eq!(f.read("w").unwrap().len(), 12);
        assert_eq!(f.read_bytes("w", 4, 4).unwrap(), 2f32.to_le_bytes());
        assert!(f.read_bytes("w", 8, 8).is_err());
        f.unchanged().unwrap();
        let full = std::fs::read(&path).unwrap();
        for (bytes, why) in [
            (full[..full.len() - 1].to_vec(), "declares"),
            ([full.clone(), vec![0]].concat(), "declares"),
            (full[..5].to_vec(), "shorter than"),
            ([&u64::MAX.to_le_bytes()[..], &full[8..]].concat(), "header length"),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let e = TensorFile::open(&path).err().unwrap().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_source_truncated_while_read_is_an_error_not_a_signal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file_with(tmp.path(), &[1.0; 1000]);
        let f = TensorFile::open(&path).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        let e = f.read("w").unwrap_err().to_string();
        assert!(e.contains("changed while it was read"), "{e}");
        assert!(f.unchanged().unwrap_err().to_string().contains("changed while it was read"));
    }
}
