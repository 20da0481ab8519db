//! Recording what flows into the projections: the per-input-column statistics that
//! calibration-based pruning reads (`crate::prune`).
//!
//! A [`Recorder`] is attached to chosen projections ([`Recorder::attach`]); each then holds
//! a [`Tap`] (`Projection::tap`, a skipped, non-parameter field) and adds its input's
//! statistics to the recorder's entry for its parameter path on every forward pass. With no
//! tap attached a projection pays one `Option` check. Per projection, over the counted
//! tokens (every row of the input, or those the recorder's mask weights 1):
//!
//! - `sum_sq[j] = Σ x_j²`, so `‖X_j‖₂ = √sum_sq[j]` (Wanda's input-feature norm);
//! - `sum_abs[j] = Σ |x_j|` (Minitron's neuron importance, the mean |activation|);
//! - with a group width `g`, `group_norm[k] = Σ ‖x[k·g .. (k+1)·g]‖₂`, each token's norm of
//!   one group of columns (an attention head's output, the input of the output projection).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::tensor::{Tensor, TensorData};

use super::Gpt;

/// One projection's statistics, still on the device until [`Recorder::take`] reads them.
#[derive(Clone, Debug)]
struct Pending {
    sum_sq: Tensor<1>,
    sum_abs: Tensor<1>,
    group_norm: Option<Tensor<1>>,
    tokens: f64,
}

/// One projection's statistics of its input columns, read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnStats {
    /// `Σ x_j²` over the counted tokens, per input column.
    pub sum_sq: Vec<f32>,
    /// `Σ |x_j|` over the counted tokens, per input column.
    pub sum_abs: Vec<f32>,
    /// `Σ ‖x_group‖₂` over the counted tokens, per group of columns (when the tap has a group width).
    pub group_norm: Option<Vec<f32>>,
    /// The counted tokens (the mask's sum).
    pub tokens: f64,
}

impl ColumnStats {
    /// `‖X_j‖₂` per input column.
    pub fn norms(&self) -> Vec<f32> {
        self.sum_sq.iter().map(|s| s.sqrt()).collect()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Which rows of the next inputs count (`[N]`, 1.0 or 0.0, in the row-major order of the
    /// input's leading dimensions); None: all.
    mask: Option<(Vec<f32>, f64)>,
    stats: BTreeMap<String, Pending>,
}

/// A collector of input statistics, shared by every projection it is attached to.
#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<Mutex<State>>);

/// A recorder attached to one projection: where its statistics go.
#[derive(Clone, Debug)]
pub struct Tap {
    /// The projection's parameter path (`h.0.attn.c_proj`).
    pub path: String,
    /// Width of the column groups whose per-token norms are summed (a head's width), if any.
    pub group: Option<usize>,
    pub recorder: Recorder,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches this recorder to every projection of `model` that `choose` picks by path
    /// (`h.0.mlp.c_fc`), with the group width it returns (`Some(None)`: no groups).
    pub fn attach(&self, model: &mut Gpt, choose: impl Fn(&str) -> Option<Option<usize>>) {
        for (i, block) in model.h.iter_mut().enumerate() {
            for (name, p) in block.projections_mut() {
                let path = format!("h.{i}.{name}");
                if let Some(group) = choose(&path) {
                    p.tap = Some(Tap { path, group, recorder: self.clone() });
                }
            }
        }
    }

    /// Takes every tap off `model`'s projections.
    pub fn detach(model: &mut Gpt) {
        for block in model.h.iter_mut() {
            for (_, p) in block.projections_mut() {
                p.tap = None;
            }
        }
    }

    /// Counts only the rows where `mask` is non-zero in the inputs that follow (`mask` in the
    /// row-major order of an input's leading dimensions: a `[B, T]` batch's padding mask,
    /// flattened); None counts every row. An input with another number of rows counts all.
    pub fn set_mask(&self, mask: Option<Vec<f32>>) {
        let mut state = self.0.lock().expect("recorder lock");
        state.mask = mask.map(|m| {
            let sum = m.iter().map(|&w| w as f64).sum();
            (m, sum)
        });
    }

    /// Adds `x`'s statistics (`[..., d_in]`) under `tap`'s path.
    pub fn record<const D: usize>(&self, tap: &Tap, x: &Tensor<D>) {
        let d = x.dims()[D - 1];
        let n = x.shape().num_elements() / d.max(1);
        let x = x.clone().reshape([n, d]);
        let mut state = self.0.lock().expect("recorder lock");
        let (x, tokens, mask) = match &state.mask {
            Some((m, sum)) if m.len() == n => {
                let mask = Tensor::<2>::from_data(TensorData::new(m.clone(), [n, 1]), &x.device());
                (x, *sum, Some(mask))
            }
            _ => (x, n as f64, None),
        };
        let weighted = |t: Tensor<2>| match &mask {
            Some(m) => t * m.clone(),
            None => t,
        };
        let column_sum = |t: Tensor<2>| weighted(t).sum_dim(0).reshape([-1]);
        let sum_sq = column_sum(x.clone() * x.clone());
        let sum_abs = column_sum(x.clone().abs());
        let group_norm = tap.group.filter(|&g| g > 0 && d.is_multiple_of(g)).map(|g| {
            let norms = (x.clone() * x).reshape([n, d / g, g]).sum_dim(2).sqrt().reshape([n, d / g]);
            column_sum(norms)
        });
        let add = |a: Option<Tensor<1>>, b: Option<Tensor<1>>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let entry = match state.stats.remove(&tap.path) {
            Some(p) => {
                Pending { sum_sq: p.sum_sq + sum_sq, sum_abs: p.sum_abs + sum_abs, group_norm: add(p.group_norm, group_norm), tokens: p.tokens + tokens }
            }
            None => Pending { sum_sq, sum_abs, group_norm, tokens },
        };
        state.stats.insert(tap.path.clone(), entry);
    }

    /// Every projection's statistics so far, by path, read back to the host; the recorder
    /// starts empty again.
    pub fn take(&self) -> BTreeMap<String, ColumnStats> {
        let stats = std::mem::take(&mut self.0.lock().expect("recorder lock").stats);
        let host = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 statistics");
        stats
            .into_iter()
            .map(|(path, p)| {
                let stats = ColumnStats { sum_sq: host(p.sum_sq), sum_abs: host(p.sum_abs), group_norm: p.group_norm.map(host), tokens: p.tokens };
                (path, stats)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;
    use burn::tensor::Device;

    /// The recorded sums equal a hand computation on a 2×3 input of 4 columns with the last
    /// position masked out, and the model's output does not change while recording.
    #[test]
    fn recorded_norms_equal_a_hand_computation() {
        let device = Device::flex();
        let mut model = Gpt::init(&ModelConfig::nano(), 1, &device);
        let recorder = Recorder::new();
        recorder.attach(&mut model, |path| (path == "h.0.attn.c_proj").then_some(Some(2)));
        let xs: Vec<f32> = (0..24).map(|i| (i as f32 - 11.0) * 0.25).collect();
        let x = Tensor::<3>::from_data(TensorData::new(xs.clone(), [2, 3, 4]), &device);
        let mask = vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        recorder.set_mask(Some(mask.clone()));
        let p = model.h[0].attn.c_proj.as_ref().unwrap();
        // nano's attention output projection is 64 wide; feed it a 4-wide input through a
        // tap of its own to test the arithmetic alone.
        let tap = Tap { path: "tiny".into(), group: Some(2), recorder: recorder.clone() };
        recorder.record(&tap, &x);
        recorder.record(&tap, &x);
        let stats = recorder.take().remove("tiny").unwrap();
        let (mut sq, mut ab, mut gn, mut tokens) = (vec![0f64; 4], vec![0f64; 4], vec![0f64; 2], 0.0);
        for (row, &m) in mask.iter().enumerate() {
            let r = &xs[row * 4..row * 4 + 4];
            for j in 0..4 {
                sq[j] += 2.0 * m as f64 * (r[j] as f64).powi(2);
                ab[j] += 2.0 * m as f64 * (r[j] as f64).abs();
            }
            for g in 0..2 {
                gn[g] += 2.0 * m as f64 * ((r[2 * g] as f64).powi(2) + (r[2 * g + 1] as f64).powi(2)).sqrt();
            }
            tokens += 2.0 * m as f64;
        }
        let close = |a: &[f32], b: &[f64]| a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()));
        assert!(close(&stats.sum_sq, &sq), "{:?} vs {sq:?}", stats.sum_sq);
        assert!(close(&stats.sum_abs, &ab), "{:?} vs {ab:?}", stats.sum_abs);
        assert!(close(stats.group_norm.as_ref().unwrap(), &gn), "{:?} vs {gn:?}", stats.group_norm);
        assert_eq!(stats.tokens, tokens);
        assert!(close(&stats.norms(), &sq.iter().map(|s| s.sqrt()).collect::<Vec<_>>()));

        // Attached to a real projection: the forward pass records under the path and
        // computes what it computed before.
        let ids = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [2, 3]), &device);
        recorder.set_mask(None);
        let with = model.forward(ids.clone()).into_data().try_to_vec::<f32>().unwrap();
        let stats = recorder.take();
        assert_eq!(stats.keys().collect::<Vec<_>>(), vec!["h.0.attn.c_proj"]);
        let s = &stats["h.0.attn.c_proj"];
        assert_eq!((s.sum_sq.len(), s.group_norm.as_ref().unwrap().len(), s.tokens), (p.d_in(), p.d_in() / 2, 6.0));
        Recorder::detach(&mut model);
        let without = model.forward(ids).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(with, without);
        assert!(recorder.take().is_empty(), "nothing records once detached");
    }
}
