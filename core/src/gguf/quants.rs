//! ggml's tensor types and their dequantization to f32, computed in the same order of f32
//! operations as the reference `gguf` Python package (`gguf.quants.dequantize`) and
//! llama.cpp's `dequantize_row_*`, so the results are equal bit for bit (tested on fixtures
//! made with that package).
//!
//! Block layouts (little-endian; `d`, `m`, `dmin` are f16):
//! - Q8_0: 32 weights as `d`, 32 × i8 `q`: `x = d·q`.
//! - Q4_0: 32 weights as `d`, 16 bytes of nibbles: `x = d·(q − 8)`; the low nibbles are
//!   weights 0–15, the high nibbles 16–31.
//! - Q4_1: 32 weights as `d`, `m`, 16 bytes of nibbles: `x = d·q + m`.
//! - Q5_0 / Q5_1: as Q4_0 / Q4_1 with a fifth bit per weight from a 32-bit word after the
//!   scales: `x = d·(q − 16)` / `x = d·q + m`.
//! - Q4_K: 256 weights as `d`, `dmin`, 12 bytes of 6-bit scales and mins for 8 sub-blocks of
//!   32, 128 bytes of nibbles: `x = (d·scale)·q − dmin·min`.
//! - Q6_K: 256 weights as 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 i8
//!   scales and `d`: `x = (d·scale)·(q − 32)`.

use half::{bf16, f16};

/// The ggml tensor types this reader dequantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
    BF16,
}

impl GgmlType {
    /// The type with ggml's id (`enum ggml_type`).
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            9 | 10 | 11 | 13 | 15..=29 | 31..=40 => {
                return Err(format!(
                    "is stored as ggml type {id} ({}), which tinytune cannot read yet; it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q6_K (re-quantize with llama.cpp's llama-quantize, e.g. to Q8_0 or Q4_K_M)",
                    Self::other_name(id)
                ));
            }
            _ => return Err(format!("has unknown ggml type {id}; the file is corrupt or newer than this reader")),
        })
    }

    /// ggml's id for the type (`enum ggml_type`), as [`GgmlType::from_id`] reads it.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// Quantized in blocks (not a plain float type).
    pub fn is_block(self) -> bool {
        self.block().0 > 1
    }

    fn other_name(id: u32) -> &'static str {
        match id {
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            13 => "Q5_K",
            15 => "Q8_K",
            16..=23 => "an IQ type",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            _ => "a newer type",
        }
    }

    /// The name llama.cpp and the `gguf` package use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
            Self::BF16 => "BF16",
        }
    }

    /// (weights per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }

    /// Bits per weight as stored (scales included).
    pub fn bits_per_weight(self) -> f64 {
        let (n, bytes) = self.block();
        bytes as f64 * 8.0 / n as f64
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block's 12 scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 { (s[j] & 63, s[j + 4] & 63) } else { ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)) }
}

/// `n` weights of type `t` from `raw` (which must hold exactly their blocks).
pub fn dequantize(t: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (block, size) = t.block();
    if !n.is_multiple_of(block) || raw.len() != n / block * size {
        return Err(format!("{} weights of {} need {} bytes, but {} are stored", n, t.name(), n / block * size, raw.len()));
    }
    let mut out = Vec::with_capacity(n);
    match t {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|q| d * (*q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(size) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = t == GgmlType::Q5_1;
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (m, rest) = if with_min { (f16_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..];
                for j in 0..32 {
                    let nibble = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
                    let q = nibble | ((((qh >> j) & 1) as u8) << 4);
                    out.push(if with_min { d * q as f32 + m } else { d * (q as i32 - 16) as f32 });
                }
            }
        }
        GgmlType::Q4K => {
            for b in raw.chunks_exact(size) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..];
                for chunk in 0..4 {
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, d2) = (d * sc1 as f32, d * sc2 as f32);
                    let (min1, min2) = (dmin * m1 as f32, dmin * m2 as f32);
                    out.extend(q.iter().map(|x| d1 * (x & 0x0f) as f32 - min1));
                    out.extend(q.iter().map(|x| d2 * (x >> 4) as f32 - min2));
                }
            }
        }
        GgmlType::Q6K => {
            for b in raw.chunks_exact(size) {
                let (ql_all, qh_all, sc_all) = (&b[..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half_block in 0..2 {
                    let ql = &ql_all[half_block * 64..];
                    let qh = &qh_all[half_block * 32..];
                    let sc = &sc_all[half_block * 8..];
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let s = |k: usize| d * sc[is + k] as i8 as f32;
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                    out.extend(y);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_is_scale_times_nibble_plus_min() {
        // d = 0.5, m = −1: nibble 3 → 0.5, nibble 0xf → 6.5.
        let mut b = Vec::new();
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend([0xf3u8; 16]);
        let x = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!((x[0], x[15], x[16], x[31]), (0.5, 0.5, 6.5, 6.5));
        assert!(dequantize(GgmlType::Q4_1, &b[..19], 32).unwrap_err().contains("need 20 bytes"));
        assert_eq!(GgmlType::Q4_1.bits_per_weight(), 5.0);
        assert!(GgmlType::from_id(13).unwrap_err().contains("Q5_K"));
    }
}
