//! Training: batches (pre-training windows and SFT rows with prompt masking), the run
//! configuration, and the step-by-step loop with its event stream.

pub mod batch;
pub mod config;
pub mod precision;
pub mod trainer;

pub use batch::{Batch, Dataset};
pub use config::{DataSource, TrainConfig};
pub use precision::{GradCensus, LossScale, LossScaler, Precision, ScalerState};
pub use trainer::{EvalEvent, StepEvent, TrainEvent, Trainer, eval_loss, eval_loss_async};
