//! The optimizers, written out: SGD (with momentum), AdamW, Adafactor, Lion, 8-bit AdamW,
//! paged AdamW (FP32 or 8-bit) and MeZO, each with PyTorch's (or bitsandbytes') update rule
//! and defaults, checked step by step against them on a committed fixture
//! (`tests/fixtures/make_optim_reference.py`).
//!
//! Burn has SGD, Adam and AdamW, but their state is keyed by run-time parameter ids, which a
//! model loaded from safetensors does not keep. Here every piece of state is keyed by the
//! parameter's path and a slot name (`h.0.attn.c_attn.weight.exp_avg`), so it saves to
//! safetensors beside the weights and a resumed run continues exactly. The slot names are
//! PyTorch's (`exp_avg`, `exp_avg_sq`, `momentum_buffer`) and transformers' Adafactor's
//! (`exp_avg_sq_row`, `exp_avg_sq_col`).
//!
//! Weight decay is decoupled (`p ← p·(1 − lr·λ)`) except in SGD, where it is PyTorch's L2 term
//! added to the gradient; every optimizer applies it to matrices and embeddings only
//! (rank ≥ 2), as nanoGPT and transformers' Trainer do.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};
use crate::formats::blockwise::{dynamic_map, dynamic_map_unsigned, quantize_8bit};
use crate::model::params::{MapNamed, map_named};

use super::grads::NamedGrads;

/// Which optimizer a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OptimKind {
    /// Stochastic gradient descent, optionally with momentum (`torch.optim.SGD`).
    Sgd,
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    #[default]
    AdamW,
    /// Adafactor (Shazeer and Stern, 2018) as `torch.optim.Adafactor`: no first moment; a
    /// matrix's second moment factored into a row and a column vector; relative step sizes.
    Adafactor,
    /// Lion (Chen et al., 2023): the sign of an interpolated momentum; one buffer.
    Lion,
    /// bitsandbytes' `AdamW8bit`: both moments stored as 8-bit codes of the dynamic maps in
    /// blocks of 256 with an FP32 maximum per block; tensors under 4,096 elements stay FP32.
    AdamW8bit,
    /// AdamW whose state lives in host memory between steps (bitsandbytes' paged optimizers
    /// page it on demand with CUDA unified memory); on a CPU backend state is already in host
    /// memory, so it is plain AdamW.
    PagedAdamW,
    /// 8-bit AdamW, paged.
    PagedAdamW8bit,
    /// MeZO (Malladi et al., 2023): a zeroth-order estimate of the gradient from two forward
    /// passes with a seeded random perturbation (SPSA). No backward pass, no stored
    /// activations, no state.
    Mezo,
}

impl OptimKind {
    pub const ALL: [OptimKind; 8] = [
        OptimKind::Sgd,
        OptimKind::AdamW,
        OptimKind::Adafactor,
        OptimKind::Lion,
        OptimKind::AdamW8bit,
        OptimKind::PagedAdamW,
        OptimKind::PagedAdamW8bit,
        OptimKind::Mezo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OptimKind::Sgd => "sgd",
            OptimKind::AdamW => "adamw",
            OptimKind::Adafactor => "adafactor",
            OptimKind::Lion => "lion",
            OptimKind::AdamW8bit => "adamw8bit",
            OptimKind::PagedAdamW => "paged-adamw",
            OptimKind::PagedAdamW8bit => "paged-adamw8bit",
            OptimKind::Mezo => "mezo",
        }
    }

    /// Whether state is paged to host memory between steps.
    pub fn paged(self) -> bool {
        matches!(self, OptimKind::PagedAdamW | OptimKind::PagedAdamW8bit)
    }

    /// Whether large tensors' moments are stored in 8 bits.
    pub fn eight_bit(self) -> bool {
        matches!(self, OptimKind::AdamW8bit | OptimKind::PagedAdamW8bit)
    }

    /// Whether steps need a backward pass (all but MeZO).
    pub fn uses_gradients(self) -> bool {
        self != OptimKind::Mezo
    }

    /// A peak learning rate that works for fine-tuning tinytune's models with this optimizer
    /// (measured on micro; `tinytune compare --optimizers` uses it when no `--lr` is given).
    /// Lion's is smaller than AdamW's because its sign update has unit size per element
    /// (the Lion paper suggests 3–10× smaller); Adafactor's is relative to each tensor's RMS.
    pub fn suggested_lr(self) -> f64 {
        match self {
            OptimKind::Sgd => 0.1,
            OptimKind::AdamW | OptimKind::AdamW8bit | OptimKind::PagedAdamW | OptimKind::PagedAdamW8bit => 1e-3,
            OptimKind::Adafactor => 1e-2,
            OptimKind::Lion => 2e-4,
            OptimKind::Mezo => 3e-4,
        }
    }

    /// The default peak learning rate for fine-tuning with `method` and this optimizer:
    /// the method's suggestion with an AdamW-family optimizer (whose rates the method
    /// sweep measured), this optimizer's own otherwise.
    pub fn suggested_lr_for(self, method: crate::methods::MethodKind) -> f64 {
        match self {
            OptimKind::AdamW | OptimKind::AdamW8bit | OptimKind::PagedAdamW | OptimKind::PagedAdamW8bit => method.suggested_lr(),
            other => other.suggested_lr(),
        }
    }

    /// The estimator's name for this optimizer's state (`memory::OptimizerKind`), so a plan
    /// and a run agree on what the state costs.
    pub fn plan_kind(self, momentum: f64) -> crate::memory::OptimizerKind {
        use crate::memory::OptimizerKind as P;
        match self {
            OptimKind::Sgd if momentum > 0.0 => P::SgdMomentum,
            OptimKind::Sgd => P::Sgd,
            OptimKind::AdamW | OptimKind::PagedAdamW => P::Adamw,
            OptimKind::AdamW8bit | OptimKind::PagedAdamW8bit => P::Adamw8bit,
            OptimKind::Adafactor => P::Adafactor,
            OptimKind::Lion => P::Lion,
            OptimKind::Mezo => P::Mezo,
        }
    }
}

impl fmt::Display for OptimKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        let alias = match s.as_str() {
            "adamw-8bit" | "adam8bit" | "8bit-adamw" => "adamw8bit",
            "paged-adamw-8bit" | "paged-adam8bit" => "paged-adamw8bit",
            other => other,
        };
        OptimKind::ALL.into_iter().find(|k| k.name() == alias).ok_or_else(|| {
            let names: Vec<&str> = OptimKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown optimizer '{s}'; choose one of: {}", names.join(", "))
        })
    }
}

impl TryFrom<String> for OptimKind {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<OptimKind> for String {
    fn from(k: OptimKind) -> String {
        k.name().to_string()
    }
}

/// Adafactor's constants, PyTorch's defaults: `eps = (None, 1e-3)` (the first is the dtype's
/// machine epsilon), `beta2_decay = -0.8`, `d = 1.0`.
pub const ADAFACTOR_EPS1: f32 = f32::EPSILON;
pub const ADAFACTOR_EPS2: f32 = 1e-3;
pub const ADAFACTOR_BETA2_DECAY: f64 = -0.8;
pub const ADAFACTOR_D: f32 = 1.0;
/// bitsandbytes' `min_8bit_size`: smaller tensors keep FP32 moments.
pub const MIN_8BIT_SIZE: usize = 4096;
/// bitsandbytes' block size for 8-bit optimizer state.
pub const STATE_BLOCK: usize = 256;

/// Hyperparameters. The defaults of each kind ([`OptimConfig::for_kind`]) are PyTorch's
/// (bitsandbytes' for Lion and 8-bit AdamW); the learning rate is the schedule's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Which optimizer (runs saved before there was a choice used AdamW).
    #[serde(default)]
    pub kind: OptimKind,
    /// First-moment decay (Adam family; Lion's interpolation factor).
    pub beta1: f64,
    /// Second-moment decay (Adam family; Lion's momentum decay). Adafactor uses
    /// `1 − t^-0.8` instead.
    pub beta2: f64,
    /// Added to the denominator (Adam family).
    pub eps: f64,
    /// Weight decay, applied to matrices and embeddings only (rank ≥ 2): decaying biases and
    /// LayerNorm gains towards zero only hurts.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value before the update (None: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// SGD's momentum (0: plain SGD, PyTorch's default).
    #[serde(default)]
    pub momentum: f64,
    /// MeZO's perturbation size ε (the MeZO paper's 1e-3).
    #[serde(default = "default_mezo_eps")]
    pub mezo_eps: f64,
    /// LoRA+ (Hayou et al., 2024): LoRA's B matrices (`…lora_b`) learn at this multiple of
    /// the learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
}

fn default_mezo_eps() -> f64 {
    1e-3
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self::for_kind(OptimKind::AdamW)
    }
}

impl OptimConfig {
    /// The defaults of `kind`: AdamW's betas (0.9, 0.999), eps 1e-8 and decay 0.01; Lion's
    /// betas (0.9, 0.99) and no decay; SGD's no momentum and no decay; Adafactor's no decay;
    /// MeZO's ε = 1e-3. Clipping at 1.0 for every gradient optimizer (MeZO has no gradient).
    pub fn for_kind(kind: OptimKind) -> Self {
        let adam = Self {
            kind,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            clip_grad_norm: Some(1.0),
            momentum: 0.0,
            mezo_eps: default_mezo_eps(),
            loraplus_lr_ratio: None,
        };
        match kind {
            OptimKind::AdamW | OptimKind::AdamW8bit | OptimKind::PagedAdamW | OptimKind::PagedAdamW8bit => adam,
            OptimKind::Sgd | OptimKind::Adafactor => Self { weight_decay: 0.0, ..adam },
            OptimKind::Lion => Self { beta2: 0.99, weight_decay: 0.0, ..adam },
            OptimKind::Mezo => Self { weight_decay: 0.0, clip_grad_norm: None, ..adam },
        }
    }

    /// Checks the values an optimizer cannot run with, naming the field.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let fraction = |v: f64| (0.0..1.0).contains(&v);
        if !fraction(self.beta1) {
            return Err(Error::config(origin, "beta1", format!("{} must be in [0, 1)", self.beta1)));
        }
        if !fraction(self.beta2) {
            return Err(Error::config(origin, "beta2", format!("{} must be in [0, 1)", self.beta2)));
        }
        if !(self.eps > 0.0) {
            return Err(Error::config(origin, "eps", format!("{} must be positive", self.eps)));
        }
        if !(self.weight_decay >= 0.0) {
            return Err(Error::config(origin, "weight_decay", format!("{} must be 0 or more", self.weight_decay)));
        }
        if !fraction(self.momentum) {
            return Err(Error::config(origin, "momentum", format!("{} must be in [0, 1)", self.momentum)));
        }
        if self.momentum > 0.0 && self.kind != OptimKind::Sgd {
            return Err(Error::config(origin, "momentum", format!("only SGD takes a momentum; {} keeps its own (betas)", self.kind)));
        }
        if let Some(r) = self.loraplus_lr_ratio
            && !(r > 0.0 && r.is_finite())
        {
            return Err(Error::config(origin, "loraplus_ratio", format!("{r} must be a positive multiple of the learning rate")));
        }
        if !(self.mezo_eps > 0.0) {
            return Err(Error::config(origin, "mezo_eps", format!("{} must be positive", self.mezo_eps)));
        }
        if let Some(clip) = self.clip_grad_norm
            && !(clip > 0.0)
        {
            return Err(Error::config(origin, "clip", format!("{clip} must be positive (or 0 on the command line to turn clipping off)")));
        }
        Ok(())
    }
}

/// bitsandbytes' signed and unsigned dynamic maps, computed once.
fn maps() -> &'static ([f32; 256], [f32; 256]) {
    static MAPS: OnceLock<([f32; 256], [f32; 256])> = OnceLock::new();
    MAPS.get_or_init(|| (dynamic_map(), dynamic_map_unsigned()))
}

/// One tensor of optimizer state, block-wise quantized to 8 bits (host memory).
#[derive(Clone, Debug, PartialEq)]
pub struct Quant8 {
    pub codes: Vec<u8>,
    /// One FP32 maximum per block of [`STATE_BLOCK`].
    pub absmax: Vec<f32>,
    /// Signed map (first moment) or unsigned (second moment).
    pub signed: bool,
}

impl Quant8 {
    pub fn quantize(x: &[f32], signed: bool) -> Self {
        let map = if signed { &maps().0 } else { &maps().1 };
        let (codes, absmax) = quantize_8bit(x, map, STATE_BLOCK);
        Self { codes, absmax, signed }
    }

    /// `map[code] · absmax[block]`, as bitsandbytes' `dequantize_blockwise`.
    pub fn dequantize(&self) -> Vec<f32> {
        let map = if self.signed { &maps().0 } else { &maps().1 };
        self.codes.iter().enumerate().map(|(i, &c)| map[c as usize] * self.absmax[i / STATE_BLOCK]).collect()
    }

    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len()
    }
}

/// One tensor of optimizer state.
// The dense variant is a tensor handle, the common case; boxing it would add an allocation
// per slot to save bytes on the rare paged and 8-bit ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Slot {
    /// FP32 on the training device.
    Dense(Tensor<1>),
    /// FP32 in host memory between steps (paged optimizers on a GPU backend).
    Paged(TensorData),
    /// 8-bit codes and block maxima in host memory (8-bit AdamW).
    Quant(Quant8),
}

impl Slot {
    pub fn bytes(&self) -> usize {
        match self {
            Slot::Dense(t) => 4 * t.shape().num_elements(),
            Slot::Paged(d) => d.as_bytes().len(),
            Slot::Quant(q) => q.bytes(),
        }
    }

    /// The state as FP32 values (dequantized when 8-bit).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Slot::Dense(t) => t.to_data().convert::<f32>().try_to_vec().expect("f32 state"),
            Slot::Paged(d) => d.clone().convert::<f32>().try_to_vec().expect("f32 state"),
            Slot::Quant(q) => q.dequantize(),
        }
    }
}

/// The optimizer: hyperparameters, the number of updates taken, and its state by name.
#[derive(Clone, Debug)]
pub struct Optimizer {
    pub config: OptimConfig,
    /// Updates taken so far (t in bias corrections and Adafactor's schedules).
    pub t: u64,
    /// `{parameter path}.{slot}` → state.
    pub state: BTreeMap<String, Slot>,
    /// Keep dense state in host memory between steps (set for paged kinds on GPU backends).
    pub page: bool,
    /// ZeRO stage 1 across data-parallel replicas: which replica keeps each parameter's state
    /// and makes its update (None: the training device keeps all of it).
    pub shards: Option<Shards>,
}

/// ZeRO stage 1 (Rajbhandari et al., 2020, "P_os"): the optimizer state partitioned across
/// the data-parallel replicas. Each parameter's state lives on one replica's device, which
/// makes that parameter's update from the (already summed) gradient and sends the new value
/// back to the training device; no replica holds another's state.
///
/// Parameters are the unit, as in PyTorch's `ZeroRedundancyOptimizer`: largest state first,
/// each to the replica holding the fewest state bytes so far (ties to the lower index).
/// DeepSpeed cuts one flat buffer into equal pieces instead, so its shares are equal to the
/// byte; here a share can exceed 1/N of the state by at most the largest parameter's state.
/// Only state on the device is shared out: `TrainConfig::validate` refuses ZeRO-1 for the
/// paged and 8-bit optimizers, whose state lives in the host memory all replicas share.
#[derive(Clone, Debug)]
pub struct Shards {
    /// Parameter path → index of the replica that owns its state.
    pub owner: BTreeMap<String, usize>,
    /// Each replica's device; index 0 is the training device.
    pub devices: Vec<Device>,
}

impl Shards {
    /// Partitions `params` (path, bytes of state) across the replicas on `devices`.
    pub fn partition(params: &[(String, u64)], devices: Vec<Device>) -> Self {
        let n = devices.len().max(1);
        let mut order: Vec<&(String, u64)> = params.iter().collect();
        // Stable sort: equal sizes keep the model's order, so the partition is deterministic.
        order.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        let mut load = vec![0u64; n];
        let mut owner = BTreeMap::new();
        for (path, bytes) in order {
            let r = (0..n).min_by_key(|&r| (load[r], r)).expect("at least one replica");
            load[r] += bytes;
            owner.insert(path.clone(), r);
        }
        Self { owner, devices }
    }

    /// The replica that owns the state of parameter `path` (0 for one it does not list).
    pub fn owner_of(&self, path: &str) -> usize {
        self.owner.get(path).copied().unwrap_or(0)
    }

    /// The device that keeps parameter `path`'s state and makes its update.
    fn device_of(&self, path: &str) -> Option<&Device> {
        self.devices.get(self.owner_of(path))
    }

    /// The replica owning the state slot `name` (`{parameter path}.{slot}`).
    fn owner_of_slot(&self, name: &str) -> usize {
        name.rsplit_once('.').map_or(0, |(path, _)| self.owner_of(path))
    }
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Self {
        Self { config, t: 0, state: BTreeMap::new(), page: false, shards: None }
    }

    /// An optimizer for training on `device`: paged kinds page only where the device has
    /// memory of its own.
    pub fn for_device(config: OptimConfig, device: &Device) -> Self {
        let page = config.kind.paged() && !host_memory_device(device);
        Self { page, ..Self::new(config) }
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
    /// (MeZO's update is [`super::mezo`]'s; called with MeZO this is a no-op.)
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: NamedGrads) -> M {
        self.t += 1;
        map_named(module, Update { grads: grads.0.into_iter().collect(), optim: self, lr }).0
    }

    /// Bytes of optimizer state held now, measured from the state itself.
    pub fn state_bytes(&self) -> usize {
        self.state.values().map(Slot::bytes).sum()
    }

    /// [`Optimizer::state_bytes`] by data-parallel replica: one entry per replica under ZeRO
    /// stage 1 (what each replica's share holds), one entry otherwise.
    pub fn state_bytes_by_replica(&self) -> Vec<usize> {
        let Some(shards) = &self.shards else { return vec![self.state_bytes()] };
        let mut out = vec![0; shards.devices.len().max(1)];
        for (name, slot) in &self.state {
            out[shards.owner_of_slot(name)] += slot.bytes();
        }
        out
    }

    /// The state as `(name, data)` pairs for saving: dense slots as `{path}.{slot}` (F32),
    /// 8-bit slots as `{path}.{slot}.codes` (U8) and `{path}.{slot}.absmax` (F32).
    pub fn state_data(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::new();
        for (name, slot) in &self.state {
            match slot {
                Slot::Dense(t) => out.push((name.clone(), t.to_data())),
                Slot::Paged(d) => out.push((name.clone(), d.clone())),
                Slot::Quant(q) => {
                    out.push((format!("{name}.codes"), TensorData::new(q.codes.clone(), [q.codes.len()])));
                    out.push((format!("{name}.absmax"), TensorData::new(q.absmax.clone(), [q.absmax.len()])));
                }
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_data`].
    pub fn load_state(&mut self, t: u64, tensors: impl IntoIterator<Item = (String, TensorData)>, device: &Device) {
        self.t = t;
        self.state.clear();
        let mut codes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut absmax: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (name, data) in tensors {
            if let Some(base) = name.strip_suffix(".codes") {
                codes.insert(base.to_string(), data.convert::<u8>().try_to_vec().expect("u8 codes"));
            } else if let Some(base) = name.strip_suffix(".absmax") {
                absmax.insert(base.to_string(), data.convert::<f32>().try_to_vec().expect("f32 maxima"));
            } else {
                let data = data.convert::<f32>();
                let slot = if self.page { Slot::Paged(data) } else { Slot::Dense(Tensor::<1>::from_data(data, device)) };
                self.state.insert(name, slot);
            }
        }
        for (name, codes) in codes {
            if let Some(absmax) = absmax.remove(&name) {
                // The first moment is signed; every second moment is not.
                let signed = !name.ends_with("exp_avg_sq");
                self.state.insert(name, Slot::Quant(Quant8 { codes, absmax, signed }));
            }
        }
    }

    /// Takes slot `name` as a dense tensor on `device` (zeros of `n` when absent).
    fn take_dense(&mut self, name: &str, n: usize, device: &Device) -> Tensor<1> {
        match self.state.remove(name) {
            // State restored on the training device moves to its owner's on first use (ZeRO-1).
            Some(Slot::Dense(t)) if t.device() != *device => t.to_device(device),
            Some(Slot::Dense(t)) => t,
            Some(Slot::Paged(d)) => Tensor::from_data(d, device),
            Some(Slot::Quant(q)) => Tensor::from_data(TensorData::new(q.dequantize(), [n]), device),
            None => Tensor::zeros([n], device),
        }
    }

    fn put_dense(&mut self, name: String, t: Tensor<1>) {
        let slot = if self.page { Slot::Paged(t.into_data()) } else { Slot::Dense(t) };
        self.state.insert(name, slot);
    }

    /// Takes slot `name` as host values (zeros when absent).
    fn take_host(&mut self, name: &str, n: usize) -> Vec<f32> {
        match self.state.remove(name) {
            Some(slot) => slot.values(),
            None => vec![0.0; n],
        }
    }
}

/// Whether `device` computes in host memory (the CPU backends), where paging has nothing to
/// move.
pub fn host_memory_device(device: &Device) -> bool {
    let name = format!("{:?}", device.clone().inner());
    name.contains("Flex") || name.contains("NdArray")
}

struct Update<'a> {
    grads: std::collections::HashMap<String, Tensor<1>>,
    optim: &'a mut Optimizer,
    lr: f64,
}

impl MapNamed for Update<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.remove(path) else { return param };
        let (id, tensor, mapper) = param.consume();
        let strategy = tensor.gradient_checkpointing_strategy();
        let shape = tensor.shape();
        let p = tensor.inner().reshape([shape.num_elements()]); // detached, [n]
        let dims: Vec<usize> = shape.dims::<D>().to_vec();
        let lr = match self.optim.config.loraplus_lr_ratio {
            Some(ratio) if path.ends_with("lora_b") => self.lr * ratio,
            _ => self.lr,
        };
        // Under ZeRO-1 the owner's device makes the update, with the state it keeps, and the
        // new value comes back to the training device.
        let home = p.device();
        let owner = self.optim.shards.as_ref().and_then(|s| s.device_of(path)).filter(|d| **d != home).cloned();
        let p = match &owner {
            Some(d) => update(self.optim, lr, path, p.to_device(d), g.inner().to_device(d), &dims).to_device(&home),
            None => update(self.optim, lr, path, p, g.inner(), &dims),
        };
        let mut updated = Tensor::<D>::from_inner(p.reshape(shape)).require_grad();
        if let Some(s) = strategy {
            updated = updated.with_gradient_checkpointing_strategy(s);
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The new value of one parameter `p` (flattened) of shape `dims` given its gradient `g`.
fn update(o: &mut Optimizer, lr: f64, path: &str, p: Tensor<1>, g: Tensor<1>, dims: &[usize]) -> Tensor<1> {
    let c = o.config.clone();
    let t = o.t;
    let n = p.shape().num_elements();
    let device = p.device();
    let matrix = dims.len() >= 2;
    let decay = matrix && c.weight_decay != 0.0;
    let slot = |s: &str| format!("{path}.{s}");
    match c.kind {
        OptimKind::Mezo => p,
        OptimKind::Sgd => {
            // torch.optim.SGD: L2 decay joins the gradient; the buffer starts as the gradient.
            let g = if decay { g + p.clone().mul_scalar(c.weight_decay) } else { g };
            let dir = if c.momentum > 0.0 {
                let name = slot("momentum_buffer");
                let buf = if o.state.contains_key(&name) { o.take_dense(&name, n, &device).mul_scalar(c.momentum) + g } else { g };
                o.put_dense(name, buf.clone());
                buf
            } else {
                g
            };
            p - dir.mul_scalar(lr)
        }
        OptimKind::AdamW | OptimKind::PagedAdamW => adamw_dense(o, lr, &slot, p, g, decay, &device),
        OptimKind::AdamW8bit | OptimKind::PagedAdamW8bit => {
            if n < MIN_8BIT_SIZE {
                adamw_dense(o, lr, &slot, p, g, decay, &device)
            } else {
                adamw_8bit(o, lr, &slot, p, g, decay, &device)
            }
        }
        OptimKind::Lion => {
            // p ← p·(1 − lr·λ) − lr·sign(β1·m + (1 − β1)·g);  m ← β2·m + (1 − β2)·g
            let m = o.take_dense(&slot("exp_avg"), n, &device);
            let p = if decay { p.mul_scalar(1.0 - lr * c.weight_decay) } else { p };
            let dir = (m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1)).sign();
            let m = m.mul_scalar(c.beta2) + g.mul_scalar(1.0 - c.beta2);
            o.put_dense(slot("exp_avg"), m);
            p - dir.mul_scalar(lr)
        }
        OptimKind::Adafactor => {
            let tf = t as f64;
            let w = tf.powf(ADAFACTOR_BETA2_DECAY); // 1 − β2_t
            let rho = lr.min(1.0 / tf.sqrt());
            // Step size relative to the parameter's RMS (taken before decay, as torch does).
            let alpha = rms(&p).clamp_min(ADAFACTOR_EPS2).mul_scalar(rho);
            let p = if decay { p.mul_scalar(1.0 - lr * c.weight_decay) } else { p };
            let var = if matrix {
                let cols = *dims.last().expect("rank ≥ 2");
                let rows = n / cols;
                let g2 = g.clone().reshape([rows, cols]).powf_scalar(2.0);
                let row_mean = g2.clone().mean_dim(1); // [rows, 1]
                let col_mean = g2.mean_dim(0); // [1, cols]
                let row = o.take_dense(&slot("exp_avg_sq_row"), rows, &device).reshape([rows, 1]);
                let col = o.take_dense(&slot("exp_avg_sq_col"), cols, &device).reshape([1, cols]);
                let row = row.clone() + (row_mean - row).mul_scalar(w);
                let col = col.clone() + (col_mean - col).mul_scalar(w);
                let mean_row = row.clone().mean().clamp_min(ADAFACTOR_EPS1).reshape([1, 1]);
                let var = row.clone().matmul(col.clone()).div(mean_row);
                o.put_dense(slot("exp_avg_sq_row"), row.reshape([rows]));
                o.put_dense(slot("exp_avg_sq_col"), col.reshape([cols]));
                var.reshape([n])
            } else {
                let v = o.take_dense(&slot("exp_avg_sq"), n, &device);
                let v = v.clone() + (g.clone().powf_scalar(2.0) - v).mul_scalar(w);
                o.put_dense(slot("exp_avg_sq"), v.clone());
                v
            };
            let u = var.clamp_min(ADAFACTOR_EPS1 * ADAFACTOR_EPS1).sqrt().recip() * g;
            let denom = rms(&u).div_scalar(ADAFACTOR_D).clamp_min(1.0);
            p - u * (alpha / denom)
        }
    }
}

/// The root mean square of a vector, on the device.
fn rms(x: &Tensor<1>) -> Tensor<1> {
    x.clone().powf_scalar(2.0).mean().sqrt()
}

/// AdamW with FP32 moments on the device.
fn adamw_dense(o: &mut Optimizer, lr: f64, slot: &dyn Fn(&str) -> String, p: Tensor<1>, g: Tensor<1>, decay: bool, device: &Device) -> Tensor<1> {
    let c = o.config.clone();
    let n = p.shape().num_elements();
    let bc1 = 1.0 - c.beta1.powi(o.t as i32);
    let bc2 = 1.0 - c.beta2.powi(o.t as i32);
    let m = o.take_dense(&slot("exp_avg"), n, device);
    let v = o.take_dense(&slot("exp_avg_sq"), n, device);
    // m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
    let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
    let v = v.mul_scalar(c.beta2) + g.powf_scalar(2.0).mul_scalar(1.0 - c.beta2);
    // Decoupled decay first, as torch does: p ← p·(1 − lr·λ)
    let p = if decay { p.mul_scalar(1.0 - lr * c.weight_decay) } else { p };
    // p ← p − (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
    let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
    let p = p - m.clone().div(denom).mul_scalar(lr / bc1);
    o.put_dense(slot("exp_avg"), m);
    o.put_dense(slot("exp_avg_sq"), v);
    p
}

/// 8-bit AdamW on the host, operation for operation as bitsandbytes' CPU kernel
/// (`optimizer_update_8bit_blockwise`): dequantize both moments, update in FP32, requantize
/// with fresh block maxima. The gradient and parameter are read back synchronously, so in
/// the browser this runs on the CPU backend.
fn adamw_8bit(o: &mut Optimizer, lr: f64, slot: &dyn Fn(&str) -> String, p: Tensor<1>, g: Tensor<1>, decay: bool, device: &Device) -> Tensor<1> {
    let c = o.config.clone();
    let n = p.shape().num_elements();
    let mut pv: Vec<f32> = p.into_data().convert::<f32>().try_to_vec().expect("f32 parameter");
    let gv: Vec<f32> = g.into_data().convert::<f32>().try_to_vec().expect("f32 gradient");
    let mut m = o.take_host(&slot("exp_avg"), n);
    let mut v = o.take_host(&slot("exp_avg_sq"), n);
    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
    let (one_b1, one_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
    let correction1 = 1.0 - c.beta1.powi(o.t as i32);
    let correction2 = (1.0 - c.beta2.powi(o.t as i32)).sqrt() as f32;
    let step = (-lr / correction1) as f32;
    let shrink = (1.0 - lr * c.weight_decay) as f32;
    let eps = c.eps as f32;
    for i in 0..n {
        // PyTorch's CPU kernels (built with floating-point contraction) fuse the final
        // multiply and add of `add_(g, alpha)` and `addcmul_` into one rounding.
        m[i] = gv[i].mul_add(one_b1, m[i] * b1);
        v[i] = (one_b2 * gv[i]).mul_add(gv[i], v[i] * b2);
        let denom = v[i].sqrt() / correction2 + eps;
        if decay {
            pv[i] *= shrink;
        }
        pv[i] += step * m[i] / denom;
    }
    o.state.insert(slot("exp_avg"), Slot::Quant(Quant8::quantize(&m, true)));
    o.state.insert(slot("exp_avg_sq"), Slot::Quant(Quant8::quantize(&v, false)));
    Tensor::from_data(TensorData::new(pv, [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for k in OptimKind::ALL {
            assert_eq!(k.name().parse::<OptimKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<OptimKind>(&json).unwrap(), k);
        }
        assert_eq!("AdamW_8bit".parse::<OptimKind>().unwrap(), OptimKind::AdamW8bit);
        let err = "adam".parse::<OptimKind>().unwrap_err();
        assert!(err.contains("adafactor") && err.contains("mezo"), "{err}");
    }

    #[test]
    fn configs_saved_before_the_choice_still_load_as_adamw() {
        let old = r#"{"beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.01,"clip_grad_norm":1.0}"#;
        let c: OptimConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c, OptimConfig::default());
    }

    #[test]
    fn quantized_state_dequantizes_through_the_right_map() {
        let x: Vec<f32> = (0..600).map(|i| ((i as f32) * 0.37).sin() * 1e-3).collect();
        let q = Quant8::quantize(&x, true);
        assert_eq!(q.absmax.len(), 3);
        let back = q.dequantize();
        let worst = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3 * 0.02, "signed map error {worst}");
        let sq: Vec<f32> = x.iter().map(|v| v * v).collect();
        let q = Quant8::quantize(&sq, false);
        assert!(q.dequantize().iter().all(|&v| v >= 0.0));
        assert_eq!(q.bytes(), 600 + 12);
    }

    #[test]
    fn the_cpu_backends_are_host_memory_devices() {
        assert!(host_memory_device(&Device::flex()));
        assert!(host_memory_device(&Device::flex().autodiff()));
    }
}
