//! Settings of the `real-model` widget: a GGUF model the reader opens from their own disk
//! (SmolLM2-135M-Instruct from `scripts/get-smollm2.sh`, or any Llama-family GGUF the core
//! reads), chatted with, LoRA-fine-tuned in the worker on the shipped Tiny Tuner chat set,
//! and chatted with again. [`RealModelParams::train_config`] is the run the worker trains;
//! [`RealModelParams::command_args`] the native command that runs the same configuration,
//! which a CLI test parses and resolves to the same `TrainConfig`.

use serde::{Deserialize, Serialize};
use tinytune::methods::{LoraConfig, Method};
use tinytune::optim::{OptimConfig, OptimKind, Warmup};
use tinytune::train::{DataSource, Precision, TrainConfig};

use crate::settings::{Field, Settings, assign, float, int};

/// The shipped chat set the widget fine-tunes on (TRL's `messages` format), as the
/// repository holds it; trunk copies the folder next to the page as `chat/`.
pub const CHAT_FILE: &str = "assets/chat/tiny-tuner.jsonl";
/// The same file as the worker fetches it.
pub const CHAT_URL: &str = "chat/tiny-tuner.jsonl";
/// Where `scripts/get-smollm2.sh` puts the model.
pub const SMOLLM2_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Held-out conversations of the chat set, measured every few steps.
pub const EVAL_EXAMPLES: usize = 8;
pub const EVAL_BATCHES: usize = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealModelParams {
    pub steps: usize,
    pub lr: f64,
    /// LoRA's rank on every linear layer (alpha is twice the rank).
    pub rank: usize,
    pub batch: usize,
    /// Tokens per training row (the conversations are short; longer rows are cut).
    pub seq: usize,
    /// Tokens a chat reply may run to.
    pub max_tokens: usize,
    pub prompt: String,
}

impl Default for RealModelParams {
    fn default() -> Self {
        Self { steps: 20, lr: 1e-3, rank: 8, batch: 2, seq: 128, max_tokens: 48, prompt: "Name three primary colours.".into() }
    }
}

impl RealModelParams {
    /// Evaluate about four times per run.
    pub fn eval_every(&self) -> usize {
        (self.steps / 4).max(1)
    }

    /// LoRA at `rank` with alpha 2·rank on every linear layer, no dropout.
    pub fn method(&self) -> Method {
        Method::Lora(LoraConfig {
            r: self.rank,
            lora_alpha: 2.0 * self.rank as f64,
            lora_dropout: 0.0,
            target_modules: LoraConfig::target_list("all-linear"),
            use_rslora: false,
            ..LoraConfig::default()
        })
    }

    /// The run's configuration; what is not on the widget is the CLI's default.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            // Unused: `data_file` wins (the CLI's finetune default, for the command's sake).
            data: DataSource::Task(tinytune::data::Task::StoryQa),
            train_examples: 1000,
            eval_examples: EVAL_EXAMPLES,
            data_seed: 0,
            seed: 0,
            steps: self.steps,
            batch_size: self.batch,
            seq_len: self.seq,
            lr: self.lr,
            warmup_steps: Warmup::Ratio(0.1).steps(self.steps),
            warmup_ratio: Some(0.1),
            decay: tinytune::optim::Decay::Cosine,
            min_lr_ratio: 0.1,
            optimizer: OptimConfig::for_kind(OptimKind::AdamW),
            accumulate: 1,
            data_parallel: 1,
            zero: 0,
            checkpointing: false,
            eval_every: self.eval_every(),
            eval_batches: EVAL_BATCHES,
            checkpoint_every: 0,
            prompt_loss_weight: 0.0,
            precision: Precision::Fp32,
            loss_scale: tinytune::train::LossScale::None,
            objective: tinytune::train::Objective::NextToken,
            method: self.method(),
            data_file: Some(CHAT_FILE.into()),
            data_sha256: None,
            teacher: None,
            teacher_cache: None,
        }
    }

    /// The native fine-tune of the same run, without the program name.
    pub fn command_args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["finetune", "--model", SMOLLM2_FILE, "--data", CHAT_FILE, "--method", "lora", "--targets", "all-linear"].map(String::from).to_vec();
        let flags: [(&str, String); 11] = [
            ("--rank", self.rank.to_string()),
            ("--alpha", (2 * self.rank).to_string()),
            ("--steps", self.steps.to_string()),
            ("--batch", self.batch.to_string()),
            ("--seq-len", self.seq.to_string()),
            ("--lr", self.lr.to_string()),
            ("--train-examples", "1000".into()),
            ("--eval-examples", EVAL_EXAMPLES.to_string()),
            ("--eval-every", self.eval_every().to_string()),
            ("--eval-batches", EVAL_BATCHES.to_string()),
            ("--out", "runs/tiny-tuner".into()),
        ];
        for (flag, value) in flags {
            args.push(flag.into());
            args.push(value);
        }
        args
    }

    pub fn command(&self) -> String {
        format!("tinytune {}", self.command_args().join(" "))
    }
}

impl Settings for RealModelParams {
    const NAME: &'static str = "real-model";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 500)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
            Field { key: "rank", get: |p| p.rank.to_string(), set: |p, v| assign(&mut p.rank, int(v, 1, 64)) },
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 16)) },
            Field { key: "seq", get: |p| p.seq.to_string(), set: |p, v| assign(&mut p.seq, int(v, 16, 512)) },
            Field { key: "max_tokens", get: |p| p.max_tokens.to_string(), set: |p, v| assign(&mut p.max_tokens, int(v, 1, 512)) },
            Field { key: "prompt", get: |p| p.prompt.clone(), set: |p, v| assign(&mut p.prompt, Ok::<_, String>(v.to_string())) },
        ]
    }
}

/// What the worker found in an opened GGUF file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealInfo {
    pub name: String,
    pub file_bytes: u64,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    pub params: u64,
    /// How the file stores its tensors, by type: (type, tensors, weights, bytes).
    pub storage: Vec<(String, usize, u64, u64)>,
    pub chat_template: bool,
    /// Seconds to read, parse and dequantize the file into a model.
    pub load_seconds: f64,
    /// Bytes the worker holds after loading (None on WebGPU, whose memory it cannot count).
    pub worker_bytes: Option<u64>,
    pub device: String,
}

impl RealInfo {
    /// Bytes of the tensors as the file stores them.
    pub fn stored_bytes(&self) -> u64 {
        self.storage.iter().map(|s| s.3).sum()
    }

    /// Bytes of the same weights in FP32.
    pub fn fp32_bytes(&self) -> u64 {
        4 * self.storage.iter().map(|s| s.2).sum::<u64>()
    }
}

/// A chat reply as it is written: the text so far, tokens and seconds, and which model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub text: String,
    pub tokens: usize,
    pub seconds: f64,
    /// "base" or "after N steps of LoRA".
    pub model: String,
    pub done: bool,
}

impl ChatReply {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::Widget;

    #[test]
    fn the_lesson_block_sets_every_field_and_bad_values_are_named() {
        let w = Widget::from_block("name: real-model\nsteps: 5\nrank: 4\nprompt: Hi there").unwrap();
        let Widget::RealModel(p) = &w else { panic!("{w:?}") };
        assert_eq!((p.steps, p.rank, p.prompt.as_str()), (5, 4, "Hi there"));
        assert_eq!(p.train_config().method.name(), "lora");
        let e = Widget::from_block("name: real-model\nrank: 0").unwrap_err();
        assert!(e.contains("real-model") && e.contains("rank"), "{e}");
        // The run validates as the trainer will check it.
        RealModelParams::default().train_config().validate("widget", 8192).unwrap();
    }
}
