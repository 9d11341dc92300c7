//! The case lattice of suite version [`SUITE_VERSION`]: what breaks real kernels, varied one factor
//! at a time around a base case per operation.
//!
//! Factors: s_q ∈ {1, 2, 3, 4}; context ∈ {1, 17, 63, 64, 65, 4096, 4097, 16384}; odd head counts,
//! G = 1 and G = H; batches with mixed lengths including zero and padding rows (no keys); large logits; page sizes {none, 1,
//! 16, 64} with lengths off page boundaries; dtypes f32/bf16/f16; both rope layouts; an explicit
//! scale; requested KV split counts {1, 7, 64} and more splits than keys (v0.2). Every case gets poisoned memory and output canaries (see [`crate::inputs`]).

use crate::case::{Case, Dtype, Logits, Op, RopeLayout};

pub const SUITE_VERSION: &str = "0.2";

fn base(op: Op) -> Case {
    let mut c = Case {
        op,
        h: 16,
        g: 4,
        dc: 512,
        dn: 128,
        dr: 64,
        dv: 128,
        sq: 2,
        ctx: vec![Some(65)],
        page: Some(64),
        splits: None,
        layout: RopeLayout::Once,
        dtype: Dtype::Bf16,
        scale: None,
        logits: Logits::Normal,
        seed: 1,
    };
    match op {
        Op::DecodeAbsorb => c.dv = c.dc,
        Op::GqaDecode => {
            c.h = 32;
            c.g = 8;
            c.dr = 0;
        }
        Op::CacheExpand => {
            c.g = 8;
            c.sq = 1;
        }
        Op::DecodeGqa => {}
    }
    c
}

/// Every case of the suite, in a stable order.
pub fn suite_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for op in Op::ALL {
        let b = base(op);
        let mut push = |f: &dyn Fn(&mut Case)| {
            let mut c = b.clone();
            f(&mut c);
            let mut c = c.canonical();
            c.seed = out.len() as u64 + 1;
            if let Err(e) = c.validate() {
                panic!("the lattice generated an invalid case {c}: {e}");
            }
            if !out
                .iter()
                .any(|o: &Case| Case { seed: 0, ..o.clone() } == Case { seed: 0, ..c.clone() })
            {
                out.push(c);
            }
        };
        push(&|_| {});
        for dtype in [Dtype::F32, Dtype::F16] {
            push(&|c| c.dtype = dtype);
        }
        for ctx in [1, 17, 63, 64, 65, 4096, 4097] {
            push(&|c| c.ctx = vec![Some(ctx)]);
        }
        push(&|c| c.ctx = vec![Some(0), Some(17), None, Some(1), Some(130)]);
        push(&|c| c.ctx = vec![Some(0)]);
        push(&|c| c.ctx = vec![None, Some(5)]);
        for page in [None, Some(1), Some(16)] {
            push(&|c| {
                c.page = page;
                c.ctx = vec![Some(65), Some(130), Some(3)];
            });
        }
        if op == Op::CacheExpand {
            continue;
        }
        for sq in [1, 3, 4] {
            push(&|c| c.sq = sq);
        }
        // Split-KV sensitivity: the same answer for any split count, including splits that get no
        // keys (more splits than a short row has keys).
        for splits in [1, 7, 64] {
            push(&|c| {
                c.ctx = vec![Some(4097)];
                c.splits = Some(splits);
            });
        }
        push(&|c| {
            c.ctx = vec![Some(0), Some(17), None, Some(1), Some(130)];
            c.splits = Some(16);
        });
        push(&|c| c.logits = Logits::Large);
        push(&|c| c.scale = Some(0.05f32.to_bits()));
        push(&|c| {
            c.ctx = vec![Some(16384)];
            c.sq = 1;
            c.h = c.g.max(4); // few heads keep the f64 reference quick; still a multiple of G
        });
        match op {
            Op::DecodeAbsorb => push(&|c| c.h = 3),
            Op::DecodeGqa | Op::GqaDecode => {
                push(&|c| {
                    c.h = 9;
                    c.g = 3;
                });
                push(&|c| c.g = 1);
                push(&|c| c.g = c.h);
                if op == Op::DecodeGqa {
                    push(&|c| c.layout = RopeLayout::PerGroup);
                    push(&|c| {
                        c.layout = RopeLayout::PerGroup;
                        c.ctx = vec![Some(0), Some(65), None, Some(4097)];
                        c.page = Some(16);
                    });
                }
            }
            Op::CacheExpand => {}
        }
    }
    out
}

/// The must-pass list of this suite version: every lattice case id.
pub fn must_pass() -> Vec<String> {
    suite_cases().iter().map(|c| c.to_string()).collect()
}
