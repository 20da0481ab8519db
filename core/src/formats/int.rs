//! Integer formats: a value becomes a small integer times a scale.
//!
//! - INT8 symmetric (absmax): scale = absmax / 127, codes −127…127 (LLM.int8's vector-wise
//!   scheme uses this per row).
//! - INT8 asymmetric (zero point): scale = (max − min) / 255 and an integer zero point, codes
//!   0…255, so a range that is not centred on zero wastes no codes.
//! - INT4 symmetric: scale = absmax / 7, codes −7…7 (bitsandbytes' `int4` table).
//!
//! Rounding is to nearest with ties to even (as `torch.round`). Values beyond the range
//! saturate to the end codes, infinities included. Integers have no NaN: a NaN input is
//! reported as not representable.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct IntCode {
    /// The stored integer.
    pub code: i32,
    /// What it stands for: (code − zero point) × scale.
    pub value: f64,
    /// The input was outside the range and was clamped.
    pub saturated: bool,
}

/// A symmetric code with `levels` steps each side of zero (127 for INT8, 7 for INT4).
pub fn symmetric(x: f32, absmax: f32, levels: i32) -> Option<IntCode> {
    if x.is_nan() || !(absmax > 0.0) || !absmax.is_finite() {
        return None;
    }
    let scale = absmax as f64 / levels as f64;
    let raw = (x as f64 / scale).round_ties_even();
    let code = raw.clamp(-levels as f64, levels as f64) as i32;
    Some(IntCode { code, value: code as f64 * scale, saturated: raw.abs() > levels as f64 })
}

/// An asymmetric 8-bit code for the range [lo, hi].
pub fn asymmetric8(x: f32, lo: f32, hi: f32) -> Option<IntCode> {
    if x.is_nan() || !(hi > lo) || !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let scale = (hi as f64 - lo as f64) / 255.0;
    let zero = (-(lo as f64) / scale).round_ties_even().clamp(0.0, 255.0);
    let raw = (x as f64 / scale).round_ties_even() + zero;
    let code = raw.clamp(0.0, 255.0) as i32;
    Some(IntCode { code, value: (code as f64 - zero) * scale, saturated: !(0.0..=255.0).contains(&raw) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_codes_round_and_saturate() {
        let c = symmetric(0.1, 1.0, 127).unwrap();
        assert_eq!(c.code, 13); // 0.1 × 127 = 12.7
        assert!((c.value - 13.0 / 127.0).abs() < 1e-15);
        assert_eq!(symmetric(5.0, 1.0, 127).unwrap(), IntCode { code: 127, value: 1.0, saturated: true });
        assert_eq!(symmetric(f32::NEG_INFINITY, 1.0, 7).unwrap().code, -7);
        assert_eq!(symmetric(f32::NAN, 1.0, 127), None);
        // 0.5 / (1/7) = 3.5: a tie, to even.
        assert_eq!(symmetric(0.5, 1.0, 7).unwrap().code, 4);
        assert_eq!(symmetric(1.5 / 7.0 + 0.0, 1.0, 7).unwrap().code, 2);
    }

    #[test]
    fn asymmetric_codes_use_the_whole_range() {
        let lo = asymmetric8(0.0, 0.0, 2.55).unwrap();
        assert_eq!((lo.code, lo.value), (0, 0.0));
        let hi = asymmetric8(2.55, 0.0, 2.55).unwrap();
        assert_eq!(hi.code, 255);
        assert!((hi.value - 2.55).abs() < 1e-6);
        assert!(asymmetric8(-1.0, 0.0, 2.55).unwrap().saturated);
    }
}
