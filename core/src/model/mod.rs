//! The model (GPT-2 and the Llama family), in reading order: config (and `rope`) →
//! projection slot → layers → attention → block → transformer, plus parameter accounting
//! (`params`), the names files use (`names`) and the projections' input statistics that
//! pruning calibrates on (`record`).

/// Inside an `impl` of a struct whose `Option<Projection>` fields are the given names:
/// `projections` and `projections_mut`, the fields that are `Some`, each with its name
/// inside the block (`attn.q_proj`), in the order given. One list serves both.
macro_rules! projection_slots {
    ($($name:literal => $field:ident),* $(,)?) => {
        /// The projections that exist, with their names inside the block.
        pub fn projections(&self) -> Vec<(&'static str, &Projection)> {
            [$(($name, self.$field.as_ref())),*].into_iter().filter_map(|(n, p)| p.map(|p| (n, p))).collect()
        }

        /// [`Self::projections`], mutable.
        pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
            [$(($name, self.$field.as_mut())),*].into_iter().filter_map(|(n, p)| p.map(|p| (n, p))).collect()
        }
    };
}

pub mod attention;
pub mod block;
pub mod config;
pub mod layers;
pub mod names;
pub mod params;
pub mod projection;
pub mod record;
pub mod rope;
pub mod transformer;

pub use config::{Family, ModelConfig, PRESETS};
pub use params::{ParamSummary, named_params, trainable_count};
pub use transformer::Gpt;
