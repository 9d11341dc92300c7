//! Every file the program reads or writes goes through here: one reader, one writer.
//!
//! - [`read`]: regular files only (a FIFO is refused, never opened for a blocking read), a size
//!   limit per kind checked from the metadata and enforced while reading, and names from
//!   hostile indexes and manifests confined to their directory.
//! - [`tensor_file`]: safetensors files read with positioned reads, not a memory map, so a source
//!   truncated while it is read gives an error, not SIGBUS; the header's declared extent must
//!   match the file's length.
//! - [`write`]: outputs are written to an exclusively created temporary file (or directory) with
//!   an unpredictable name beside the target, synced, then renamed into place. An output that is,
//!   or would replace a file inside, anything this process read is refused.
//! - [`temps`]: the temporary files and directories in flight, removed by the command-line
//!   program's SIGINT/SIGTERM handler before it exits.
//! - [`tensors`]: stored floats decoded, values encoded in a [`gqla_reference::DType`], and
//!   safetensors files written deterministically (metadata in key order), shard by shard.

pub mod read;
pub mod temps;
pub mod tensor_file;
pub mod tensors;
pub mod write;

pub use read::{read_file, read_in, read_to_string, resolve_in, Limit};
pub use tensor_file::TensorFile;
pub use write::{write_file, OutputDir};
