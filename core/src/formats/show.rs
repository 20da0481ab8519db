//! One number in every format: its bits, the value stored, the error, and each format's
//! range and precision. What `tinytune formats show` prints and the number-format widget
//! draws.

use serde::Serialize;

use super::blockwise::FourBit;
use super::float::{BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat, Overflow, TF32};
use super::int;

/// Every format name `show` and `roundtrip` accept.
pub const FORMATS: [&str; 11] = ["fp32", "tf32", "fp16", "bf16", "fp8-e4m3", "fp8-e5m2", "int8", "int8-asym", "int4", "nf4", "fp4"];

pub fn float_format(name: &str) -> Option<FloatFormat> {
    [FP32, TF32, FP16, BF16, FP8_E4M3, FP8_E5M2].into_iter().find(|f| f.name == name)
}

/// One format's view of a number.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub format: &'static str,
    /// Bits as text: "sign exponent mantissa" for floats, the code for the others.
    pub bits: String,
    /// Total bits per value (scales not included).
    pub width: u32,
    /// The value stored; NaN or ±infinity where the format produces them.
    pub stored: f64,
    /// stored − input (NaN when either is not finite).
    pub error: f64,
    /// What happened, in words: "exact", "rounded", "overflow → infinity", "saturated", ….
    pub note: String,
    /// Largest finite value (for scaled formats: the range's end).
    pub max: f64,
    /// Smallest positive normal value (floats) or the step between codes (scaled formats).
    pub min_normal: f64,
    /// Smallest positive subnormal value (floats; 0 for the others).
    pub min_subnormal: f64,
    /// Gap between 1 and the next value (floats); the relative step at the range's end
    /// (scaled formats).
    pub epsilon: f64,
}

/// `x` in every format. Scaled formats (INT8, INT4, NF4, FP4) need a range: they are shown
/// for a block whose absolute maximum is `range` (INT8 asymmetric: the range −range…range).
pub fn show(x: f32, range: f32) -> Vec<Row> {
    let mut rows: Vec<Row> = [FP32, TF32, FP16, BF16, FP8_E4M3, FP8_E5M2].iter().map(|f| float_row(f, x)).collect();
    let scaled = |format: &'static str, width: u32, code: Option<int::IntCode>, bits: String, step: f64, levels: f64| {
        let (stored, note) = match code {
            None if x.is_nan() => (f64::NAN, "integers have no NaN: not representable".to_string()),
            None => (f64::NAN, format!("the range {range} cannot scale a block; give a positive, finite range")),
            Some(c) => (c.value, if c.saturated { "saturated at the end of the range".into() } else { rounding_note(x, c.value) }),
        };
        Row { format, bits, width, stored, error: error(x, stored), note, max: range as f64, min_normal: step, min_subnormal: 0.0, epsilon: 1.0 / levels }
    };
    let i8c = int::symmetric(x, range, 127);
    rows.push(scaled("int8", 8, i8c, i8c.map(|c| format!("{:08b}", c.code as i8 as u8)).unwrap_or_default(), range as f64 / 127.0, 127.0));
    let asym = int::asymmetric8(x, -range, range);
    rows.push(scaled("int8-asym", 8, asym, asym.map(|c| format!("{:08b}", c.code as u8)).unwrap_or_default(), 2.0 * range as f64 / 255.0, 255.0));
    let i4 = int::symmetric(x, range, 7);
    rows.push(scaled("int4", 4, i4, i4.map(|c| format!("{:04b}", (c.code as i8 as u8) & 0xf)).unwrap_or_default(), range as f64 / 7.0, 7.0));
    for (name, kind) in [("nf4", FourBit::Nf4), ("fp4", FourBit::Fp4)] {
        rows.push(four_bit_row(name, kind, x, range));
    }
    rows
}

fn error(x: f32, stored: f64) -> f64 {
    if x.is_finite() && stored.is_finite() { stored - x as f64 } else { f64::NAN }
}

fn rounding_note(x: f32, stored: f64) -> String {
    if stored == x as f64 { "exact".into() } else { "rounded to the nearest value".into() }
}

fn float_row(f: &FloatFormat, x: f32) -> Row {
    let code = f.encode(x);
    let stored = f.decode(code);
    let note = if x.is_nan() {
        "NaN stays NaN".to_string()
    } else if x.is_infinite() {
        match f.overflow {
            Overflow::Infinity => "infinity stays infinity".into(),
            Overflow::NanOnly => "no infinity in this format: becomes NaN".into(),
        }
    } else if stored.is_infinite() {
        "overflow: rounds to infinity".into()
    } else if stored.is_nan() {
        "overflow: no infinity in this format, becomes NaN".into()
    } else if stored == 0.0 && x != 0.0 {
        "underflow: rounds to zero".into()
    } else if stored != 0.0 && stored.abs() < f.min_normal() {
        format!("{} (subnormal)", rounding_note(x, stored))
    } else {
        rounding_note(x, stored)
    };
    Row {
        format: f.name,
        bits: f.fields(code).text,
        width: f.total_bits(),
        stored,
        error: error(x, stored),
        note,
        max: f.max_value(),
        min_normal: f.min_normal(),
        min_subnormal: f.min_subnormal(),
        epsilon: f.epsilon(),
    }
}

fn four_bit_row(name: &'static str, kind: FourBit, x: f32, range: f32) -> Row {
    let code = kind.code();
    let smallest = code.iter().filter(|v| **v > 0.0).fold(f32::INFINITY, |a, &b| a.min(b)) as f64 * range as f64;
    let base = Row {
        format: name,
        bits: String::new(),
        width: 4,
        stored: f64::NAN,
        error: f64::NAN,
        note: String::new(),
        max: range as f64,
        min_normal: smallest,
        min_subnormal: 0.0,
        epsilon: 0.0,
    };
    if x.is_nan() || !(range > 0.0) || !range.is_finite() {
        let note =
            if x.is_nan() { "NaN: the block's absmax becomes NaN and every value in the block dequantizes to NaN" } else { "give a positive, finite range" };
        return Row { note: note.into(), ..base };
    }
    // One value in a block whose absmax is `range`: the same scaling and nearest-code rule
    // as the block-wise quantizer (quantizing [x, range] puts x in a block of absmax range
    // whenever |x| ≤ range).
    let q = super::blockwise::quantize_4bit(&[x.clamp(-range, range), range], kind, 2, false);
    let c = q.code_at(0);
    let stored = (code[c as usize] * range) as f64;
    let note = if x.abs() > range { "saturated at the block's absmax".to_string() } else { rounding_note(x, stored) };
    Row { bits: format!("{c:04b}"), stored, error: error(x, stored), note, ..base }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_row_and_specials_are_explained() {
        let rows = show(0.1, 1.0);
        assert_eq!(rows.iter().map(|r| r.format).collect::<Vec<_>>(), FORMATS);
        let get = |rows: &[Row], f: &str| rows.iter().find(|r| r.format == f).unwrap().clone();
        assert_eq!(get(&rows, "fp16").stored, 0.0999755859375);
        assert_eq!(get(&rows, "int8").bits, "00001101");
        assert!((get(&rows, "nf4").stored - 0.07958029955625534).abs() < 1e-7);
        let big = show(1e6, 1.0);
        assert!(get(&big, "fp16").note.contains("infinity"));
        assert!(get(&big, "fp8-e4m3").stored.is_nan() && get(&big, "fp8-e4m3").note.contains("NaN"));
        assert!(get(&big, "int8").note.contains("saturated"));
        let nan = show(f32::NAN, 1.0);
        assert!(get(&nan, "bf16").stored.is_nan());
        assert!(get(&nan, "int4").note.contains("no NaN"));
        let tiny = show(1e-30, 1.0);
        assert!(get(&tiny, "fp16").note.contains("underflow"));
        assert!(get(&tiny, "bf16").stored > 0.0);
    }
}
