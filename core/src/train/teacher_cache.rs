//! A teacher's logits kept in a file, so that distilling several students (or one student
//! with other settings) from the same teacher on the same data runs the teacher once.
//!
//! Each entry is one batch row: its token ids, which of its positions count towards the
//! loss, and the teacher's raw (untempered) logits at those positions only. The positions
//! that do not count are left out: the distillation loss multiplies them by a weight of 0,
//! so a row read back from the cache gives the loss the live teacher gives
//! (`teacher_cache_reproduces_the_live_teacher`: the first step bit for bit, later steps
//! within 1e-6, autodiff summing the gradient's parts in another order). A run looks every row of a micro-batch up;
//! when one is missing, the teacher runs on the whole micro-batch (as it would without a
//! cache) and its rows are added.
//!
//! The file is safetensors, readable with the `safetensors` Python package:
//! - `input_ids` (U32, `[sum of row lengths]`): every row's token ids, one row after another;
//! - `row_lengths` (U32, `[rows]`): where each row ends;
//! - `counted` (U8, `[sum of row lengths]`): 1 where the position's logits are stored;
//! - `logits` (F32, `[counted positions, vocab]`): the teacher's logits, in the same order;
//!
//! and its metadata names the format (`tinytune-teacher-logits`, version 1), the vocabulary
//! size and the teacher's fingerprint ([`fingerprint`]: SHA-256 of its config and weights),
//! so a cache made with another teacher is refused instead of silently used.
//!
//! Size: 4 bytes × vocabulary per counted position (micro: 2 KiB a position; a step of 8
//! story-qa rows with ~20 answer tokens each, 320 KiB). The cache is held in memory while a
//! run uses it.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use super::batch::Batch;
use crate::checkpoint::Owned;
use crate::error::{Error, Origin, Result};
use crate::model::Gpt;

/// The `format` the file's metadata carries.
pub const FORMAT: &str = "tinytune-teacher-logits";
const VERSION: &str = "1";

/// What identifies a row: its token ids and which of its positions count.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RowKey {
    ids: Vec<u32>,
    counted: Vec<bool>,
}

/// A teacher's logits by batch row (see the module documentation).
#[derive(Clone, Debug)]
pub struct TeacherCache {
    teacher: String,
    vocab: usize,
    entries: Vec<(RowKey, Vec<f32>)>,
    index: HashMap<RowKey, usize>,
    /// Rows served from the cache since it was opened.
    pub hits: usize,
    /// Rows the teacher computed and the cache added since it was opened.
    pub misses: usize,
}

/// The teacher's fingerprint: SHA-256 (hex) of its `config.json` and its weights as
/// tinytune saves them, so the same model gives the same fingerprint wherever it was
/// loaded from.
pub fn fingerprint(teacher: &Gpt) -> String {
    let mut bytes = teacher.config().to_json().into_bytes();
    bytes.extend(crate::checkpoint::save_model(teacher));
    crate::checkpoint::sha256_hex(&bytes)
}

impl TeacherCache {
    /// An empty cache for the teacher with `fingerprint` and a vocabulary of `vocab`.
    pub fn new(fingerprint: String, vocab: usize) -> Self {
        TeacherCache { teacher: fingerprint, vocab, entries: Vec::new(), index: HashMap::new(), hits: 0, misses: 0 }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of logits held (what the file mostly is).
    pub fn logit_bytes(&self) -> usize {
        self.entries.iter().map(|(_, l)| l.len() * 4).sum()
    }

    fn keys(batch: &Batch) -> Vec<RowKey> {
        let t = batch.t.max(1);
        batch
            .inputs
            .chunks(t)
            .zip(batch.weights.chunks(t))
            .map(|(ids, w)| RowKey { ids: ids.to_vec(), counted: w.iter().map(|&x| x != 0.0).collect() })
            .collect()
    }

    /// The batch's teacher logits `[B * T * V]` (zeros at the positions that do not count)
    /// when every row is held; `None` (and nothing counted as a hit) when any is missing.
    pub fn lookup(&mut self, batch: &Batch) -> Option<Vec<f32>> {
        let keys = Self::keys(batch);
        let found: Vec<usize> = keys.iter().map(|k| self.index.get(k).copied()).collect::<Option<_>>()?;
        let v = self.vocab;
        let mut out = vec![0.0; batch.b * batch.t * v];
        for (row, (key, &i)) in keys.iter().zip(&found).enumerate() {
            let stored = &self.entries[i].1;
            for (n, pos) in key.counted.iter().enumerate().filter(|(_, c)| **c).map(|(p, _)| p).enumerate() {
                let at = (row * batch.t + pos) * v;
                out[at..at + v].copy_from_slice(&stored[n * v..(n + 1) * v]);
            }
        }
        self.hits += keys.len();
        Some(out)
    }

    /// Adds the batch's rows from the teacher's logits `[B * T * V]` (rows already held are
    /// left as they are).
    pub fn insert(&mut self, batch: &Batch, logits: &[f32]) {
        let v = self.vocab;
        assert_eq!(logits.len(), batch.b * batch.t * v, "logits for a [{}, {}, {v}] batch", batch.b, batch.t);
        for (row, key) in Self::keys(batch).into_iter().enumerate() {
            if self.index.contains_key(&key) {
                continue;
            }
            let mut stored = Vec::with_capacity(key.counted.iter().filter(|c| **c).count() * v);
            for (pos, _) in key.counted.iter().enumerate().filter(|(_, c)| **c) {
                let at = (row * batch.t + pos) * v;
                stored.extend_from_slice(&logits[at..at + v]);
            }
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push((key, stored));
            self.misses += 1;
        }
    }

    /// The cache as safetensors bytes (rows in the order they were added).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut ids = Vec::new();
        let mut lengths = Vec::new();
        let mut counted = Vec::new();
        let mut logits = Vec::new();
        for (key, stored) in &self.entries {
            ids.extend(key.ids.iter().flat_map(|x| x.to_le_bytes()));
            lengths.extend((key.ids.len() as u32).to_le_bytes());
            counted.extend(key.counted.iter().map(|&c| u8::from(c)));
            logits.extend(stored.iter().flat_map(|x| x.to_le_bytes()));
        }
        let positions = logits.len() / 4 / self.vocab.max(1);
        let tensors = [
            ("input_ids", Owned { dtype: Dtype::U32, shape: vec![ids.len() / 4], bytes: ids }),
            ("row_lengths", Owned { dtype: Dtype::U32, shape: vec![self.entries.len()], bytes: lengths }),
            ("counted", Owned { dtype: Dtype::U8, shape: vec![counted.len()], bytes: counted }),
            ("logits", Owned { dtype: Dtype::F32, shape: vec![positions, self.vocab], bytes: logits }),
        ];
        let views: Vec<(&str, &Owned)> = tensors.iter().map(|(n, o)| (*n, o)).collect();
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("teacher_sha256".to_string(), self.teacher.clone()),
            ("vocab_size".to_string(), self.vocab.to_string()),
        ]);
        safetensors::serialize(views, Some(meta)).expect("in-memory safetensors serialisation cannot fail")
    }

    /// Reads a cache file for the teacher with `fingerprint` and a vocabulary of `vocab`;
    /// a file made for another teacher, or not a teacher cache at all, is refused with the
    /// file and the field named.
    pub fn from_bytes(bytes: &[u8], origin: impl Into<Origin>, fingerprint: &str, vocab: usize) -> Result<Self> {
        let origin = origin.into();
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::parse(origin.clone(), format!("not a valid safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::parse(origin.clone(), format!("not a valid safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| meta.get(key).cloned().unwrap_or_default();
        if field("format") != FORMAT || field("version") != VERSION {
            return Err(Error::config(
                origin,
                "metadata.format",
                format!(
                    "is {:?} version {:?}, not a tinytune teacher cache ({FORMAT} version {VERSION}); pass a new --teacher-cache path and tinytune writes one",
                    field("format"),
                    field("version")
                ),
            ));
        }
        if field("teacher_sha256") != fingerprint {
            return Err(Error::config(
                origin,
                "metadata.teacher_sha256",
                "the cache was made with another teacher (its weights or config differ from this one's); delete the file or pass another --teacher-cache path",
            ));
        }
        if field("vocab_size") != vocab.to_string() {
            return Err(Error::config(origin, "metadata.vocab_size", format!("is {} and the teacher's vocabulary has {vocab} tokens", field("vocab_size"))));
        }
        let tensor = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
            let view = st.tensor(name).map_err(|_| Error::tensor(origin.clone(), name, "is missing"))?;
            if view.dtype() != dtype {
                return Err(Error::tensor(origin.clone(), name, format!("has dtype {:?}; a teacher cache stores it as {dtype:?}", view.dtype())));
            }
            Ok(view.data().to_vec())
        };
        let words = |b: Vec<u8>| -> Vec<u32> { b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect() };
        let ids = words(tensor("input_ids", Dtype::U32)?);
        let lengths = words(tensor("row_lengths", Dtype::U32)?);
        let counted = tensor("counted", Dtype::U8)?;
        let logits: Vec<f32> = tensor("logits", Dtype::F32)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        let total: usize = lengths.iter().map(|&n| n as usize).sum();
        if total != ids.len() || total != counted.len() {
            return Err(Error::tensor(
                origin,
                "row_lengths",
                format!("adds up to {total} positions, but input_ids has {} and counted {}", ids.len(), counted.len()),
            ));
        }
        let positions = counted.iter().filter(|&&c| c != 0).count();
        if logits.len() != positions * vocab {
            return Err(Error::tensor(
                origin,
                "logits",
                format!("holds {} values; {positions} counted positions × {vocab} need {}", logits.len(), positions * vocab),
            ));
        }
        let mut cache = TeacherCache::new(fingerprint.to_string(), vocab);
        let (mut at, mut pos) = (0, 0);
        for n in lengths {
            let n = n as usize;
            let key = RowKey { ids: ids[at..at + n].to_vec(), counted: counted[at..at + n].iter().map(|&c| c != 0).collect() };
            let k = key.counted.iter().filter(|c| **c).count();
            let stored = logits[pos * vocab..(pos + k) * vocab].to_vec();
            cache.index.insert(key.clone(), cache.entries.len());
            cache.entries.push((key, stored));
            at += n;
            pos += k;
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: &[(&[u32], &[f32])]) -> Batch {
        let t = rows[0].0.len();
        Batch {
            b: rows.len(),
            t,
            inputs: rows.iter().flat_map(|r| r.0.iter().copied()).collect(),
            targets: vec![0; rows.len() * t],
            weights: rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_round_trip_through_the_file_and_uncounted_positions_read_back_as_zeros() {
        let v = 3;
        let b = batch(&[(&[1, 2, 3], &[0.0, 1.0, 1.0]), (&[4, 5, 6], &[1.0, 0.0, 0.5])]);
        let logits: Vec<f32> = (0..2 * 3 * v).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut cache = TeacherCache::new("abc".into(), v);
        assert!(cache.lookup(&b).is_none());
        cache.insert(&b, &logits);
        assert_eq!((cache.len(), cache.misses, cache.logit_bytes()), (2, 2, 4 * 4 * v));
        let back = TeacherCache::from_bytes(&cache.to_bytes(), "c.safetensors", "abc", v).unwrap().lookup(&b).unwrap();
        for (i, (got, want)) in back.iter().zip(&logits).enumerate() {
            let (row, pos) = (i / v / 3, i / v % 3);
            let counted = b.weights[row * 3 + pos] != 0.0;
            assert_eq!(*got, if counted { *want } else { 0.0 }, "value {i}");
        }
        // Another weight mask over the same ids is another row.
        let other = batch(&[(&[1, 2, 3], &[1.0, 1.0, 1.0])]);
        assert!(cache.lookup(&other).is_none());
        // Rows are found in any batch that holds them.
        let second = batch(&[(&[4, 5, 6], &[1.0, 0.0, 0.5])]);
        assert_eq!(cache.lookup(&second).unwrap(), back[9..].to_vec());
        assert_eq!(cache.hits, 1);
    }

    #[test]
    fn a_cache_from_another_teacher_or_vocabulary_is_refused_by_field() {
        let cache = TeacherCache::new("abc".into(), 4);
        let bytes = cache.to_bytes();
        let e = TeacherCache::from_bytes(&bytes, "t.safetensors", "def", 4).unwrap_err().to_string();
        assert!(e.starts_with("t.safetensors: metadata.teacher_sha256: the cache was made with another teacher"), "{e}");
        let e = TeacherCache::from_bytes(&bytes, "t.safetensors", "abc", 5).unwrap_err().to_string();
        assert!(e.contains("metadata.vocab_size: is 4"), "{e}");
        let model = crate::checkpoint::to_safetensors(vec![]);
        let e = TeacherCache::from_bytes(&model, "m.safetensors", "abc", 4).unwrap_err().to_string();
        assert!(e.contains("metadata.format") && e.contains("not a tinytune teacher cache"), "{e}");
        let e = TeacherCache::from_bytes(b"junk", "j.safetensors", "abc", 4).unwrap_err().to_string();
        assert!(e.starts_with("j.safetensors: not a valid safetensors file"), "{e}");
    }
}
