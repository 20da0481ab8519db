//! Gradients by parameter path: what the backward pass hands the optimizer.

use burn::module::{Module, Param};
use burn::tensor::{Gradients, Tensor};

use crate::model::params::{VisitNamed, visit_named};

/// Gradients of the trainable parameters, by path, flattened to 1-D and detached.
pub struct NamedGrads(pub Vec<(String, Tensor<1>)>);

impl NamedGrads {
    /// Pulls the gradient of every parameter of `module` that has one out of `grads`.
    pub fn collect<M: Module>(module: &M, grads: &Gradients) -> Self {
        struct V<'a> {
            grads: &'a Gradients,
            out: Vec<(String, Tensor<1>)>,
        }
        impl VisitNamed for V<'_> {
            fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
                if let Some(g) = param.val().grad(self.grads) {
                    let n = g.shape().num_elements();
                    self.out.push((path.to_string(), g.reshape([n])));
                }
            }
        }
        NamedGrads(visit_named(module, V { grads, out: Vec::new() }).out)
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

    /// The same gradients on `device` (data parallelism gathers each replica's there).
    pub fn to_device(self, device: &burn::tensor::Device) -> Self {
        Self(self.0.into_iter().map(|(n, g)| (n, g.to_device(device))).collect())
    }

    /// Adds `other` into `self` elementwise (gradient accumulation).
    pub fn add(&mut self, other: NamedGrads) {
        for ((a, ga), (b, gb)) in self.0.iter_mut().zip(other.0) {
            debug_assert_eq!(*a, b);
            *ga = ga.clone() + gb;
        }
    }
}
