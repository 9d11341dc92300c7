//! Versioned operation definitions: axes, tensors, dtype rules and conventions.

use crate::case::Op;
use serde::Serialize;

/// A definition, as exported with vector packs and certificates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    pub name: &'static str,
    pub version: &'static str,
    pub inputs: Vec<&'static str>,
    pub outputs: Vec<&'static str>,
    pub conventions: Vec<&'static str>,
}

const DECODE_CONVENTIONS: [&str; 5] = [
    "scale is an explicit input (the model's 1/sqrt(d_n + d_r), not 1/sqrt(key width))",
    "sequence b holds ctx_b + s_q keys; new token j sees keys t <= ctx_b + j (bottom-right causal)",
    "lse is the natural-log log-sum-exp of the scaled scores, in f32",
    "a row with no visible key returns out = 0 and lse = -inf",
    "cache rows are addressed through the block table when paged: slot = block_table[b][t / page] * page + t % page; memory outside the sequences is poisoned with NaN",
];

/// The definition of `op`.
pub fn definition(op: Op) -> Definition {
    let decode = |inputs: Vec<&'static str>, out: &'static str| Definition {
        name: op.name(),
        version: "1",
        inputs,
        outputs: vec![out, "lse [B, s_q, H] f32"],
        conventions: DECODE_CONVENTIONS.to_vec(),
    };
    match op {
        Op::DecodeAbsorb => decode(vec!["q [B, s_q, H, d_c + d_r]: absorbed queries [W_UK^T q^N; q^R]", "kv [slots, d_c + d_r]: cache rows [c; k^R]; the value is the first d_c columns", "seq_lens [B]", "block_table [B, max_pages] (paged)", "scale"], "out [B, s_q, H, d_c]"),
        Op::DecodeGqa => decode(vec!["q [B, s_q, H, d_n + d_r]", "rope=once: k_nope [slots, G*d_n], k_rope [slots, d_r], v [slots, G*d_v]; rope=per_group: k [slots, G*(d_n+d_r)], v [slots, G*d_v]", "head i reads group i / (H/G)", "seq_lens [B]", "block_table (paged)", "scale"], "out [B, s_q, H, d_v]"),
        Op::GqaDecode => decode(vec!["q [B, s_q, H, d]", "k [slots, KV*d], v [slots, KV*d_v]", "head i reads kv head i / (H/KV)", "seq_lens [B]", "block_table (paged)", "scale"], "out [B, s_q, H, d_v]"),
        Op::CacheExpand => Definition {
            name: op.name(),
            version: "1",
            inputs: vec!["latent [slots, d_c]", "w_ukv [G*(d_n+d_v), d_c], group-major, keys first", "seq_lens [B]", "block_table (paged)"],
            outputs: vec!["k [tokens, G*d_n]", "v [tokens, G*d_v] (tokens of every sequence, in order)"],
            conventions: vec!["k_g = W_UK_g c, v_g = W_UV_g c for every cached token"],
        },
    }
}
