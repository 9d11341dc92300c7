//! The GQLA conformance suite: definitions, cases, the tolerance policy, and certification of any
//! decode kernel against the reference.
//!
//! - [`case`]: cases and their query-like ids; [`lattice`]: the versioned case list.
//! - [`definition`]: the operations and their conventions; [`shape`]: tensor shapes from named axes.
//! - [`inputs`]: seeded inputs with paged caches and poisoned memory.
//! - [`kernel`]: the [`Kernel`] trait and canary-guarded outputs; [`profile`]: what a kernel
//!   declares it supports, and the conventions it follows.
//! - [`reference`](mod@reference), [`tolerance`], [`verdict`]: how outputs are judged;
//!   [`coverage`]: the core a profile's cases must exercise to be CONFORMANT (else PARTIAL);
//!   [`precision`]: the RMS error over its bound, pooled per (operation, output, dtype).
//! - [`selection`]: which cases a run takes (id prefixes over the suite drawn from a seed).
//! - [`kernel_spec`]: what `--kernel` names, parsed once.
//! - [`runner`], [`report`]: running a kernel and writing certificates; [`stability`]: verdicts
//!   over several seeds; [`mutation`]: the mutation catalogue's verdict on the suite.
//! - [`kernels`]: built-in kernels and the mutation catalogue.
//! - [`pack`]: vector packs for kernels outside this process (PyTorch, Triton, CUDA C++), read
//!   through [`confined`] as hostile input.

pub mod case;
pub mod certify;
pub mod confined;
pub mod coverage;
pub mod definition;
pub mod inputs;
pub mod kernel;
pub mod kernel_spec;
pub mod kernels;
pub mod lattice;
pub mod mutation;
pub mod pack;
pub mod precision;
pub mod profile;
pub mod reference;
pub mod report;
pub mod runner;
pub mod selection;
pub mod shape;
pub mod stability;
pub mod tolerance;
pub mod verdict;

pub use case::Case;
pub use kernel::{Kernel, KernelError, KernelIdentity, Outputs};
pub use lattice::SUITE_VERSION;
pub use profile::Profile;
pub use selection::Selection;
pub use verdict::Status;
