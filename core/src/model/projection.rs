//! The projection slot: every linear map in the transformer goes through a `Projection`.
//!
//! Fine-tuning methods adapt a model by changing what happens inside these slots (LoRA adds
//! a low-rank path beside the frozen weight, IA³ rescales the output, DoRA splits magnitude
//! from direction), so the model's code never changes when a method is added: a method adds
//! optional state to `Projection` and a branch to `Projection::forward`. Rust cannot swap a
//! module at run time, and trait objects would hide parameters from Burn's module visitors;
//! one concrete slot type keeps every parameter visible and every path stable.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::init::Fill;

/// `y = x·W + b` with `W` stored as `[d_in, d_out]`, the layout of GPT-2's `Conv1D`, so
/// GPT-2's weights load without a transpose (the Llama family's `nn.Linear` weights,
/// `[out, in]`, are transposed on the way in and out by `model::names`).
#[derive(Module, Debug)]
pub struct Projection {
    /// `[d_in, d_out]`; None when the base weight is held quantized instead (QLoRA).
    pub weight: Option<Param<Tensor<2>>>,
    /// The frozen base weight held quantized (`methods::qlora`: NF4, or a GGUF file's own
    /// blocks), dequantized on every forward pass. Not a parameter: it never trains, and
    /// checkpoints store it packed.
    #[module(skip)]
    pub frozen: Option<crate::methods::qlora::FrozenWeight>,
    /// The quantized blocks `weight` was dequantized from when it was loaded from a GGUF
    /// file, shared, not copied: QLoRA keeps these as the frozen base instead of rounding
    /// the weight to NF4 a second time. Dropped whenever `weight` changes form (QLoRA,
    /// merges); never saved.
    #[module(skip)]
    pub source: Option<crate::methods::qlora::FrozenWeight>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<1>>>,
    /// A low-rank update beside the frozen weight (`methods::lora`), if adapted.
    pub lora: Option<crate::methods::Lora>,
    /// A learned rescaling of the input or output (`methods::ia3`), if adapted.
    pub ia3: Option<crate::methods::Ia3>,
    /// Set while the LoRA, DoRA or IA³ update is folded into `weight` in place
    /// (`methods::merge_in_place`); the forward pass is then the plain `x·W + b`.
    #[module(skip)]
    pub merged: Option<crate::methods::MergeUndo>,
    /// Several LoRA adapters side by side, each row of a batch through its own
    /// (`methods::multi`, for serving); not parameters, never saved.
    #[module(skip)]
    pub bank: Option<crate::methods::multi::LoraBank>,
    /// Where this projection's input statistics go while a calibration pass records them
    /// (`model::record`, for pruning); None otherwise. Not a parameter, never saved.
    #[module(skip)]
    pub tap: Option<super::record::Tap>,
}

impl Projection {
    /// Weights drawn from N(0, std²) with tinytune's portable generator; bias zero.
    pub fn init(d_in: usize, d_out: usize, std: f64, rng: &mut crate::data::rng::Rng, device: &Device) -> Self {
        Self::filled(d_in, d_out, std, true, &mut Fill::Random(rng), device)
    }

    /// A projection whose weight is filled as `fill` says, with a zero bias or none.
    pub fn filled(d_in: usize, d_out: usize, std: f64, bias: bool, fill: &mut Fill, device: &Device) -> Self {
        Self {
            weight: Some(Param::from_tensor(fill.tensor([d_in, d_out], std, device))),
            frozen: None,
            source: None,
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
            lora: None,
            ia3: None,
            merged: None,
            bank: None,
            tap: None,
        }
    }

    /// Weight and bias zero: a projection that outputs zero until it trains (an adapter's
    /// up-projection).
    pub fn zeros(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            weight: Some(Param::from_tensor(Tensor::zeros([d_in, d_out], device))),
            frozen: None,
            source: None,
            bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
            lora: None,
            ia3: None,
            merged: None,
            bank: None,
            tap: None,
        }
    }

    /// # Shapes
    /// `[..., d_in] -> [..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(tap) = &self.tap {
            tap.recorder.record(tap, &x);
        }
        if self.merged.is_some() {
            // The update is inside W already (merged in place).
            return burn::tensor::module::linear(x, self.base_weight(), self.bias.as_ref().map(|b| b.val()));
        }
        if let Some(ia3) = &self.ia3 {
            // IA³: (x ⊙ l)·W + b for a feedforward module, else (x·W + b) ⊙ l, as PEFT.
            let bias = self.bias.as_ref().map(|b| b.val());
            return if ia3.input {
                burn::tensor::module::linear(x * ia3.scale::<D>(), self.base_weight(), bias)
            } else {
                burn::tensor::module::linear(x, self.base_weight(), bias) * ia3.scale::<D>()
            };
        }
        if let Some(lora) = &self.lora
            && lora.magnitude.is_some()
        {
            // DoRA: y = (m / ‖W + s·A·B‖) ⊙ (x·W + s·(x·A)·B) + b, per output column.
            let w = self.base_weight();
            let factor = lora.dora_factor(w.clone()).expect("a magnitude");
            let y = (burn::tensor::module::linear(x.clone(), w, None) + lora.forward(x)) * factor.unsqueeze::<D>();
            return match &self.bias {
                Some(b) => y + b.val().unsqueeze::<D>(),
                None => y,
            };
        }
        let base = burn::tensor::module::linear(x.clone(), self.base_weight(), self.bias.as_ref().map(|b| b.val()));
        let out = match &self.lora {
            Some(lora) => base + lora.forward(x.clone()),
            None => base,
        };
        match &self.bank {
            Some(bank) => bank.forward(x, out),
            None => out,
        }
    }

    /// The base weight `[d_in, d_out]`: the parameter, or the frozen weight dequantized.
    pub fn base_weight(&self) -> Tensor<2> {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => w.val(),
            (None, Some(q)) => q.weight(),
            (None, None) => unreachable!("a projection holds its weight in FP32 or quantized"),
        }
    }

    pub fn d_in(&self) -> usize {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => w.shape().dims::<2>()[0],
            (None, Some(q)) => q.d_in,
            (None, None) => 0,
        }
    }

    pub fn d_out(&self) -> usize {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => w.shape().dims::<2>()[1],
            (None, Some(q)) => q.d_out,
            (None, None) => 0,
        }
    }
}
