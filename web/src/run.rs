//! What a `train` widget's settings mean as a training run, in one place for both sides:
//! the worker trains with [`TrainParams::train_config`], and the widget prints
//! [`TrainParams::command`], the `tinytune` command line that runs the very same
//! configuration natively ("Run this at scale"). A test in the CLI parses that command with
//! the CLI's own parser and checks it resolves to the same `TrainConfig`.

use tinytune::methods::{AdapterConfig, LoraConfig, Method, MethodKind, MethodOptions};
use tinytune::optim::{Decay, OptimConfig, OptimKind, Warmup};
use tinytune::train::{LossScale, Precision, TrainConfig};

use crate::widgets::{ModelChoice, TrainParams};

/// Where the shipped pretrained checkpoints live in the repository (in the browser, trunk
/// copies each to the folder of its last name).
pub const MICRO_DIR: &str = "assets/micro";
pub const MICRO_LLAMA_DIR: &str = "assets/micro-llama";

/// Examples generated for a browser run: enough that a few hundred steps rarely repeat a
/// batch, few enough to tokenise in well under a second.
pub const TRAIN_EXAMPLES: usize = 2000;
pub const EVAL_EXAMPLES: usize = 100;
pub const EVAL_BATCHES: usize = 4;

impl TrainParams {
    /// Evaluate about five times per run.
    pub fn eval_every(&self) -> usize {
        (self.steps / 5).max(1)
    }

    /// The run's full configuration. Values not on the widget are the CLI's defaults.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            data: self.task,
            train_examples: TRAIN_EXAMPLES,
            eval_examples: EVAL_EXAMPLES,
            data_seed: 0,
            seed: self.seed,
            steps: self.steps,
            batch_size: self.batch,
            seq_len: self.seq,
            lr: self.lr,
            warmup_steps: self.warmup().steps(self.steps),
            warmup_ratio: match self.warmup() {
                Warmup::Ratio(r) => Some(r),
                Warmup::Steps(_) => None,
            },
            decay: self.decay(),
            min_lr_ratio: 0.1,
            optimizer: self.optimizer_config(),
            accumulate: self.accumulate,
            data_parallel: self.data_parallel,
            zero: self.zero,
            checkpointing: self.checkpointing,
            eval_every: self.eval_every(),
            eval_batches: EVAL_BATCHES,
            // The browser keeps its run in memory; the native command saves every 100 steps.
            checkpoint_every: 0,
            prompt_loss_weight: 0.0,
            precision: self.precision,
            loss_scale: self.loss_scale(),
            objective: tinytune::train::Objective::NextToken,
            method: self.method(),
            data_file: None,
            data_sha256: None,
            teacher: None,
            teacher_cache: None,
        }
    }

    /// The warmup (`Widget::set` admits only values that parse).
    pub fn warmup(&self) -> Warmup {
        self.warmup.parse().unwrap_or(Warmup::Ratio(0.1))
    }

    pub fn decay(&self) -> Decay {
        match self.schedule.as_str() {
            "constant" => Decay::Constant,
            "linear" => Decay::Linear,
            _ => Decay::Cosine,
        }
    }

    pub fn optimizer_kind(&self) -> OptimKind {
        self.optimizer.parse().unwrap_or_default()
    }

    /// The optimizer with its defaults, as the CLI resolves `--optimizer` alone.
    pub fn optimizer_config(&self) -> OptimConfig {
        OptimConfig::for_kind(self.optimizer_kind())
    }

    /// The loss scaling the run uses: GradScaler's dynamic rule or none (always none in FP32).
    pub fn loss_scale(&self) -> LossScale {
        if self.precision != Precision::Fp32 && self.loss_scale == "dynamic" { LossScale::dynamic() } else { LossScale::None }
    }

    /// A run's name on the chart and in the table: what sets it apart.
    pub fn label(&self) -> String {
        let p = self;
        let mut label = format!("{} · {} · lr {} · {} steps", p.model.name(), p.task, p.lr, p.steps);
        if p.model != ModelChoice::Nano {
            match p.method {
                MethodKind::Full => {}
                MethodKind::Lora | MethodKind::Qlora => label += &format!(" · {} r{}", p.method, p.rank),
                MethodKind::LastLayers => label += &format!(" · last {} layers", p.last_n),
                MethodKind::Adapter => label += &format!(" · {} adapter {}", p.adapter, p.bottleneck),
                MethodKind::Prompt | MethodKind::PTuning | MethodKind::Prefix => label += &format!(" · {} {}", p.method, p.tokens),
                MethodKind::Bitfit | MethodKind::Layernorm | MethodKind::Ia3 => label += &format!(" · {}", p.method),
            }
        }
        if p.precision != tinytune::train::Precision::Fp32 {
            label += &format!(" · {} · loss scale {}", p.precision, p.loss_scale);
        }
        if p.optimizer != "adamw" {
            label += &format!(" · {}", p.optimizer);
        }
        if p.accumulate > 1 {
            label += &format!(" · {} micro-batches", p.accumulate);
        }
        if p.data_parallel > 1 {
            label += &format!(" · {} replicas", p.data_parallel);
        }
        if p.zero > 0 {
            label += &format!(" · ZeRO-{}", p.zero);
        }
        if p.checkpointing {
            label += " · checkpointing";
        }
        label
    }

    /// The fine-tuning method (LoRA's dropout 0 and rsLoRA off, as the CLI's defaults). A
    /// fresh nano model is pre-trained, and pre-training trains every weight: always full.
    pub fn method(&self) -> Method {
        if self.model == ModelChoice::Nano {
            return Method::Full;
        }
        let lora = LoraConfig {
            r: self.rank,
            lora_alpha: self.alpha,
            lora_dropout: 0.0,
            target_modules: LoraConfig::target_list(&self.targets),
            use_rslora: false,
            ..LoraConfig::default()
        };
        let defaults = MethodOptions::default();
        let options = MethodOptions {
            lora,
            last_n: self.last_n,
            // `Widget::set` admits only values that parse.
            adapter: AdapterConfig { kind: self.adapter.parse().unwrap_or_default(), size: self.bottleneck, ..AdapterConfig::default() },
            virtual_tokens: self.tokens,
            prompt_init: self.prompt_init.parse().unwrap_or_default(),
            encoder_hidden: self.encoder,
            // PEFT's (IA)³ defaults differ by family, as the CLI resolves them.
            ia3: tinytune::methods::Ia3Config::for_family(self.model.config().family),
            ..defaults
        };
        Method::of_kind(self.method, &options)
    }

    /// Trainable parameters of the run's model under its method, and the model's total, by
    /// closed form (the estimator's count, which the methods battery checks against real
    /// models): what the widget shows before a run starts.
    pub fn trainable(&self) -> (u64, u64) {
        let config = self.model.config();
        let plan = tinytune::memory::Plan::for_tinytune(&config, &self.method(), 1, 1);
        (plan.trainable_params(), config.num_params() as u64)
    }

    /// The command's arguments, without the program name.
    pub fn command_args(&self) -> Vec<String> {
        let mut args: Vec<String> = match self.model {
            ModelChoice::Micro => vec!["finetune".into(), "--model".into(), MICRO_DIR.into()],
            ModelChoice::MicroLlama => vec!["finetune".into(), "--model".into(), MICRO_LLAMA_DIR.into()],
            ModelChoice::Nano => ["pretrain", "--preset", "nano", "--tokenizer", "char"].map(String::from).to_vec(),
        };
        let flags: [(&str, String); 10] = [
            ("--data", self.task.to_string()),
            ("--steps", self.steps.to_string()),
            ("--batch", self.batch.to_string()),
            ("--seq-len", self.seq.to_string()),
            ("--lr", self.lr.to_string()),
            ("--seed", self.seed.to_string()),
            ("--train-examples", TRAIN_EXAMPLES.to_string()),
            ("--eval-examples", EVAL_EXAMPLES.to_string()),
            ("--eval-every", self.eval_every().to_string()),
            ("--eval-batches", EVAL_BATCHES.to_string()),
        ];
        for (flag, value) in flags {
            args.push(flag.into());
            args.push(value);
        }
        if self.model != ModelChoice::Nano {
            let method = || ["--method".to_string(), self.method.to_string()];
            match self.method {
                MethodKind::Full => {}
                MethodKind::Lora | MethodKind::Qlora => {
                    args.extend(method());
                    args.extend(["--rank".into(), self.rank.to_string(), "--alpha".into(), self.alpha.to_string(), "--targets".into(), self.targets.clone()]);
                }
                MethodKind::LastLayers => {
                    args.extend(method());
                    args.extend(["--last-n".into(), self.last_n.to_string()]);
                }
                MethodKind::Adapter => {
                    args.extend(method());
                    args.extend(["--adapter".into(), self.adapter.clone(), "--bottleneck".into(), self.bottleneck.to_string()]);
                }
                MethodKind::Prompt => {
                    args.extend(method());
                    args.extend(["--virtual-tokens".into(), self.tokens.to_string(), "--prompt-init".into(), self.prompt_init.clone()]);
                }
                MethodKind::PTuning => {
                    args.extend(method());
                    args.extend(["--virtual-tokens".into(), self.tokens.to_string(), "--encoder-hidden".into(), self.encoder.to_string()]);
                }
                MethodKind::Prefix => {
                    args.extend(method());
                    args.extend(["--virtual-tokens".into(), self.tokens.to_string()]);
                }
                MethodKind::Bitfit | MethodKind::Layernorm | MethodKind::Ia3 => args.extend(method()),
            }
        }
        if self.optimizer_kind() != OptimKind::AdamW {
            args.extend(["--optimizer".into(), self.optimizer.clone()]);
        }
        if self.schedule != "cosine" {
            args.extend(["--schedule".into(), self.schedule.clone()]);
        }
        if self.warmup() != Warmup::Ratio(0.1) {
            args.extend(["--warmup".into(), self.warmup.clone()]);
        }
        if self.accumulate != 1 {
            args.extend(["--accumulate".into(), self.accumulate.to_string()]);
        }
        if self.data_parallel != 1 {
            args.extend(["--data-parallel".into(), self.data_parallel.to_string()]);
        }
        if self.zero != 0 {
            args.extend(["--zero".into(), self.zero.to_string()]);
        }
        if self.checkpointing {
            args.push("--checkpointing".into());
        }
        if self.precision != Precision::Fp32 {
            let scale = if self.loss_scale() == LossScale::None { "none" } else { "dynamic" };
            args.extend(["--precision".into(), self.precision.to_string(), "--loss-scale".into(), scale.into()]);
        }
        args.push("--out".into());
        args.push(format!("runs/{}-{}", self.model.name(), self.task));
        args
    }

    /// The whole command line as one copyable string.
    pub fn command(&self) -> String {
        let mut s = String::from("tinytune");
        for a in self.command_args() {
            s.push(' ');
            s.push_str(&a);
        }
        s
    }
}
