//! Case generation, tolerance policy and certification of decode kernels against the reference (issue 4; empty for now).
