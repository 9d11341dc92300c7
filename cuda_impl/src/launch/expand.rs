//! The latent → group-cache expansion launch.

use super::*;
use crate::runtime::{Args, ExpandParams, Launch};
use crate::CudaError;
use gqla_conformance::case::DType;

/// The tokens an expansion writes: token i is position `positions[i]` of sequence `sequences[i]`.
pub struct Tokens<'a, R: Runtime> {
    pub sequences: &'a R::Buf<i32>,
    pub positions: &'a R::Buf<i32>,
    pub count: usize,
}

/// Widths of an expansion: G groups, latent d_c, key d_n and value d_v per group.
#[derive(Clone, Copy, Debug)]
pub struct ExpandDims {
    pub g: usize,
    pub dc: usize,
    pub dn: usize,
    pub dv: usize,
}

/// Launch the latent → group-cache expansion of the listed tokens (asynchronous), reading the
/// latent through `paging`'s block table (its sequence lengths are not read: `tokens` lists the
/// positions). Every extent the host knows is checked first; what lies in device memory is not.
///
/// # Safety
/// The device-side addressing data must keep the kernel inside the buffers, and the buffers must
/// stay untouched until the launch completes (the next synchronize or download):
/// - each token's sequence is below the block table's rows (`len / max_pages`) and its position
///   below `max_pages · page`;
/// - each block-table entry a token reaches is below `latent slots / page`, where a latent slot
///   is `dc` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn expand_cache<R: Runtime>(
    rt: &R,
    dtype: DType,
    latent: &R::Buf<u8>,
    w_ukv: &R::Buf<u8>,
    tokens: &Tokens<R>,
    paging: &BlockTable<R>,
    dims: ExpandDims,
    k_out: &mut Guarded<R>,
    v_out: &mut Guarded<R>,
) -> Result<(), CudaError> {
    if tokens.count == 0 {
        return Ok(());
    }
    let (n, eb) = (tokens.count, dtype.size_in_bytes());
    let ExpandDims { g, dc, dn, dv } = dims;
    holds::<R, u8>("the latent cache", latent, paging.page.max(1) * dc * eb)?;
    holds::<R, u8>("the up-projections", w_ukv, g * (dn + dv) * dc * eb)?;
    holds::<R, i32>("the token sequences", tokens.sequences, n * 4)?;
    holds::<R, i32>("the token positions", tokens.positions, n * 4)?;
    holds::<R, i32>("the block table", paging.block_table, paging.max_pages * 4)?;
    holds::<R, u8>("the expanded keys", k_out.buf, (n * g * dn + 2 * k_out.margin) * eb)?;
    holds::<R, u8>("the expanded values", v_out.buf, (n * g * dv + 2 * v_out.margin) * eb)?;
    if paging.page == 0
        || [n, paging.max_pages.saturating_mul(paging.page), g * (dn + dv) * dc]
            .into_iter()
            .any(|v| i32::try_from(v).is_err())
    {
        return Err(CudaError::Unsupported(
            "an empty page, or sizes past the kernel's 32-bit indices".into(),
        ));
    }
    let (latent, w) = (rt.read(latent), rt.read(w_ukv));
    let (tok_b, tok_t, table) = (rt.read(tokens.sequences), rt.read(tokens.positions), rt.read(paging.block_table));
    let (k, v) = (rt.write(k_out.buf), rt.write(v_out.buf));
    let p = ExpandParams {
        latent: latent.addr,
        w: w.addr,
        tok_b: tok_b.addr,
        tok_t: tok_t.addr,
        block_table: table.addr,
        k_out: k.offset(k_out.margin, eb),
        v_out: v.offset(v_out.margin, eb),
        max_pages: paging.max_pages as i32,
        page: paging.page as i32,
        tokens: n as i32,
        g: g as i32,
        dc: dc as i32,
        dn: dn as i32,
        dv: dv as i32,
    };
    let launch = Launch {
        grid: (n.div_ceil(EXPAND_TOKENS) as u32, 1, 1),
        threads: THREADS as u32,
        shared_bytes: (4 * EXPAND_TOKENS * dc) as u32,
    };
    // SAFETY: the parameters are ExpandParams, every address is one of the buffers, the
    // host-known extents were checked above and the device-side ones are the caller's contract.
    unsafe {
        rt.launch(
            crate::compile::Entry::new(crate::compile::Family::Expand, dtype),
            launch,
            Args::Expand(&p),
            &[latent, w, tok_b, tok_t, table, k, v],
        )
    }
}
