//! The reference crate's integration tests, as one test binary (one link instead of several: the
//! CI build is most of CI's time).
mod building_blocks;
mod properties;

/// A small GQLA geometry the tests vary from: 8 heads in 2 groups, d_c 16, d_n = d_v = 8, d_r 4.
pub const SMALL: gqla_reference::LatentShape = gqla_reference::LatentShape {
    h: 8,
    g: 2,
    d_c: 16,
    d_n: 8,
    d_r: 4,
    d_v: 8,
};
