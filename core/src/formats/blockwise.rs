//! Block-wise 4-bit quantization as bitsandbytes does it (QLoRA's storage), bit for bit.
//!
//! A tensor is cut into blocks of `blocksize` values (64 by default). Each block is scaled by
//! its absolute maximum into [-1, 1], every value is replaced by the nearest of 16 code
//! values (NF4's normal quantiles or FP4's E2M1 numbers), and two 4-bit codes are packed
//! per byte, the first in the high nibble. Double quantization (QLoRA's "DQ") then stores
//! the FP32 block maxima themselves in 8 bits: subtract their mean, scale blocks of 256 by
//! their absolute maximum, and replace each by the nearest value of bitsandbytes' signed
//! 8-bit dynamic map.
//!
//! The arithmetic follows bitsandbytes 0.50's CPU path step by step in f32 (the reciprocal
//! multiply for full blocks, division for the partial last block, ties to the lower code),
//! and `tests/tests/fixtures.rs` checks codes and dequantized values for equality on a
//! fixture that bitsandbytes made (`tests/fixtures/make_bnb_4bit.py`).

use serde::Serialize;

/// NF4: 16 quantiles of N(0, 1) scaled to [-1, 1] with an exact zero (Dettmers et al. 2023,
/// QLoRA), as bitsandbytes' `get_4bit_type("nf4")` lists them.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit, exponent bias 2) in bit-pattern
/// order, before normalising by 12: 0b000 = 0, 0b001 = 0.0625, 0b010 = 8, 0b011 = 12,
/// 0b100 = 4, 0b101 = 6, 0b110 = 2, 0b111 = 3; the top bit is the sign.
const FP4_RAW: [f32; 16] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0];

/// The two 4-bit data types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FourBit {
    Nf4,
    Fp4,
}

impl FourBit {
    /// The value each of the 16 codes stands for, in [-1, 1].
    pub fn code(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => NF4,
            FourBit::Fp4 => FP4_RAW.map(|v| v / 12.0),
        }
    }

    /// Codes sorted by value, and the midpoints between neighbours (f32, as bitsandbytes
    /// computes them). Of FP4's two zeros, +0 (code 0) sorts first.
    fn bounds(self) -> ([u8; 16], [f32; 15]) {
        let code = self.code();
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        order.sort_by(|&a, &b| code[a as usize].partial_cmp(&code[b as usize]).unwrap().then(a.cmp(&b)));
        let mids = std::array::from_fn(|i| (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0);
        (order, mids)
    }

    /// The code for a value already scaled into [-1, 1]: the first sorted bucket whose upper
    /// midpoint is ≥ the value (a value exactly between two codes takes the lower one).
    fn nearest(self, x: f32, order: &[u8; 16], mids: &[f32; 15]) -> u8 {
        let i = mids.iter().take_while(|&&m| m < x).count();
        order[i]
    }
}

/// The block maxima of a quantized tensor: FP32, or 8-bit codes (double quantization).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Scales {
    Plain(Vec<f32>),
    Double {
        /// One 8-bit code per block, into `DYNAMIC_MAP`.
        codes: Vec<u8>,
        /// FP32 absmax of each group of 256 codes.
        scales: Vec<f32>,
        /// The mean subtracted from the block maxima before quantizing them.
        offset: f32,
    },
}

/// A 4-bit quantized tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantized4 {
    pub kind: FourBit,
    pub blocksize: usize,
    pub len: usize,
    /// Two codes per byte, the first in the high nibble.
    pub packed: Vec<u8>,
    pub scales: Scales,
}

/// Block size of the second-level (absmax) quantization in double quantization.
pub const DQ_BLOCK: usize = 256;

/// The per-block absolute maxima and the values scaled by them into [-1, 1], the way
/// bitsandbytes computes both: full blocks multiply by the f32 reciprocal, the partial last
/// block divides.
fn scale_blocks(x: &[f32], blocksize: usize) -> (Vec<f32>, Vec<f32>) {
    let full = x.len() - x.len() % blocksize;
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    let mut scaled = Vec::with_capacity(x.len());
    for block in x[..full].chunks(blocksize) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let r = 1.0 / m.max(1e-38);
        scaled.extend(block.iter().map(|v| (v * r).clamp(-1.0, 1.0)));
        absmax.push(m);
    }
    if full < x.len() {
        let block = &x[full..];
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-38);
        scaled.extend(block.iter().map(|v| (v / m).clamp(-1.0, 1.0)));
        absmax.push(m);
    }
    (absmax, scaled)
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`, Dettmers
/// 2016): for each of 7 decades 10^-6 … 10^0, the midpoints of an evenly spaced grid from
/// 0.1 to 1 (2^i + 1 points in decade i), positive and negative, then 0 and 1, sorted.
/// Computed in f32 the way `torch.linspace` computes on the CPU: the first half counts up
/// from the start, the second half down from the end, each point one fused multiply-add.
/// 8-bit AdamW stores its first moment with it.
pub fn dynamic_map() -> [f32; 256] {
    dynamic_map_of(true)
}

/// bitsandbytes' unsigned dynamic map (`create_dynamic_map(signed=False)`): the same
/// decades with twice the points (2^(i+1) + 1 per decade) and no negative half, for values
/// that are never negative, such as 8-bit AdamW's second moment.
pub fn dynamic_map_unsigned() -> [f32; 256] {
    dynamic_map_of(false)
}

fn dynamic_map_of(signed: bool) -> [f32; 256] {
    let linspace = |n: usize| -> Vec<f32> {
        let (start, end) = (0.1f32, 1.0f32);
        let step = (end - start) / (n - 1) as f32;
        let half = n / 2;
        (0..n).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) }).collect()
    };
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7i32 {
        let points = linspace((1usize << (i + if signed { 0 } else { 1 })) + 1);
        // torch multiplies the f32 means by the Python scalar cast to f32.
        let scale = 10f64.powi(i - 6) as f32;
        for w in points.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    while data.len() < 256 {
        data.push(0.0);
    }
    data.sort_by(|a, b| a.partial_cmp(b).unwrap());
    data.try_into().expect("256 entries")
}

/// bitsandbytes' CPU 8-bit block-wise quantization of `x` with `code` (sorted): per block of
/// `blocksize`, scale by the absmax and take the nearest code (the lower one on a tie).
pub fn quantize_8bit(x: &[f32], code: &[f32; 256], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::new();
    for block in x.chunks(blocksize) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(m);
        for v in block {
            let normed = v / m;
            // The first code ≥ normed, then whichever neighbour is nearer.
            let hi = code.partition_point(|&c| c < normed).min(255);
            let idx = if hi > 0 && (normed - code[hi - 1]).abs() <= (code[hi] - normed).abs() { hi - 1 } else { hi };
            codes.push(idx as u8);
        }
    }
    (codes, absmax)
}

/// Quantizes `x` to 4 bits in blocks of `blocksize`, optionally double-quantizing the block
/// maxima.
pub fn quantize_4bit(x: &[f32], kind: FourBit, blocksize: usize, double: bool) -> Quantized4 {
    let (absmax, scaled) = scale_blocks(x, blocksize);
    let (order, mids) = kind.bounds();
    let mut packed = Vec::with_capacity(x.len().div_ceil(2));
    for pair in scaled.chunks(2) {
        let hi = kind.nearest(pair[0], &order, &mids);
        // An odd length is padded with 0.0, as bitsandbytes pads.
        let lo = kind.nearest(pair.get(1).copied().unwrap_or(0.0), &order, &mids);
        packed.push((hi << 4) | lo);
    }
    let scales = if double { double_quantize(&absmax, mean(&absmax)) } else { Scales::Plain(absmax) };
    Quantized4 { kind, blocksize, len: x.len(), packed, scales }
}

/// The correctly rounded f32 mean (summed in f64). bitsandbytes uses `torch.mean`, whose
/// f32 summation order depends on PyTorch's CPU kernels and the machine's vector width, so
/// its offset can differ from this one in the last bit.
pub fn mean(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

/// Double quantization of block maxima: subtract `offset`, then 8-bit block-wise
/// quantization with the dynamic map in blocks of 256.
pub fn double_quantize(absmax: &[f32], offset: f32) -> Scales {
    let centred: Vec<f32> = absmax.iter().map(|v| v - offset).collect();
    let (codes, scales) = quantize_8bit(&centred, &dynamic_map(), DQ_BLOCK);
    Scales::Double { codes, scales, offset }
}

impl Quantized4 {
    /// The FP32 block maxima (dequantizing them first under double quantization).
    pub fn absmax(&self) -> Vec<f32> {
        match &self.scales {
            Scales::Plain(a) => a.clone(),
            Scales::Double { codes, scales, offset } => {
                let map = dynamic_map();
                codes.iter().enumerate().map(|(i, &c)| map[c as usize] * scales[i / DQ_BLOCK] + offset).collect()
            }
        }
    }

    /// The 4-bit code of element `i`.
    pub fn code_at(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let code = self.kind.code();
        let absmax = self.absmax();
        (0..self.len).map(|i| code[self.code_at(i) as usize] * absmax[i / self.blocksize]).collect()
    }

    /// Bytes stored: packed codes plus the scales (and their own scales and offset).
    pub fn bytes(&self) -> usize {
        self.packed.len()
            + match &self.scales {
                Scales::Plain(a) => 4 * a.len(),
                Scales::Double { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
            }
    }

    pub fn bytes_per_param(&self) -> f64 {
        self.bytes() as f64 / self.len as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp4_codes_are_the_e2m1_numbers_over_12() {
        let c = FourBit::Fp4.code();
        assert_eq!((c[3], c[2], c[7], c[1], c[11]), (1.0, 8.0 / 12.0, 0.25, 0.0625 / 12.0, -1.0));
    }

    #[test]
    fn dynamic_map_spans_minus_one_to_one() {
        let m = dynamic_map();
        assert_eq!(m[255], 1.0);
        assert!(m[0] > -1.0 && m[0] < -0.99);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        // The smallest magnitudes are in the 10^-6 decade.
        assert!(m.iter().any(|&v| v > 0.0 && v < 1e-6));
    }

    #[test]
    fn round_trip_error_is_bounded_by_half_the_widest_gap() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            for double in [false, true] {
                let q = quantize_4bit(&x, kind, 64, double);
                let y = q.dequantize();
                let code = kind.code();
                let mut sorted = code.to_vec();
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let gap = sorted.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max);
                for (a, b) in x.iter().zip(&y) {
                    // Within half the widest gap of the block's scale (≤ 1 here), plus a little
                    // for an 8-bit-quantized scale.
                    assert!((a - b).abs() <= gap / 2.0 + if double { 0.01 } else { 1e-6 }, "{kind:?} {a} vs {b}");
                }
                // 4 bits per value plus the scales.
                let want = 0.5 + if double { (1.0 / 64.0) + 4.0 / 1000.0 * 2.0 } else { 4.0 / 64.0 };
                assert!((q.bytes_per_param() - want).abs() < 0.01, "{} vs {want}", q.bytes_per_param());
            }
        }
    }

    #[test]
    fn exact_codes_survive_and_ties_go_down() {
        // Values equal to a block's code points × absmax come back exactly.
        let x: Vec<f32> = NF4.iter().map(|v| v * 2.0).collect();
        let q = quantize_4bit(&x, FourBit::Nf4, 16, false);
        assert_eq!(q.dequantize(), x);
        let (order, mids) = FourBit::Nf4.bounds();
        assert_eq!(FourBit::Nf4.nearest(mids[7], &order, &mids), 7, "a midpoint takes the lower code");
    }
}
