//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stay at the peak after warmup.
    Constant,
    /// Straight line from the peak down to `min_lr_ratio · peak` at the last step.
    Linear,
    /// Half a cosine wave from the peak down to `min_lr_ratio · peak` (the common default).
    Cosine,
}

/// How long warmup lasts: a number of steps, or a share of the run (transformers'
/// `warmup_ratio`, rounded up the same way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Steps(usize),
    Ratio(f64),
}

impl Warmup {
    /// Warmup steps in a run of `total` steps.
    pub fn steps(self, total: usize) -> usize {
        match self {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => (r * total as f64).ceil() as usize,
        }
    }
}

impl FromStr for Warmup {
    type Err = String;
    /// `100` (steps), `10%` or `0.1` (a share of the run).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("warmup '{s}' is neither a number of steps (100) nor a share of the run (10% or 0.1)");
        let ratio = if let Some(pct) = s.strip_suffix('%') {
            pct.trim().parse::<f64>().map_err(|_| bad())? / 100.0
        } else if s.contains('.') || s.contains('e') {
            s.parse::<f64>().map_err(|_| bad())?
        } else {
            return s.parse::<usize>().map(Warmup::Steps).map_err(|_| bad());
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("warmup '{s}' is not a share of the run between 0 and 100%"));
        }
        Ok(Warmup::Ratio(ratio))
    }
}

impl fmt::Display for Warmup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warmup::Steps(n) => write!(f, "{n}"),
            Warmup::Ratio(r) => write!(f, "{}%", r * 100.0),
        }
    }
}

/// The learning rate as a function of the step number alone, so a resumed run needs no
/// scheduler state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
    /// Where decay ends, as a fraction of the peak (0.1 is common: nanoGPT, Chinchilla).
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// Learning rate used for update number `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            // Step 0 gets peak/warmup rather than 0, so the first update is not wasted.
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let min = self.peak_lr * self.min_lr_ratio;
        let factor = match self.decay {
            Decay::Constant => return self.peak_lr,
            Decay::Linear => 1.0 - progress,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        min + (self.peak_lr - min) * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> Schedule {
        Schedule { peak_lr: 1e-3, warmup_steps: 10, total_steps: 110, decay, min_lr_ratio: 0.1 }
    }

    #[test]
    fn warmup_then_decay_hits_the_stated_points() {
        let check = |s: &Schedule, step: usize, want: f64| {
            let got = s.lr(step);
            assert!((got - want).abs() < 1e-12, "{:?} step {step}: {got} != {want}", s.decay);
        };
        let cos = sched(Decay::Cosine);
        check(&cos, 0, 1e-4);
        check(&cos, 9, 1e-3);
        check(&cos, 10, 1e-3);
        check(&cos, 60, 1e-4 + 0.9e-3 * 0.5); // halfway: midpoint between peak and floor
        check(&cos, 110, 1e-4);
        check(&cos, 500, 1e-4); // past the end it stays at the floor
        let lin = sched(Decay::Linear);
        check(&lin, 35, 1e-4 + 0.9e-3 * 0.75);
        check(&sched(Decay::Constant), 100, 1e-3);
    }

    #[test]
    fn warmup_as_a_ratio_rounds_up_like_transformers() {
        assert_eq!("10%".parse::<Warmup>().unwrap().steps(95), 10); // ceil(9.5)
        assert_eq!("0.05".parse::<Warmup>().unwrap().steps(200), 10);
        assert_eq!("25".parse::<Warmup>().unwrap().steps(200), 25);
        assert!("150%".parse::<Warmup>().unwrap_err().contains("between 0 and 100%"));
        assert!("ten".parse::<Warmup>().unwrap_err().contains("number of steps"));
    }

    #[test]
    fn cosine_decreases_monotonically_after_warmup() {
        let s = sched(Decay::Cosine);
        for step in 10..110 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }
}
