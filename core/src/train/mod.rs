//! Training: batches (pre-training windows and SFT rows with prompt masking), the run
//! configuration, and the step-by-step loop with its event stream.

pub mod batch;
pub mod config;
pub mod trainer;

pub use batch::{Batch, Dataset};
pub use config::{DataSource, TrainConfig};
pub use trainer::{EvalEvent, StepEvent, TrainEvent, Trainer, eval_loss, eval_loss_async};
