//! Optimizers and learning-rate schedules that tinytune writes itself (what Burn lacks, or
//! where Burn's version cannot be saved and resumed by parameter name).

pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, NamedGrads};
pub use schedule::{Decay, Schedule};
