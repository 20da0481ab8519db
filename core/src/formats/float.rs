//! Floating-point formats with `e` exponent bits and `m` mantissa bits, encoded from f32 with
//! IEEE 754 round-to-nearest-even, and decoded exactly.
//!
//! Every value of these formats is exactly representable in f64, and every f32 divided by a
//! power of two is too, so rounding is done in f64 arithmetic without any error of its own:
//! scale the magnitude so that one unit in the last place of the target is 1, round to the
//! nearest integer with ties to even, scale back.

use serde::Serialize;

/// What happens to values above the largest finite number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// IEEE 754: the top exponent is reserved; overflow rounds to ±infinity.
    Infinity,
    /// OCP FP8 E4M3 ("fn": finite, NaN only): no infinities; only S.1111.111 is NaN, so the
    /// top exponent holds normal numbers up to 448. Overflow and ±infinity become NaN, as
    /// PyTorch's `float8_e4m3fn` cast does.
    NanOnly,
}

/// A binary floating-point format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FloatFormat {
    pub name: &'static str,
    pub exponent_bits: u32,
    pub mantissa_bits: u32,
    pub overflow: Overflow,
}

pub const FP32: FloatFormat = FloatFormat { name: "fp32", exponent_bits: 8, mantissa_bits: 23, overflow: Overflow::Infinity };
/// NVIDIA's TensorFloat-32: FP32's range with FP16's precision (19 bits used of 32).
pub const TF32: FloatFormat = FloatFormat { name: "tf32", exponent_bits: 8, mantissa_bits: 10, overflow: Overflow::Infinity };
pub const FP16: FloatFormat = FloatFormat { name: "fp16", exponent_bits: 5, mantissa_bits: 10, overflow: Overflow::Infinity };
pub const BF16: FloatFormat = FloatFormat { name: "bf16", exponent_bits: 8, mantissa_bits: 7, overflow: Overflow::Infinity };
pub const FP8_E4M3: FloatFormat = FloatFormat { name: "fp8-e4m3", exponent_bits: 4, mantissa_bits: 3, overflow: Overflow::NanOnly };
pub const FP8_E5M2: FloatFormat = FloatFormat { name: "fp8-e5m2", exponent_bits: 5, mantissa_bits: 2, overflow: Overflow::Infinity };

/// A value's fields in a format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fields {
    pub bits: u32,
    pub sign: u32,
    pub exponent: u32,
    pub mantissa: u32,
    /// The bit string, sign then exponent then mantissa, e.g. "0 01111 0000000000".
    pub text: String,
}

impl FloatFormat {
    pub fn total_bits(&self) -> u32 {
        1 + self.exponent_bits + self.mantissa_bits
    }

    pub fn bias(&self) -> i32 {
        (1 << (self.exponent_bits - 1)) - 1
    }

    fn max_exponent_field(&self) -> u32 {
        (1 << self.exponent_bits) - 1
    }

    /// The exponent of the smallest normal number, 1 − bias.
    pub fn min_exponent(&self) -> i32 {
        1 - self.bias()
    }

    /// The largest finite value.
    pub fn max_value(&self) -> f64 {
        let m = self.mantissa_bits as i32;
        match self.overflow {
            // Top exponent reserved: the largest normal has exponent field all-ones minus one.
            Overflow::Infinity => (2.0 - 2f64.powi(-m)) * 2f64.powi(self.max_exponent_field() as i32 - 1 - self.bias()),
            // Top exponent in use; the all-ones mantissa there is NaN.
            Overflow::NanOnly => (2.0 - 2.0 * 2f64.powi(-m)) * 2f64.powi(self.max_exponent_field() as i32 - self.bias()),
        }
    }

    pub fn min_normal(&self) -> f64 {
        2f64.powi(self.min_exponent())
    }

    pub fn min_subnormal(&self) -> f64 {
        2f64.powi(self.min_exponent() - self.mantissa_bits as i32)
    }

    /// Machine epsilon: the gap between 1 and the next larger value.
    pub fn epsilon(&self) -> f64 {
        2f64.powi(-(self.mantissa_bits as i32))
    }

    fn nan_bits(&self, sign: u32) -> u32 {
        let e = self.max_exponent_field();
        let m = self.mantissa_bits;
        let man = match self.overflow {
            Overflow::Infinity => 1 << (m - 1), // quiet NaN
            Overflow::NanOnly => (1 << m) - 1,
        };
        (sign << (self.exponent_bits + m)) | (e << m) | man
    }

    fn inf_bits(&self, sign: u32) -> u32 {
        (sign << (self.exponent_bits + self.mantissa_bits)) | (self.max_exponent_field() << self.mantissa_bits)
    }

    /// Encodes `x` with round-to-nearest-even. NaN stays NaN; overflow follows `overflow`.
    pub fn encode(&self, x: f32) -> u32 {
        let sign = (x.to_bits() >> 31) & 1;
        let m = self.mantissa_bits as i32;
        if x.is_nan() {
            return self.nan_bits(sign);
        }
        if x.is_infinite() {
            return match self.overflow {
                Overflow::Infinity => self.inf_bits(sign),
                Overflow::NanOnly => self.nan_bits(sign),
            };
        }
        let a = (x as f64).abs();
        if a == 0.0 {
            return sign << (self.exponent_bits + self.mantissa_bits);
        }
        // One unit in the last place at a's binade (or at the subnormal spacing).
        let e = exponent_of(a).max(self.min_exponent());
        let ulp = 2f64.powi(e - m);
        let rounded = (a / ulp).round_ties_even() * ulp;
        if rounded > self.max_value() {
            return match self.overflow {
                Overflow::Infinity => self.inf_bits(sign),
                Overflow::NanOnly => self.nan_bits(sign),
            };
        }
        let (exp_field, man) = if rounded == 0.0 {
            (0, 0)
        } else if rounded < self.min_normal() {
            (0, (rounded / self.min_subnormal()) as u32)
        } else {
            let e = exponent_of(rounded);
            ((e + self.bias()) as u32, (rounded / 2f64.powi(e - m)) as u32 - (1 << m))
        };
        (sign << (self.exponent_bits + self.mantissa_bits)) | (exp_field << self.mantissa_bits) | man
    }

    /// The value a code stands for.
    pub fn decode(&self, bits: u32) -> f64 {
        let f = self.fields(bits);
        let m = self.mantissa_bits as i32;
        let s = if f.sign == 1 { -1.0 } else { 1.0 };
        let top = self.max_exponent_field();
        match self.overflow {
            Overflow::Infinity if f.exponent == top => {
                return if f.mantissa == 0 { s * f64::INFINITY } else { f64::NAN };
            }
            Overflow::NanOnly if f.exponent == top && f.mantissa == (1 << m) - 1 => return f64::NAN,
            _ => {}
        }
        if f.exponent == 0 {
            s * f.mantissa as f64 * self.min_subnormal()
        } else {
            s * (1.0 + f.mantissa as f64 / 2f64.powi(m)) * 2f64.powi(f.exponent as i32 - self.bias())
        }
    }

    /// Rounds `x` to this format and back.
    pub fn round(&self, x: f32) -> f64 {
        self.decode(self.encode(x))
    }

    pub fn fields(&self, bits: u32) -> Fields {
        let (e, m) = (self.exponent_bits, self.mantissa_bits);
        let sign = (bits >> (e + m)) & 1;
        let exponent = (bits >> m) & ((1 << e) - 1);
        let mantissa = bits & ((1 << m) - 1);
        let text = format!("{sign} {exponent:0e$b} {mantissa:0m$b}", e = e as usize, m = m as usize);
        Fields { bits, sign, exponent, mantissa, text }
    }
}

/// floor(log2(a)) for a positive finite f64.
fn exponent_of(a: f64) -> i32 {
    let bits = a.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0 {
        // f64 subnormal: never reached from f32 inputs, but be exact anyway.
        a.log2().floor() as i32
    } else {
        e - 1023
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Every one of the 65,536 FP16 and BF16 bit patterns decodes as the `half` crate does.
    #[test]
    fn every_16_bit_pattern_decodes_like_half() {
        for b in 0..=u16::MAX {
            for (fmt, want) in [(FP16, f16::from_bits(b).to_f32()), (BF16, bf16::from_bits(b).to_f32())] {
                let got = fmt.decode(b as u32);
                if want.is_nan() {
                    assert!(got.is_nan(), "{} {b:#06x}", fmt.name);
                } else {
                    assert_eq!(got, want as f64, "{} {b:#06x}", fmt.name);
                    // And every non-NaN pattern encodes back to itself.
                    assert_eq!(fmt.encode(want), b as u32, "{} {b:#06x} re-encodes", fmt.name);
                }
            }
        }
    }

    /// f32 inputs: every 997th bit pattern (about 4.3 million values across the whole range),
    /// plus every tie and near-tie around each 16-bit value, rounded as `half` rounds them
    /// (round to nearest, ties to even).
    #[test]
    fn f32_inputs_round_like_half() {
        let check = |x: f32| {
            let (h, b) = (f16::from_f32(x), bf16::from_f32(x));
            if x.is_nan() {
                assert!(FP16.round(x).is_nan() && BF16.round(x).is_nan());
                return;
            }
            assert_eq!(FP16.encode(x), h.to_bits() as u32, "fp16 of {x:e} ({:#010x})", x.to_bits());
            assert_eq!(BF16.encode(x), b.to_bits() as u32, "bf16 of {x:e} ({:#010x})", x.to_bits());
        };
        let mut bits: u32 = 0;
        while let Some(next) = bits.checked_add(997) {
            check(f32::from_bits(bits));
            bits = next;
        }
        // Exact midpoints between neighbouring 16-bit values, and one f32 ulp either side.
        for b in 0..u16::MAX {
            for (lo, hi) in [(f16::from_bits(b).to_f32(), f16::from_bits(b + 1).to_f32()), (bf16::from_bits(b).to_f32(), bf16::from_bits(b + 1).to_f32())] {
                if lo.is_finite() && hi.is_finite() && lo.signum() == hi.signum() {
                    let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
                    for x in [mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits() - 1)] {
                        check(x);
                    }
                }
            }
        }
        for x in
            [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE, 1e-45, 65504.0, 65519.99, 65520.0, 5.96e-8, 2.98e-8, 2.99e-8]
        {
            check(x);
        }
    }

    #[test]
    fn format_constants() {
        assert_eq!((FP16.max_value(), FP16.min_normal(), FP16.min_subnormal(), FP16.epsilon()), (65504.0, 2f64.powi(-14), 2f64.powi(-24), 2f64.powi(-10)));
        assert_eq!(BF16.max_value(), (2.0 - 2f64.powi(-7)) * 2f64.powi(127));
        assert_eq!(FP8_E4M3.max_value(), 448.0);
        assert_eq!(FP8_E4M3.min_subnormal(), 2f64.powi(-9));
        assert_eq!(FP8_E5M2.max_value(), 57344.0);
        assert_eq!(TF32.epsilon(), 2f64.powi(-10));
        assert_eq!(FP32.max_value(), f32::MAX as f64);
        assert_eq!(FP32.min_subnormal(), 1e-45f32 as f64);
    }

    #[test]
    fn fp8_overflow_and_specials() {
        // E4M3: 464 is the tie between 448 (…110) and the NaN pattern (…111): even wins.
        assert_eq!(FP8_E4M3.round(464.0), 448.0);
        assert!(FP8_E4M3.round(465.0).is_nan());
        assert!(FP8_E4M3.round(f32::INFINITY).is_nan());
        assert_eq!(FP8_E4M3.encode(448.0), 0x7e);
        assert_eq!(FP8_E4M3.encode(-0.0), 0x80);
        // E5M2 is IEEE-like: overflow to infinity.
        assert_eq!(FP8_E5M2.round(57344.0), 57344.0);
        assert_eq!(FP8_E5M2.round(61440.0), f64::INFINITY); // the tie above the max rounds up to the (even) infinity
        assert_eq!(FP8_E5M2.round(61439.0), 57344.0);
        assert_eq!(FP8_E5M2.round(-1e9), f64::NEG_INFINITY);
        // 0.1 in each format (the lesson's example).
        assert_eq!(FP8_E4M3.round(0.1), 0.1015625);
        assert_eq!(FP8_E5M2.round(0.1), 0.09375);
        assert_eq!(BF16.round(0.1), 0.10009765625);
        assert_eq!(FP16.round(0.1), 0.0999755859375);
        assert_eq!(FP32.round(0.1), 0.1f32 as f64);
        assert_eq!(FP16.fields(FP16.encode(1.0)).text, "0 01111 0000000000");
    }

    /// Every FP8 pattern decodes and re-encodes to itself (NaNs aside).
    #[test]
    fn every_fp8_pattern_round_trips() {
        for fmt in [FP8_E4M3, FP8_E5M2] {
            for b in 0..256u32 {
                let v = fmt.decode(b);
                if v.is_nan() {
                    continue;
                }
                assert_eq!(fmt.encode(v as f32), b, "{} {b:#04x} = {v}", fmt.name);
            }
        }
    }
}
