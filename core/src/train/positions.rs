//! Loss by position: how well a model predicts the token at each position of windows
//! longer than it was trained on, with each way of stretching rotary positions
//! (`model::rope`). What `tinytune long-context` prints and the long-context lesson is
//! about: past its training context a model with plain RoPE meets rotation angles it has
//! never seen, and its loss climbs; interpolation, NTK and YaRN bend the angles back into
//! the trained range.

use burn::tensor::activation::log_softmax;

use super::Dataset;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::rope::RopeScaling;

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

/// The ways of reaching `factor` times a context of `original` tokens that the lesson
/// compares: none, position interpolation, dynamic NTK and YaRN.
pub fn scalings(factor: f64, original: usize) -> Vec<(&'static str, RopeScaling)> {
    vec![
        ("none", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor }),
        ("ntk (dynamic)", RopeScaling::Dynamic { factor }),
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
    }
}
