//! MeZO (Malladi et al., 2023): memory-efficient zeroth-order optimization.
//!
//! SPSA estimates the gradient's component along one random direction z ~ N(0, I) from two
//! forward passes: ĝ = (L(θ + εz) − L(θ − εz)) / 2ε, and steps θ ← θ − lr·ĝ·z. MeZO's trick is
//! that z is never stored: it is regenerated from a seed each time it is needed (perturb up,
//! perturb down, restore and update), so the step needs memory for the weights and one
//! forward pass only: no gradients, no optimizer state, no activations kept for a backward
//! pass. The price is variance: one direction per step, so many more steps than backprop.

use std::collections::HashSet;

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor};

use crate::model::params::{MapNamed, map_named};

/// Adds `scale · z` to every parameter whose path is in `trainable`, with z drawn afresh from
/// `seed` in module order, so calling it again with the same seed meets the same z.
pub fn perturb<M: Module>(module: M, trainable: &HashSet<String>, seed: u64, scale: f64) -> M {
    walk(module, trainable, seed, &|p, z, _| p + z.mul_scalar(scale))
}

/// The last pass of a MeZO step on a model sitting at θ − εz: back to θ, decoupled weight
/// decay on matrices, then θ ← θ − lr·ĝ·z. `projected_grad` is ĝ, shape `[1]`, left on the
/// device.
pub fn restore_and_update<M: Module>(module: M, trainable: &HashSet<String>, seed: u64, eps: f64, lr: f64, weight_decay: f64, projected_grad: Tensor<1>) -> M {
    let step = projected_grad.mul_scalar(lr);
    walk(module, trainable, seed, &|p, z, matrix| {
        let theta = p + z.clone().mul_scalar(eps);
        let theta = if matrix && weight_decay != 0.0 { theta.mul_scalar(1.0 - lr * weight_decay) } else { theta };
        theta - z * step.clone()
    })
}

type Rule<'a> = &'a dyn Fn(Tensor<1>, Tensor<1>, bool) -> Tensor<1>;

fn walk<M: Module>(module: M, trainable: &HashSet<String>, seed: u64, rule: Rule<'_>) -> M {
    map_named(module, Walk { trainable, seed, seeded: false, rule }).0
}

struct Walk<'a> {
    trainable: &'a HashSet<String>,
    seed: u64,
    seeded: bool,
    rule: Rule<'a>,
}

impl MapNamed for Walk<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.trainable.contains(path) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        if !self.seeded {
            device.seed(self.seed);
            self.seeded = true;
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let z = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let p = (self.rule)(tensor.reshape([n]), z, D >= 2);
        Param::from_mapped_value(id, p.reshape(shape), mapper)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    #[test]
    fn seeding_regenerates_the_same_perturbation() {
        for device in [Device::flex(), Device::flex().autodiff().inner()] {
            device.seed(42);
            let a: Vec<f32> = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device).into_data().try_to_vec().unwrap();
            device.seed(42);
            let b: Vec<f32> = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device).into_data().try_to_vec().unwrap();
            assert_eq!(a, b);
        }
    }
}
