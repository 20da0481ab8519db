//! tinytune: tiny GPT-style transformers for learning how fine-tuning works.
//!
//! This crate is the shared core. It compiles to WebGPU/CPU inside the browser app and to
//! the native `tinytune` binary, so it owns no file system, threads or backend: each binary
//! picks a Burn `Device` and passes it in. Start reading at `model::transformer`.

pub mod axis;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod formats;
pub mod gguf;
pub mod init;
pub mod kernels;
pub mod linalg;
pub mod memory;
pub mod merging;
pub mod methods;
pub mod model;
pub mod optim;
pub mod prune;
pub mod sample;
pub mod serving;
pub mod tokenizer;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
pub use model::{Gpt, ModelConfig};
pub use tokenizer::TextTokenizer;
