//! Optimizers and learning-rate schedules that tinytune writes itself (what Burn lacks, or
//! where Burn's version cannot be saved and resumed by parameter name).

pub mod grads;
pub mod mezo;
pub mod optimizer;
pub mod report;
pub mod schedule;

pub use grads::NamedGrads;
pub use optimizer::{OptimConfig, OptimKind, Optimizer, Quant8, Shards, Slot};
pub use schedule::{Decay, Schedule, Warmup};
