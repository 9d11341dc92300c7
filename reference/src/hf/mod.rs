//! Loading HF checkpoints: `config.json` plus single or sharded safetensors (bf16/f16/f32/f64).
//!
//! - [`config`]: which model a config describes, validated once ([`ModelConfig`]).
//! - [`tensors`]: a [`TensorStore`] over one or many safetensors files, with shape/dtype/NaN checks.
//! - [`layer`]: one layer's attention weights as reference types.

pub mod config;
pub mod gguf;
pub mod layer;
pub mod synthetic;
pub mod tensors;
pub mod tokenizer;

pub use config::{AttentionConfig, ModelConfig, ModelType};
pub use layer::{load_layer, Checkpoint};
pub use tensors::TensorStore;
