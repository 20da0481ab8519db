//! Post-training quantization: every linear weight of a model through a format and back
//! (simulated quantization: the model keeps computing in f32 with the values the format can
//! store), with the error and the bytes the quantized weights would take.
//!
//! Weights are quantized in the layout `torch.nn.Linear` uses, `[out, in]`, so blocks run
//! along a row's inputs as bitsandbytes' blocks do (tinytune stores GPT-2's Conv1D layout
//! `[in, out]`, and transposes around the quantizer). Embeddings, norms and biases stay in
//! FP32, as bitsandbytes and PEFT leave them.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::blockwise::{FourBit, quantize_4bit};
use super::int;
use super::show::{FORMATS, float_format};
use crate::error::{Error, Result};
use crate::methods::for_each_projection;
use crate::model::{Gpt, named_params};

/// What quantizing a model's linear weights did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantReport {
    pub format: String,
    pub block: usize,
    pub double_quant: bool,
    /// Linear weights quantized, and their bytes in the format (scales included).
    pub linear_params: usize,
    pub linear_bytes: f64,
    /// Everything else (embeddings, norms, biases), kept in FP32.
    pub other_params: usize,
    /// Model bytes before (all FP32) and after.
    pub bytes_before: f64,
    pub bytes_after: f64,
    /// Error over all quantized weights.
    pub max_abs_error: f64,
    pub rms_error: f64,
    /// RMS error divided by the weights' RMS.
    pub relative_rms_error: f64,
}

impl QuantReport {
    pub fn bytes_per_linear_param(&self) -> f64 {
        self.linear_bytes / self.linear_params.max(1) as f64
    }
}

/// `x` (one weight matrix in `[out, in]` order) through `format` and back, and its bytes.
pub fn roundtrip(x: &[f32], format: &str, block: usize, double_quant: bool) -> Result<(Vec<f32>, f64)> {
    if !FORMATS.contains(&format) {
        return Err(Error::Invalid(format!("unknown format '{format}'; choose one of {}", FORMATS.join(", "))));
    }
    if block == 0 {
        return Err(Error::Invalid("the block size must be at least 1".into()));
    }
    Ok(match format {
        "nf4" | "fp4" => {
            let kind = if format == "nf4" { FourBit::Nf4 } else { FourBit::Fp4 };
            let q = quantize_4bit(x, kind, block, double_quant);
            (q.dequantize(), q.bytes() as f64)
        }
        "int8" | "int4" | "int8-asym" => {
            let mut out = Vec::with_capacity(x.len());
            for b in x.chunks(block) {
                let absmax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (lo, hi) = b.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
                for &v in b {
                    let c = match format {
                        "int8" => int::symmetric(v, absmax, 127),
                        "int4" => int::symmetric(v, absmax, 7),
                        _ => int::asymmetric8(v, lo, hi),
                    };
                    // No code: an all-zero block (zeros stay zero) or a NaN (integers have none).
                    out.push(c.map(|c| c.value as f32).unwrap_or(if v == 0.0 { 0.0 } else { f32::NAN }));
                }
            }
            let bits = if format == "int4" { 4.0 } else { 8.0 };
            let per_block = if format == "int8-asym" { 8.0 } else { 4.0 };
            (out, x.len() as f64 * bits / 8.0 + x.len().div_ceil(block) as f64 * per_block)
        }
        name => {
            let f = float_format(name).expect("listed in FORMATS");
            (x.iter().map(|&v| f.round(v) as f32).collect(), x.len() as f64 * f.total_bits() as f64 / 8.0)
        }
    })
}

/// Quantizes every linear weight of `model` in `format` (block-wise for the scaled formats)
/// and returns the model with the dequantized weights, and the report.
pub fn quantize_model(mut model: Gpt, format: &str, block: usize, double_quant: bool) -> Result<(Gpt, QuantReport)> {
    let total: usize = named_params(&model).iter().map(|p| p.numel).sum();
    let (mut n, mut bytes, mut max_err, mut sq_err, mut sq_w) = (0usize, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut failure = None;
    for_each_projection(&mut model, |_path, p| {
        if failure.is_some() {
            return;
        }
        let Some(weight) = &p.weight else {
            failure = Some(Error::Invalid("this model's base is already quantized (QLoRA); quantize the FP32 model".into()));
            return;
        };
        let w = weight.val();
        let device = w.device();
        let [d_in, d_out] = w.dims();
        let data: Vec<f32> = w.clone().transpose().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights");
        match roundtrip(&data, format, block, double_quant) {
            Err(e) => failure = Some(e),
            Ok((q, b)) => {
                for (a, b) in data.iter().zip(&q) {
                    let e = (*a as f64 - *b as f64).abs();
                    max_err = max_err.max(e);
                    sq_err += e * e;
                    sq_w += (*a as f64) * (*a as f64);
                }
                n += data.len();
                bytes += b;
                let t = Tensor::<2>::from_data(TensorData::new(q, [d_out, d_in]), &device).transpose();
                // Keep the parameter's id and training state; only the values change.
                p.weight = p.weight.take().map(|w| w.map(|_| t));
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let other = total - n;
    let report = QuantReport {
        format: format.to_string(),
        block,
        double_quant,
        linear_params: n,
        linear_bytes: bytes,
        other_params: other,
        bytes_before: total as f64 * 4.0,
        bytes_after: bytes + other as f64 * 4.0,
        max_abs_error: max_err,
        rms_error: (sq_err / n.max(1) as f64).sqrt(),
        relative_rms_error: (sq_err / sq_w.max(f64::MIN_POSITIVE)).sqrt(),
    };
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;
    use burn::tensor::Device;

    #[test]
    fn quantizing_changes_only_linear_weights_by_the_formats_rounding() {
        let device = Device::flex();
        let model = Gpt::init(&ModelConfig::nano(), 3, &device);
        let before = crate::model::params::param_data(&model);
        let (q, report) = quantize_model(model, "nf4", 64, false).unwrap();
        let after = crate::model::params::param_data(&q);
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            let (a, b): (Vec<f32>, Vec<f32>) = (a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap());
            let linear = name.ends_with("c_attn.weight") || name.ends_with("c_proj.weight") || name.ends_with("c_fc.weight");
            if linear {
                assert_ne!(a, b, "{name} should be quantized");
                // Each value is one of the block's 16 levels, so it moved by at most the widest
                // NF4 gap × the largest weight.
                let m = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 0.31 * m / 2.0 + 1e-7), "{name}");
            } else {
                assert_eq!(a, b, "{name} must stay FP32");
            }
        }
        assert!(report.linear_params > 0 && report.bytes_after < report.bytes_before);
        assert!((report.bytes_per_linear_param() - (0.5 + 4.0 / 64.0)).abs() < 0.01);
        // FP32 is lossless.
        let (_, r) = quantize_model(Gpt::init(&ModelConfig::nano(), 3, &device), "fp32", 64, false).unwrap();
        assert_eq!(r.max_abs_error, 0.0);
    }
}
