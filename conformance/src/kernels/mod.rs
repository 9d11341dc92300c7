//! Built-in kernels: the reference run in f32; a flash-decoding CPU kernel (online softmax,
//! split-KV with a merge step, reads through the block table) that the mutation catalogue breaks
//! one bug at a time; with the `candle` feature, an independent candle-core implementation; and
//! synthetic kernels, the truth plus a chosen error, that test the tolerance rule itself.

#[cfg(feature = "candle")]
pub mod candle;
pub mod flash_cpu;
pub mod reference_f32;
pub mod synthetic;

#[cfg(feature = "candle")]
pub use candle::CandleCpu;
pub use flash_cpu::{Bug, FlashCpu};
pub use reference_f32::ReferenceF32;
pub use synthetic::Synthetic;
