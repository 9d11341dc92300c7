//! Versioned operation definitions: axes, tensors, dtype rules, conventions and the pinned
//! reference. Exported as `definitions.json` with every vector pack and certificate, so that an
//! author outside this process reads the contract from the same source the judge uses.

use crate::case::Op;
use serde::Serialize;

/// Whether an axis is fixed when a kernel is built (a specialisation) or varies per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisRole {
    Fixed,
    Variable,
}

/// One named axis of a definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Axis {
    pub name: &'static str,
    pub role: AxisRole,
    pub meaning: &'static str,
}

/// One input or output tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorSpec {
    pub name: &'static str,
    /// Shape in axis names.
    pub shape: &'static str,
    pub dtype: &'static str,
    pub meaning: &'static str,
}

/// A definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    pub name: &'static str,
    pub version: &'static str,
    pub axes: Vec<Axis>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub dtype_rules: Vec<&'static str>,
    pub conventions: Vec<&'static str>,
    /// The function whose f64 result is the truth.
    pub reference: &'static str,
}

const fn axis(name: &'static str, role: AxisRole, meaning: &'static str) -> Axis {
    Axis { name, role, meaning }
}

const fn tensor(name: &'static str, shape: &'static str, dtype: &'static str, meaning: &'static str) -> TensorSpec {
    TensorSpec {
        name,
        shape,
        dtype,
        meaning,
    }
}

use AxisRole::{Fixed, Variable};

const BATCH_AXES: [Axis; 5] = [
    axis("B", Variable, "sequences in the batch (padding rows hold no keys)"),
    axis(
        "slots",
        Variable,
        "cache rows, stored as [B, capacity, width] contiguous or [num_pages, page, width] paged (capacity: the longest sequence + 3)",
    ),
    axis("page", Fixed, "page size of a paged cache (absent: contiguous)"),
    axis("max_pages", Variable, "block-table columns"),
    axis(
        "num_splits",
        Variable,
        "requested KV splits (absent: the kernel's choice); never changes the answer",
    ),
];

const DECODE_CONVENTIONS: [&str; 8] = [
    "scale is an explicit f32 input (the model's 1/sqrt(d_n + d_r), not 1/sqrt(key width)), never rounded to the case dtype",
    "sequence b holds seq_lens[b] = ctx_b + s_q keys; new token j sees keys t <= ctx_b + j (bottom-right causal)",
    "lse is the natural-log log-sum-exp of the scaled scores, in f32 (a kernel's profile may declare base 2, the storage dtype, or no lse)",
    "a row with no visible key (seq_lens[b] = 0) returns out = 0 and lse = -inf (a kernel's profile may declare out NaN or unspecified, lse +inf, a finite sentinel or unspecified)",
    "cache rows are addressed through the block table when paged: slot = block_table[b][t / page] * page + t % page; memory outside the sequences is poisoned with NaN and block-table entries past a sequence's pages are invalid",
    "a case with poison=garbage holds finite random values where its twin (the same id without poison=garbage) holds NaN; its outputs must equal the twin's bitwise",
    "num_splits, when given, is how many KV chunks a split-KV kernel should use; more splits than keys leaves some empty, and the answer must not change",
    "inputs are read-only: a kernel that writes to them is INPUT_MUTATED",
];

const DECODE_DTYPE_RULES: [&str; 3] = [
    "q, cache tensors and out share the case dtype (f32, bf16 or f16); accumulate in at least f32; a pack's out may be any float dtype",
    "lse is f32 whatever the case dtype, unless the kernel's profile declares the storage dtype; scale is f32",
    "seq_lens, block_table, num_splits are i32",
];

fn decode_io(op: Op) -> (Vec<Axis>, Vec<TensorSpec>, &'static str) {
    let common = |mut axes: Vec<Axis>| {
        axes.extend([
            axis("s_q", Variable, "new query tokens per sequence"),
            axis("H", Fixed, "query heads"),
        ]);
        axes
    };
    match op {
        Op::DecodeAbsorb => (
            common(vec![
                axis("d_c", Fixed, "latent width (the value width)"),
                axis("d_r", Fixed, "decoupled RoPE key width"),
                axis("d_n", Fixed, "no-rope head width: only sets the model's default scale"),
            ]),
            vec![
                tensor("q", "[B, s_q, H, d_c + d_r]", "case", "absorbed queries [W_UK^T q^N; q^R]"),
                tensor(
                    "kv",
                    "[B, capacity | num_pages, page, d_c + d_r]",
                    "case",
                    "cache rows [c; k^R]; the value is the first d_c columns",
                ),
            ],
            "[B, s_q, H, d_c]",
        ),
        Op::DecodeGqa => (
            common(vec![
                axis("G", Fixed, "groups; head i reads group i / (H/G)"),
                axis("d_n", Fixed, "per-group key width"),
                axis("d_r", Fixed, "shared RoPE key width"),
                axis("d_v", Fixed, "per-group value width"),
                axis(
                    "rope",
                    Fixed,
                    "once: k^R stored once per token; per_group: folded into each group's key",
                ),
            ]),
            vec![
                tensor("q", "[B, s_q, H, d_n + d_r]", "case", "queries [q^N; q^R]"),
                tensor(
                    "k_nope",
                    "[B, capacity | num_pages, page, G·d_n]",
                    "case",
                    "rope=once: per-group keys W_UK_g c",
                ),
                tensor(
                    "k_rope",
                    "[B, capacity | num_pages, page, d_r]",
                    "case",
                    "rope=once: the shared RoPE key",
                ),
                tensor(
                    "k",
                    "[B, capacity | num_pages, page, G·(d_n + d_r)]",
                    "case",
                    "rope=per_group: [k_g; k^R] per group",
                ),
                tensor("v", "[B, capacity | num_pages, page, G·d_v]", "case", "per-group values W_UV_g c"),
            ],
            "[B, s_q, H, d_v]",
        ),
        Op::GqaDecode => (
            common(vec![
                axis("KV", Fixed, "kv heads; head i reads kv head i / (H/KV)"),
                axis("d", Fixed, "key width"),
                axis("d_v", Fixed, "value width"),
            ]),
            vec![
                tensor("q", "[B, s_q, H, d]", "case", "queries"),
                tensor("k", "[B, capacity | num_pages, page, KV·d]", "case", "keys"),
                tensor("v", "[B, capacity | num_pages, page, KV·d_v]", "case", "values"),
            ],
            "[B, s_q, H, d_v]",
        ),
        Op::CacheExpand => unreachable!("not a decode"),
    }
}

fn indexing() -> Vec<TensorSpec> {
    vec![
        tensor("seq_lens", "[B]", "i32", "keys held by each sequence"),
        tensor("block_table", "[B, max_pages]", "i32", "paged caches only"),
    ]
}

/// The definition of `op`.
pub fn definition(op: Op) -> Definition {
    if op == Op::CacheExpand {
        let mut axes = vec![
            axis("G", Fixed, "groups"),
            axis("d_c", Fixed, "latent width"),
            axis("d_n", Fixed, "per-group key width"),
            axis("d_v", Fixed, "per-group value width"),
            axis("tokens", Variable, "sum of seq_lens"),
        ];
        axes.extend(BATCH_AXES.into_iter().filter(|a| a.name != "num_splits"));
        let mut inputs = vec![
            tensor("latent", "[B, capacity | num_pages, page, d_c]", "case", "latent cache rows c"),
            tensor(
                "w_ukv",
                "[G·(d_n + d_v), d_c]",
                "case",
                "[W_UK_g; W_UV_g] per group, group-major, keys first",
            ),
        ];
        inputs.extend(indexing());
        return Definition {
            name: op.name(),
            version: "1",
            axes,
            inputs,
            outputs: vec![
                tensor(
                    "k",
                    "[tokens, G·d_n]",
                    "case",
                    "k_g = W_UK_g c for every cached token, sequences in order",
                ),
                tensor("v", "[tokens, G·d_v]", "case", "v_g = W_UV_g c"),
            ],
            dtype_rules: vec!["inputs and outputs share the case dtype; accumulate in at least f32"],
            conventions: vec![
                "k_g = W_UK_g c, v_g = W_UV_g c for every cached token (SPEC.md eq. E)",
                "tokens of sequence 0 first, then sequence 1, ...; padding rows contribute none",
            ],
            reference: "gqla_conformance::reference::compute (f64 matrix-vector products)",
        };
    }
    let (mut axes, mut inputs, out_shape) = decode_io(op);
    axes.extend(BATCH_AXES);
    inputs.extend(indexing());
    inputs.push(tensor("scale", "[]", "f32", "softmax scale"));
    inputs.push(tensor("num_splits", "[]", "i32", "only when the case requests a split count"));
    Definition {
        name: op.name(),
        version: "1",
        axes,
        inputs,
        outputs: vec![
            tensor("out", out_shape, "case", "attention output per query head"),
            tensor("lse", "[B, s_q, H]", "f32", "natural-log log-sum-exp of the scaled scores"),
        ],
        dtype_rules: DECODE_DTYPE_RULES.to_vec(),
        conventions: DECODE_CONVENTIONS.to_vec(),
        reference: "gqla_reference::attention::attend_row in f64 (SPEC.md eqs. S, P, O), via gqla_conformance::reference::compute",
    }
}

/// The definitions of every operation, in [`Op::ALL`] order.
pub fn all() -> Vec<Definition> {
    Op::ALL.into_iter().map(definition).collect()
}
