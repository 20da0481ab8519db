//! Training: batches (pre-training windows and SFT rows with prompt masking), the run
//! configuration, the objective, the trainer's step, and the one run loop with its event
//! stream.

pub mod batch;
pub mod config;
pub mod distill;
pub mod grpo;
pub mod objective;
pub mod positions;
pub mod precision;
pub mod run;
pub mod score;
pub mod sweep;
pub mod teacher_cache;
pub mod trainer;

pub use batch::{Batch, Dataset};
pub use config::{DataSource, TrainConfig};
pub use distill::Divergence;
pub use grpo::GrpoLoss;
pub use objective::{DpoLoss, Objective, PreferenceMetrics};
pub use precision::{GradCensus, LossScale, LossScaler, Precision, ScalerState};
pub use run::{Control, EvalEvent, NearestEvent, Outcome, Run, RunHost, StartEvent, TrainEvent};
pub use sweep::SweepItem;
pub use teacher_cache::TeacherCache;
pub use trainer::{
    Evaluation, ReferenceLogps, StepEvent, Trainer, eval_loss, eval_loss_async, preference_eval, preference_eval_async, reference_logps, reference_logps_async,
};
