//! One error type for the whole core. Every variant says what went wrong and how to fix it,
//! naming the file and the field where there is one, because these messages reach people
//! who are learning and should never have to read a backtrace.
//!
//! Core names settings by their config field, never by a flag or a control: a field a
//! message mentions in its text is written in backticks (`` `seq_len` ``), and `Config`
//! errors carry theirs in `field`. Each edge renders them through one table of its own:
//! the CLI as flags (`native/src/flags.rs`), the page as its controls
//! (`web/src/fields.rs`).

use std::fmt;

/// Where a bad value came from: a file name (as the user gave it) or a description such as
/// "command line" or "built-in preset".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(pub String);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Origin {
    fn from(s: &str) -> Self {
        Origin(s.to_string())
    }
}

impl From<String> for Origin {
    fn from(s: String) -> Self {
        Origin(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("{origin}: {field}: {problem}")]
    Config { origin: Origin, field: String, problem: String },

    /// A file could not be parsed at all (bad JSON, truncated safetensors...).
    #[error("{origin}: {problem}")]
    Parse { origin: Origin, problem: String },

    /// A tensor in a weights file is missing or has the wrong shape.
    #[error("{origin}: tensor '{name}': {problem}")]
    Tensor { origin: Origin, name: String, problem: String },

    /// The tokenizer could not be built, loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Training produced a non-finite loss.
    #[error(
        "the loss became {value} at step {step}; training stopped before the bad update was saved. \
         Lower the learning rate (`lr`), keep gradient clipping on (`clip_grad_norm` 1.0), or resume from the last checkpoint"
    )]
    NonFiniteLoss { step: usize, value: f32 },

    /// A request that cannot be satisfied (an unknown preset, an empty data set, ...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(origin: impl Into<Origin>, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Config { origin: origin.into(), field: field.into(), problem: problem.into() }
    }

    pub fn parse(origin: impl Into<Origin>, problem: impl fmt::Display) -> Self {
        Error::Parse { origin: origin.into(), problem: problem.to_string() }
    }

    pub fn tensor(origin: impl Into<Origin>, name: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Tensor { origin: origin.into(), name: name.into(), problem: problem.into() }
    }
}

/// Edges that report errors as text (the CLI, the browser worker) take core errors with `?`.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

/// `text` with every field name written in backticks (`` `seq_len` ``) replaced by what
/// `name` calls it: how each edge renders core's messages through its own table. Backticked
/// text that is not a field name (lower-case letters, digits, `_`) stays as it is.
pub fn render_fields(text: &str, name: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('`') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('`') {
            Some(j) if !after[..j].is_empty() && after[..j].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') => {
                out.push_str(&name(&after[..j]));
                rest = &after[j + 1..];
            }
            _ => {
                out.push('`');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
