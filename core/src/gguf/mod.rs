//! GGUF, llama.cpp's single-file model format (also what Ollama and LM Studio run): a
//! header, typed metadata (architecture, hyperparameters, the tokenizer, the chat
//! template), a table of tensors, then the tensors' bytes, many of them quantized in
//! blocks (`quants`).
//!
//! The reader works on bytes in memory, so the page can open a file the reader picked from
//! disk. It is written here rather than taken from a crate because a file from the internet
//! is untrusted input: every count, length and offset is checked against the bytes that are
//! actually there before anything is allocated, and every failure is one [`Error`] naming
//! the file, what was being read and at which byte, never a panic or an allocation abort.
//! (The `ggus` crate, evaluated first, sizes allocations from unchecked counts with
//! `Layout::array(..).unwrap()` and reads through `unsafe` pointer casts.)
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Versions 2 and 3 are
//! read (64-bit counts); version 1 (32-bit counts, 2023) is refused with a clear error.

pub mod llama;
pub mod quants;
pub mod tokenizer;

use std::collections::BTreeMap;

use crate::error::{Error, Origin, Result};
pub use quants::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
/// The data section's alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type's name, for errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: fastest-varying first (ggml's `ne`). A PyTorch
    /// tensor of shape `[out, in]` is stored as `[in, out]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Where its bytes start, from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d))
    }

    /// The shape as PyTorch and safetensors see it: slowest-varying first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|d| *d as usize).collect()
    }

    /// Bytes of the stored (possibly quantized) data.
    pub fn bytes(&self) -> u64 {
        let (block, size) = self.ggml_type.block();
        (self.elements() / block as u64).saturating_mul(size as u64)
    }
}

/// A parsed GGUF file: metadata and tensor table, and the bytes the tensors live in.
pub struct Gguf<'a> {
    pub origin: Origin,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// The data section (tensor offsets are relative to its start).
    data: &'a [u8],
}

/// A cursor over untrusted bytes: every read checks what is left.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    origin: &'a Origin,
}

impl<'a> Cursor<'a> {
    fn fail(&self, what: &str, problem: impl std::fmt::Display) -> Error {
        Error::parse(self.origin.clone(), format!("{what} (at byte {}): {problem}", self.pos))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(
                self.fail(what, format!("needs {n} bytes but the file has {} left; the file is truncated or not a GGUF file (download it again)", self.left()))
            );
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what is left of the file at `min_bytes` bytes per item.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.left() / min_bytes.max(1)) as u64;
        if n > fits {
            return Err(self.fail(what, format!("says {n}, but the {} bytes left could hold at most {fits}; the file is corrupt", self.left())));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.fail(what, format!("is not UTF-8 ({e})")))
    }

    fn value(&mut self, type_id: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.fail(what, format!("a bool must be 0 or 1, not {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(self.fail(what, "arrays of arrays are not supported"));
                }
                let item = self.u32(what)?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(self.fail(what, format!("unknown array item type {item}"))),
                };
                let n = self.count(what, min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.fail(what, format!("unknown value type {t} (GGUF defines 0 to 12)"))),
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses `bytes` (a whole GGUF file) named `origin` in errors. Checks every tensor's
    /// bytes lie inside the file; reads no tensor data.
    pub fn parse(bytes: &'a [u8], origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        let mut c = Cursor { bytes, pos: 0, origin: &origin };
        let magic = c.take(4, "the magic number").map_err(|_| Error::parse(origin.clone(), "is not a GGUF file (shorter than its 4-byte magic number)"))?;
        if magic != MAGIC {
            return Err(Error::parse(
                origin.clone(),
                format!(
                    "is not a GGUF file: it starts with {magic:02x?}, not \"GGUF\" (a Hugging Face folder is read with config.json and model.safetensors instead)"
                ),
            ));
        }
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => return Err(c.fail("the version", "GGUF version 1 (2023) is not supported; convert the model again with a current llama.cpp")),
            v => return Err(c.fail("the version", format!("GGUF version {v} is not supported (this reader knows 2 and 3)"))),
        }
        // A tensor-table entry is at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes;
        // a metadata entry at least 8 (key) + 4 (type) + 1.
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata entry {i}'s key"))?;
            let what = format!("metadata {key:?}");
            let type_id = c.u32(&what)?;
            let value = c.value(type_id, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.fail(&what, "appears twice"));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i}'s name"))?;
            let what = format!("tensor {name:?}");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.fail(&what, format!("has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let ggml_type = GgmlType::from_id(type_id).map_err(|e| c.fail(&what, e))?;
            let offset = c.u64(&what)?;
            if dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d)).is_none_or(|e| e == 0) {
                return Err(c.fail(&what, format!("has dimensions {dims:?}, which hold no elements or overflow")));
            }
            let (block, _) = ggml_type.block();
            if !dims[0].is_multiple_of(block as u64) {
                return Err(c.fail(&what, format!("is {ggml_type:?}, which stores blocks of {block}, but its rows have {} elements", dims[0])));
            }
            if !names.insert(name.clone()) {
                return Err(c.fail(&what, "appears twice"));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(Error::parse(origin.clone(), format!("metadata \"general.alignment\" is {v:?}; it must be a power of two"))),
            },
        };
        let start = (c.pos as u64).div_ceil(alignment) * alignment;
        let data = bytes.get(start as usize..).unwrap_or(&[]);
        for t in &tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(Error::tensor(
                    origin.clone(),
                    &t.name,
                    format!("starts at offset {}, not a multiple of the alignment {alignment}; the file is corrupt", t.offset),
                ));
            }
            let end = t.offset.checked_add(t.bytes());
            if end.is_none_or(|e| e > data.len() as u64) {
                return Err(Error::tensor(
                    origin.clone(),
                    &t.name,
                    format!(
                        "needs bytes {}..{} of the data section, which has {}; the file is truncated (download it again)",
                        t.offset,
                        t.offset.saturating_add(t.bytes()),
                        data.len()
                    ),
                ));
            }
        }
        Ok(Self { origin, version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, or an error naming the file and the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::config(self.origin.clone(), key, "is missing from the file's metadata"))
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Error::config(self.origin.clone(), key, format!("must be a non-negative integer, not {}", v.type_name())))
    }

    /// A required number.
    pub fn require_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Error::config(self.origin.clone(), key, format!("must be a number, not {}", v.type_name())))
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Error::config(self.origin.clone(), key, format!("must be a string, not {}", v.type_name())))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// How the tensors are stored, by type: (type, tensors, weights, bytes), largest first.
    pub fn storage(&self) -> Vec<(GgmlType, usize, u64, u64)> {
        let mut by_type: Vec<(GgmlType, usize, u64, u64)> = Vec::new();
        for t in &self.tensors {
            match by_type.iter_mut().find(|r| r.0 == t.ggml_type) {
                Some(r) => {
                    r.1 += 1;
                    r.2 += t.elements();
                    r.3 += t.bytes();
                }
                None => by_type.push((t.ggml_type, 1, t.elements(), t.bytes())),
            }
        }
        by_type.sort_by_key(|r| std::cmp::Reverse(r.3));
        by_type
    }

    /// A tensor's stored bytes (checked to lie in the file when it was parsed).
    pub fn raw(&self, t: &TensorInfo) -> &'a [u8] {
        &self.data[t.offset as usize..(t.offset + t.bytes()) as usize]
    }

    /// A tensor's values as f32, dequantized, in storage order (row-major over
    /// [`TensorInfo::shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        quants::dequantize(t.ggml_type, self.raw(t), t.elements() as usize).map_err(|e| Error::tensor(self.origin.clone(), &t.name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid file: one metadata string, one 2×32 F32 tensor.
    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..64 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn a_minimal_file_reads_back() {
        let bytes = tiny();
        let g = Gguf::parse(&bytes, "tiny.gguf").unwrap();
        assert_eq!(g.require_str("general.architecture").unwrap(), "llama");
        let t = g.tensor("w").unwrap();
        assert_eq!(t.shape(), vec![2, 32]);
        assert_eq!(g.dequantize(t).unwrap()[63], 63.0);
        let err = g.require_u64("llama.block_count").unwrap_err().to_string();
        assert_eq!(err, "tiny.gguf: llama.block_count: is missing from the file's metadata");
    }

    /// Every truncation and many single-byte corruptions of a valid file give an error or a
    /// file, never a panic or a huge allocation (a small in-tree fuzz).
    #[test]
    fn hostile_bytes_give_errors_not_panics() {
        let bytes = tiny();
        for n in 0..bytes.len() {
            let r = Gguf::parse(&bytes[..n], "cut.gguf");
            assert!(r.is_err(), "a file cut at {n} bytes parsed");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            let mut b = bytes.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % b.len() as u64) as usize;
                b[at] = (state >> 32) as u8;
            }
            if let Ok(g) = Gguf::parse(&b, "mutated.gguf") {
                for t in &g.tensors {
                    let _ = g.dequantize(t);
                }
            }
        }
        // Absurd counts are refused before anything is allocated.
        let mut b = tiny();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = Gguf::parse(&b, "huge.gguf").err().unwrap().to_string();
        assert!(err.contains("the tensor count") && err.contains("corrupt"), "{err}");
        let err = Gguf::parse(b"PK\x03\x04rest", "model.zip").err().unwrap().to_string();
        assert!(err.contains("is not a GGUF file"), "{err}");
    }
}
