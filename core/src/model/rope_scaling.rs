//! RoPE frequency schemes, computed the way `transformers` computes them (in f32, in the same
//! order), so that logits of scaled-RoPE checkpoints match: Llama 3's `llama3`, `linear`,
//! `dynamic` and `yarn` from `config.json`, and the per-frequency divisors (`rope_freqs.weight`)
//! that llama.cpp stores for Llama 3 in GGUF files.

use serde_json::Value;

use crate::ops::rope::RopeFrequencies;

/// How a model scales RoPE's frequencies beyond its pre-training context.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = 1 / theta^(2i/d)`.
    #[default]
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Dynamic NTK: transformers keeps the plain frequencies up to `max_position_embeddings` and
    /// recomputes them per sequence length beyond; convrec implements the first part and refuses
    /// longer sequences (`max_positions`).
    Dynamic { factor: f32 },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
    /// YaRN (Qwen2.5's long-context configs): interpolation blended with extrapolation per
    /// frequency, and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// Per-frequency divisors (GGUF `rope_freqs.weight`, llama.cpp's form of Llama 3 scaling).
    FreqFactors(Vec<f32>),
}

fn number(v: &Value, key: &str) -> Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_f64().map(Some).ok_or_else(|| format!("rope scaling: {key} = {x} is not a number")),
    }
}

fn required(v: &Value, key: &str, kind: &str) -> Result<f64, String> {
    number(v, key)?.ok_or_else(|| format!("rope scaling {kind}: missing {key}"))
}

/// YaRN's attention factor when the config does not give one (transformers' `get_mscale`).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

impl RopeScaling {
    /// Reads transformers' `rope_scaling` (4.x: `type` or `rope_type`) or `rope_parameters` (5.x)
    /// object. `max_position_embeddings` fills YaRN's factor when the object leaves it out.
    pub fn from_hf(v: &Value, max_position_embeddings: usize) -> Result<RopeScaling, String> {
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
        if let Some(p) = number(v, "partial_rotary_factor")?.filter(|&p| p != 1.0) {
            return Err(format!("rope scaling: partial_rotary_factor {p} is not implemented (only 1.0 is)"));
        }
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: required(v, "factor", kind)? as f32 },
            "dynamic" => RopeScaling::Dynamic { factor: required(v, "factor", kind)? as f32 },
            "llama3" => RopeScaling::Llama3 {
                factor: required(v, "factor", kind)? as f32,
                low_freq_factor: required(v, "low_freq_factor", kind)? as f32,
                high_freq_factor: required(v, "high_freq_factor", kind)? as f32,
                original_max_position_embeddings: required(v, "original_max_position_embeddings", kind)? as usize,
            },
            "yarn" => {
                let original = required(v, "original_max_position_embeddings", kind)?;
                let factor = number(v, "factor")?.unwrap_or(max_position_embeddings as f64 / original);
                let attention_factor =
                    match (number(v, "attention_factor")?, number(v, "mscale")?, number(v, "mscale_all_dim")?) {
                        (Some(a), _, _) => a,
                        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                            yarn_mscale(factor, m) / yarn_mscale(factor, all)
                        }
                        _ => yarn_mscale(factor, 1.0),
                    };
                RopeScaling::Yarn {
                    factor: factor as f32,
                    original_max_position_embeddings: original as usize,
                    // transformers: `get("beta_fast") or 32`, so 0 also means the default.
                    beta_fast: number(v, "beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: number(v, "beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                    attention_factor,
                    truncate: v.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            other => {
                return Err(format!(
                    "rope scaling {other:?} is not implemented (default, linear, dynamic, llama3 and yarn are)"
                ));
            }
        };
        Ok(scaling)
    }

    /// Every factor finite and positive, every context length positive, divisors one per
    /// frequency: what a config must hold before tables are built from it.
    pub fn check(&self, head_dim: usize) -> Result<(), String> {
        let positive = |what: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(format!("rope scaling: {what} = {x} must be positive and finite"))
            }
        };
        match self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => positive("factor", *factor as f64),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("factor", *factor as f64)?;
                positive("low_freq_factor", *low_freq_factor as f64)?;
                positive("high_freq_factor", *high_freq_factor as f64)?;
                positive("original_max_position_embeddings", *original_max_position_embeddings as f64)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope scaling llama3: high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ));
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                positive("factor", *factor as f64)?;
                positive("original_max_position_embeddings", *original_max_position_embeddings as f64)?;
                positive("beta_fast", *beta_fast)?;
                positive("beta_slow", *beta_slow)?;
                positive("attention_factor", *attention_factor)
            }
            RopeScaling::FreqFactors(f) => {
                if f.len() != head_dim / 2 {
                    return Err(format!(
                        "rope_freqs holds {} values, the head dimension {head_dim} needs {}",
                        f.len(),
                        head_dim / 2
                    ));
                }
                f.iter().try_for_each(|&x| positive("a rope_freqs value", x as f64))
            }
        }
    }

    /// Positions beyond which the scheme is not implemented (dynamic NTK past the trained context).
    pub fn max_positions(&self, max_position_embeddings: usize) -> Option<usize> {
        matches!(self, RopeScaling::Dynamic { .. }).then_some(max_position_embeddings)
    }

    /// The inverse frequencies and the cos/sin scale for a head dimension and base.
    pub fn frequencies(&self, theta: f32, head_dim: usize) -> RopeFrequencies {
        let plain = RopeFrequencies::plain(theta, head_dim);
        let two_pi = 2.0 * std::f32::consts::PI;
        let inv_freq = match self {
            RopeScaling::None | RopeScaling::Dynamic { .. } => plain.inv_freq,
            RopeScaling::Linear { factor } => plain.inv_freq.iter().map(|f| f / factor).collect(),
            RopeScaling::FreqFactors(divisors) => plain.inv_freq.iter().zip(divisors).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old as f64 / *low_freq_factor as f64;
                let high_wavelen = old as f64 / *high_freq_factor as f64;
                plain
                    .inv_freq
                    .iter()
                    .map(|&f| {
                        let wavelen = two_pi / f;
                        if (wavelen as f64) < high_wavelen {
                            f
                        } else if (wavelen as f64) > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, .. } => {
                let dim = head_dim as f64;
                let base = theta as f64;
                let correction = |rotations: f64| {
                    dim * (*original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001; // transformers: prevent a division by zero
                }
                (0..head_dim / 2)
                    .map(|i| {
                        let pos_freq = theta.powf((2 * i) as f32 / head_dim as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                    })
                    .collect()
            }
        };
        let attention_scaling = match self {
            RopeScaling::Yarn { attention_factor, .. } => *attention_factor as f32,
            _ => 1.0,
        };
        RopeFrequencies { inv_freq, attention_scaling }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_form_transformers_writes() {
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_theta": 500000.0});
        assert!(matches!(RopeScaling::from_hf(&llama3, 131072).unwrap(), RopeScaling::Llama3 { factor: 8.0, .. }));
        // transformers 4.x wrote `type`.
        let linear = json!({"type": "linear", "factor": 2.0});
        assert_eq!(RopeScaling::from_hf(&linear, 4096).unwrap(), RopeScaling::Linear { factor: 2.0 });
        let yarn = json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
        match RopeScaling::from_hf(&yarn, 131072).unwrap() {
            RopeScaling::Yarn { beta_fast, beta_slow, attention_factor, truncate, .. } => {
                assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
                assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(RopeScaling::from_hf(&json!({"rope_type": "default"}), 1).unwrap(), RopeScaling::None);
    }

    #[test]
    fn unknown_kinds_missing_and_absurd_values_are_refused() {
        let err = |v: Value| RopeScaling::from_hf(&v, 128).and_then(|s| s.check(16)).unwrap_err();
        assert!(err(json!({"rope_type": "longrope", "factor": 2.0})).contains("longrope"));
        assert!(err(json!({"rope_type": "linear"})).contains("missing factor"));
        assert!(err(json!({"rope_type": "linear", "factor": "two"})).contains("not a number"));
        assert!(err(json!({"rope_type": "linear", "factor": -2.0})).contains("positive"));
        assert!(err(json!({"rope_type": "default", "partial_rotary_factor": 0.5})).contains("partial_rotary_factor"));
        let llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                            "original_max_position_embeddings": 16});
        assert!(err(llama3).contains("must exceed"));
        assert!(RopeScaling::FreqFactors(vec![1.0; 3]).check(16).unwrap_err().contains("needs 8"));
    }

    #[test]
    fn llama3_keeps_short_wavelengths_divides_long_ones_and_ramps_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let plain = RopeFrequencies::plain(10000.0, 16).inv_freq;
        let scaled = s.frequencies(10000.0, 16).inv_freq;
        assert_eq!(scaled[0], plain[0], "wavelength 2π < 64/4: kept");
        assert_eq!(scaled[7], plain[7] / 8.0, "wavelength ≫ 64: divided by the factor");
        let between = (1..7).filter(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0).count();
        assert!(between > 0, "some frequencies lie on the ramp: {plain:?} → {scaled:?}");
        for i in 0..8 {
            assert!(scaled[i] <= plain[i] && scaled[i] >= plain[i] / 8.0);
        }
    }
}
