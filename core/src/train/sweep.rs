//! Sweeps: one run per value of one setting. `tinytune compare --methods full,lora@3e-3`
//! and the train widget's `sweep: method=full,lora@3e-3` read their lists with the same
//! rules, so a sweep written in one place means the same runs in the other.

use crate::optim::OptimKind;

/// One value of a sweep: `value`, or `value@lr` with its own learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepItem<'a> {
    pub value: &'a str,
    pub lr: Option<f64>,
}

impl<'a> SweepItem<'a> {
    /// Reads `value` or `value@lr`; the rate must be a positive, finite number.
    pub fn parse(item: &'a str) -> Result<Self, String> {
        let item = item.trim();
        match item.split_once('@') {
            None => Ok(Self { value: item, lr: None }),
            Some((value, lr)) => match lr.trim().parse::<f64>() {
                Ok(lr) if lr > 0.0 && lr.is_finite() => Ok(Self { value: value.trim(), lr: Some(lr) }),
                _ => Err(format!("'{item}': after @ give a learning rate (lr), a positive number such as {}@3e-3", value.trim())),
            },
        }
    }

    /// Every comma-separated value of `list`, empty values skipped.
    pub fn list(list: &'a str) -> Result<Vec<Self>, String> {
        list.split(',').filter(|s| !s.trim().is_empty()).map(Self::parse).collect()
    }
}

/// The learning rate of one run in a sweep: the value's own `@lr`, else the rate given for
/// the whole sweep, else — in a sweep over optimizers, which want rates 100× apart (SGD's
/// against AdamW's) — the optimizer's suggested rate; None leaves the run's own default.
pub fn run_lr(item: &SweepItem, given: Option<f64>, optimizer: Option<OptimKind>) -> Option<f64> {
    item.lr.or(given).or(optimizer.map(OptimKind::suggested_lr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_carry_their_own_rate_or_none() {
        assert_eq!(SweepItem::parse(" lora@3e-3 ").unwrap(), SweepItem { value: "lora", lr: Some(3e-3) });
        assert_eq!(SweepItem::parse("full").unwrap(), SweepItem { value: "full", lr: None });
        for bad in ["full@fast", "full@0", "full@-1", "full@inf", "full@"] {
            let e = SweepItem::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("learning rate"), "{e}");
        }
        assert_eq!(SweepItem::list("full, ,lora@1e-3").unwrap().len(), 2);
    }

    #[test]
    fn an_own_rate_beats_the_sweeps_which_beats_the_suggested_one() {
        let own = SweepItem { value: "sgd", lr: Some(0.5) };
        let plain = SweepItem { value: "sgd", lr: None };
        assert_eq!(run_lr(&own, Some(0.1), Some(OptimKind::Sgd)), Some(0.5));
        assert_eq!(run_lr(&plain, Some(0.1), Some(OptimKind::Sgd)), Some(0.1));
        assert_eq!(run_lr(&plain, None, Some(OptimKind::Sgd)), Some(OptimKind::Sgd.suggested_lr()));
        assert_eq!(run_lr(&plain, None, None), None);
    }
}
