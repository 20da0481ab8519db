//! Portable random initialisation. Weights are drawn on the CPU from tinytune's own
//! SplitMix64 generator rather than a backend's RNG, so the same seed gives bit-identical
//! initial weights on flex, ndarray, WebGPU and CUDA, in native code and in wasm.

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::rng::Rng;

/// How a new model's weight matrices are filled.
pub enum Fill<'a> {
    /// Drawn from N(0, std²) with the portable generator: a fresh model.
    Random(&'a mut Rng),
    /// Zeros, because a checkpoint's values replace them at once: building the model
    /// costs an allocation per tensor, not a random draw per weight (minutes at 1 B
    /// parameters on one core).
    Zeros,
}

impl Fill<'_> {
    /// A `[rows, cols]` tensor.
    pub fn tensor(&mut self, shape: [usize; 2], std: f64, device: &Device) -> Tensor<2> {
        match self {
            Fill::Random(rng) => Tensor::from_data(TensorData::new(normal(rng, shape[0] * shape[1], std), shape), device),
            Fill::Zeros => Tensor::zeros(shape, device),
        }
    }
}

/// `n` samples of N(0, std²) by the Box–Muller transform.
pub fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u keeps the logarithm's argument in (0, 1].
        let u1 = 1.0 - rng.unit_f64();
        let u2 = rng.unit_f64();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_the_asked_moments() {
        let xs = normal(&mut Rng::new(7), 200_000, 0.02);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        // Standard error of the mean is 0.02/sqrt(2e5) ≈ 4.5e-5; of the std about 0.16%.
        assert!(mean.abs() < 2.5e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.0002, "std {}", var.sqrt());
        assert_eq!(xs, normal(&mut Rng::new(7), 200_000, 0.02), "same seed, same draws");
    }
}
