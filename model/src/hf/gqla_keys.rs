//! The `gqla_*` keys a converted checkpoint's config.json carries beside its family's own: one
//! typed table, written by `convert` ([`super::writer`]) and read by the config parser (the
//! shipped modeling code reads the same names). An absent key keeps the family's default.

use gqla_reference::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// How a checkpoint was converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conversion {
    /// TransGQLA of a GQA source.
    Transgqla,
    /// Per-group PCA of an MLA source.
    GroupPca,
}

/// Which path HF's shipped modeling code decodes on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodePathKey {
    Absorb,
    Gqa,
}

/// The keys, each `None` when absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GqlaKeys {
    /// Whether the latent has an RMSNorm (DeepSeek's kv_a_layernorm); default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_latent_rms_norm: Option<bool>,
    /// The RoPE frequencies kept (d_r/2 of them), when not rope_theta's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_rope_freqs: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_q_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_kv_a_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_o_bias: Option<bool>,
    /// The source's `model_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_source_model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_conversion: Option<Conversion>,
    /// The source's sliding window: `Some(None)` is written as null (no window).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present_or_null")]
    pub gqla_sliding_window: Option<Option<u64>>,
    /// The FreqFold the conversion used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_freqfold: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gqla_decode_path: Option<DecodePathKey>,
}

/// A key that may be absent (None), present and null (Some(None)), or present (Some(Some(v))).
mod present_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

impl GqlaKeys {
    /// The keys of `config` (`path` names it in errors): each checked for its type here, with the
    /// key named; the parser checks their values against the geometry.
    pub fn read(path: &Path, config: &Value) -> Result<Self> {
        serde_path_to_error::deserialize(config).map_err(|e| Error::file(path, format!("config key `{}`: {}", e.path(), e.inner())))
    }

    /// Set these keys in the config object `v` (the keys left `None` are not touched; a `v` that
    /// is not an object is left alone).
    pub fn write_into(&self, v: &mut Value) {
        if let (Ok(Value::Object(keys)), Some(target)) = (serde_json::to_value(self), v.as_object_mut()) {
            target.extend(keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_name_themselves_when_wrong() {
        let keys = GqlaKeys {
            gqla_q_bias: Some(true),
            gqla_sliding_window: Some(None),
            gqla_conversion: Some(Conversion::GroupPca),
            ..GqlaKeys::default()
        };
        let mut v = serde_json::json!({"model_type": "deepseek_v3"});
        keys.write_into(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"model_type": "deepseek_v3", "gqla_q_bias": true, "gqla_sliding_window": null, "gqla_conversion": "group_pca"})
        );
        assert_eq!(GqlaKeys::read(Path::new("c.json"), &v).unwrap(), keys);
        let bad = serde_json::json!({"gqla_o_bias": "yes"});
        let e = GqlaKeys::read(Path::new("c.json"), &bad).unwrap_err().to_string();
        assert!(
            e.contains("c.json") && e.contains("`gqla_o_bias`") && e.contains("expected a boolean"),
            "{e}"
        );
        let absent = GqlaKeys::read(Path::new("c.json"), &serde_json::json!({})).unwrap();
        assert_eq!(absent, GqlaKeys::default());
    }
}
