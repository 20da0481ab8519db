//! The low-rank path of one adapted projection, `s·(dropout(x)·A)·B`, with DoRA's
//! magnitude and PiSSA's SVD initialisation.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::config::{LoraConfig, LoraInit};
use crate::data::rng::Rng;

/// The trainable low-rank path of one adapted projection.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[d_in, r]`
    pub lora_a: Param<Tensor<2>>,
    /// `[r, d_out]`
    pub lora_b: Param<Tensor<2>>,
    pub dropout: Dropout,
    pub scale: f64,
    /// DoRA's magnitude vector `[d_out]`, starting at the base weight's column norms.
    pub magnitude: Option<Param<Tensor<1>>>,
}

/// The L2 norm of every output column of a `[d_in, d_out]` weight, `[d_out]`.
pub fn column_norms(w: Tensor<2>) -> Tensor<1> {
    let d_out = w.dims()[1];
    w.powf_scalar(2.0).sum_dim(0).sqrt().reshape([d_out])
}

impl Lora {
    pub fn init(d_in: usize, d_out: usize, config: &LoraConfig, rng: &mut Rng, device: &Device) -> Self {
        let r = config.r;
        let a: Vec<f32> = match config.init {
            // PEFT: nn.init.kaiming_uniform_(lora_A.weight, a=sqrt(5)) on an [r, d_in]
            // weight, i.e. U(-1/√d_in, 1/√d_in).
            // PiSSA's A is set from W afterwards (`pissa_from`); the draws keep every
            // other projection's init the same as with the default.
            LoraInit::Default | LoraInit::Pissa => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..d_in * r).map(|_| ((2.0 * rng.unit_f64() - 1.0) * bound) as f32).collect()
            }
            // PEFT: nn.init.normal_(lora_A.weight, std=1/r).
            LoraInit::Gaussian => crate::init::normal(rng, d_in * r, 1.0 / r as f64),
        };
        Self {
            lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)),
            lora_b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scale: config.scale(),
            magnitude: None,
        }
    }

    /// DoRA's per-output factor `m / ‖W + s·A·B‖` for base weight `w`, `[d_out]`. The norm
    /// is detached, as PEFT does (the DoRA paper's section 4.3): it scales the output but
    /// takes no gradient, which saves memory and, the authors report, costs no accuracy.
    pub fn dora_factor(&self, w: Tensor<2>) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?;
        let norm = column_norms(w + self.delta()).detach();
        Some(m.val() / norm)
    }

    /// Sets A and B so that `s·A·B` is the top-r part `Σ_{i<r} σ_i·u_i·v_iᵀ` of the matrix
    /// `svd` decomposes (`[d_in, d_out]`): `A = U_r·√(S_r/s)`, `B = √(S_r/s)·V_rᵀ`. Each factor
    /// keeps its trainability.
    pub fn set_top_singular(&mut self, svd: &crate::linalg::Svd, device: &Device) {
        let (d_in, d_out, k) = (svd.m, svd.n, svd.k());
        let r = self.lora_a.shape().dims::<2>()[1];
        let root: Vec<f64> = svd.s.iter().take(r).map(|&s| (s / self.scale).sqrt()).collect();
        let a: Vec<f32> = (0..d_in * r).map(|ij| (svd.u[(ij / r) * k + ij % r] * root[ij % r]) as f32).collect();
        let b: Vec<f32> = (0..r * d_out).map(|ij| (root[ij / d_out] * svd.vt[ij]) as f32).collect();
        let require = |p: &Param<Tensor<2>>| p.val().is_require_grad();
        let (ra, rb) = (require(&self.lora_a), require(&self.lora_b));
        self.lora_a = Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)).set_require_grad(ra);
        self.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(b, [r, d_out]), device)).set_require_grad(rb);
    }

    /// Sets A and B from the top-r singular triplets of `w` (`[d_in, d_out]`) as PiSSA does
    /// and returns the residual weight `w − s·A·B` for the frozen base. Reads `w` to the
    /// host for the SVD (randomized beyond 256 on the short side, seeded by `seed`).
    pub fn pissa_from(&mut self, w: Tensor<2>, seed: u64, device: &Device) -> Tensor<2> {
        let [d_in, d_out] = w.dims();
        let r = self.lora_a.shape().dims::<2>()[1];
        let values = w.to_data().convert::<f32>().try_to_vec::<f32>().expect("an f32 weight");
        self.set_top_singular(&crate::linalg::top(&values, d_in, d_out, r, 6, seed), device);
        (w - self.delta()).detach()
    }

    /// The update's contribution for input `x`.
    ///
    /// # Shapes
    /// `[..., d_in] -> [..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let xa = burn::tensor::module::linear(self.dropout.forward(x), self.lora_a.val(), None); // [..., r]
        // PEFT's s·((x·A)·B) as (x·A)·(s·B): the scale passes over B's r × d_out values, not
        // over every output (and not at all when s = 1). The same within rounding, and the
        // same bits when s is a power of two (α = r, α = 2r).
        let b = self.lora_b.val();
        let b = if self.scale == 1.0 { b } else { b.mul_scalar(self.scale) };
        burn::tensor::module::linear(xa, b, None)
    }

    /// The dense update `s·A·B`, `[d_in, d_out]`, for merging.
    pub fn delta(&self) -> Tensor<2> {
        self.lora_a.val().matmul(self.lora_b.val()).mul_scalar(self.scale)
    }
}
