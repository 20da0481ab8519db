//! The model (GPT-2 and the Llama family), in reading order: config (and `rope`) →
//! projection slot → layers → attention → block → transformer, plus parameter accounting
//! (`params`) and the names files use (`names`).

pub mod attention;
pub mod block;
pub mod config;
pub mod layers;
pub mod names;
pub mod params;
pub mod projection;
pub mod rope;
pub mod transformer;

pub use config::{Family, ModelConfig, PRESETS};
pub use params::{ParamSummary, named_params, trainable_count};
pub use transformer::Gpt;
