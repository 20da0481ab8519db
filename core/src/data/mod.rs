//! Generated text data for pre-training and fine-tuning tiny models.
//!
//! Nothing here is downloaded: every text is built from small word lists and
//! sentence templates, driven by a seeded [`Rng`], so the same seed gives the
//! same data on every machine. [`stories`] makes a pre-training corpus of very
//! simple children's stories, and [`tasks`] makes three fine-tuning tasks
//! (answering questions about a story, labelling a feeling, and extracting a
//! JSON record) whose effect is easy to see in a small model's samples. Every
//! text is assigned to a train or eval split by a hash of its own contents
//! ([`split_of`]), so the held-out set never overlaps the training set, however
//! many items are asked for. All generated text is lowercase and uses only the
//! characters in [`CHARSET`].

pub mod jsonl;
pub mod preference;
pub mod rng;
pub mod stories;
pub mod tasks;

pub use preference::{Feedback, Pair, PairKind, Unpaired};
pub use rng::{Rng, fnv1a};
pub use stories::{Story, StoryConfig, corpus, story};
pub use tasks::{Example, Task};

/// Which part of a data set a text belongs to: the part used for training, or the held-out part used for evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// About 90% of all possible texts; the model learns from these.
    Train,
    /// About 10% of all possible texts; the model never trains on these.
    Eval,
}

/// Every character any generator in this module can emit, sorted, deduplicated. A character-level tokenizer is built from it.
///
/// The generators write only lowercase words, so no capital letters or digits
/// appear; the punctuation comes from sentences (`,` `.` `!`), questions (`?`),
/// the task keywords (`:`) and the JSON records (`"` `{` `}`). A test checks
/// that generated text uses exactly these characters, no more and no fewer.
pub const CHARSET: &str = "\n !\",.:?abcdefghijklmnopqrstuvwxyz{}";

/// Held-out membership: a text belongs to Eval iff mix64(fnv1a(text)) % 10 == 0 (so about 10%), else Train. Splits are disjoint by construction and do not depend on how many items you ask for.
///
/// The FNV-1a hash is passed through the SplitMix64 finaliser before taking
/// the remainder because the lowest bit of a raw FNV-1a hash is just the parity
/// of the text's odd bytes. Texts that repeat their words (a JSON record
/// repeats the sentence's name, object, colour and place) would then have a
/// parity fixed by their template alone, and whole templates would never be
/// held out. Mixing spreads every input bit over the remainder.
pub fn split_of(text: &str) -> Split {
    if rng::mix64(fnv1a(text.as_bytes())).is_multiple_of(10) { Split::Eval } else { Split::Train }
}

/// Draws candidates from the named stream and keeps those in `split` until there are `n`.
///
/// Because candidates always come from the same stream in the same order and
/// are filtered by their own text, asking for fewer items gives a prefix of
/// what asking for more would give. Every generator in this module has a
/// large space of texts (even the smallest story config allows about 6,000
/// distinct stories, and each task allows millions of examples), so both
/// splits are always reachable and the loop ends after about n / share
/// attempts. The attempt limit only turns a future bug (a generator whose
/// texts all land in one split) into a clear panic instead of a hang.
pub(crate) fn collect<T>(seed: u64, stream: &str, split: Split, n: usize, mut make: impl FnMut(&mut Rng) -> T, text: impl Fn(&T) -> String) -> Vec<T> {
    let mut rng = Rng::derive(seed, stream);
    let mut out = Vec::with_capacity(n);
    let limit = n.saturating_mul(1000).saturating_add(100_000);
    let mut attempts = 0usize;
    while out.len() < n {
        attempts += 1;
        assert!(attempts <= limit, "generator '{stream}' found only {} of {n} {split:?} texts in {limit} attempts", out.len());
        let item = make(&mut rng);
        if split_of(&text(&item)) == split {
            out.push(item);
        }
    }
    out
}

/// Replaces each `{key}` in `template` with its value from `slots`.
///
/// Templates are plain strings so that the sentence patterns read naturally in
/// the source; a key missing from `slots` is a bug in a template, so it panics.
pub(crate) fn fill(template: &str, slots: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("unclosed '{' in template");
        let key = &rest[start + 1..end];
        let value = slots.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("template slot '{key}' has no value")).1;
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every generator in the module, so that the properties they share are checked for each.
    #[derive(Clone, Copy, Debug)]
    enum Source {
        Stories,
        Task(Task),
    }

    const SOURCES: [Source; 4] = [Source::Stories, Source::Task(Task::StoryQa), Source::Task(Task::Sentiment), Source::Task(Task::JsonExtract)];

    impl Source {
        fn texts(self, seed: u64, split: Split, n: usize) -> Vec<String> {
            match self {
                Source::Stories => corpus(&StoryConfig::default(), seed, split, n),
                Source::Task(t) => t.examples(seed, split, n).iter().map(Example::text).collect(),
            }
        }

        fn candidate(self, rng: &mut Rng) -> String {
            match self {
                Source::Stories => story(&StoryConfig::default(), rng).text,
                Source::Task(t) => t.candidate(rng).text(),
            }
        }
    }

    #[test]
    fn generators_are_deterministic_with_prefix_property() {
        for source in SOURCES {
            let a = source.texts(11, Split::Train, 20);
            assert_eq!(a, source.texts(11, Split::Train, 20), "{source:?}");
            assert_eq!(a[..5], source.texts(11, Split::Train, 5)[..], "{source:?}");
            assert_ne!(a, source.texts(12, Split::Train, 20), "{source:?}");
            assert_eq!(source.texts(11, Split::Eval, 0), Vec::<String>::new());
        }
    }

    #[test]
    fn splits_are_disjoint_distinct_and_in_charset() {
        for source in SOURCES {
            let train = source.texts(1, Split::Train, 3000);
            let eval = source.texts(1, Split::Eval, 200);
            let train_set: HashSet<&String> = train.iter().collect();
            assert!(train_set.len() >= 2500, "{source:?}: {} distinct", train_set.len());
            assert!(eval.iter().all(|t| !train_set.contains(t)), "{source:?}");
            assert!(train.iter().all(|t| split_of(t) == Split::Train));
            assert!(eval.iter().all(|t| split_of(t) == Split::Eval));
            for text in train.iter().chain(&eval) {
                assert!(text.chars().all(|c| CHARSET.contains(c)), "{text:?}");
            }
        }
    }

    #[test]
    fn raw_candidates_are_about_ten_percent_eval() {
        for source in SOURCES {
            let mut rng = Rng::new(3);
            let eval = (0..5000).filter(|_| split_of(&source.candidate(&mut rng)) == Split::Eval).count();
            assert!((400..600).contains(&eval), "{source:?}: {eval}");
        }
    }

    #[test]
    fn charset_is_sorted_and_deduplicated() {
        let chars: Vec<char> = CHARSET.chars().collect();
        assert!(chars.windows(2).all(|w| w[0] < w[1]), "{chars:?}");
        assert!(CHARSET.contains('\n') && CHARSET.contains(' '));
    }

    #[test]
    fn split_follows_the_hash_rule() {
        for text in ["", "a", "lily went to the park.\n", "text: hi\nfeeling:"] {
            let hash = rng::mix64(fnv1a(text.as_bytes()));
            let expected = if hash.is_multiple_of(10) { Split::Eval } else { Split::Train };
            assert_eq!(split_of(text), expected);
        }
        let eval = (0..10_000).filter(|i| split_of(&format!("item {i}")) == Split::Eval).count();
        assert!((800..1200).contains(&eval), "{eval}");
    }

    #[test]
    fn fill_replaces_slots() {
        let s = fill("{a} and {b}, {a}.", &[("a", "x"), ("b", "yy")]);
        assert_eq!(s, "x and yy, x.");
        assert_eq!(fill("no slots", &[]), "no slots");
    }

    #[test]
    fn every_generated_character_is_in_charset_and_every_charset_character_is_used() {
        let mut seen = std::collections::BTreeSet::new();
        for split in [Split::Train, Split::Eval] {
            for text in corpus(&StoryConfig::max(), 5, split, 500) {
                seen.extend(text.chars());
            }
            for task in Task::ALL {
                for ex in task.examples(5, split, 500) {
                    seen.extend(ex.text().chars());
                }
            }
        }
        let used: String = seen.into_iter().collect();
        // Equality checks both directions: nothing escapes the charset, and the
        // charset carries no character the tokenizer would never see.
        assert_eq!(used, CHARSET);
    }
}
