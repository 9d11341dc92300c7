//! HF checkpoints: `config.json` plus single or sharded safetensors (bf16/f16/f32/f64), read and
//! written.
//!
//! - [`config`]: which model a config describes, validated once ([`ModelConfig`]).
//! - [`tensors`]: a [`TensorStore`] over one or many safetensors files, with shape/dtype/NaN checks;
//!   shards written by [`tensors::ShardWriter`].
//! - [`names`]: HF's tensor names, spelled once; [`gqla_keys`]: the `gqla_*` config keys, typed.
//! - [`layer`]: one layer's attention weights as reference types.
//! - [`writer`]: a converted checkpoint's tensor names, config.json, tokenizer and modeling code.

pub mod config;
pub mod gguf;
pub mod gqla_keys;
pub mod key_ranges;
pub mod layer;
pub mod names;
pub mod synthetic;
pub mod tensors;
pub mod tokenizer;
pub mod writer;

pub use config::{AttentionConfig, ModelConfig, ModelType};
pub use layer::{load_layer, Checkpoint};
pub use tensors::TensorStore;
