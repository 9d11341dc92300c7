//! The reference crate's integration tests, as one test binary (one link instead of several: the
//! CI build is most of CI's time).
mod building_blocks;
mod properties;
