//! Gradients by parameter path: what the backward pass hands the optimizer.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};

use crate::model::params::Path;

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
