//! Rotary position embeddings (RoPE) and the ways of stretching them past the context a
//! model was trained at, as Hugging Face transformers computes them
//! (`modeling_rope_utils.py`): `default`, `linear` (position interpolation), `dynamic`
//! (NTK-aware, the base grows with the sequence), `yarn` (NTK-by-parts plus an attention
//! temperature), `llama3` (Llama 3.1's per-wavelength blend) and `longrope` (Phi-3's
//! per-dimension factors).
//!
//! The frequencies and the cos/sin tables are computed on the host the way PyTorch does:
//! the inverse frequencies in f32, each angle `position · inv_freq` rounded to f32, then
//! cos and sin of that angle, so tables agree with transformers' to an f32 rounding.

use serde_json::{Map, Value, json};

use crate::error::{Error, Origin, Result};

/// How positions beyond the training context are handled (`rope_scaling` / `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware scaling: when a sequence is longer than `max_position_embeddings`, the base
    /// grows so the slowest rotations stretch to the new length.
    Dynamic { factor: f64 },
    /// YaRN: high frequencies kept, low ones interpolated, a linear ramp between (by
    /// wavelength measured in rotations over the original context), and cos/sin scaled by
    /// `attention_factor` (default `0.1·ln(factor) + 1`). Settings the config leaves out
    /// stay None, so the file is written back as it was read (transformers' defaults:
    /// original context `max_position_embeddings`, β 32 and 1, truncation on).
    Yarn {
        factor: f64,
        original_max: Option<usize>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: Option<bool>,
    },
    /// Llama 3.1: wavelengths longer than `original_max / low_freq_factor` divided by
    /// `factor`, shorter than `original_max / high_freq_factor` kept, a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: usize },
    /// LongRoPE (Phi-3): one factor per frequency, `long_factor` past `original_max`;
    /// `factor` defaults to `max_position_embeddings / original_max`.
    LongRope { short_factor: Vec<f64>, long_factor: Vec<f64>, original_max: usize, factor: Option<f64>, attention_factor: Option<f64> },
}

/// RoPE's base and its scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// The base θ of the frequencies `θ^(-2i/d)` (`rope_theta`).
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Default for Rope {
    fn default() -> Self {
        Self { theta: 10000.0, scaling: RopeScaling::None }
    }
}

/// The names `rope_type` takes, for errors.
pub const ROPE_TYPES: &str = "default, linear, dynamic, yarn, llama3, longrope";

impl RopeScaling {
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "default",
            Self::Linear { .. } => "linear",
            Self::Dynamic { .. } => "dynamic",
            Self::Yarn { .. } => "yarn",
            Self::Llama3 { .. } => "llama3",
            Self::LongRope { .. } => "longrope",
        }
    }
}

impl Rope {
    /// Reads RoPE from a Hugging Face `config.json`: transformers 5's `rope_parameters`
    /// (`rope_type`, `rope_theta`, the method's fields), or the older `rope_theta` +
    /// `rope_scaling` (`type` or `rope_type`). `max_positions` is `max_position_embeddings`.
    pub fn from_hf(v: &Map<String, Value>, max_positions: usize, origin: &Origin) -> Result<Self> {
        let (field, params) = match (v.get("rope_parameters").filter(|x| !x.is_null()), v.get("rope_scaling").filter(|x| !x.is_null())) {
            (Some(p), _) => ("rope_parameters", Some(p)),
            (None, s) => ("rope_scaling", s),
        };
        let bad = |key: &str, problem: String| Error::config(origin.clone(), format!("{field}.{key}"), problem);
        let params = match params {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(Error::config(
                    origin.clone(),
                    field,
                    format!("is {other}; expected an object such as {{\"rope_type\": \"linear\", \"factor\": 2.0}}"),
                ));
            }
        };
        let theta_of = |x: Option<&Value>, key: &str| -> Result<Option<f64>> {
            match x.filter(|x| !x.is_null()) {
                None => Ok(None),
                Some(t) => t
                    .as_f64()
                    .filter(|t| *t > 1.0)
                    .map(Some)
                    .ok_or_else(|| Error::config(origin.clone(), key, format!("is {t}; expected a base above 1 such as 10000"))),
            }
        };
        let theta = match theta_of(params.and_then(|p| p.get("rope_theta")), &format!("{field}.rope_theta"))? {
            Some(t) => t,
            None => theta_of(v.get("rope_theta"), "rope_theta")?.unwrap_or(10000.0),
        };
        let Some(p) = params else { return Ok(Self { theta, scaling: RopeScaling::None }) };
        let num = |key: &str| -> Result<Option<f64>> {
            match p.get(key).filter(|x| !x.is_null()) {
                None => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| bad(key, format!("is {x}, not a number"))),
            }
        };
        let factor = || -> Result<f64> {
            match num("factor")? {
                Some(f) if f >= 1.0 => Ok(f),
                Some(f) => Err(bad("factor", format!("is {f}; a context-stretching factor is at least 1"))),
                None => Err(bad("factor", "is missing; say how many times longer the context should be, e.g. 2.0".into())),
            }
        };
        // transformers gives a top-level `original_max_position_embeddings` (Phi-3's) priority.
        let top_original = v.get("original_max_position_embeddings").and_then(Value::as_u64).map(|n| n as usize);
        let original_opt = || -> Result<Option<usize>> {
            match num("original_max_position_embeddings")? {
                Some(n) if n >= 1.0 => Ok(top_original.or(Some(n as usize))),
                Some(n) => Err(bad("original_max_position_embeddings", format!("is {n}; expected the training context length"))),
                None => Ok(top_original),
            }
        };
        let original = |default: usize| -> Result<usize> { Ok(original_opt()?.unwrap_or(default)) };
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic { factor: factor()? },
            "yarn" => RopeScaling::Yarn {
                factor: factor()?,
                original_max: original_opt()?,
                beta_fast: num("beta_fast")?,
                beta_slow: num("beta_slow")?,
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                attention_factor: num("attention_factor")?,
                truncate: p.get("truncate").and_then(Value::as_bool),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: num("low_freq_factor")?.ok_or_else(|| bad("low_freq_factor", "is missing (Llama 3.1 uses 1.0)".into()))?,
                high_freq_factor: num("high_freq_factor")?.ok_or_else(|| bad("high_freq_factor", "is missing (Llama 3.1 uses 4.0)".into()))?,
                original_max: original(max_positions)?,
            },
            "longrope" => {
                let list = |key: &str| -> Result<Vec<f64>> {
                    match p.get(key) {
                        Some(Value::Array(xs)) => xs.iter().map(|x| x.as_f64().ok_or_else(|| bad(key, format!("holds {x}, not a number")))).collect(),
                        _ => Err(bad(key, "is missing; longrope needs one factor per frequency (head_dim / 2 numbers)".into())),
                    }
                };
                RopeScaling::LongRope {
                    short_factor: list("short_factor")?,
                    long_factor: list("long_factor")?,
                    original_max: original(max_positions)?,
                    factor: num("factor")?,
                    attention_factor: num("attention_factor")?,
                }
            }
            other => return Err(bad("rope_type", format!("is '{other}'; tinytune computes {ROPE_TYPES}"))),
        };
        Ok(Self { theta, scaling })
    }

    /// Writes RoPE back in the older form (`rope_theta` and `rope_scaling`), which
    /// transformers 4 and 5 both read.
    pub fn to_hf(&self, out: &mut Map<String, Value>) {
        out.insert("rope_theta".into(), json!(self.theta));
        let s = match &self.scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Dynamic { factor } => json!({"rope_type": "dynamic", "factor": factor}),
            RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor, truncate } => {
                let mut m = json!({"rope_type": "yarn", "factor": factor});
                let given = [
                    ("original_max_position_embeddings", original_max.map(|n| json!(n))),
                    ("beta_fast", beta_fast.map(|x| json!(x))),
                    ("beta_slow", beta_slow.map(|x| json!(x))),
                    ("mscale", mscale.map(|x| json!(x))),
                    ("mscale_all_dim", mscale_all_dim.map(|x| json!(x))),
                    ("attention_factor", attention_factor.map(|x| json!(x))),
                    ("truncate", truncate.map(|x| json!(x))),
                ];
                for (key, value) in given {
                    if let Some(value) = value {
                        m[key] = value;
                    }
                }
                m
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => json!({"rope_type": "llama3", "factor": factor,
                "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max}),
            RopeScaling::LongRope { short_factor, long_factor, original_max, factor, attention_factor } => {
                let mut m = json!({"rope_type": "longrope", "short_factor": short_factor, "long_factor": long_factor, "original_max_position_embeddings": original_max});
                if let Some(f) = factor {
                    m["factor"] = json!(f);
                }
                if let Some(a) = attention_factor {
                    m["attention_factor"] = json!(a);
                }
                m
            }
        };
        out.insert("rope_scaling".into(), s);
    }

    /// Checks the scaling against the head width.
    pub fn validate(&self, head_dim: usize, origin: &Origin) -> Result<()> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::config(origin.clone(), "head_dim", format!("is {head_dim}; rotary embeddings rotate pairs, so it must be even")));
        }
        if let RopeScaling::LongRope { short_factor, long_factor, .. } = &self.scaling {
            for (key, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if f.len() != head_dim / 2 {
                    return Err(Error::config(
                        origin.clone(),
                        format!("rope_scaling.{key}"),
                        format!("has {} factors; this model needs head_dim / 2 = {}", f.len(), head_dim / 2),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The inverse frequencies (f32, `head_dim / 2` of them) and the factor cos and sin are
    /// multiplied by, for a forward pass whose longest position is `seq_len - 1`.
    /// `max_positions` is the config's `max_position_embeddings`.
    pub fn inv_freq(&self, head_dim: usize, seq_len: usize, max_positions: usize) -> (Vec<f32>, f64) {
        let d = head_dim;
        // PyTorch: 1 / base ** (arange(0, d, 2).float() / d), all in f32.
        let plain = |base: f64| -> Vec<f32> {
            let base = base as f32;
            (0..d / 2).map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32)).collect()
        };
        match &self.scaling {
            RopeScaling::None => (plain(self.theta), 1.0),
            RopeScaling::Linear { factor } => (plain(self.theta).into_iter().map(|f| f / *factor as f32).collect(), 1.0),
            RopeScaling::Dynamic { factor } => {
                let seq = seq_len.max(max_positions) as f64;
                let base = self.theta * ((factor * seq / max_positions as f64) - (factor - 1.0)).powf(d as f64 / (d as f64 - 2.0));
                (plain(base), 1.0)
            }
            RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor, truncate } => {
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                // transformers: `if mscale and mscale_all_dim` (both given and non-zero).
                let attn = attention_factor.unwrap_or_else(|| match (mscale.filter(|m| *m != 0.0), mscale_all_dim.filter(|m| *m != 0.0)) {
                    (Some(m), Some(all)) => get_mscale(*factor, m) / get_mscale(*factor, all),
                    _ => get_mscale(*factor, 1.0),
                });
                let original_max = original_max.unwrap_or(max_positions);
                let (beta_fast, beta_slow, truncate) = (beta_fast.unwrap_or(32.0), beta_slow.unwrap_or(1.0), truncate.unwrap_or(true));
                let base = self.theta;
                // The dimension pair whose wavelength makes `rotations` turns over the original context.
                let correction = |rotations: f64| (d as f64 * (original_max as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, high) = (low.max(0.0), high.min(d as f64 - 1.0));
                let high = if low == high { high + 0.001 } else { high };
                let pos_freqs: Vec<f32> = (0..d / 2).map(|i| (base as f32).powf((2 * i) as f32 / d as f32)).collect();
                let out = (0..d / 2)
                    .map(|i| {
                        let extrapolation = 1.0f32 / pos_freqs[i];
                        let interpolation = 1.0f32 / (*factor as f32 * pos_freqs[i]);
                        let ramp = (((i as f64 - low) / (high - low)) as f32).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                    })
                    .collect();
                (out, attn)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                let old = *original_max as f32;
                let (lo, hi, factor) = (*low_freq_factor as f32, *high_freq_factor as f32, *factor as f32);
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                let out = plain(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (out, 1.0)
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max, factor, attention_factor } => {
                let factor = factor.unwrap_or(max_positions as f64 / *original_max as f64);
                let attn = attention_factor.unwrap_or_else(|| if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (*original_max as f64).ln()).sqrt() });
                let ext = if seq_len > *original_max { long_factor } else { short_factor };
                let base = self.theta as f32;
                let out = (0..d / 2).map(|i| 1.0f32 / (ext[i] as f32 * base.powf((2 * i) as f32 / d as f32))).collect();
                (out, attn)
            }
        }
    }

    /// cos and sin tables `[len, head_dim]` (row r is position `start + r`), laid out as
    /// transformers' `rotate_half` expects: the `head_dim / 2` frequencies twice over.
    /// `seq_len` is the longest position + 1 of the whole forward pass (dynamic scaling
    /// depends on it).
    pub fn tables(&self, head_dim: usize, start: usize, len: usize, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
        let (inv, attn) = self.inv_freq(head_dim, start + len, max_positions);
        let half = head_dim / 2;
        let (mut cos, mut sin) = (vec![0.0f32; len * head_dim], vec![0.0f32; len * head_dim]);
        for r in 0..len {
            let pos = (start + r) as f32;
            for (i, f) in inv.iter().enumerate() {
                let angle = (pos * f) as f64;
                let (c, s) = ((angle.cos() * attn) as f32, (angle.sin() * attn) as f32);
                for j in [i, i + half] {
                    cos[r * head_dim + j] = c;
                    sin[r * head_dim + j] = s;
                }
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Rope> {
        let v: Value = serde_json::from_str(json).unwrap();
        Rope::from_hf(v.as_object().unwrap(), 128, &Origin::from("config.json"))
    }

    #[test]
    fn both_config_forms_read_the_same() {
        let old = parse(r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}"#).unwrap();
        let new = parse(r#"{"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0}}"#).unwrap();
        assert_eq!(old, new);
        assert_eq!(old.scaling, RopeScaling::Linear { factor: 4.0 });
        let mut out = Map::new();
        old.to_hf(&mut out);
        assert_eq!(Rope::from_hf(&out, 128, &Origin::from("x")).unwrap(), old);
    }

    #[test]
    fn bad_scaling_names_the_key() {
        let e = parse(r#"{"rope_scaling": {"rope_type": "ntk-magic", "factor": 2}}"#).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.rope_type") && e.contains("yarn"), "{e}");
        let e = parse(r#"{"rope_scaling": {"rope_type": "linear"}}"#).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.factor"), "{e}");
        let e = parse(r#"{"rope_parameters": {"rope_type": "llama3", "factor": 8}}"#).unwrap_err().to_string();
        assert!(e.contains("rope_parameters.low_freq_factor"), "{e}");
    }

    #[test]
    fn interpolation_divides_every_frequency_and_llama3_keeps_the_fast_ones() {
        let plain = Rope::default().inv_freq(16, 10, 128).0;
        let lin = Rope { theta: 10000.0, scaling: RopeScaling::Linear { factor: 4.0 } }.inv_freq(16, 10, 128).0;
        for (p, l) in plain.iter().zip(&lin) {
            assert!((p / 4.0 - l).abs() <= 1e-7 * p, "{p} {l}");
        }
        let l3 = Rope { theta: 10000.0, scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 64 } }
            .inv_freq(16, 10, 128)
            .0;
        assert_eq!(l3[0], plain[0], "the fastest rotation (wavelength 2π < 16 tokens) is kept");
        assert!((l3[7] - plain[7] / 8.0).abs() < 1e-9, "the slowest (wavelength far beyond 64 tokens) is divided by the factor");
        // Dynamic NTK changes nothing inside the trained context and slows rotations beyond it.
        let dynamic = Rope { theta: 10000.0, scaling: RopeScaling::Dynamic { factor: 2.0 } };
        assert_eq!(dynamic.inv_freq(16, 100, 128).0, plain);
        assert!(dynamic.inv_freq(16, 512, 128).0[7] < plain[7]);
    }
}
