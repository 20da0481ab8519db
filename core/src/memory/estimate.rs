//! The memory estimator: bytes of a training step, by component and by phase.
//!
//! A [`Plan`] says what is trained and how (model, method, precision, optimizer, batch,
//! sequence length, checkpointing, accumulation, ZeRO stage, GPUs, offload, overhead);
//! [`Plan::estimate`] returns an [`Estimate`]: a [`Breakdown`] per GPU and per CPU, the
//! phases of a step, and the common GPUs the run fits on.
//!
//! Where the numbers come from:
//! - Model states are counted tensor by tensor from [`Arch`]'s shapes: which tensors train
//!   (per method), how many bytes each stored element takes (per precision and quantized
//!   format), and how much state each optimizer keeps (per tensor shape: Adafactor factors
//!   matrices, 8-bit AdamW keeps small tensors in FP32).
//! - ZeRO stage 1 shards optimizer state (and the FP32 master copy) over the GPUs, stage 2
//!   also gradients, stage 3 also parameters, and stage 3 gathers the largest layer whole;
//!   offload moves optimizer state (and master weights) or everything to the CPU. This is
//!   the accounting behind DeepSpeed's estimator (see [`super::deepspeed`]).
//! - Activations follow one of three [`ActivationModel`]s: Korthikanti et al. 2022's count of
//!   the tensors Megatron-style training keeps, the same with a fused (FlashAttention-style)
//!   kernel that keeps no score matrix, or tinytune's own FP32 implementation on Burn,
//!   whose saved tensors were identified by measuring it (`measure`) and are listed below.
//! - Framework overhead (CUDA context, allocator caching) is a user-settable constant,
//!   because it depends on the machine, not the model.

use serde::{Deserialize, Serialize};

use super::arch::{Arch, Family, Linear};
use crate::error::{Error, Origin, Result};

/// What trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum PlanMethod {
    /// Every parameter.
    Full,
    /// The last `n` blocks, the final norm and an untied head.
    LastLayers { n: u64 },
    /// Biases only (Ben Zaken et al., 2022).
    Bitfit,
    /// Norm weights and biases only.
    Layernorm,
    /// Low-rank updates `A·B` (rank `rank`) beside the frozen targeted linear layers.
    Lora { rank: u64, targets: Vec<String> },
    /// LoRA on a frozen base whose block linear weights are NF4 with double quantization
    /// (Dettmers et al., 2023), dequantized layer by layer in the forward pass.
    Qlora { rank: u64, targets: Vec<String> },
    /// Bottleneck adapters: `per_block` of them in every block (Houlsby's two, after
    /// attention and after the MLP; Pfeiffer's or a parallel adapter's one).
    Adapter {
        bottleneck: u64,
        #[serde(default = "houlsby_per_block")]
        per_block: u64,
    },
    /// Prompt tuning: `tokens` learned input embeddings; the sequence grows by `tokens`.
    /// With `encoder` > 0, P-tuning: the embeddings pass through an MLP prompt encoder of
    /// that width (three linear layers).
    Prompt {
        tokens: u64,
        #[serde(default)]
        encoder: u64,
    },
    /// Prefix tuning: `tokens` keys and values per layer, learned directly, or through an
    /// MLP of width `encoder` when it is above 0. Activations are counted as for the frozen
    /// base (the prefix's few extra attention columns are left out).
    Prefix {
        tokens: u64,
        #[serde(default)]
        encoder: u64,
    },
    /// IA³: a learned vector on each target linear's output, or on its input for the
    /// `feedforward` ones. Activations are counted as for the frozen base.
    Ia3 { targets: Vec<String>, feedforward: Vec<String> },
}

fn houlsby_per_block() -> u64 {
    2
}

/// The sizes a method named only by its kind is estimated with: the CLI's flags, or a
/// widget's settings. Targets left out are the ones PEFT uses for the architecture's family.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSizes {
    pub rank: u64,
    pub targets: Option<Vec<String>>,
    /// Blocks trained by last-layers.
    pub layers: u64,
    pub bottleneck: u64,
    /// Virtual tokens of prompt tuning, P-tuning and prefix tuning.
    pub tokens: u64,
    /// P-tuning's prompt-encoder width.
    pub encoder: u64,
}

impl PlanMethod {
    /// The plan's method for `kind` on `arch` with `sizes`: where the CLI's `--method` and
    /// the memory widget's method choice become a plan, matched exhaustively.
    pub fn of_kind(kind: crate::methods::MethodKind, arch: &Arch, sizes: &PlanSizes) -> PlanMethod {
        use crate::methods::MethodKind as K;
        let targets = || sizes.targets.clone().unwrap_or_else(|| arch.default_lora_targets());
        match kind {
            K::Full => PlanMethod::Full,
            K::LastLayers => PlanMethod::LastLayers { n: sizes.layers },
            K::Bitfit => PlanMethod::Bitfit,
            K::Layernorm => PlanMethod::Layernorm,
            K::Lora => PlanMethod::Lora { rank: sizes.rank, targets: targets() },
            K::Qlora => PlanMethod::Qlora { rank: sizes.rank, targets: targets() },
            K::Adapter => PlanMethod::Adapter { bottleneck: sizes.bottleneck, per_block: 2 },
            K::Prompt => PlanMethod::Prompt { tokens: sizes.tokens, encoder: 0 },
            K::PTuning => PlanMethod::Prompt { tokens: sizes.tokens, encoder: sizes.encoder },
            K::Prefix => PlanMethod::Prefix { tokens: sizes.tokens, encoder: 0 },
            K::Ia3 => {
                let (targets, feedforward) = arch.default_ia3_targets();
                PlanMethod::Ia3 { targets, feedforward }
            }
        }
    }
}

/// A tinytune method with all its settings, as the estimator counts it.
impl From<&crate::methods::Method> for PlanMethod {
    fn from(method: &crate::methods::Method) -> Self {
        use crate::methods::Method;
        match method {
            Method::Full => PlanMethod::Full,
            Method::LastLayers { n } => PlanMethod::LastLayers { n: *n as u64 },
            Method::Bitfit => PlanMethod::Bitfit,
            Method::Layernorm => PlanMethod::Layernorm,
            Method::Lora(c) => PlanMethod::Lora { rank: c.r as u64, targets: c.target_modules.clone() },
            // The estimator's NF4 base is QLoRA's default: blocks of 64, double quantization.
            Method::Qlora(c) => PlanMethod::Qlora { rank: c.lora.r as u64, targets: c.lora.target_modules.clone() },
            Method::Adapter(c) => PlanMethod::Adapter { bottleneck: c.size as u64, per_block: c.per_block() as u64 },
            Method::Prompt(c) => PlanMethod::Prompt { tokens: c.num_virtual_tokens as u64, encoder: c.encoder_hidden_size.unwrap_or(0) as u64 },
            Method::Prefix(c) => PlanMethod::Prefix { tokens: c.num_virtual_tokens as u64, encoder: c.encoder_hidden_size.unwrap_or(0) as u64 },
            Method::Ia3(c) => PlanMethod::Ia3 { targets: c.target_modules.clone(), feedforward: c.feedforward_modules.clone() },
        }
    }
}

/// How numbers are stored and computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// FP32 everything.
    Fp32,
    /// BF16 weights, activations and gradients, with an FP32 master copy of what trains.
    Bf16Mixed,
    /// FP16 likewise (needs loss scaling; memory is the same as BF16).
    Fp16Mixed,
    /// BF16 everything, optimizer state included, no master copy.
    Bf16,
}

impl Precision {
    /// Bytes of one stored weight, activation or gradient element.
    pub fn element_bytes(self) -> u64 {
        if self == Precision::Fp32 { 4 } else { 2 }
    }
    fn master_bytes(self) -> u64 {
        matches!(self, Precision::Bf16Mixed | Precision::Fp16Mixed) as u64 * 4
    }
    /// Bytes of an optimizer state element: FP32 except in pure BF16.
    fn state_bytes(self) -> u64 {
        if self == Precision::Bf16 { 2 } else { 4 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Plain SGD: no state.
    Sgd,
    /// SGD with momentum: one buffer.
    SgdMomentum,
    /// AdamW: two moments.
    Adamw,
    /// Adafactor (Shazeer and Stern, 2018) as transformers configures it by default: no first
    /// moment, the second moment of a matrix factored into a row and a column vector.
    Adafactor,
    /// bitsandbytes' 8-bit AdamW: both moments as 8-bit codes in blocks of 256 with an FP32
    /// absmax per block; tensors under 4,096 elements keep FP32 moments.
    Adamw8bit,
    /// Lion (Chen et al., 2023): one momentum buffer.
    Lion,
    /// MeZO (Malladi et al., 2023): zeroth-order, two forward passes, no gradients and no
    /// stored activations; the perturbation is regenerated from a seed.
    Mezo,
}

impl OptimizerKind {
    /// State bytes for one trainable tensor of `shape` (one or two dimensions), with state
    /// elements of `elem` bytes.
    pub fn state_bytes(self, shape: &[u64], elem: u64) -> u64 {
        let n: u64 = shape.iter().product();
        match self {
            OptimizerKind::Sgd | OptimizerKind::Mezo => 0,
            OptimizerKind::SgdMomentum | OptimizerKind::Lion => n * elem,
            OptimizerKind::Adamw => 2 * n * elem,
            OptimizerKind::Adafactor => match shape {
                [r, c] => (r + c) * elem,
                _ => n * elem,
            },
            OptimizerKind::Adamw8bit => {
                if n < 4096 {
                    8 * n
                } else {
                    2 * (n + 4 * n.div_ceil(256))
                }
            }
        }
    }
}

/// How the frozen base's block linear weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseFormat {
    /// In the plan's precision.
    #[default]
    Native,
    /// LLM.int8 (Dettmers et al., 2022): one byte per weight and an FP32 absmax per output row.
    Int8,
    /// NF4 with double quantization, as QLoRA stores it.
    Nf4,
}

/// Where ZeRO-Offload puts things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offload {
    None,
    /// Optimizer state, master weights and the optimizer's update on the CPU.
    Optimizer,
    /// Parameters too (ZeRO-3 only).
    All,
}

/// How activation memory is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationModel {
    /// Korthikanti et al. 2022, eq. 1 (no tensor or sequence parallelism): per layer
    /// s·b·h·(34 + 5·a·s/h) bytes in 16-bit for GPT-2 with dropout, generalised here to
    /// grouped-query attention, gated MLPs and any element size.
    Megatron,
    /// The same, with a fused attention kernel (FlashAttention, PyTorch SDPA) that keeps no
    /// a·s² score matrix, only a log-sum-exp per row.
    Flash,
    /// tinytune's FP32 model on Burn's autodiff with the fused CPU kernels, tensor by tensor.
    Tinytune,
}

/// Everything the estimator needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub arch: Arch,
    pub method: PlanMethod,
    pub precision: Precision,
    pub optimizer: OptimizerKind,
    /// Micro-batch size: sequences per forward pass on one GPU.
    pub batch: u64,
    pub seq: u64,
    /// Gradient checkpointing: 0 = off; k = keep the input of every k-th block and recompute
    /// the rest in the backward pass (1 = every block, as transformers does).
    pub checkpoint_every: u64,
    /// Micro-batches per optimizer step. Gradients accumulate in place, so memory does not
    /// grow with it; the effective batch does.
    pub accumulate: u64,
    /// ZeRO stage 0 (none) to 3.
    pub zero: u8,
    /// GPUs the ZeRO stage shards over (data parallel, one node).
    pub gpus: u64,
    pub offload: Offload,
    /// Framework overhead per GPU (CUDA context, kernels, allocator caching), in bytes.
    pub overhead: u64,
    pub activations: ActivationModel,
    /// Storage of frozen block linear weights (QLoRA always uses NF4).
    #[serde(default)]
    pub base: BaseFormat,
}

/// The default framework overhead of a GPU process: about what a CUDA context and
/// PyTorch's kernels take before the first tensor (it varies with driver and card).
pub const DEFAULT_GPU_OVERHEAD: u64 = 1 << 30;

impl Plan {
    /// A plan with the common defaults: full fine-tuning, bf16 mixed precision, AdamW,
    /// batch 1, the given sequence length, one GPU, no ZeRO, 1 GiB overhead.
    pub fn new(arch: Arch, seq: u64) -> Self {
        Self {
            arch,
            method: PlanMethod::Full,
            precision: Precision::Bf16Mixed,
            optimizer: OptimizerKind::Adamw,
            batch: 1,
            seq,
            checkpoint_every: 0,
            accumulate: 1,
            zero: 0,
            gpus: 1,
            offload: Offload::None,
            overhead: DEFAULT_GPU_OVERHEAD,
            activations: ActivationModel::Megatron,
            base: BaseFormat::Native,
        }
    }

    /// The plan for a tinytune model trained the way `Trainer` trains it: FP32, AdamW, no
    /// framework overhead, tinytune's own activation accounting.
    pub fn for_tinytune(config: &crate::model::ModelConfig, method: &crate::methods::Method, batch: u64, seq: u64) -> Self {
        let method = PlanMethod::from(method);
        Self {
            method,
            precision: Precision::Fp32,
            batch,
            overhead: 0,
            activations: ActivationModel::Tinytune,
            ..Self::new(Arch::from_model_config("tinytune", config), seq)
        }
    }

    /// The plan for one training run as `Trainer` runs it: [`Plan::for_tinytune`] at the run's
    /// micro-batch (`batch_size / accumulate` rows, what a forward pass holds at once), with
    /// the run's optimizer. One device's view: ZeRO sharding across data-parallel replicas is
    /// the caller's to add (`zero`, `gpus`).
    pub fn for_run(config: &crate::model::ModelConfig, run: &crate::train::TrainConfig) -> Self {
        let micro_batch = (run.batch_size / run.accumulate.max(1)).max(1) as u64;
        Self { optimizer: run.optimizer.kind.plan_kind(run.optimizer.momentum), ..Self::for_tinytune(config, &run.method, micro_batch, run.seq_len as u64) }
    }

    /// Checks the plan, naming the setting at fault and how to fix it.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let bad = |field: &str, problem: String| Err(Error::config(origin.clone(), field, problem));
        self.arch.validate(origin.clone())?;
        for (field, v) in [("batch", self.batch), ("seq", self.seq), ("accumulate", self.accumulate), ("gpus", self.gpus)] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if self.zero > 3 {
            return bad("zero", format!("stage {} does not exist; choose 0, 1, 2 or 3", self.zero));
        }
        match self.offload {
            Offload::Optimizer if self.zero == 0 => return bad("offload", "offloading the optimizer needs ZeRO stage 1, 2 or 3 (`zero` 2)".into()),
            Offload::All if self.zero != 3 => return bad("offload", "offloading parameters needs ZeRO stage 3 (`zero` 3)".into()),
            _ => {}
        }
        if self.checkpoint_every > self.arch.layers {
            return bad("checkpointing", format!("every {} blocks is more than the model's {} blocks", self.checkpoint_every, self.arch.layers));
        }
        match &self.method {
            PlanMethod::LastLayers { n } if *n == 0 || *n > self.arch.layers => {
                return bad("layers", format!("train between 1 and {} blocks", self.arch.layers));
            }
            PlanMethod::Lora { rank, targets } | PlanMethod::Qlora { rank, targets } => {
                if *rank == 0 {
                    return bad("rank", "must be at least 1".into());
                }
                if self.arch.lora_targets(targets).is_empty() {
                    let names: Vec<&str> = self.arch.block_linears().iter().map(|l| l.name).collect();
                    return bad(
                        "targets",
                        format!("{targets:?} matches no linear layer of {}; choose from {} or all-linear", self.arch.name, names.join(", ")),
                    );
                }
            }
            PlanMethod::Adapter { bottleneck: 0, .. } => return bad("bottleneck", "must be at least 1".into()),
            PlanMethod::Prompt { tokens: 0, .. } | PlanMethod::Prefix { tokens: 0, .. } => return bad("tokens", "must be at least 1".into()),
            _ => {}
        }
        if self.optimizer == OptimizerKind::Mezo && self.checkpoint_every > 0 {
            return bad("checkpointing", "MeZO keeps no activations, so there is nothing to checkpoint; turn it off".into());
        }
        Ok(())
    }

    /// Sequence length the blocks see (prompt tuning prepends its tokens).
    fn seq_in_blocks(&self) -> u64 {
        match self.method {
            PlanMethod::Prompt { tokens, .. } => self.seq + tokens,
            _ => self.seq,
        }
    }

    /// The storage of frozen block linear weights.
    pub fn base_format(&self) -> BaseFormat {
        if matches!(self.method, PlanMethod::Qlora { .. }) { BaseFormat::Nf4 } else { self.base }
    }

    fn quantized_base(&self) -> bool {
        self.base_format() != BaseFormat::Native
    }

    /// Every parameter tensor, with whether it trains and whether it is an NF4 base weight.
    pub fn tensors(&self) -> Vec<Tensor> {
        let a = &self.arch;
        let m = &self.method;
        let mut out = Vec::new();
        let full = matches!(m, PlanMethod::Full);
        let base = self.base_format();
        let push = |out: &mut Vec<Tensor>, shape: Vec<u64>, trains: bool, quantized: bool| {
            let format = if quantized && !trains { base } else { BaseFormat::Native };
            out.push(Tensor { shape, trains, format })
        };
        push(&mut out, vec![a.vocab, a.hidden], full, false);
        if a.positions > 0 {
            push(&mut out, vec![a.positions, a.hidden], full, false);
        }
        let lora = match m {
            PlanMethod::Lora { rank, targets } | PlanMethod::Qlora { rank, targets } => Some((*rank, a.lora_targets(targets))),
            _ => None,
        };
        for layer in 0..a.layers {
            let top = matches!(m, PlanMethod::LastLayers { n } if layer >= a.layers.saturating_sub(*n));
            for l in a.block_linears() {
                push(&mut out, vec![l.d_in, l.d_out], full || top, self.quantized_base());
                if l.bias {
                    push(&mut out, vec![l.d_out], full || top || matches!(m, PlanMethod::Bitfit), false);
                }
                if let Some((r, targets)) = &lora
                    && targets.contains(&l)
                {
                    push(&mut out, vec![l.d_in, *r], true, false);
                    push(&mut out, vec![*r, l.d_out], true, false);
                }
                if let PlanMethod::Ia3 { targets, feedforward } = m
                    && a.lora_targets(targets).contains(&l)
                {
                    push(&mut out, vec![if a.lora_targets(feedforward).contains(&l) { l.d_in } else { l.d_out }], true, false);
                }
            }
            let norms = a.block_norm_params() / a.hidden;
            for i in 0..norms {
                // LayerNorm alternates weight, bias; RMSNorm has weights only.
                let is_bias = a.family != Family::Llama && i % 2 == 1;
                push(&mut out, vec![a.hidden], full || top || matches!(m, PlanMethod::Layernorm) || (is_bias && matches!(m, PlanMethod::Bitfit)), false);
            }
            if let PlanMethod::Adapter { bottleneck, per_block } = m {
                for _ in 0..*per_block {
                    push(&mut out, vec![a.hidden, *bottleneck], true, false);
                    push(&mut out, vec![*bottleneck], true, false);
                    push(&mut out, vec![*bottleneck, a.hidden], true, false);
                    push(&mut out, vec![a.hidden], true, false);
                }
            }
        }
        let head_trains = full || matches!(m, PlanMethod::LastLayers { .. });
        let final_norms = if a.family == Family::Llama { 1 } else { 2 };
        for i in 0..final_norms {
            let is_bias = i == 1;
            push(&mut out, vec![a.hidden], head_trains || matches!(m, PlanMethod::Layernorm) || (is_bias && matches!(m, PlanMethod::Bitfit)), false);
        }
        if !a.tied {
            push(&mut out, vec![a.vocab, a.hidden], head_trains, false);
            if a.family == Family::Phi {
                push(&mut out, vec![a.vocab], head_trains || matches!(m, PlanMethod::Bitfit), false);
            }
        }
        // A prompt or prefix encoder: linear layers of the given widths, weights and biases.
        let encoder = |out: &mut Vec<Tensor>, widths: &[u64]| {
            for w in widths.windows(2) {
                push(out, vec![w[0], w[1]], true, false);
                push(out, vec![w[1]], true, false);
            }
        };
        match *m {
            PlanMethod::Prompt { tokens, encoder: width } => {
                push(&mut out, vec![tokens, a.hidden], true, false);
                if width > 0 {
                    encoder(&mut out, &[a.hidden, width, width, a.hidden]);
                }
            }
            PlanMethod::Prefix { tokens, encoder: 0 } => push(&mut out, vec![tokens, 2 * a.layers * a.kv_heads * a.head_dim()], true, false),
            PlanMethod::Prefix { tokens, encoder: width } => {
                push(&mut out, vec![tokens, a.hidden], true, false);
                encoder(&mut out, &[a.hidden, width, 2 * a.layers * a.kv_heads * a.head_dim()]);
            }
            _ => {}
        }
        out
    }

    /// Trainable parameters.
    pub fn trainable_params(&self) -> u64 {
        self.tensors().iter().filter(|t| t.trains).map(Tensor::numel).sum()
    }

    /// Every parameter, frozen and trainable (adapters included).
    pub fn total_params(&self) -> u64 {
        self.tensors().iter().map(Tensor::numel).sum()
    }

    /// Computes the estimate. Call [`Plan::validate`] first for a friendly error; an invalid
    /// plan gives meaningless numbers, not a panic.
    pub fn estimate(&self) -> Estimate {
        let e = self.precision.element_bytes();
        let tensors = self.tensors();
        let mezo = self.optimizer == OptimizerKind::Mezo;
        let gpus = self.gpus.max(1);

        let mut weights = 0u64;
        let mut master = 0u64;
        let mut grads = 0u64;
        let mut optimizer = 0u64;
        for t in &tensors {
            weights += match t.format {
                BaseFormat::Native => t.numel() * e,
                BaseFormat::Nf4 => nf4_bytes(t.numel()),
                // One byte per weight and an FP32 scale per output row.
                BaseFormat::Int8 => t.numel() + 4 * t.shape.last().copied().unwrap_or(1),
            };
            if t.trains {
                master += t.numel() * self.precision.master_bytes();
                if !mezo {
                    grads += t.numel() * e;
                }
                optimizer += self.optimizer.state_bytes(&t.shape, self.precision.state_bytes());
            }
        }

        // ZeRO sharding and offload of model states, with DeepSpeed's accounting: under mixed
        // precision with ZeRO the optimizer works on an FP32 copy of the gradients (a
        // partition per GPU), and the 16-bit gradients are a communication buffer: held
        // whole by stage 1, sharded by stage 2, inside the gathered largest layer by stage 3,
        // and on the CPU side when the optimizer is offloaded. These rules make the GPU
        // figures equal DeepSpeed 0.19's `estimate_zero2/3_model_states_mem_needs` (tested
        // here and held to DeepSpeed itself by `verify`'s deepspeed checks; releases before
        // 0.19 held the 16-bit gradients whole at stage 2 as well); CPU figures leave out
        // DeepSpeed's 1.5× head-room factor.
        let shard = |x: u64| x.div_ceil(gpus);
        let mixed = self.precision.master_bytes() > 0;
        let grads32 = if mixed && self.zero >= 1 && !mezo { grads / e * 4 } else { 0 };
        let (mut g, mut c) = (Breakdown::default(), Breakdown::default());
        let opt_states = if self.zero >= 1 { (shard(optimizer), shard(master)) } else { (optimizer, master) };
        if self.offload == Offload::None {
            (g.optimizer, g.master) = opt_states;
            g.gradients = match self.zero {
                0 | 1 => grads + shard(grads32),
                2 => shard(grads) + shard(grads32),
                _ if mixed => shard(grads32),
                _ => shard(grads),
            };
        } else {
            // Offloaded state lives whole in the node's CPU memory, with FP32 gradients.
            (c.optimizer, c.master) = (optimizer, master);
            c.gradients = if grads32 > 0 { grads32 } else { grads };
        }
        let largest = self.arch.largest_layer_params();
        match (self.zero, self.offload) {
            (3, Offload::All) => {
                c.params = weights;
                g.params = largest * 2 * e;
            }
            (3, _) => g.params = shard(weights) + largest * 2 * e,
            _ => g.params = weights,
        }

        let act = self.activation_bytes();
        g.activations = act.saved;
        g.logits = act.logits;
        g.temporaries = act.temporaries;
        g.overhead = self.overhead;

        // Phases of a steady-state step (optimizer state allocated on the first step).
        let states = g.params + g.master + g.optimizer;
        let phases = vec![
            PhaseEstimate { phase: "load weights".into(), bytes: g.overhead + g.params + g.master },
            PhaseEstimate { phase: "optimizer state".into(), bytes: g.overhead + states },
            PhaseEstimate { phase: "forward peak".into(), bytes: g.overhead + states + g.activations + g.logits },
            PhaseEstimate {
                phase: "backward peak".into(),
                // The backward pass walks the blocks top-down, freeing each block's activations
                // as it produces that block's gradients: the peak is at its start (every
                // activation, the logits' gradient and the LM head's gradient) or at its end
                // (every gradient), whichever is larger.
                bytes: g.overhead
                    + states
                    + if mezo {
                        g.activations + g.logits
                    } else {
                        (g.activations + g.logits + act.backward_extra + self.head_grad_bytes()).max(act.outside + g.gradients)
                    },
            },
            PhaseEstimate {
                phase: "optimizer step".into(),
                // tinytune's AdamW frees each gradient as it updates that parameter; PyTorch
                // keeps every gradient until `zero_grad`.
                bytes: g.overhead + states + act.optimizer_temp(&tensors) + if self.activations == ActivationModel::Tinytune { 0 } else { g.gradients },
            },
        ];
        let peak = phases.iter().map(|p| p.bytes).max().unwrap_or(0);
        // The first step has no optimizer state until the optimizer step allocates it.
        let first_step_peak = phases.iter().map(|p| if p.phase == "optimizer step" { p.bytes } else { p.bytes - g.optimizer.min(p.bytes) }).max().unwrap_or(0);
        let fits = GPUS.iter().filter(|gpu| peak <= gpu.bytes()).map(|gpu| gpu.name.to_string()).collect();

        Estimate {
            total_params: self.total_params(),
            trainable_params: self.trainable_params(),
            gpu: g,
            cpu: c,
            phases,
            peak,
            first_step_peak,
            fits,
            effective_batch: self.batch * self.accumulate * gpus,
        }
    }

    /// Activation, logit and temporary bytes of one micro-batch on one GPU.
    fn activation_bytes(&self) -> ActivationBytes {
        let a = &self.arch;
        let (b, s) = (self.batch, self.seq_in_blocks());
        let e = self.precision.element_bytes();
        let tokens = b * s;
        if self.optimizer == OptimizerKind::Mezo {
            // Inference mode: nothing is kept between layers; the working set is one layer's
            // tensors plus the logits.
            let per_layer = self.layer_activations(s);
            return ActivationBytes { saved: per_layer, outside: 0, logits: tokens * a.vocab * 4, temporaries: 0, backward_extra: 0 };
        }
        let per_layer = self.layer_activations(s);
        // Below the lowest trained block no gradient flows, so nothing is kept there.
        let layers = match self.method {
            PlanMethod::LastLayers { n } => n,
            _ => a.layers,
        };
        let saved = match self.checkpoint_every {
            0 => per_layer * layers,
            k => {
                // Keep every k-th block's input; recompute one segment of k blocks at a time.
                let kept = layers.div_ceil(k) * tokens * a.hidden * e;
                kept + k * per_layer
            }
        };
        let outside = self.outside_activations(s);
        let (logits, backward_extra) = match self.activations {
            // The fused cross-entropy keeps the FP32 logits, not their log-softmax; the
            // backward pass adds the logits' gradient and FP32 gradients of the MLP's width in
            // the top block while its activations are still held: two when the MLP's weights
            // train (the projection's input gradient and the GELU's, beside the weight
            // gradients), one otherwise. Measured on the test grid (tests/tests/memory.rs):
            // without them full fine-tuning's estimate fell 4-12% short; with two for LoRA it
            // ran 4-11% over, with none 12% short.
            ActivationModel::Tinytune => {
                let mlp = if matches!(self.method, PlanMethod::Full | PlanMethod::LastLayers { .. }) { 2 } else { 1 } * tokens * a.intermediate * 4;
                (tokens * a.vocab * 4, tokens * a.vocab * 4 + mlp)
            }
            // transformers upcasts the logits to FP32 for the loss, and the cross-entropy keeps
            // its FP32 log-softmax; the backward pass adds an FP32 gradient of the logits.
            _ => (tokens * a.vocab * (e + 4), tokens * a.vocab * 4),
        };
        // A QLoRA forward dequantizes one weight matrix at a time into 16-bit.
        let dequant = if self.quantized_base() { a.block_linears().iter().map(|l| l.d_in * l.d_out * e).max().unwrap_or(0) } else { 0 };
        ActivationBytes { saved: saved + outside, outside, logits, temporaries: dequant, backward_extra }
    }

    /// The LM head's weight gradient, the first one the backward pass produces.
    fn head_grad_bytes(&self) -> u64 {
        let trains = matches!(self.method, PlanMethod::Full) || (!self.arch.tied && matches!(self.method, PlanMethod::LastLayers { .. }));
        if trains { self.arch.vocab * self.arch.hidden * self.precision.element_bytes() } else { 0 }
    }

    /// Whether a block linear's input must be kept for a weight gradient.
    fn linear_trains(&self, l: &Linear, top_layer: bool) -> bool {
        match &self.method {
            PlanMethod::Full => true,
            PlanMethod::LastLayers { .. } => top_layer,
            PlanMethod::Lora { targets, .. } | PlanMethod::Qlora { targets, .. } => self.arch.lora_targets(targets).contains(l),
            _ => false,
        }
    }

    /// Bytes one block keeps for the backward pass with sequence length `s`.
    fn layer_activations(&self, s: u64) -> u64 {
        let a = &self.arch;
        let b = self.batch;
        let (h, i) = (a.hidden, a.intermediate);
        let sb = s * b;
        let kv = a.kv_heads * a.head_dim();
        let linears = a.block_linears();
        // Bytes of the inputs of the trained linear layers (shared inputs counted once).
        let inputs_kept =
            |group: &[&str], width: u64| -> u64 { if linears.iter().any(|l| group.contains(&l.name) && self.linear_trains(l, true)) { sb * width } else { 0 } };
        match self.activations {
            ActivationModel::Tinytune => {
                // FP32 elements Burn's autodiff keeps per block with the fused CPU kernels
                // (`crate::kernels`), found by measuring tinytune's model
                // (`measure::measure_step`) over a grid of shapes and reading the forward
                // code: each LayerNorm its input (1·BTC); q, k, v for the two attention
                // products (3·BTC); the softmax's probabilities (one B·heads·T² tensor, which
                // the value product also reads); gelu_new's input (1·BTF); the input of each
                // linear whose weight or LoRA path trains. The plain compositions that other
                // backends run keep more (docs/memory.md): a LayerNorm's normalised input,
                // two more score-sized tensors, three more BTF tensors in the GELU.
                let heads = a.heads;
                let mut elems = 2 * sb * h + 3 * sb * h + b * heads * s * s + sb * i;
                let (mut inputs, lora_extra) = self.tinytune_linear_inputs(sb);
                inputs += lora_extra;
                elems += inputs;
                elems * 4 + self.adapter_activations(sb, 4)
            }
            ActivationModel::Megatron | ActivationModel::Flash => {
                let e = self.precision.element_bytes();
                let heads = a.heads;
                let dropout = a.family == Family::Gpt2;
                let norms = if a.family == Family::Phi { 1 } else { 2 };
                // The norms' inputs.
                let mut bytes = norms * sb * h * e;
                // Attention: q·kᵀ keeps q and k, probs·v keeps v; the linear inputs.
                let qkv_in = match a.family {
                    Family::Gpt2 => inputs_kept(&["attn.c_attn"], h),
                    _ => inputs_kept(&["q_proj", "k_proj", "v_proj"], h),
                };
                let o_in = inputs_kept(&["attn.c_proj", "o_proj", "dense"], h);
                bytes += (qkv_in + o_in) * e + (sb * h + 2 * sb * kv) * e;
                if self.activations == ActivationModel::Megatron {
                    // Softmax output, and the dropout output the value product reads.
                    let scores = b * heads * s * s;
                    bytes += scores * e * if dropout { 2 } else { 1 };
                    if dropout {
                        bytes += scores; // one-byte dropout mask
                    }
                } else {
                    bytes += b * heads * s * 4; // log-sum-exp per row, FP32
                }
                // MLP.
                bytes += match a.family {
                    Family::Gpt2 | Family::Phi => {
                        let up_in = inputs_kept(&["mlp.c_fc", "fc1"], h);
                        // GELU's input and output (the output is the down projection's input).
                        (up_in + 2 * sb * i) * e
                    }
                    Family::Llama => {
                        let up_in = inputs_kept(&["gate_proj", "up_proj"], h);
                        // Gate and up outputs, SiLU(gate), and their product (down's input).
                        (up_in + 4 * sb * i) * e
                    }
                };
                if dropout {
                    bytes += 2 * sb * h; // one-byte masks after attention and after the MLP
                }
                bytes + self.lora_activations(sb, e) + self.adapter_activations(sb, e)
            }
        }
    }

    /// tinytune's linear inputs kept (FP32 elements) and the LoRA paths' x·A.
    fn tinytune_linear_inputs(&self, sb: u64) -> (u64, u64) {
        let mut inputs = 0;
        for l in self.arch.block_linears() {
            if self.linear_trains(&l, true) {
                inputs += sb * l.d_in;
            }
        }
        (inputs, self.lora_activations(sb, 4) / 4)
    }

    /// x·A for each LoRA path (kept for B's gradient).
    fn lora_activations(&self, sb: u64, e: u64) -> u64 {
        match &self.method {
            PlanMethod::Lora { rank, targets } | PlanMethod::Qlora { rank, targets } => self.arch.lora_targets(targets).len() as u64 * sb * rank * e,
            _ => 0,
        }
    }

    fn adapter_activations(&self, sb: u64, e: u64) -> u64 {
        match self.method {
            // Each adapter keeps its input and its bottleneck's pre- and post-activation.
            PlanMethod::Adapter { bottleneck, per_block } => per_block * (sb * self.arch.hidden + 2 * sb * bottleneck) * e,
            _ => 0,
        }
    }

    /// Bytes kept outside the blocks: the final norm and the LM head's input.
    fn outside_activations(&self, s: u64) -> u64 {
        let a = &self.arch;
        let sb = s * self.batch;
        let head_trains = matches!(self.method, PlanMethod::Full | PlanMethod::LastLayers { .. });
        match self.activations {
            // The final LayerNorm's input, and the head's input when the head trains.
            ActivationModel::Tinytune => (1 + head_trains as u64) * sb * a.hidden * 4,
            _ => (1 + head_trains as u64) * sb * a.hidden * self.precision.element_bytes(),
        }
    }
}

/// NF4 bytes of a weight of `n` elements with double quantization: 4-bit codes, one 8-bit
/// absmax per block of 64, one FP32 scale per 256 of those, and one FP32 mean.
pub fn nf4_bytes(n: u64) -> u64 {
    let blocks = n.div_ceil(64);
    n.div_ceil(2) + blocks + 4 * blocks.div_ceil(256) + 4
}

/// One parameter tensor of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub shape: Vec<u64>,
    pub trains: bool,
    /// How it is stored (quantized only when frozen and the plan quantizes the base).
    pub format: BaseFormat,
}

impl Tensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

struct ActivationBytes {
    saved: u64,
    /// The part of `saved` outside the blocks (final norm, LM head input).
    outside: u64,
    logits: u64,
    temporaries: u64,
    backward_extra: u64,
}

impl ActivationBytes {
    /// The optimizer step's transient: an update of the largest trainable tensor in FP32.
    fn optimizer_temp(&self, tensors: &[Tensor]) -> u64 {
        tensors.iter().filter(|t| t.trains).map(|t| t.numel() * 4).max().unwrap_or(0)
    }
}

/// Bytes by component, on one device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Weights as stored (16-bit, FP32 or NF4).
    pub params: u64,
    /// The FP32 master copy of trainable weights (mixed precision).
    pub master: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// Tensors the forward pass keeps for the backward pass.
    pub activations: u64,
    /// The LM head's output and the loss's log-softmax.
    pub logits: u64,
    /// Short-lived buffers (QLoRA's dequantized weight).
    pub temporaries: u64,
    /// Framework overhead (CUDA context, allocator caching).
    pub overhead: u64,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.params + self.master + self.gradients + self.optimizer + self.activations + self.logits + self.temporaries + self.overhead
    }

    /// `(label, bytes)` pairs in stacking order, for tables and bars.
    pub fn parts(&self) -> [(&'static str, u64); 8] {
        [
            ("parameters", self.params),
            ("master weights", self.master),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("logits", self.logits),
            ("temporaries", self.temporaries),
            ("overhead", self.overhead),
        ]
    }
}

/// Bytes live at a phase of a step on one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseEstimate {
    pub phase: String,
    pub bytes: u64,
}

/// The estimator's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub total_params: u64,
    pub trainable_params: u64,
    /// Per GPU. `gpu.total()` adds every component as if all were live at once; `peak` is
    /// the largest phase, which is what has to fit.
    pub gpu: Breakdown,
    /// Per node's CPU memory (offloaded state).
    pub cpu: Breakdown,
    pub phases: Vec<PhaseEstimate>,
    /// The most bytes live on one GPU at once, in a steady-state step.
    pub peak: u64,
    /// The same for the first step, before the optimizer has allocated its state.
    pub first_step_peak: u64,
    /// Names of the common GPUs whose memory holds `peak`.
    pub fits: Vec<String>,
    pub effective_batch: u64,
}

/// A common GPU and its memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    pub gib: f64,
}

impl Gpu {
    pub fn bytes(&self) -> u64 {
        (self.gib * (1u64 << 30) as f64) as u64
    }
}

/// Common training GPUs by memory as sold (vendors' spec sheets; the usable amount is a
/// little less).
pub const GPUS: [Gpu; 10] = [
    Gpu { name: "T4 16 GB", gib: 16.0 },
    Gpu { name: "RTX 4060 Ti 16 GB", gib: 16.0 },
    Gpu { name: "RTX 3090 / 4090 24 GB", gib: 24.0 },
    Gpu { name: "L4 24 GB", gib: 24.0 },
    Gpu { name: "RTX 5090 32 GB", gib: 32.0 },
    Gpu { name: "A100 40 GB", gib: 40.0 },
    Gpu { name: "L40S 48 GB", gib: 48.0 },
    Gpu { name: "A100 / H100 80 GB", gib: 80.0 },
    Gpu { name: "H200 141 GB", gib: 141.0 },
    Gpu { name: "B200 192 GB", gib: 192.0 },
];

/// Bytes as a short human figure in binary units ("6.14 GiB").
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    let k = 1024.0;
    if b >= k * k * k {
        format!("{:.2} GiB", b / (k * k * k))
    } else if b >= k * k {
        format!("{:.1} MiB", b / (k * k))
    } else if b >= k {
        format!("{:.1} KiB", b / k)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::deepspeed;

    fn plan(model: &str) -> Plan {
        Plan::new(Arch::preset(model).unwrap(), 512)
    }

    fn model_states(b: &Breakdown) -> u64 {
        b.params + b.master + b.gradients + b.optimizer
    }

    /// A run's plan holds one micro-batch's activations and the run's optimizer state.
    #[test]
    fn a_runs_plan_takes_its_micro_batch_and_optimizer() {
        use crate::optim::{OptimConfig, OptimKind};
        let config = crate::model::ModelConfig::micro();
        let run = crate::train::TrainConfig {
            batch_size: 16,
            accumulate: 4,
            seq_len: 32,
            optimizer: OptimConfig { kind: OptimKind::Sgd, momentum: 0.9, ..Default::default() },
            ..Default::default()
        };
        let plan = Plan::for_run(&config, &run);
        assert_eq!((plan.batch, plan.seq, plan.optimizer), (4, 32, OptimizerKind::SgdMomentum));
        let by_hand = Plan { optimizer: OptimizerKind::SgdMomentum, ..Plan::for_tinytune(&config, &run.method, 4, 32) };
        assert_eq!(plan.estimate().peak, by_hand.estimate().peak);
        // One row each when accumulation would leave none.
        assert_eq!(Plan::for_run(&config, &crate::train::TrainConfig { batch_size: 2, accumulate: 4, ..run }).batch, 1);
    }

    #[test]
    fn full_fine_tuning_costs_16_bytes_per_parameter_before_activations() {
        let p = Plan { precision: Precision::Fp32, ..plan("llama-2-7b") };
        let est = p.estimate();
        let n = 6_738_415_616;
        assert_eq!((est.gpu.params, est.gpu.gradients, est.gpu.optimizer, est.gpu.master), (4 * n, 4 * n, 8 * n, 0));
        // Mixed precision: 2 (16-bit weights) + 4 (FP32 master) + 2 (16-bit gradients) + 8.
        let est = plan("llama-2-7b").estimate();
        assert_eq!(model_states(&est.gpu), 16 * n);
        assert_eq!(est.trainable_params, n);
    }

    #[test]
    fn zero_gpu_figures_equal_deepspeeds() {
        let mut rows = 0;
        for model in ["gpt2-medium", "llama-2-7b", "qwen2.5-0.5b"] {
            let base = plan(model);
            let (n, ll) = (base.arch.num_params(), base.arch.largest_layer_params());
            for gpus in [1, 2, 8, 16] {
                let ds = |z3: bool, off: Offload| {
                    if z3 {
                        deepspeed::zero3(n, ll, gpus, 1, off != Offload::None, off == Offload::All, true).gpu
                    } else {
                        deepspeed::zero2(n, gpus, 1, off != Offload::None).gpu
                    }
                };
                for (zero, offload) in [(3, Offload::None), (3, Offload::Optimizer), (3, Offload::All), (2, Offload::None), (2, Offload::Optimizer)] {
                    let p = Plan { zero, gpus, offload, ..base.clone() };
                    p.validate("test").unwrap();
                    let ours = model_states(&p.estimate().gpu);
                    let theirs = ds(zero == 3, offload);
                    // DeepSpeed truncates each division; we round shards up: a few bytes apart.
                    assert!(ours.abs_diff(theirs) <= 64, "{model} zero {zero} {offload:?} gpus {gpus}: {ours} vs {theirs}");
                    rows += 1;
                }
            }
        }
        assert_eq!(rows, 60);
    }

    #[test]
    fn zero_cpu_figures_are_deepspeeds_without_its_head_room() {
        let p = Plan { zero: 3, offload: Offload::Optimizer, ..plan("gpt2-medium") };
        let cpu = model_states(&p.estimate().cpu);
        let ds = deepspeed::zero3(354_823_168, 51_463_168, 1, 1, true, false, true).cpu;
        assert_eq!((cpu as f64 * deepspeed::ADDITIONAL_BUFFER_FACTOR) as u64, ds);
        let p = Plan { zero: 3, offload: Offload::All, ..plan("gpt2-medium") };
        let cpu = model_states(&p.estimate().cpu);
        assert_eq!((cpu as f64 * 1.5) as u64, deepspeed::zero3(354_823_168, 51_463_168, 1, 1, true, true, true).cpu);
    }

    /// Korthikanti et al.'s eq. 1: s·b·h·(34 + 5·a·s/h) bytes per layer for GPT-2 in 16-bit.
    #[test]
    fn megatron_activations_follow_korthikanti() {
        for (model, b, s) in [("gpt2", 4, 1024), ("gpt2-medium", 1, 512), ("gpt2-xl", 2, 256)] {
            let p = Plan { batch: b, seq: s, ..plan(model) };
            let (h, a) = (p.arch.hidden, p.arch.heads);
            let want = s * b * h * 34 + 5 * a * s * s * b;
            assert_eq!(p.layer_activations(s), want, "{model}");
        }
    }

    #[test]
    fn flash_attention_drops_the_score_matrices() {
        let p = Plan { batch: 2, seq: 1024, ..plan("gpt2") };
        let flash = Plan { activations: ActivationModel::Flash, ..p.clone() };
        let (h, a, s, b) = (768, 12, 1024, 2);
        assert_eq!(p.layer_activations(s) - flash.layer_activations(s), 5 * a * s * s * b - a * s * b * 4);
        assert_eq!(flash.layer_activations(s), s * b * h * 34 + a * s * b * 4);
    }

    #[test]
    fn checkpointing_keeps_block_inputs_and_one_segment() {
        let p = Plan { batch: 4, seq: 1024, ..plan("gpt2-medium") };
        let layer = p.layer_activations(1024);
        let full = p.estimate().gpu.activations;
        let every = Plan { checkpoint_every: 1, ..p.clone() }.estimate().gpu.activations;
        let sbh2 = 4 * 1024 * 1024 * 2;
        let outside = full - 24 * layer;
        assert_eq!(every, 24 * sbh2 + layer + outside);
        let every4 = Plan { checkpoint_every: 4, ..p.clone() }.estimate().gpu.activations;
        assert_eq!(every4, 6 * sbh2 + 4 * layer + outside);
        assert!(every < every4 && every4 < full);
    }

    #[test]
    fn lora_and_qlora_shrink_model_states() {
        let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
        let lora = Plan { method: PlanMethod::Lora { rank: 8, targets: targets.clone() }, ..plan("llama-2-7b") };
        // r·(d_in + d_out) per target: 8·(4096 + 4096) for q and v in 32 blocks.
        assert_eq!(lora.trainable_params(), 32 * 2 * 8 * 8192);
        assert_eq!(lora.trainable_params(), 4_194_304); // PEFT prints this for Llama-2-7B, r=8, q/v
        let est = lora.estimate();
        assert_eq!(est.gpu.params, 6_738_415_616 * 2 + 4_194_304 * 2);
        let qlora = Plan { method: PlanMethod::Qlora { rank: 8, targets }, ..plan("llama-2-7b") };
        let q = qlora.estimate();
        // Block linears in NF4 (~0.516 bytes each), embeddings, norms and head in 16-bit.
        let linears: u64 = qlora.arch.block_linears().iter().map(|l| l.d_in * l.d_out).sum::<u64>() * 32;
        let rest = 6_738_415_616 - linears;
        let per_param = (q.gpu.params - rest * 2 - 4_194_304 * 2) as f64 / linears as f64;
        assert!((per_param - (0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0))).abs() < 1e-3, "{per_param}");
        assert!(q.gpu.params < est.gpu.params / 3);
    }

    #[test]
    fn an_int8_base_takes_a_byte_per_frozen_weight() {
        let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
        let lora = Plan { method: PlanMethod::Lora { rank: 8, targets }, ..plan("llama-2-7b") };
        let int8 = Plan { base: BaseFormat::Int8, ..lora.clone() };
        let linears = lora.arch.block_linears();
        let weights: u64 = linears.iter().map(|l| l.d_in * l.d_out).sum::<u64>() * 32;
        let rows: u64 = linears.iter().map(|l| l.d_out).sum::<u64>() * 32;
        // 16-bit (2 bytes) becomes 1 byte plus 4 per output row.
        assert_eq!(lora.estimate().gpu.params - int8.estimate().gpu.params, 2 * weights - (weights + 4 * rows));
        // Full fine-tuning trains every weight, so nothing is quantized.
        assert_eq!(Plan { base: BaseFormat::Int8, ..plan("gpt2") }.estimate().gpu.params, plan("gpt2").estimate().gpu.params);
    }

    #[test]
    fn optimizer_state_per_parameter() {
        let bytes = |o: OptimizerKind, shape: &[u64]| o.state_bytes(shape, 4);
        assert_eq!(bytes(OptimizerKind::Adamw, &[1000, 1000]), 8_000_000);
        assert_eq!(bytes(OptimizerKind::Sgd, &[1000, 1000]), 0);
        assert_eq!(bytes(OptimizerKind::SgdMomentum, &[1000, 1000]), 4_000_000);
        assert_eq!(bytes(OptimizerKind::Lion, &[1000, 1000]), 4_000_000);
        assert_eq!(bytes(OptimizerKind::Adafactor, &[1000, 500]), 6_000);
        assert_eq!(bytes(OptimizerKind::Adafactor, &[768]), 3_072);
        // 8-bit: one byte per moment plus an FP32 absmax per 256; small tensors stay FP32.
        assert_eq!(bytes(OptimizerKind::Adamw8bit, &[1024, 1024]), 2 * 1024 * 1024 + 2 * 4 * 4096);
        assert_eq!(bytes(OptimizerKind::Adamw8bit, &[4095]), 8 * 4095);
        assert_eq!(bytes(OptimizerKind::Mezo, &[10]), 0);
    }

    #[test]
    fn mezo_keeps_no_gradients_and_few_activations() {
        let adam = plan("gpt2-medium").estimate();
        let mezo = Plan { optimizer: OptimizerKind::Mezo, ..plan("gpt2-medium") }.estimate();
        assert_eq!((mezo.gpu.gradients, mezo.gpu.optimizer), (0, 0));
        assert!(mezo.gpu.activations * 10 < adam.gpu.activations);
    }

    #[test]
    fn trainable_counts_for_selective_methods() {
        let p = plan("gpt2");
        let count = |m: PlanMethod| Plan { method: m, ..p.clone() }.trainable_params();
        // BitFit: every bias: 4 linears' biases (3h + h + 4h + h) and 2 LayerNorm biases per block, plus ln_f.bias.
        let h = 768;
        assert_eq!(count(PlanMethod::Bitfit), 12 * (3 * h + h + 4 * h + h + 2 * h) + h);
        assert_eq!(count(PlanMethod::Layernorm), 12 * 4 * h + 2 * h);
        assert_eq!(count(PlanMethod::LastLayers { n: 2 }), 2 * p.arch.block_params() + 2 * h);
        assert_eq!(count(PlanMethod::Prompt { tokens: 20, encoder: 0 }), 20 * h);
        // Houlsby: two adapters per block, each h·m + m + m·h + h.
        assert_eq!(count(PlanMethod::Adapter { bottleneck: 64, per_block: 2 }), 12 * 2 * (2 * h * 64 + 64 + h));
    }

    #[test]
    fn invalid_plans_name_the_setting() {
        let err = |p: Plan| p.validate("command line").unwrap_err().to_string();
        assert!(err(Plan { offload: Offload::All, zero: 2, ..plan("gpt2") }).contains("offload"));
        assert!(
            err(Plan { offload: Offload::Optimizer, ..plan("gpt2") }).contains("`zero`"),
            "core names the field; the CLI and the page name their flag or control"
        );
        assert!(err(Plan { zero: 4, ..plan("gpt2") }).contains("zero"));
        assert!(err(Plan { batch: 0, ..plan("gpt2") }).contains("batch"));
        let e = err(Plan { method: PlanMethod::Lora { rank: 8, targets: vec!["q_proj".into()] }, ..plan("gpt2") });
        assert!(e.contains("targets") && e.contains("c_attn"), "{e}");
    }

    #[test]
    fn fit_list_follows_the_peak() {
        let small = plan("gpt2").estimate();
        assert!(small.fits.iter().any(|g| g.starts_with("T4")));
        let big = Plan { precision: Precision::Fp32, ..plan("llama-2-70b") }.estimate();
        assert!(big.fits.is_empty());
    }
}
