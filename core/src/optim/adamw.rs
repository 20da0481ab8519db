//! AdamW (Loshchilov and Hutter, 2019) with PyTorch's defaults, written out.
//!
//! Burn has an AdamW, but its state is keyed by run-time parameter ids, which a model
//! loaded from safetensors does not keep; here the state is keyed by the parameter's path
//! (`h.0.attn.c_attn.weight`), so it saves to safetensors beside the weights and a resumed
//! run continues exactly. It is also short enough to read next to the lesson on optimizers.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};

use burn::tensor::{Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::params::Path;

/// Hyperparameters, defaulting to `torch.optim.AdamW`'s: lr 1e-3, betas (0.9, 0.999),
/// eps 1e-8, weight decay 0.01. (Burn's own AdamW defaults to eps 1e-5 and decay 1e-4.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices and embeddings only (rank ≥ 2), as in
    /// nanoGPT and Hugging Face's Trainer: decaying biases and LayerNorm gains towards zero
    /// only hurts.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value before the update (None: no clipping).
    pub clip_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, clip_grad_norm: Some(1.0) }
    }
}

/// First and second moments of one parameter, flattened to 1-D.
#[derive(Clone, Debug)]
pub struct Moments {
    pub exp_avg: Tensor<1>,
    pub exp_avg_sq: Tensor<1>,
}

/// The optimizer: hyperparameters, the number of updates taken, and per-parameter moments.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (t in the bias corrections).
    pub t: u64,
    pub state: HashMap<String, Moments>,
}

/// Gradients of the trainable parameters, by path, flattened to 1-D and detached.
pub struct NamedGrads(pub Vec<(String, Tensor<1>)>);

impl NamedGrads {
    /// Pulls the gradient of every parameter of `module` that has one out of `grads`.
    pub fn collect<M: Module>(module: &M, grads: &Gradients) -> Self {
        struct V<'a> {
            path: Path,
            grads: &'a Gradients,
            out: Vec<(String, Tensor<1>)>,
        }
        impl ModuleVisitor for V<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.enter(name);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = param.val().grad(self.grads) {
                    let n = g.shape().num_elements();
                    self.out.push((self.path.join(), g.reshape([n])));
                }
            }
        }
        let mut v = V { path: Path::default(), grads, out: Vec::new() };
        module.visit(&mut v);
        NamedGrads(v.out)
    }

    /// The global L2 norm over all gradients, on the device (no read-back).
    pub fn global_norm(&self) -> Option<Tensor<1>> {
        self.0.iter().map(|(_, g)| g.clone().powf_scalar(2.0).sum()).reduce(|a, b| a + b).map(|s| s.sqrt())
    }

    /// Multiplies every gradient by `factor` (shape `[1]`).
    pub fn scale(&mut self, factor: &Tensor<1>) {
        for (_, g) in self.0.iter_mut() {
            *g = g.clone() * factor.clone();
        }
    }

    /// Adds `other` into `self` elementwise (gradient accumulation).
    pub fn add(&mut self, other: NamedGrads) {
        for ((a, ga), (b, gb)) in self.0.iter_mut().zip(other.0) {
            debug_assert_eq!(*a, b);
            *ga = ga.clone() + gb;
        }
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, t: 0, state: HashMap::new() }
    }

    /// Clips `grads` to the configured global norm and returns the norm before clipping.
    pub fn clip(&self, grads: &mut NamedGrads) -> Option<Tensor<1>> {
        let norm = grads.global_norm()?;
        if let Some(max) = self.config.clip_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6) when that is below 1.
            let factor = (norm.clone().add_scalar(1e-6)).recip().mul_scalar(max).clamp_max(1.0);
            grads.scale(&factor);
        }
        Some(norm)
    }

    /// One update of every parameter that has a gradient in `grads`, at learning rate `lr`.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: NamedGrads) -> M {
        self.t += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let mut mapper = Update {
            path: Path::default(),
            grads: grads.0.into_iter().collect(),
            state: &mut self.state,
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bc1,
            bc2,
        };
        module.map(&mut mapper)
    }

    /// Bytes of optimizer state held now (two f32 moments per trained element).
    pub fn state_bytes(&self) -> usize {
        self.state.values().map(|m| 4 * (m.exp_avg.shape().num_elements() + m.exp_avg_sq.shape().num_elements())).sum()
    }

    /// The moments as `(name, data)` pairs for saving: `{path}.exp_avg`, `{path}.exp_avg_sq`.
    pub fn state_data(&self) -> Vec<(String, TensorData)> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|name| {
                let m = &self.state[name];
                [(format!("{name}.exp_avg"), m.exp_avg.to_data()), (format!("{name}.exp_avg_sq"), m.exp_avg_sq.to_data())]
            })
            .collect()
    }

    /// Restores moments saved by `state_data`.
    pub fn load_state(&mut self, t: u64, tensors: HashMap<String, TensorData>, device: &burn::tensor::Device) {
        self.t = t;
        self.state.clear();
        let mut firsts: HashMap<String, TensorData> = HashMap::new();
        let mut seconds: HashMap<String, TensorData> = HashMap::new();
        for (name, data) in tensors {
            if let Some(p) = name.strip_suffix(".exp_avg_sq") {
                seconds.insert(p.to_string(), data);
            } else if let Some(p) = name.strip_suffix(".exp_avg") {
                firsts.insert(p.to_string(), data);
            }
        }
        for (path, m) in firsts {
            if let Some(v) = seconds.remove(&path) {
                let exp_avg = Tensor::<1>::from_data(m.convert::<f32>(), device);
                let exp_avg_sq = Tensor::<1>::from_data(v.convert::<f32>(), device);
                self.state.insert(path, Moments { exp_avg, exp_avg_sq });
            }
        }
    }
}

struct Update<'a> {
    path: Path,
    grads: HashMap<String, Tensor<1>>,
    state: &'a mut HashMap<String, Moments>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    bc1: f64,
    bc2: f64,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join();
        let Some(g) = self.grads.remove(&path) else { return param };
        let (id, tensor, mapper) = param.consume();
        let strategy = tensor.gradient_checkpointing_strategy();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]); // detached, [n]
        let g = g.inner();

        let (m, v) = match self.state.remove(&path) {
            Some(s) => (s.exp_avg, s.exp_avg_sq),
            None => (p.zeros_like(), p.zeros_like()),
        };
        // m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        let m = m.mul_scalar(self.beta1) + g.clone().mul_scalar(1.0 - self.beta1);
        let v = v.mul_scalar(self.beta2) + g.powf_scalar(2.0).mul_scalar(1.0 - self.beta2);
        // Decoupled decay first, as torch does: p ← p·(1 − lr·λ)
        let p = if D >= 2 && self.weight_decay != 0.0 { p.mul_scalar(1.0 - self.lr * self.weight_decay) } else { p };
        // p ← p − (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
        let denom = v.clone().sqrt().div_scalar(self.bc2.sqrt()).add_scalar(self.eps);
        let p = p - m.clone().div(denom).mul_scalar(self.lr / self.bc1);
        self.state.insert(path, Moments { exp_avg: m, exp_avg_sq: v });

        let mut updated = Tensor::<D>::from_inner(p.reshape(shape)).require_grad();
        if let Some(s) = strategy {
            updated = updated.with_gradient_checkpointing_strategy(s);
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}
