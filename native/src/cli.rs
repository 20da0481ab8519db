//! The command line as clap structs that mirror the flags. `train::resolve` turns them into
//! core configs in one place, so core never sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tinytune::TextTokenizer;
use tinytune::methods::{AdapterConfig, Ia3Config, LoraConfig, Method, MethodOptions, PromptInit};
use tinytune::model::Family;
use tinytune::optim::Decay;

use crate::backend::Backend;

#[derive(Parser, Debug)]
#[command(name = "tinytune", version, about = "Train, fine-tune and inspect tiny GPT models (the native side of the tinytune playground)")]
pub struct Cli {
    /// Compute backend.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model from scratch on generated data.
    Pretrain(PretrainArgs),
    /// Fine-tune an existing model (e.g. the shipped micro checkpoint) on a task, with any method (--method: full, LoRA, QLoRA, adapters, soft prompts, IA³, ...).
    Finetune(FinetuneArgs),
    /// Continue a text with a trained model.
    Generate(GenerateArgs),
    /// Held-out loss (and, for tasks, answer accuracy) of a model.
    Eval(EvalArgs),
    /// Parameters per layer of a model or preset.
    Info(InfoArgs),
    /// Training throughput of a model shape (full fine-tuning, AdamW).
    Bench(BenchArgs),
    /// A tour on the shipped pretrained model: its size, samples and held-out loss.
    Demo(DemoArgs),
    /// Estimate a training step's memory for any model, method, precision, optimizer and
    /// ZeRO/offload setting; with --measure, also measure a real step of a tinytune model.
    Memory(MemoryArgs),
    /// Post-training quantization: every linear weight of a model in a format, with size,
    /// error and held-out loss before and after.
    Quantize(QuantizeArgs),
    /// Number formats: one value in every format, or a tensor through one format and back.
    #[command(subcommand)]
    Formats(FormatsCommand),
    /// One batch's gradients in FP16 (or BF16) at several loss scales, each compared with
    /// FP32: values flushed to zero, subnormal, overflowed, and the error after unscaling.
    LossScale(LossScaleArgs),
    /// Fine-tune the same model on the same batches with several optimizers (or methods) and
    /// print one table: trainable parameters, time, peak memory, optimizer state per
    /// parameter, train and held-out loss.
    Compare(CompareArgs),
    /// Fold a LoRA/QLoRA/IA³ run's adapters into its base weights and save a plain model
    /// folder (config.json, model.safetensors, tokenizer.json) that loads with no adapters.
    MergeAdapter(MergeAdapterArgs),
    /// Write a LoRA/QLoRA/IA³/prompt-tuning run's adapter as a PEFT adapter folder
    /// (adapter_config.json, adapter_model.safetensors) that PEFT loads onto the base model.
    ExportAdapter(ExportAdapterArgs),
    /// A prompt's token ids and the last position's logits, as JSON, for checking parity
    /// with other implementations by hand.
    Logits(LogitsArgs),
    /// Fully fine-tune a model, then measure the update it learned for one weight matrix:
    /// its singular values, what a rank-r LoRA keeps, the loss with every update cut to
    /// rank r, and the merged-versus-unmerged output difference.
    LoraRank(LoraRankArgs),
    /// Held-out loss at each position of windows longer than a Llama-family model's
    /// context, with no RoPE scaling, linear interpolation, dynamic NTK and YaRN, then
    /// after a short fine-tune at a longer length with interpolation.
    LongContext(LongContextArgs),
    /// Convert a model from another format into a Hugging Face folder.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Merge fine-tunes of one architecture into one model, from a mergekit YAML config
    /// (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
    /// breadcrumbs_ties, model_stock, passthrough with slices); LoRA runs merge as their
    /// folded weights.
    Merge(MergeArgs),
    /// Fully fine-tune two copies of a model on two tasks, merge them with every method
    /// (mergekit's semantics) and score each merge on both tasks' held-out data: the merge
    /// widget's experiment. --save-dir keeps the two fine-tunes and each method's YAML, so
    /// `tinytune merge` reruns any row.
    MergeStudy(MergeStudyArgs),
    /// Combine LoRA adapters of one base into one new adapter, as PEFT's
    /// add_weighted_adapter does (linear, cat, svd, ties, ties_svd, dare_linear, dare_ties,
    /// dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd); writes a PEFT
    /// adapter folder.
    CombineAdapters(CombineAdaptersArgs),
    /// Serve a model and named LoRA adapters over an OpenAI-style HTTP API
    /// (GET /v1/models, POST /v1/completions with stream), batching concurrent requests for
    /// different adapters into one forward pass.
    Serve(ServeArgs),
    /// Federated averaging: clients fine-tune a model on disjoint shards of a task, the
    /// server averages their weights (a linear merge), round after round; beside it, one
    /// model trained on the shards pooled.
    Federated(FederatedArgs),
    /// Remove weights from a model: unstructured magnitude or Wanda pruning, 2:4
    /// semi-structured sparsity, or structured pruning of attention heads, MLP neurons and
    /// whole layers (a smaller config.json); prints parameters and held-out loss before and
    /// after, and writes an ordinary model folder.
    Prune(crate::prune::PruneArgs),
    /// Knowledge distillation: train a student model to match a teacher's output
    /// distribution (softened by a temperature) on a task or data set, mixed with the
    /// ordinary next-token loss; a resumable run that writes an ordinary model folder.
    Distill(DistillArgs),
    /// Run the reference checks — tinytune's numbers against transformers, PEFT, TRL,
    /// mergekit, bitsandbytes, PyTorch, DeepSpeed and tokenizers on committed fixtures — on
    /// the chosen backend, and print one table; exits 1 when any check fails.
    Verify(crate::verify::VerifyArgs),
}

#[derive(Args, Debug)]
pub struct FederatedArgs {
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    #[arg(long, default_value = "sentiment")]
    pub task: String,
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Steps each client trains per round (full fine-tuning, AdamW, 8 rows of 64 tokens).
    #[arg(long, default_value_t = 10)]
    pub local_steps: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Training examples in each client's shard (disjoint).
    #[arg(long, default_value_t = 200)]
    pub examples_per_client: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// How the server forms its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Batching {
    /// Requests for any adapters share a batch (each row through its own adapter).
    Mixed,
    /// A batch holds requests for one adapter only, the oldest waiting one's (the baseline).
    PerAdapter,
}

impl Batching {
    pub fn name(self) -> &'static str {
        match self {
            Batching::Mixed => "mixed",
            Batching::PerAdapter => "per-adapter",
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The base model folder (served under its folder name).
    #[arg(long)]
    pub model: PathBuf,
    /// NAME=DIR: a LoRA adapter of the base (a PEFT folder or a tinytune LoRA run), served
    /// as model NAME. Repeatable.
    #[arg(long)]
    pub adapter: Vec<String>,
    /// The address to listen on; the default keeps the server to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, value_enum, default_value_t = Batching::Mixed)]
    pub batching: Batching,
    /// Requests generated together in one forward pass at most.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest prompt accepted, in tokens (default: the model's context).
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 512)]
    pub max_tokens_limit: usize,
}

#[derive(Args, Debug)]
pub struct CombineAdaptersArgs {
    /// The adapters: PEFT adapter folders, or tinytune LoRA runs (exported as PEFT's first).
    #[arg(required = true)]
    pub adapters: Vec<PathBuf>,
    /// One weight per adapter, comma-separated, e.g. 0.7,0.4.
    #[arg(long, value_delimiter = ',', required = true)]
    pub weights: Vec<f64>,
    /// PEFT's combination_type.
    #[arg(long, default_value = "cat")]
    pub combination: String,
    /// Share kept by ties, dare_* and magnitude_prune (and their _svd forms).
    #[arg(long)]
    pub density: Option<f64>,
    /// How TIES elects signs: total (summed values) or frequency (counted signs).
    #[arg(long, default_value = "total")]
    pub majority_sign_method: String,
    /// Rank of an _svd type's result (default: the largest source rank).
    #[arg(long)]
    pub svd_rank: Option<usize>,
    /// Clamp an _svd type's factors to this quantile of their entries.
    #[arg(long)]
    pub svd_clamp: Option<f64>,
    /// Seed of DARE's drops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The adapter folder to write; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct MergeStudyArgs {
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    /// Task of the first fine-tune (A).
    #[arg(long, default_value = "sentiment")]
    pub task_a: String,
    /// Task of the second fine-tune (B).
    #[arg(long, default_value = "json-extract")]
    pub task_b: String,
    /// Full fine-tuning steps of each copy (AdamW, 8 rows of 64 tokens).
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Model B's share: weights 1 − t and t (SLERP's t).
    #[arg(long, default_value_t = 0.5)]
    pub t: f64,
    /// Share of each task vector TIES, DARE and breadcrumbs keep.
    #[arg(long, default_value_t = 0.5)]
    pub density: f64,
    /// Scale of the summed task vectors (task-vector methods).
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Also score this method at t = 0, 0.25, 0.5, 0.75, 1.
    #[arg(long)]
    pub curve: Option<String>,
    /// Held-out rows per task for the loss.
    #[arg(long, default_value_t = 32)]
    pub examples: usize,
    /// Held-out prompts per task answered greedily for the accuracy.
    #[arg(long, default_value_t = 16)]
    pub accuracy_examples: usize,
    /// Seed of the fine-tunes' data order and of DARE's drops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the two fine-tunes (DIR/task-a, DIR/task-b) and every method's mergekit YAML
    /// (DIR/METHOD.yml) here; must not exist yet.
    #[arg(long)]
    pub save_dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// mergekit's YAML: models (paths of model folders or runs, relative to the current
    /// directory), merge_method, base_model, parameters.
    pub config: PathBuf,
    /// The folder to write; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of DARE's random drops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// A llama.cpp GGUF file (Llama family; F32/F16/BF16, Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q6_K
    /// tensors, dequantized to FP32) as a folder with config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json (with the chat template) and
    /// generation_config.json, which transformers and every tinytune --model load.
    Gguf(ImportGgufArgs),
}

#[derive(Args, Debug)]
pub struct ImportGgufArgs {
    /// The .gguf file.
    pub file: PathBuf,
    /// The folder to create.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LongContextArgs {
    /// A Llama-family model folder (rotary positions), e.g. assets/micro-llama.
    #[arg(long)]
    pub model: PathBuf,
    /// Window length to evaluate [default: 4 × the model's context].
    #[arg(long)]
    pub length: Option<usize>,
    /// Held-out windows evaluated.
    #[arg(long, default_value_t = 16)]
    pub windows: usize,
    /// Fine-tuning steps after interpolation (0: skip the fine-tune).
    #[arg(long, default_value_t = 60)]
    pub finetune_steps: usize,
    /// Length the fine-tune trains at, with positions interpolated by length / context
    /// [default: 2 × the model's context].
    #[arg(long)]
    pub finetune_length: Option<usize>,
    /// The fine-tune's learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// The fine-tune's batch size.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Folder for long-context.svg and long-context.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LoraRankArgs {
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    /// The projection to inspect, e.g. h.3.attn.c_attn or h.0.mlp.c_fc.
    #[arg(long, default_value = "h.3.attn.c_attn")]
    pub matrix: String,
    #[arg(long, default_value_t = 4)]
    pub rank: usize,
    /// Training data: stories or a task.
    #[arg(long, default_value = "sentiment")]
    pub data: String,
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeAdapterArgs {
    /// A fine-tuning run (or its checkpoint folder).
    #[arg(long)]
    pub model: PathBuf,
    /// The folder to write; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportAdapterArgs {
    /// A fine-tuning run (or its checkpoint folder).
    #[arg(long)]
    pub model: PathBuf,
    /// The folder to write; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// The base model's hub id or path, recorded as `base_model_name_or_path` (what
    /// `AutoPeftModelForCausalLM.from_pretrained(OUT)` loads), e.g.
    /// HuggingFaceTB/SmolLM2-135M-Instruct. Without it the field is null.
    #[arg(long)]
    pub base_model: Option<String>,
    /// A PiSSA run only: the model the run started from. PiSSA trained on a changed base
    /// (W minus the adapter's starting value), so its adapter is converted to an ordinary
    /// rank-2r LoRA of this original base, as PEFT converts PiSSA adapters.
    #[arg(long)]
    pub pissa_base: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// A run or model folder (a LoRA/QLoRA run loads with its adapters).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) to load onto
    /// --model: LoRA (with rsLoRA, DoRA, bias), IA³ or prompt tuning.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Fold the adapters into the base weights first (the logits should not change).
    #[arg(long)]
    pub merge: bool,
    /// Print only the `top` largest logits with their token ids (0: all of them).
    #[arg(long, default_value_t = 0)]
    pub top: usize,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The model to start from (a run folder or a model folder).
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    /// Optimizers to compare, comma-separated (sgd, adamw, adafactor, lion, adamw8bit,
    /// paged-adamw, paged-adamw8bit, mezo). Each uses its suggested learning rate unless
    /// --lr is given.
    #[arg(long, conflicts_with = "methods")]
    pub optimizers: Option<String>,
    /// Fine-tuning methods to compare, comma-separated (full, last-layers, bitfit,
    /// layernorm, lora, qlora, adapter, prompt, p-tuning, prefix, ia3), each with the method
    /// flags (--rank, --bottleneck, --virtual-tokens, …) and the same optimizer. Each uses
    /// --lr unless written name@lr (e.g. full@1e-3,lora@3e-3,prompt@3e-2).
    #[arg(long)]
    pub methods: Option<String>,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Every run's settings (--out receives compare.svg and compare.json).
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug)]
pub struct LossScaleArgs {
    /// A run or model folder.
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    /// Use a freshly initialised model of this shape instead of --model (e.g. gpt2, whose
    /// 50,257-token output layer makes most logit gradients tiny).
    #[arg(long)]
    pub preset: Option<String>,
    /// stories, a task, or a .jsonl file (default: story-qa for --model, stories for --preset).
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// fp16 or bf16.
    #[arg(long, default_value = "fp16")]
    pub precision: String,
    /// Loss scales to try, comma-separated.
    #[arg(long, default_value = "1,1024,65536")]
    pub scales: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A run or model folder.
    #[arg(long, default_value = "assets/micro")]
    pub model: PathBuf,
    /// A format (fp16, bf16, fp8-e4m3, fp8-e5m2, int8, int8-asym, int4, nf4, fp4, …) or `all`.
    #[arg(long, default_value = "nf4")]
    pub format: String,
    /// Values per block for the scaled formats.
    #[arg(long, default_value_t = 64)]
    pub block: usize,
    /// Quantize the 4-bit formats' block maxima too (QLoRA's double quantization).
    #[arg(long)]
    pub double_quant: bool,
    /// Held-out data to evaluate on: stories or a task.
    #[arg(long, default_value = "stories")]
    pub data: String,
    #[arg(long, default_value_t = 200)]
    pub examples: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum FormatsCommand {
    /// A number's bits, stored value and error in FP32, TF32, FP16, BF16, FP8 (E4M3, E5M2),
    /// INT8 (absmax, zero-point), INT4, NF4 and FP4, with each format's range and epsilon.
    Show(FormatsShowArgs),
    /// Reads a JSON array of numbers on stdin, quantizes it in --format (block-wise for the
    /// scaled formats) and prints the dequantized array as JSON; bytes per value and the
    /// error go to stderr.
    Roundtrip(FormatsRoundtripArgs),
}

#[derive(Args, Debug)]
pub struct FormatsShowArgs {
    /// The number (also nan, inf, -inf).
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// The absolute maximum of the block the scaled formats (INT8, INT4, NF4, FP4) see.
    #[arg(long, default_value_t = 1.0)]
    pub range: f32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FormatsRoundtripArgs {
    /// fp32, tf32, fp16, bf16, fp8-e4m3, fp8-e5m2, int8, int8-asym, int4, nf4 or fp4.
    #[arg(long)]
    pub format: String,
    /// Values per block for the scaled formats (bitsandbytes uses 64 for 4-bit).
    #[arg(long, default_value_t = 64)]
    pub block: usize,
    /// Quantize the 4-bit formats' block maxima too (QLoRA's double quantization).
    #[arg(long)]
    pub double_quant: bool,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// A preset (gpt2, gpt2-medium, llama-2-7b, llama-3.1-8b, mistral-7b, phi-2,
    /// qwen2.5-7b, micro, ...) or the path of a Hugging Face config.json.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// full, last-layers, bitfit, layernorm, lora, qlora, adapter, prompt, p-tuning, prefix
    /// or ia3.
    #[arg(long, default_value = "full")]
    pub method: String,
    /// LoRA/QLoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: u64,
    /// LoRA/QLoRA target modules, comma-separated, or all-linear (default: PEFT's for the family).
    #[arg(long)]
    pub targets: Option<String>,
    /// Blocks trained by last-layers.
    #[arg(long, default_value_t = 2)]
    pub layers: u64,
    /// Adapter bottleneck width.
    #[arg(long, default_value_t = 64)]
    pub bottleneck: u64,
    /// Virtual tokens of prompt tuning, P-tuning and prefix tuning.
    #[arg(long, default_value_t = 20)]
    pub prompt_tokens: u64,
    /// P-tuning's prompt-encoder width.
    #[arg(long, default_value_t = 64)]
    pub encoder_hidden: u64,
    /// fp32, bf16-mixed, fp16-mixed or bf16.
    #[arg(long, default_value = "bf16-mixed")]
    pub precision: String,
    /// Storage of the frozen base's linear weights: native, int8 (LLM.int8) or nf4
    /// (--method qlora always uses nf4).
    #[arg(long, default_value = "native")]
    pub base: String,
    /// sgd, sgd-momentum, adamw, adafactor, adamw8bit, lion or mezo.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Micro-batch size per GPU.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Sequence length (default: 1024, or the model's context when that is shorter).
    #[arg(long)]
    pub seq: Option<u64>,
    /// Gradient checkpointing of every block (as transformers does).
    #[arg(long)]
    pub checkpointing: bool,
    /// Gradient checkpointing of every k-th block's input (overrides --checkpointing).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accumulate: u64,
    /// DeepSpeed ZeRO stage (0-3).
    #[arg(long, default_value_t = 0)]
    pub zero: u8,
    #[arg(long, default_value_t = 1)]
    pub gpus: u64,
    /// none, optimizer or all.
    #[arg(long, default_value = "none")]
    pub offload: String,
    /// Framework overhead per GPU in GiB (CUDA context, kernels, allocator caching).
    #[arg(long, default_value_t = 1.0)]
    pub overhead_gib: f64,
    /// How activations are counted: megatron (Korthikanti et al.), flash (fused attention)
    /// or tinytune (this project's FP32 model on Burn).
    #[arg(long, default_value = "megatron")]
    pub activations: String,
    /// Also run one real training step of the (tinytune-sized) model on the CPU and print
    /// the measured bytes of each phase beside the estimate.
    #[arg(long)]
    pub measure: bool,
    /// Print JSON (bytes as integers) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags shared by every command that trains.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Run folder: checkpoints, metrics.jsonl and loss.svg go here.
    #[arg(long)]
    pub out: PathBuf,
    /// Training data: `stories`, a task (story-qa, sentiment, json-extract), a task's
    /// preference pairs (story-qa-pairs, …) for a preference objective, or the path of a
    /// .jsonl file: Alpaca (instruction/input/output), prompt/completion or messages
    /// examples, or TRL's prompt/chosen/rejected pairs for a preference objective.
    #[arg(long)]
    pub data: Option<String>,
    /// What the run minimises: next-token (cross-entropy on the responses), a preference
    /// loss on pairs against a reference model, as TRL's DPOTrainer defines it: dpo (TRL's
    /// sigmoid), ipo, hinge or robust; orpo (TRL's ORPOTrainer: SFT plus an odds-ratio
    /// term, no reference model); kto (TRL's KTOTrainer: unpaired examples labelled
    /// desirable or undesirable, from prompt/completion/label lines or pairs taken apart);
    /// reward (TRL's RewardTrainer: the model becomes a sequence classifier with one
    /// output, trained on pairs with the Bradley–Terry loss); or grpo (TRL's GRPOTrainer: sampled groups of
    /// completions scored by the task's checker).
    #[arg(long, default_value = "next-token")]
    pub objective: String,
    /// Preference and RL objectives: β, how far the policy may move from the reference
    /// (TRL's defaults: 0.1; for ipo it is τ; for orpo the weight λ of the odds-ratio term;
    /// for grpo the KL coefficient, 0.0 by default: no reference model). distill
    /// --divergence jsd: the generalised JSD's weight (GKD's β, 0.5 by default).
    #[arg(long)]
    pub beta: Option<f64>,
    /// The robust objective: the chance a pair's label is flipped, in [0, 0.5).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    #[command(flatten)]
    pub kto: KtoWeights,
    /// GRPO: completions sampled per prompt (TRL's num_generations); --batch counts
    /// completions, so a step samples batch / group-size prompts.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// GRPO: the sampling temperature of the completions (default 1.0). Distillation: the
    /// softmax temperature T both distributions are softened by (default 2.0); the soft
    /// loss is scaled by T² (Hinton et al., 2015) so its gradients keep their size.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// GRPO: the longest completion sampled, in tokens.
    #[arg(long, default_value_t = 32)]
    pub max_completion_len: usize,
    /// GRPO: the clipping range ε of the probability ratio.
    #[arg(long, default_value_t = 0.2)]
    pub epsilon: f64,
    /// GRPO: how per-token losses are averaged (TRL's loss_type): dapo, grpo, bnpo or
    /// dr_grpo.
    #[arg(long, default_value = "dapo")]
    pub grpo_loss: String,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per row (default: the model's context, at most 128).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Peak learning rate. Default for finetune and compare with an AdamW-family optimizer,
    /// by method (measured on micro, scripts/lr-sweep.sh): full 3e-4; last-layers, lora,
    /// qlora, adapter 3e-3; p-tuning 1e-2; bitfit, layernorm, prompt 1e-1; prefix, ia3 3e-1; with
    /// another optimizer its own (sgd 0.1, adafactor 1e-2, lion 2e-4, mezo 3e-4). pretrain
    /// and a distillation student from scratch: 1e-3; other students 3e-4.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup: a number of steps (100) or a share of the run (10% or 0.1; rounded up
    /// as transformers does).
    #[arg(long, default_value = "10%")]
    pub warmup: String,
    /// Learning-rate schedule after warmup: constant, linear or cosine decay.
    #[arg(long, visible_alias = "decay", value_enum, default_value_t = DecayArg::Cosine)]
    pub schedule: DecayArg,
    /// End of decay as a fraction of the peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Optimizer: sgd, adamw, adafactor, lion, adamw8bit, paged-adamw, paged-adamw8bit or
    /// mezo (zeroth-order: two forward passes, no backward).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Weight decay on matrices and embeddings (default: the optimizer's, as PyTorch and
    /// bitsandbytes set it: 0.01 for the AdamW family, 0 for the rest).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// SGD's momentum (default 0, PyTorch's).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// First-moment decay (Adam family, Lion). Default: the optimizer's.
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Second-moment decay (Adam family: 0.999; Lion: 0.99).
    #[arg(long)]
    pub beta2: Option<f64>,
    /// LoRA+ (Hayou et al., 2024): LoRA's B matrices learn at this multiple of the learning
    /// rate (the paper suggests 16).
    #[arg(long)]
    pub loraplus_ratio: Option<f64>,
    /// MeZO's perturbation size ε.
    #[arg(long, default_value_t = 1e-3)]
    pub mezo_eps: f64,
    /// Split each batch of --batch rows into K micro-batches and sum their gradients before
    /// one update: the same update with less activation memory. K must divide --batch.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Data parallelism over N devices of the backend (GPUs 0..N-1): each replica computes
    /// the gradients of --batch / N rows, the gradients are summed on the first device
    /// weighted by their counted tokens, and one update follows: the same run as one device
    /// with the whole batch. N × --accumulate must divide --batch. On the CPU backends the
    /// replicas share the one CPU device.
    #[arg(long, default_value_t = 1)]
    pub data_parallel: usize,
    /// ZeRO stage across the --data-parallel replicas: 0 (the first device keeps all the
    /// optimizer state) or 1 (each replica keeps the state of its share of the parameters,
    /// on its device, and makes their update). `tinytune memory --zero` estimates stages 2
    /// and 3, which this run does not do.
    #[arg(long, default_value_t = 0)]
    pub zero: u8,
    /// Gradient checkpointing: recompute the forward pass's cheap operations during the
    /// backward pass instead of keeping their outputs (same gradients, lower peak memory).
    #[arg(long)]
    pub checkpointing: bool,
    /// Clip the global gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed of batch order and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    #[arg(long, default_value_t = 4000)]
    pub train_examples: usize,
    #[arg(long, default_value_t = 200)]
    pub eval_examples: usize,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Weight of prompt tokens in the fine-tuning loss.
    #[arg(long, default_value_t = 0.0)]
    pub prompt_loss_weight: f32,
    /// Compute type of the forward and backward passes: fp32, fp16 or bf16 (mixed
    /// precision: the weights the optimizer updates stay FP32). On the CPU there is no
    /// native half-precision arithmetic, so fp16 and bf16 run slower than fp32 there
    /// (measured on the micro model: fp16 4.7×, bf16 1.4× the time); they pay off on GPUs.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Loss scaling: dynamic (torch.amp.GradScaler's rule; the default for fp16), none, or
    /// a fixed scale such as 1024.
    #[arg(long)]
    pub loss_scale: Option<String>,
    /// Finite steps before dynamic loss scaling doubles the scale (GradScaler: 2000).
    #[arg(long, default_value_t = 2000)]
    pub scale_growth_interval: usize,
    /// Continue the run in --out from its last checkpoint (its saved settings win).
    #[arg(long)]
    pub resume: bool,
    /// Memory of the device in GiB, for the check that the run fits (default: the CPU's
    /// available memory; GPU backends are checked only when this is given).
    #[arg(long)]
    pub device_memory_gib: Option<f64>,
    /// Start even if the memory estimate says the run will not fit.
    #[arg(long)]
    pub ignore_memory_check: bool,
    /// Stop after this many steps of this invocation (for demonstrations of resuming).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// The flags typed on the command line (filled in by `main`), so that a resumed run can
    /// refuse settings it would otherwise ignore.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl TrainArgs {
    /// Flags a resumed run cannot honour: it continues with the settings its train.json
    /// recorded, so anything but where the run is and how this invocation runs is refused.
    pub fn changed_on_resume(&self) -> Vec<String> {
        // --model names where the run started, which its checkpoint has replaced.
        const FREE: [&str; 7] = ["out", "resume", "model", "stop_after", "device_memory_gib", "ignore_memory_check", "backend"];
        self.given.iter().filter(|id| !FREE.contains(&id.as_str())).map(|id| format!("--{}", id.replace('_', "-"))).collect()
    }
}

/// The ids of the arguments `matches` got from the command line itself (not defaults).
pub fn given_on_command_line(matches: &clap::ArgMatches) -> Vec<String> {
    matches
        .ids()
        .map(|id| id.as_str())
        .filter(|id| matches!(matches.try_get_raw(id), Ok(Some(_))) && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(String::from)
        .collect()
}

impl Command {
    /// The training flags of a command that trains (pretrain, finetune, distill).
    pub fn train_args_mut(&mut self) -> Option<&mut TrainArgs> {
        match self {
            Command::Pretrain(a) => Some(&mut a.train),
            Command::Finetune(a) => Some(&mut a.train),
            Command::Distill(a) => Some(&mut a.train),
            _ => None,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DecayArg {
    Constant,
    Linear,
    Cosine,
}

impl From<DecayArg> for Decay {
    fn from(d: DecayArg) -> Decay {
        match d {
            DecayArg::Constant => Decay::Constant,
            DecayArg::Linear => Decay::Linear,
            DecayArg::Cosine => Decay::Cosine,
        }
    }
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Model shape: nano, micro, mini (GPT-2 layout), nano-llama, micro-llama (Llama layout), gpt2, gpt2-medium, gpt2-large, gpt2-xl.
    #[arg(long, default_value = "nano")]
    pub preset: String,
    /// Tokenizer: `char` (one id per character) or `bpe` (byte-level BPE trained on the data).
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// BPE vocabulary size.
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// Dropout on embeddings, attention and residuals.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The model to start from (a run folder or a model folder); not needed with --resume,
    /// which continues from the run's own checkpoint.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Preference objectives: the reference model (a model folder). By default it is the
    /// model as the run starts, frozen, as in TRL 1.16 (for a fresh adapter that is the
    /// base model).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Flags of `tinytune distill`. The student trains every weight (a distilled model is a
/// whole new model; `--alpha` here is the soft loss's weight, not LoRA's).
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher (a model or run folder): frozen, its softened output distribution is
    /// what the student learns. It must share the student's tokenizer.
    #[arg(long, required_unless_present = "resume")]
    pub teacher: Option<PathBuf>,
    /// The student to train (a model or run folder, e.g. a pruned teacher from `tinytune
    /// prune`).
    #[arg(long, conflicts_with_all = ["student_preset", "student_layers"])]
    pub student: Option<PathBuf>,
    /// A fresh student of a preset's shape (nano, micro, …; the teacher's vocabulary and
    /// tokenizer), initialised at random or, with --init-from-teacher, from the teacher.
    #[arg(long, conflicts_with = "student_layers")]
    pub student_preset: Option<String>,
    /// A student of the teacher's own shape with fewer layers (DistilBERT's recipe; use it
    /// with --init-from-teacher).
    #[arg(long)]
    pub student_layers: Option<usize>,
    /// Start the student from the teacher's weights: embeddings, final norm and head, and
    /// evenly spaced layers (every other layer when it has half as many, as DistilBERT
    /// did). The student's width and heads must equal the teacher's.
    #[arg(long)]
    pub init_from_teacher: bool,
    /// The weight α of the soft (teacher) loss; 1 − α goes to the ordinary next-token loss
    /// on the data's own tokens.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// How the student's distribution is compared with the teacher's: forward-kl
    /// (KL(teacher ‖ student): mode covering), reverse-kl (KL(student ‖ teacher): mode
    /// seeking) or jsd (the generalised Jensen–Shannon divergence of TRL's GKD, weighted
    /// by --beta: 0.5 by default, TRL's GKDTrainer default; 0 would be forward KL, 1
    /// reverse).
    #[arg(long, default_value = "forward-kl")]
    pub divergence: String,
    /// On-policy distillation (GKD's lmbda, Agarwal et al., 2024): the chance that a step
    /// trains on the student's own completions of the batch's prompts (sampled at
    /// temperature 1), scored by the teacher, instead of the data's. 0: never (the data's).
    #[arg(long, default_value_t = 0.0)]
    pub lmbda: f64,
    /// Sequence-level distillation (GKD's seq_kd; Kim & Rush, 2016): train on completions
    /// the teacher samples from each prompt instead of the data's.
    #[arg(long)]
    pub seq_kd: bool,
    /// A file of the teacher's logits (safetensors): rows of the data already in it are
    /// read instead of running the teacher, new rows are added when the run saves. Reuse
    /// one file to distil several students from one teacher on the same data; a file made
    /// with another teacher is refused. Sampled completions (--lmbda, --seq-kd) always run
    /// the teacher.
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// How the model is adapted for fine-tuning.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// full (every weight trains), last-layers (the top --last-n blocks and the final
    /// LayerNorm), bitfit (biases only), layernorm (LayerNorm gains and biases only), lora
    /// (low-rank updates beside frozen weights), qlora (LoRA on a base stored in 4-bit NF4),
    /// adapter (bottleneck adapters), prompt (prompt tuning), p-tuning (prompt tuning through
    /// an MLP encoder), prefix (per-layer key/value prefixes) or ia3 (learned rescaling).
    #[arg(long, default_value = "full")]
    pub method: String,
    /// last-layers: how many of the top transformer blocks train.
    #[arg(long, default_value_t = 1)]
    pub last_n: usize,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha: the update is scaled by alpha/rank (PEFT's default alpha is 8).
    #[arg(long, default_value_t = 8.0)]
    pub alpha: f64,
    /// Dropout on the LoRA path's input.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt, comma-separated, or all-linear. GPT-2 has c_attn, attn.c_proj,
    /// mlp.c_fc and mlp.c_proj; the Llama family q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj and down_proj. [default: PEFT's for the family: c_attn, or q_proj,v_proj]
    #[arg(long)]
    pub targets: Option<String>,
    /// rsLoRA: scale by alpha/sqrt(rank).
    #[arg(long)]
    pub rslora: bool,
    /// Biases that train beside LoRA: none, all, or lora_only (those of adapted projections).
    #[arg(long, default_value = "none")]
    pub lora_bias: String,
    /// DoRA: also learn a magnitude per output column of W + s·A·B (with qlora: QDoRA).
    #[arg(long)]
    pub dora: bool,
    /// How LoRA's A starts: default (Kaiming-uniform, PEFT's), gaussian (N(0, 1/r²)) or pissa
    /// (A·B from W's top singular vectors; W keeps the residual).
    #[arg(long, default_value = "default")]
    pub lora_init: String,
    /// QLoRA: weights per block of the NF4 base (QLoRA uses 64).
    #[arg(long, default_value_t = 64)]
    pub qlora_block: usize,
    /// QLoRA: keep the block maxima in FP32 instead of double-quantizing them.
    #[arg(long)]
    pub no_double_quant: bool,
    /// adapter: where adapters go: houlsby (after attention and after the MLP), pfeiffer
    /// (after the MLP) or parallel (beside the MLP).
    #[arg(long, default_value = "houlsby")]
    pub adapter: String,
    /// adapter: the bottleneck width.
    #[arg(long, default_value_t = 16)]
    pub bottleneck: usize,
    /// adapter: the non-linearity, relu, gelu or tanh.
    #[arg(long, default_value = "relu")]
    pub adapter_activation: String,
    /// adapter: the factor on the adapter's output (He et al. use 4 for parallel adapters).
    #[arg(long, default_value_t = 1.0)]
    pub adapter_scaling: f64,
    /// prompt, p-tuning, prefix: the number of virtual tokens.
    #[arg(long, default_value_t = 8)]
    pub virtual_tokens: usize,
    /// prompt: how the virtual tokens start: random (at the scale of the token embeddings),
    /// text (the embeddings of --prompt-text's tokens) or vocab (sampled vocabulary rows).
    #[arg(long, default_value = "random")]
    pub prompt_init: String,
    /// prompt: the text for --prompt-init text.
    #[arg(long, default_value = "")]
    pub prompt_text: String,
    /// p-tuning, prefix: the width of the MLP that produces the prompt (prefix: only with
    /// --prefix-projection).
    #[arg(long, default_value_t = 64)]
    pub encoder_hidden: usize,
    /// prefix: produce the keys and values through an MLP (Linear, Tanh, Linear).
    #[arg(long)]
    pub prefix_projection: bool,
    /// ia3: projections whose output (or input, see --ia3-feedforward) is rescaled.
    /// [default: PEFT's for the family: c_attn,mlp.c_proj, or k_proj,v_proj,down_proj]
    #[arg(long)]
    pub ia3_targets: Option<String>,
    /// ia3: the targets whose input is rescaled instead of their output. [default: PEFT's
    /// for the family: mlp.c_proj, or down_proj]
    #[arg(long)]
    pub ia3_feedforward: Option<String>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue; `\n` stands for a newline (task prompts end in e.g. "\nanswer:").
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Stop at the end of the first generated line (how task answers end).
    #[arg(long)]
    pub stop_at_newline: bool,
    #[arg(long, default_value_t = 100)]
    pub max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Treat --prompt as a user message: render it with the model's chat template
    /// (ending with the assistant's turn opening), stop at the template's end-of-turn token,
    /// and print the reply.
    #[arg(long)]
    pub chat: bool,
    /// Recompute every position's keys and values for each new token instead of keeping
    /// them (the key/value cache); the same tokens, slower.
    #[arg(long)]
    pub no_cache: bool,
    /// Print tokens generated per second to stderr.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// `stories`, a task, or a .jsonl file held out whole (its response tokens; conversations
    /// rendered with the model's chat template). Default: the data the run trained on (its
    /// train.json), `stories` for a model folder that is not a run.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, default_value_t = 200)]
    pub examples: usize,
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// For tasks: greedily answer this many held-out prompts and report exact-match accuracy.
    #[arg(long, default_value_t = 50)]
    pub accuracy_examples: usize,
    /// A PEFT adapter folder to put on the model first (the policy is model + adapter).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Score preference pairs (TRL's prompt/chosen/rejected .jsonl, or story-qa-pairs, …)
    /// with this objective instead: dpo, ipo, hinge, robust, orpo, kto (which also reads
    /// TRL's unpaired prompt/completion/label lines) or reward (a reward model's accuracy,
    /// margin and rewards, as TRL's RewardTrainer); prints TRL's metrics
    /// (rewards/chosen, rewards/accuracies, …). Or grpo: the task's verifiable reward on
    /// the first --accuracy-examples held-out prompts, sampled (`reward`, as a GRPO run's
    /// evaluation) and greedy (`greedy_reward`).
    #[arg(long)]
    pub objective: Option<String>,
    /// The reference model of a preference objective (a model folder; required with
    /// --objective, except orpo, which has none).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Preference objectives: β (TRL's default 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// The robust objective: the chance a pair's label is flipped.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    #[command(flatten)]
    pub kto: KtoWeights,
    /// GRPO (--objective grpo): completions sampled per held-out prompt for `reward`.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// GRPO: the sampling temperature of those completions.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// GRPO: the longest completion sampled, in tokens.
    #[arg(long, default_value_t = 32)]
    pub max_completion_len: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl EvalArgs {
    /// The data to evaluate on (`--data`, resolved by `eval_cmd`).
    pub fn data(&self) -> &str {
        self.data.as_deref().unwrap_or("stories")
    }
}

/// KTO's weights of its two kinds of example (TRL's names and defaults), for `finetune` and
/// `eval`.
#[derive(Args, Debug, Clone)]
pub struct KtoWeights {
    /// KTO: the weight λ_D of a desirable example's loss (TRL's default 1.0). With unequal
    /// numbers of desirable and undesirable examples, the KTO paper keeps
    /// λ_D·n_D / (λ_U·n_U) between 1 and 4/3.
    #[arg(long, default_value_t = 1.0)]
    pub desirable_weight: f64,
    /// KTO: the weight λ_U of an undesirable example's loss (TRL's default 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub undesirable_weight: f64,
}

impl KtoWeights {
    /// Puts the weights on a KTO objective (any other is left as it is).
    pub fn apply(&self, objective: &mut tinytune::train::Objective) {
        if let tinytune::train::Objective::Kto { desirable_weight, undesirable_weight, .. } = objective {
            (*desirable_weight, *undesirable_weight) = (self.desirable_weight, self.undesirable_weight);
        }
    }
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A model folder (or use --preset).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub ctx: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub vocab: usize,
    /// Timed steps (after 3 untimed warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Print one JSON line with `tokens_per_s`.
    #[arg(long)]
    pub json: bool,
    /// Compute type: fp32, fp16 or bf16 (mixed precision, FP32 master weights; fp16 with
    /// dynamic loss scaling). Where the device lacks the type the error says so.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Gradient checkpointing: time the step that recomputes the forward pass's cheap
    /// operations in the backward pass instead of keeping them (TFLOP/s still counts the
    /// step without the recomputation).
    #[arg(long)]
    pub checkpointing: bool,
    /// Take the shape of a named model instead (nano, micro, mini, nano-llama, micro-llama, gpt2, …);
    /// --batch and --ctx still apply.
    #[arg(long)]
    pub preset: Option<String>,
    /// The fine-tuning method to time (full by default): LoRA against full fine-tuning is
    /// `--method lora --rank 8 --targets c_attn` against no flag.
    #[command(flatten)]
    pub method: MethodArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The model to tour (default: the shipped pretrained micro checkpoint).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl MethodArgs {
    /// The fine-tuning method the flags describe, for a model of `family` (whose PEFT
    /// defaults fill the target lists not given). `tokenizer` turns `--prompt-text` into ids
    /// (None where no model is loaded yet; then a text init is refused).
    pub fn to_method(&self, tokenizer: Option<&TextTokenizer>, family: Family) -> Result<Method, String> {
        let a = self;
        let ia3_default = Ia3Config::for_family(family);
        let lora = LoraConfig {
            r: a.rank,
            lora_alpha: a.alpha,
            lora_dropout: a.lora_dropout,
            target_modules: a.targets.as_deref().map_or_else(|| LoraConfig::default_targets(family), LoraConfig::target_list),
            use_rslora: a.rslora,
            bias: a.lora_bias.parse().map_err(|e| format!("--lora-bias: {e}"))?,
            init: a.lora_init.parse().map_err(|e| format!("--lora-init: {e}"))?,
            use_dora: a.dora,
        };
        let prompt_init: PromptInit = a.prompt_init.parse().map_err(|e| format!("--prompt-init: {e}"))?;
        let prompt_ids = match (prompt_init, tokenizer) {
            (PromptInit::Text, _) if a.prompt_text.is_empty() => {
                return Err("--prompt-text: --prompt-init text needs a text, e.g. --prompt-text \"Classify the sentiment:\"".into());
            }
            (PromptInit::Text, Some(tok)) => tok.encode(&a.prompt_text).map_err(|e| format!("--prompt-text: {e}"))?,
            (PromptInit::Text, None) => {
                return Err("--prompt-init: text needs the model's tokenizer, which this command does not load; use random or vocab".into());
            }
            _ => Vec::new(),
        };
        let options = MethodOptions {
            lora,
            qlora_block: a.qlora_block,
            double_quant: !a.no_double_quant,
            last_n: a.last_n,
            adapter: AdapterConfig {
                kind: a.adapter.parse().map_err(|e| format!("--adapter: {e}"))?,
                size: a.bottleneck,
                activation: a.adapter_activation.parse().map_err(|e| format!("--adapter-activation: {e}"))?,
                scaling: a.adapter_scaling,
            },
            virtual_tokens: a.virtual_tokens,
            prompt_init,
            prompt_text: a.prompt_text.clone(),
            prompt_ids,
            encoder_hidden: a.encoder_hidden,
            prefix_projection: a.prefix_projection,
            ia3: Ia3Config {
                target_modules: a.ia3_targets.as_deref().map_or(ia3_default.target_modules, LoraConfig::target_list),
                feedforward_modules: a.ia3_feedforward.as_deref().map_or(ia3_default.feedforward_modules, LoraConfig::target_list),
            },
        };
        Method::named(&a.method, &options).map_err(|e| format!("--method: {e}"))
    }
}
