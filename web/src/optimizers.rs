//! Settings of the `optimizer-state` and `schedule` widgets. The worker answers the first
//! with `tinytune::optim::report::state_report` on the shipped micro model; the second is
//! drawn in the page from `tinytune::optim::Schedule` itself.

use crate::settings::{Field, Settings, assign, float, int, one_of, warmup};
use serde::{Deserialize, Serialize};
use tinytune::optim::{Decay, Schedule, Warmup};

/// The weight matrices of micro the widget can examine (GPT-2 names).
pub const LAYERS: [&str; 5] = ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "wte"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerStateParams {
    pub layer: String,
}

impl Default for OptimizerStateParams {
    fn default() -> Self {
        Self { layer: "h.0.mlp.c_fc".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleParams {
    pub steps: usize,
    pub lr: f64,
    /// Steps ("100") or a share of the run ("10%").
    pub warmup: String,
    /// constant, linear or cosine.
    pub schedule: String,
    pub min_lr_ratio: f64,
}

impl Default for ScheduleParams {
    fn default() -> Self {
        Self { steps: 1000, lr: 3e-4, warmup: "10%".into(), schedule: "cosine".into(), min_lr_ratio: 0.1 }
    }
}

impl ScheduleParams {
    /// The schedule with decay `decay` (the settings' other values).
    pub fn schedule_with(&self, decay: Decay) -> Schedule {
        let warmup = self.warmup.parse::<Warmup>().unwrap_or(Warmup::Ratio(0.1)).steps(self.steps);
        Schedule { peak_lr: self.lr, warmup_steps: warmup, total_steps: self.steps, decay, min_lr_ratio: self.min_lr_ratio }
    }

    pub fn decay(&self) -> Decay {
        match self.schedule.as_str() {
            "constant" => Decay::Constant,
            "linear" => Decay::Linear,
            _ => Decay::Cosine,
        }
    }

    /// (step, lr) at up to `points` evenly spaced steps, the last step included.
    pub fn curve(&self, decay: Decay, points: usize) -> Vec<(f64, f64)> {
        let s = self.schedule_with(decay);
        let every = (self.steps / points.max(1)).max(1);
        let mut steps: Vec<usize> = (0..self.steps).step_by(every).collect();
        // Warmup's corner and the last step drawn exactly.
        steps.extend([s.warmup_steps.min(self.steps.saturating_sub(1)), self.steps.saturating_sub(1)]);
        steps.sort_unstable();
        steps.dedup();
        steps.into_iter().map(|t| (t as f64, s.lr(t))).collect()
    }
}

impl Settings for OptimizerStateParams {
    const NAME: &'static str = "optimizer-state";
    fn fields() -> Vec<Field<Self>> {
        vec![Field { key: "layer", get: |p| p.layer.clone(), set: |p, v| assign(&mut p.layer, one_of(v, &LAYERS)) }]
    }
}

impl Settings for ScheduleParams {
    const NAME: &'static str = "schedule";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 100_000)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-8, 10.0)) },
            Field { key: "warmup", get: |p| p.warmup.clone(), set: |p, v| assign(&mut p.warmup, warmup(v)) },
            Field { key: "schedule", get: |p| p.schedule.clone(), set: |p, v| assign(&mut p.schedule, one_of(v, &["constant", "linear", "cosine"])) },
            Field { key: "min_lr_ratio", get: |p| p.min_lr_ratio.to_string(), set: |p, v| assign(&mut p.min_lr_ratio, float(v, 0.0, 1.0)) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_the_core_schedule_at_its_corners() {
        let p = ScheduleParams { steps: 200, lr: 1e-3, warmup: "20".into(), ..ScheduleParams::default() };
        let c = p.curve(Decay::Cosine, 50);
        assert_eq!(c.first(), Some(&(0.0, 1e-3 / 20.0)));
        assert!(c.contains(&(20.0, 1e-3)), "the end of warmup is drawn at the peak");
        let last = c.last().unwrap();
        assert_eq!(last.0, 199.0);
        assert!((last.1 - p.schedule_with(Decay::Cosine).lr(199)).abs() < 1e-15);
    }
}
