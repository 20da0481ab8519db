//! The GPT-2-architecture model, in reading order: config → projection slot → layers →
//! attention → block → transformer, plus per-layer parameter accounting.

pub mod attention;
pub mod block;
pub mod config;
pub mod layers;
pub mod params;
pub mod projection;
pub mod transformer;

pub use config::{ModelConfig, PRESETS};
pub use params::{ParamSummary, named_params, trainable_count};
pub use transformer::Gpt;
