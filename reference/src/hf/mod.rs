//! Loading HF checkpoints.
