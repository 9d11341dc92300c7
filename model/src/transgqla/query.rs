//! (T6) Query rescale: q ← s·q with s = scale_old / scale_new, scale_new = 1/sqrt(d_n + d_r).
//!
//! The logits scale_new · (s q)·k = scale_old · q·k are unchanged. From a GQA source
//! scale_old = 1/sqrt(D), so s = sqrt((d_n + d_r)/D).

use gqla_reference::latent::LatentWeights;

/// Move the softmax scale into the query weights, leaving the kernel's default scale.
pub fn rescale_query(w: &LatentWeights<f64>) -> LatentWeights<f64> {
    let s = w.scale() / w.dims().default_scale();
    let mut out = w.clone();
    out.scale_queries(s);
    out.with_scale(w.dims().default_scale())
        .expect("1/sqrt(d_n + d_r) is a valid scale")
}
