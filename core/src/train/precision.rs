//! Mixed precision (Micikevicius et al., 2018): the forward and backward passes run in FP16
//! or BF16, the weights the optimizer updates stay in FP32 (the "master copy"), and in FP16
//! the loss is multiplied by a scale before the backward pass so that small gradients land
//! inside FP16's range instead of flushing to zero; the gradients are divided by the same
//! scale, in FP32, before the update.
//!
//! Each step casts the FP32 master weights to the compute type (what `torch.autocast`
//! does per operation), runs the model, upcasts the logits so that the softmax and the loss
//! are computed in FP32 (as transformers does), and casts the gradients back to FP32.
//!
//! Dynamic loss scaling follows `torch.amp.GradScaler`'s rule and defaults: start at 2¹⁶;
//! when any gradient is infinite or NaN, skip the update and halve the scale; after 2000
//! finite steps in a row, double it.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};
use crate::formats::float::{BF16, FP16, FP32, FloatFormat};
use crate::model::Gpt;
use crate::optim::NamedGrads;

/// The number type of the forward and backward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in FP32.
    #[default]
    Fp32,
    /// FP16 compute with an FP32 master copy (needs loss scaling in practice).
    Fp16,
    /// BF16 compute with an FP32 master copy (FP32's range: no loss scaling needed).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Bf16];

    /// The compute dtype, or None for plain FP32.
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(DType::F16),
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// The bit-level format of the compute type (for ranges and the gradient census).
    pub fn format(self) -> FloatFormat {
        match self {
            Precision::Fp32 => FP32,
            Precision::Fp16 => FP16,
            Precision::Bf16 => BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Errors when `device` cannot compute in this precision, saying which can.
    pub fn check(self, device: &Device, origin: impl Into<Origin>) -> Result<()> {
        match self.compute_dtype() {
            Some(dtype) if !device.supports_dtype(dtype) => Err(Error::config(
                origin,
                "precision",
                format!(
                    "this device has no {} arithmetic ({device:?}); use fp32{}",
                    self.name(),
                    if self == Precision::Bf16 { ", or fp16 where the device has it" } else { "" }
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("unknown precision '{s}'; choose fp32, fp16 or bf16"))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the loss is scaled before the backward pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LossScale {
    /// No scaling: gradients are computed at their true size.
    #[default]
    None,
    /// A constant scale; steps whose gradients overflow are skipped.
    Fixed { scale: f64 },
    /// `GradScaler`'s rule: back off on overflow, grow after a run of good steps.
    Dynamic { init_scale: f64, growth_factor: f64, backoff_factor: f64, growth_interval: usize },
}

impl LossScale {
    /// `torch.amp.GradScaler`'s defaults.
    pub fn dynamic() -> Self {
        Self::dynamic_every(2000)
    }

    /// `GradScaler`'s rule with a different growth interval.
    pub fn dynamic_every(growth_interval: usize) -> Self {
        LossScale::Dynamic { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval }
    }

    /// Checks the values, naming the field.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let positive = |v: f64| v > 0.0 && v.is_finite();
        match *self {
            LossScale::None => Ok(()),
            LossScale::Fixed { scale } if !positive(scale) => Err(Error::config(origin, "loss_scale", format!("{scale} is not a positive scale"))),
            LossScale::Dynamic { init_scale, .. } if !positive(init_scale) => {
                Err(Error::config(origin, "loss_scale", format!("initial scale {init_scale} is not positive")))
            }
            LossScale::Dynamic { growth_factor, .. } if !(growth_factor >= 1.0 && growth_factor.is_finite()) => {
                Err(Error::config(origin, "loss_scale", format!("growth factor {growth_factor} must be at least 1")))
            }
            LossScale::Dynamic { backoff_factor, .. } if !(backoff_factor > 0.0 && backoff_factor < 1.0) => {
                Err(Error::config(origin, "loss_scale", format!("backoff factor {backoff_factor} must be between 0 and 1")))
            }
            LossScale::Dynamic { growth_interval: 0, .. } => Err(Error::config(origin, "loss_scale", "growth interval must be at least 1 step")),
            _ => Ok(()),
        }
    }
}

/// The loss scaler's state, saved with checkpoints so a resumed run continues exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// The scale the next step uses.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: usize,
    /// Steps whose update was skipped because a gradient overflowed.
    pub skipped: usize,
}

/// Applies a [`LossScale`] rule step by step.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub rule: LossScale,
    pub state: ScalerState,
}

impl LossScaler {
    pub fn new(rule: LossScale) -> Self {
        let scale = match rule {
            LossScale::None => 1.0,
            LossScale::Fixed { scale } => scale,
            LossScale::Dynamic { init_scale, .. } => init_scale,
        };
        Self { rule, state: ScalerState { scale, good_steps: 0, skipped: 0 } }
    }

    /// The factor the loss is multiplied by this step.
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// Records whether this step's gradients were all finite and says whether to apply the
    /// update. Without scaling every update is applied, as plain training would: a
    /// non-finite gradient then poisons the weights and the next loss stops the run.
    pub fn update(&mut self, finite: bool) -> bool {
        let s = &mut self.state;
        match self.rule {
            LossScale::None => true,
            LossScale::Fixed { .. } => {
                if !finite {
                    s.skipped += 1;
                }
                finite
            }
            LossScale::Dynamic { growth_factor, backoff_factor, growth_interval, .. } => {
                if finite {
                    s.good_steps += 1;
                    if s.good_steps >= growth_interval {
                        s.scale *= growth_factor;
                        s.good_steps = 0;
                    }
                } else {
                    s.scale *= backoff_factor;
                    s.good_steps = 0;
                    s.skipped += 1;
                }
                finite
            }
        }
    }
}

/// A copy of `model` whose parameters are cast to `dtype`, each a fresh autodiff leaf that
/// requires a gradient exactly when the original does (frozen weights stay frozen).
pub fn cast_model(model: &Gpt, dtype: DType) -> Gpt {
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let trainable = tensor.is_require_grad();
            let cast = Tensor::<D>::from_inner(tensor.inner().cast(self.0));
            Param::from_mapped_value(id, if trainable { cast.require_grad() } else { cast }, mapper)
        }
    }
    model.clone().map(&mut Cast(dtype))
}

/// Casts every gradient to FP32 and divides it by `scale` (the unscale step).
pub fn unscale(grads: &mut NamedGrads, scale: f64) {
    for (_, g) in grads.0.iter_mut() {
        let g32 = g.clone().cast(DType::F32);
        *g = if scale == 1.0 { g32 } else { g32.div_scalar(scale) };
    }
}

/// How one step's gradients sit in a number format's range: a histogram of log₂|g| and
/// counts of the values that became zero, subnormal or infinite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradCensus {
    /// Lowest power of two of the histogram; bin `i` counts `2^(lo+i) ≤ |g| < 2^(lo+i+1)`.
    pub lo: i32,
    pub bins: Vec<u64>,
    /// Gradient elements in all.
    pub total: u64,
    /// Exactly zero.
    pub zeros: u64,
    /// Nonzero but below the format's smallest normal (precision lost).
    pub subnormal: u64,
    /// Infinite or NaN.
    pub non_finite: u64,
}

impl GradCensus {
    /// Histogram range covering FP16's subnormals (2⁻²⁴) up to FP16's overflow (2¹⁶).
    pub const LO: i32 = -40;
    pub const HI: i32 = 20;

    /// Counts `values` (already multiplied by whatever scale is to be shown) against
    /// `format`'s range.
    pub fn of(values: &[f32], format: FloatFormat) -> Self {
        let min_normal = format.min_normal();
        let n = (Self::HI - Self::LO) as usize;
        let mut c = GradCensus { lo: Self::LO, bins: vec![0; n], total: 0, zeros: 0, subnormal: 0, non_finite: 0 };
        for &v in values {
            c.total += 1;
            if !v.is_finite() {
                c.non_finite += 1;
                continue;
            }
            let a = v.abs() as f64;
            if a == 0.0 {
                c.zeros += 1;
                continue;
            }
            if a < min_normal {
                c.subnormal += 1;
            }
            let bin = (a.log2().floor() as i32).clamp(Self::LO, Self::HI - 1) - Self::LO;
            c.bins[bin as usize] += 1;
        }
        c
    }

    pub fn zero_fraction(&self) -> f64 {
        self.zeros as f64 / self.total.max(1) as f64
    }
}

/// One batch's gradients computed in a reduced precision at some loss scale, set beside the
/// same gradients computed in FP32: what underflow and overflow actually did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnderflowReport {
    pub precision: Precision,
    pub scale: f64,
    /// The FP32 gradients multiplied by `scale`, counted against the compute format's range:
    /// where the values would land if only the final gradients were rounded.
    pub reference: GradCensus,
    /// The gradients the reduced-precision backward pass produced (still scaled).
    pub actual: GradCensus,
    /// Elements nonzero in FP32 that came out exactly zero.
    pub lost: u64,
    /// Elements nonzero in FP32.
    pub nonzero_reference: u64,
    /// ‖g/scale − g₃₂‖ / ‖g₃₂‖ over all gradients; None when a gradient overflowed (the
    /// step would be skipped).
    pub relative_error: Option<f64>,
    /// The unscaled loss of the batch.
    pub loss: f32,
}

impl UnderflowReport {
    pub fn lost_fraction(&self) -> f64 {
        self.lost as f64 / self.nonzero_reference.max(1) as f64
    }
}

/// Runs one backward pass of `batch` in FP32, then one in `precision` at each of `scales`,
/// and compares each with the FP32 gradients element by element.
pub fn underflow_reports(trainer: &crate::train::Trainer, batch: &crate::train::Batch, precision: Precision, scales: &[f64]) -> Vec<UnderflowReport> {
    let host = |g: Tensor<1>| -> Vec<f32> { g.cast(DType::F32).into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default() };
    // The FP32 reference does not depend on the scale: one backward pass serves every report.
    let (_, reference) = trainer.raw_gradients(batch, Precision::Fp32, 1.0);
    let reference: Vec<Vec<f32>> = reference.0.into_iter().map(|(_, g)| host(g)).collect();
    scales
        .iter()
        .map(|&scale| {
            let (loss, actual) = trainer.raw_gradients(batch, precision, scale);
            let actual: Vec<Vec<f32>> = actual.0.into_iter().map(|(_, g)| host(g)).collect();
            compare(precision, scale, host(loss.inner())[0], &reference, &actual)
        })
        .collect()
}

/// One report: `actual` (gradients in `precision`, multiplied by `scale`) against the FP32
/// `reference`, parameter by parameter.
fn compare(precision: Precision, scale: f64, loss: f32, reference: &[Vec<f32>], actual: &[Vec<f32>]) -> UnderflowReport {
    let (mut r_all, mut a_all) = (Vec::new(), Vec::new());
    let (mut lost, mut nonzero, mut diff2, mut ref2) = (0u64, 0u64, 0f64, 0f64);
    for (r, a) in reference.iter().zip(actual) {
        for (&x, &y) in r.iter().zip(a) {
            if x != 0.0 {
                nonzero += 1;
                if y == 0.0 {
                    lost += 1;
                }
            }
            let d = y as f64 / scale - x as f64;
            diff2 += d * d;
            ref2 += x as f64 * x as f64;
        }
        r_all.extend(r.iter().map(|x| (*x as f64 * scale) as f32));
        a_all.extend_from_slice(a);
    }
    let format = precision.format();
    UnderflowReport {
        precision,
        scale,
        reference: GradCensus::of(&r_all, format),
        actual: GradCensus::of(&a_all, format),
        lost,
        nonzero_reference: nonzero,
        relative_error: Some((diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt()).filter(|e| e.is_finite()),
        loss,
    }
}

/// Validates a precision and loss-scale pair together.
pub fn validate(precision: Precision, loss_scale: &LossScale, origin: impl Into<Origin> + Clone) -> Result<()> {
    loss_scale.validate(origin.clone())?;
    if precision == Precision::Fp32 && *loss_scale != LossScale::None {
        // Harmless but pointless; say so rather than silently accept a misconfiguration.
        return Err(Error::config(origin, "loss_scale", "loss scaling only matters for fp16 (and bf16); drop it or choose `precision` fp16"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_scaler_follows_grad_scaler() {
        let mut s = LossScaler::new(LossScale::Dynamic { init_scale: 8.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 3 });
        assert!(!s.update(false));
        assert_eq!((s.scale(), s.state.skipped), (4.0, 1));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale(), 4.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 8.0, "grows after growth_interval finite steps");
        assert!(s.update(true) && !s.update(false));
        assert_eq!((s.scale(), s.state.good_steps, s.state.skipped), (4.0, 0, 2), "an overflow resets the run of good steps");
    }

    #[test]
    fn no_scaling_applies_every_update_and_fixed_skips_overflow() {
        let mut none = LossScaler::new(LossScale::None);
        assert!(none.update(false) && none.scale() == 1.0 && none.state.skipped == 0);
        let mut fixed = LossScaler::new(LossScale::Fixed { scale: 128.0 });
        assert!(!fixed.update(false) && fixed.update(true));
        assert_eq!((fixed.scale(), fixed.state.skipped), (128.0, 1));
    }

    #[test]
    fn census_counts_against_the_format() {
        let v = [0.0f32, 1e-9, 1e-6, 1.0, f32::INFINITY, 3.0];
        let c = GradCensus::of(&v, FP16);
        assert_eq!((c.total, c.zeros, c.non_finite), (6, 1, 1));
        // 1e-9 and 1e-6 are below FP16's smallest normal 2^-14.
        assert_eq!(c.subnormal, 2);
        assert_eq!(c.bins.iter().sum::<u64>(), 4);
        assert_eq!(c.bins[(0 - GradCensus::LO) as usize], 1, "1.0 is in [2^0, 2^1)");
        assert_eq!(c.bins[(1 - GradCensus::LO) as usize], 1, "3.0 is in [2^1, 2^2)");
    }

    #[test]
    fn bad_scales_are_named() {
        assert!(LossScale::Fixed { scale: 0.0 }.validate("x").unwrap_err().to_string().contains("loss_scale"));
        assert!(validate(Precision::Fp32, &LossScale::dynamic(), "x").is_err());
        assert!(validate(Precision::Fp16, &LossScale::dynamic(), "x").is_ok());
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("fp8".parse::<Precision>().unwrap_err().contains("fp16"));
    }
}
