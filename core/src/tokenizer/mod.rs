//! Tokenizers: character-level and byte-level BPE, both as Hugging Face `tokenizer.json`,
//! and chat templates (`chat`).
//!
//! Both kinds are `tokenizers::Tokenizer` values, so one code path saves, loads, encodes and
//! decodes them, GPT-2's own `tokenizer.json` loads unchanged, and a file written here loads
//! in Python's `tokenizers`. The character-level tokenizer is a BPE model with one token per
//! character and no merges (plus a `Fuse` decoder that concatenates), which is the simplest
//! honest way to express it in that format.

pub mod chat;

use std::collections::BTreeMap;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Origin, Result};

/// GPT-2's end-of-text token. Documents are separated by it during pre-training, and
/// generation may stop on it.
pub const EOT: &str = "<|endoftext|>";
/// The tokens that end a text, in the order a vocabulary's is looked for.
const END_TOKENS: [&str; 3] = [EOT, "<|end_of_text|>", "</s>"];
/// Stands for characters a character-level tokenizer has never seen.
pub const UNK: &str = "<unk>";

/// A tokenizer plus the ids tinytune needs to know about.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eot: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer({}, vocab {})", self.kind(), self.vocab_size())
    }
}

thread_local! {
    /// Set while [`catch_quietly`] runs on this thread: its panic is an error the caller
    /// reports, so the default hook's "thread panicked at" message is not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err` without the panic message on stderr (the caller
/// reports a clear error instead). Other threads' panics print as before.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, Box<dyn std::any::Any + Send>> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

impl TextTokenizer {
    /// One token per character of `charset` (duplicates ignored), then `<unk>` and
    /// `<|endoftext|>`.
    pub fn char_level(charset: &str) -> Self {
        let mut chars: Vec<char> = charset.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let mut vocab = BTreeMap::new();
        for (i, ch) in chars.iter().enumerate() {
            vocab.insert(ch.to_string(), i as u32);
        }
        let unk = chars.len() as u32;
        vocab.insert(UNK.to_string(), unk);
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                added_token_json(unk, UNK),
                added_token_json(unk + 1, EOT),
            ],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": UNK,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []
            }
        });
        Self::from_json(&json.to_string(), "built-in character tokenizer").expect("the character tokenizer JSON is well formed")
    }

    /// Trains a byte-level BPE tokenizer (GPT-2's scheme: bytes mapped to printable
    /// characters, then merges) of `vocab_size` tokens on `texts`.
    pub fn train_bpe<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self> {
        if vocab_size < 256 + 1 {
            return Err(Error::Invalid(format!("a byte-level BPE vocabulary needs at least 257 tokens (256 bytes + {EOT}); got {vocab_size}")));
        }
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        tokenizer.train(&mut trainer, texts).map_err(|e| Error::Tokenizer(format!("BPE training failed: {e}")))?;
        let eot = tokenizer.token_to_id(EOT);
        Ok(Self { inner: tokenizer, eot })
    }

    /// Loads a `tokenizer.json` (tinytune's own or GPT-2's). `origin` names the file in errors.
    pub fn from_json(text: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        // JSON syntax first: the tokenizers crate panics instead of failing on some bad
        // JSON inside a `decoder` (found by fuzzing, fuzz/regressions/tokenizer_json/).
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::parse(origin.clone(), format!("not valid JSON: {e}")))?;
        // It also `expect`s on some well-formed but wrong values (a precompiled normaliser's
        // map); natively that panic becomes this error (a browser build aborts instead).
        let parsed = catch_quietly(|| serde_json::from_value::<Tokenizer>(value));
        let inner: Tokenizer = match parsed {
            Ok(r) => r.map_err(|e| Error::parse(origin.clone(), format!("not a valid Hugging Face tokenizer.json: {e}")))?,
            Err(_) => return Err(Error::parse(origin, "not a valid Hugging Face tokenizer.json: the tokenizers library could not read one of its parts")),
        };
        if inner.get_vocab_size(true) == 0 {
            return Err(Error::config(origin, "model.vocab", "the vocabulary is empty"));
        }
        let eot = END_TOKENS.iter().find_map(|t| inner.token_to_id(t));
        Ok(Self { inner, eot })
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> String {
        self.inner.to_string(true).expect("a loaded tokenizer always serialises")
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        // Decoding only fails on ids outside the vocabulary; show those rather than fail.
        self.inner.decode(ids, false).unwrap_or_else(|_| ids.iter().map(|&id| self.inner.id_to_token(id).unwrap_or_else(|| format!("<{id}?>"))).collect())
    }

    /// Number of ids including added tokens: the smallest `vocab_size` a model may have.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token by its text (e.g. a chat template's `<|im_end|>`), if it is one
    /// token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of the token that ends a text: `<|endoftext|>` (GPT-2, SmolLM2, Qwen2), or
    /// where the vocabulary has none, Llama 3's `<|end_of_text|>` or Llama 2's and
    /// Mistral's `</s>`.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// "bpe" for byte-level BPE (has merges), "char" otherwise.
    pub fn kind(&self) -> &'static str {
        if self.inner.get_pre_tokenizer().is_some() { "bpe" } else { "char" }
    }

    /// Every id whose decoded text contains `needle`: with BPE a newline is often merged
    /// into a longer token, so "stop at the end of the line" has to stop on all of them.
    pub fn ids_containing(&self, needle: &str) -> Vec<u32> {
        (0..self.vocab_size() as u32).filter(|&id| self.decode(&[id]).contains(needle)).collect()
    }

    /// Where a one-line answer ends: every id containing a newline, plus `<|endoftext|>`.
    pub fn line_stop_ids(&self) -> Vec<u32> {
        let mut ids = self.ids_containing("\n");
        ids.extend(self.eot);
        ids
    }

    /// The token text of one id, for displays.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

fn added_token_json(id: u32, content: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(tok: &TextTokenizer, text: &str) {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids), text, "{} round trip", tok.kind());
        // Saving and loading gives the same ids.
        let again = TextTokenizer::from_json(&tok.to_json(), "saved").unwrap();
        assert_eq!(again.encode(text).unwrap(), ids);
        assert_eq!(again.vocab_size(), tok.vocab_size());
    }

    #[test]
    fn char_level_round_trips_and_is_one_id_per_char() {
        let tok = TextTokenizer::char_level("abc .\n");
        assert_eq!(tok.kind(), "char");
        assert_eq!(tok.vocab_size(), 6 + 2);
        assert_eq!(tok.encode("ab c.").unwrap(), vec![3, 4, 1, 5, 2]); // sorted: '\n',' ','.','a','b','c'
        round_trip(&tok, "a cab.\nbac ");
        assert_eq!(tok.eot(), Some(7));
        // An unseen character becomes <unk> rather than vanishing.
        assert_eq!(tok.encode("az").unwrap(), vec![3, 6]);
        // A line ends at '\n' (id 0) or at <|endoftext|>.
        assert_eq!(tok.line_stop_ids(), vec![0, 7]);
    }

    #[test]
    fn bpe_trains_merges_and_round_trips() {
        let texts = ["the cat sat on the mat.", "the dog sat on the log.", "a cat and a dog."];
        let corpus: Vec<&str> = texts.iter().cycle().take(60).copied().collect();
        let tok = TextTokenizer::train_bpe(corpus.into_iter(), 300).unwrap();
        assert_eq!(tok.kind(), "bpe");
        assert!(tok.vocab_size() > 257 && tok.vocab_size() <= 300, "{}", tok.vocab_size());
        let text = "the cat sat on the log.";
        // Merges make the text shorter in tokens than in bytes.
        assert!(tok.encode(text).unwrap().len() < text.len() / 2);
        round_trip(&tok, text);
        // Byte-level means nothing is unknown, not even text it never saw.
        round_trip(&tok, "Zebra 42 ünïcode!");
        assert!(tok.eot().is_some());
        assert!(TextTokenizer::train_bpe(["x"].into_iter(), 100).is_err());
    }

    #[test]
    fn malformed_tokenizer_json_names_the_file() {
        let err = TextTokenizer::from_json("{\"model\": 3}", "runs/x/tokenizer.json").unwrap_err().to_string();
        assert!(err.starts_with("runs/x/tokenizer.json"), "{err}");
    }
}
