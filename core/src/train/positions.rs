//! Loss by position: how well a model predicts the token at each position of windows
//! longer than it was trained on, with each way of stretching rotary positions
//! (`model::rope`). What `tinytune long-context` prints and the long-context lesson is
//! about: past its training context a model with plain RoPE meets rotation angles it has
//! never seen, and its loss climbs; interpolation, NTK and YaRN bend the angles back into
//! the trained range.

use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::{DataSource, Dataset};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::rope::{Rope, RopeScaling};
use crate::tokenizer::TextTokenizer;

/// The mean next-token loss at each position of up to `max_batches` batches of `b` windows
/// of `t` tokens (entry i: predicting token i + 1 from tokens 0..=i).
pub fn loss_by_position(model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<Vec<f64>> {
    let batches = data.sequential(b, t, max_batches);
    if batches.is_empty() {
        return Err(Error::Invalid(format!("the data holds no window of {t} tokens; use shorter windows or more text")));
    }
    let device = model.device();
    let (mut sum, mut count) = (vec![0.0f64; t], vec![0.0f64; t]);
    for batch in batches {
        let (inputs, targets, weights) = batch.to_device(&device);
        let rows = batch.inputs.len() / t;
        let logp = log_softmax(model.forward(inputs), 2); // [B, T, V]
        let picked = logp.gather(2, targets.reshape([rows, t, 1])).reshape([rows, t]); // [B, T]
        let nll = (picked * weights).neg().into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?;
        for (i, (loss, w)) in nll.iter().zip(&batch.weights).enumerate() {
            sum[i % t] += *loss as f64;
            count[i % t] += *w as f64;
        }
    }
    Ok(sum.iter().zip(&count).map(|(s, c)| if *c > 0.0 { s / c } else { f64::NAN }).collect())
}

/// `model` with its rotary positions stretched by `scaling` (the weights shared).
pub fn with_scaling(model: &Gpt, scaling: RopeScaling) -> Gpt {
    let mut m = model.clone();
    m.config.rope.scaling = scaling;
    m
}

/// Held-out stories joined into one stream and cut into `windows` windows of `length`
/// tokens: what `tinytune long-context` and the rope widget evaluate, so both print the
/// same numbers for the same settings.
pub struct PositionEval {
    pub data: Dataset,
    pub length: usize,
    per_batch: usize,
    batches: usize,
}

impl PositionEval {
    pub fn stories(tok: &TextTokenizer, length: usize, windows: usize) -> Result<Self> {
        if windows == 0 || length < 2 {
            return Err(Error::Invalid(format!("loss by position needs at least one window of two tokens (asked for {windows} of {length})")));
        }
        let stories = (windows * length / 16).max(200);
        let data = DataSource::Stories.dataset(tok, 0, Split::Eval, stories, length, 0.0)?;
        let per_batch = windows.clamp(1, 4);
        Ok(Self { data, length, per_batch, batches: windows.div_ceil(per_batch) })
    }

    /// [`loss_by_position`] of `model` over these windows.
    pub fn losses(&self, model: &Gpt) -> Result<Vec<f64>> {
        loss_by_position(model, &self.data, self.per_batch, self.length, self.batches)
    }
}

/// One way of stretching RoPE, seen per dimension pair: the wavelength (tokens per full
/// turn, `2π / inv_freq`) of each pair's rotation, and the factor cos and sin are scaled by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationCurve {
    pub method: String,
    pub wavelengths: Vec<f64>,
    pub attention_factor: f64,
}

/// The wavelengths of every dimension pair of a `head_dim`-wide head with base `theta`
/// under each of [`scalings`] for `factor` times a context of `original` tokens, as the
/// model computes them for a sequence of `factor · original` tokens (dynamic NTK depends
/// on the length).
pub fn rotation_curves(theta: f64, head_dim: usize, original: usize, factor: f64) -> Vec<RotationCurve> {
    let length = (factor * original as f64).round() as usize;
    scalings(factor, original)
        .into_iter()
        .map(|(name, scaling)| {
            let (inv, attention_factor) = Rope { theta, scaling }.inv_freq(head_dim, length, original);
            RotationCurve { method: name.to_string(), wavelengths: inv.iter().map(|f| 2.0 * std::f64::consts::PI / *f as f64).collect(), attention_factor }
        })
        .collect()
}

/// The ways of reaching `factor` times a context of `original` tokens that the lesson
/// compares: none, position interpolation, dynamic NTK, YaRN and Llama 3.1's blend (with
/// Llama 3.1's frequency factors, 1 and 4).
pub fn scalings(factor: f64, original: usize) -> Vec<(&'static str, RopeScaling)> {
    vec![
        ("none", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor }),
        ("ntk (dynamic)", RopeScaling::Dynamic { factor }),
        ("llama3", RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: original }),
        (
            "yarn",
            RopeScaling::Yarn {
                factor,
                original_max: Some(original),
                beta_fast: None,
                beta_slow: None,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: None,
            },
        ),
    ]
}

/// Means of `losses` over consecutive spans of `width` positions: `(start, mean)`.
pub fn buckets(losses: &[f64], width: usize) -> Vec<(usize, f64)> {
    losses.chunks(width.max(1)).enumerate().map(|(i, c)| (i * width.max(1), c.iter().sum::<f64>() / c.len() as f64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CHARSET, Split};
    use crate::model::ModelConfig;
    use crate::tokenizer::TextTokenizer;
    use crate::train::{DataSource, eval_loss};
    use burn::tensor::Device;

    #[test]
    fn the_mean_over_positions_is_the_held_out_loss() {
        let tok = TextTokenizer::char_level(CHARSET);
        let config = ModelConfig { vocab_size: tok.vocab_size(), n_positions: 16, ..ModelConfig::nano_llama() };
        let device = Device::flex();
        let model = Gpt::init(&config, 0, &device);
        let data = DataSource::Stories.dataset(&tok, 0, Split::Eval, 40, 48, 0.0).unwrap();
        let by_position = loss_by_position(&model, &data, 2, 48, 3).unwrap();
        assert_eq!(by_position.len(), 48);
        let mean = by_position.iter().sum::<f64>() / 48.0;
        let whole = eval_loss(&model, &data, 2, 48, 3).unwrap() as f64;
        assert!((mean - whole).abs() < 1e-4, "{mean} vs {whole}");
        // Stretching changes what the model sees past the first position only.
        let linear = loss_by_position(&with_scaling(&model, RopeScaling::Linear { factor: 4.0 }), &data, 2, 48, 3).unwrap();
        assert!((linear[0] - by_position[0]).abs() < 1e-5, "position 0 has no rotation to stretch");
        assert!(linear.iter().zip(&by_position).skip(1).any(|(a, b)| (a - b).abs() > 1e-4));
        assert_eq!(buckets(&[1.0, 3.0, 5.0], 2), vec![(0, 2.0), (2, 5.0)]);
        // The windows the CLI and the widget share give the same numbers as the direct call.
        let eval = PositionEval::stories(&tok, 48, 6).unwrap();
        assert_eq!(eval.losses(&model).unwrap(), loss_by_position(&model, &eval.data, 4, 48, 2).unwrap());
    }

    #[test]
    fn each_scaling_bends_the_wavelengths_as_its_paper_says() {
        let (theta, d, original, factor) = (10000.0, 32, 128, 4.0);
        let curves = rotation_curves(theta, d, original, factor);
        let get = |m: &str| curves.iter().find(|c| c.method == m).unwrap();
        let plain = &get("none").wavelengths;
        // Pair i turns once every 2π·θ^(2i/d) tokens.
        for (i, w) in plain.iter().enumerate() {
            let want = 2.0 * std::f64::consts::PI * theta.powf(2.0 * i as f64 / d as f64);
            assert!((w / want - 1.0).abs() < 1e-5, "pair {i}: {w} vs {want}");
        }
        let ratio = |m: &str, i: usize| get(m).wavelengths[i] / plain[i];
        let last = d / 2 - 1;
        // Interpolation slows every pair by the factor.
        assert!((0..d / 2).all(|i| (ratio("linear", i) - factor).abs() < 1e-4));
        // NTK raises the base: the fastest pair keeps its speed, the slowest stretches by
        // transformers' (factor·len/original − (factor − 1)) = factor² − factor + 1 here.
        assert!((ratio("ntk (dynamic)", 0) - 1.0).abs() < 1e-6);
        assert!((ratio("ntk (dynamic)", last) - (factor * factor - factor + 1.0)).abs() < 1e-2, "{}", ratio("ntk (dynamic)", last));
        // YaRN and Llama 3 keep the fast pairs and interpolate the slow ones fully.
        for m in ["yarn", "llama3"] {
            assert!((ratio(m, 0) - 1.0).abs() < 1e-6, "{m}");
            assert!((ratio(m, last) - factor).abs() < 1e-4, "{m}: {}", ratio(m, last));
            assert!((0..d / 2).all(|i| ratio(m, i) >= 1.0 - 1e-6 && ratio(m, i) <= factor + 1e-4), "{m}");
        }
        // Only YaRN changes attention's temperature: 0.1·ln(4) + 1.
        assert!((get("yarn").attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert!(curves.iter().filter(|c| c.method != "yarn").all(|c| c.attention_factor == 1.0));
    }
}
