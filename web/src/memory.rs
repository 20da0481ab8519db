//! The memory widgets' settings and how they become an estimator [`Plan`]: plain Rust, so
//! the page's calculator and its tests use the same code as `tinytune memory`.

use crate::settings::{Field, Settings, assign, int, one_of};
use serde::{Deserialize, Serialize};
use tinytune::ModelConfig;
use tinytune::memory::arch::{ARCH_PRESETS, Arch};
use tinytune::memory::estimate::PlanSizes;
use tinytune::memory::{Estimate, Offload, OptimizerKind, Plan, PlanMethod, Precision, StepMemory};
use tinytune::methods::{LoraConfig, Method, MethodKind};

/// The methods the calculator offers, as lessons and links spell them.
pub const METHODS: [&str; 8] = ["full", "lora", "qlora", "adapter", "prompt", "last-layers", "bitfit", "layernorm"];
pub const PRECISIONS: [&str; 4] = ["fp32", "bf16-mixed", "fp16-mixed", "bf16"];
pub const OPTIMIZERS: [&str; 7] = ["adamw", "adamw8bit", "adafactor", "sgd", "sgd-momentum", "lion", "mezo"];
pub const OFFLOADS: [&str; 3] = ["none", "optimizer", "all"];
pub const BASES: [&str; 3] = ["native", "int8", "nf4"];

/// Settings of the `memory` widget (the calculator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryParams {
    /// A preset name, or `custom` for a pasted config.json.
    pub model: String,
    pub method: String,
    pub rank: u64,
    pub precision: String,
    pub optimizer: String,
    pub batch: u64,
    pub seq: u64,
    /// 0: off; k: keep every k-th block's input.
    pub checkpointing: u64,
    pub accumulate: u64,
    pub zero: u8,
    pub gpus: u64,
    pub offload: String,
    /// Storage of frozen base weights: native, int8 or nf4.
    pub base: String,
    /// eager (attention scores stored) or flash (a fused kernel keeps none).
    #[serde(default = "eager")]
    pub attention: String,
}

fn eager() -> String {
    "eager".into()
}

pub const ATTENTIONS: [&str; 2] = ["eager", "flash"];

impl Default for MemoryParams {
    fn default() -> Self {
        Self {
            model: "llama-2-7b".into(),
            method: "full".into(),
            rank: 8,
            precision: "bf16-mixed".into(),
            optimizer: "adamw".into(),
            batch: 1,
            seq: 1024,
            checkpointing: 0,
            accumulate: 1,
            zero: 0,
            gpus: 1,
            offload: "none".into(),
            base: "native".into(),
            attention: eager(),
        }
    }
}

fn kebab<T: serde::de::DeserializeOwned>(what: &str, value: &str, choices: &[&str]) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|_| format!("{what} {value:?}: choose {}", choices.join(", ")))
}

impl MemoryParams {
    /// The estimator plan for these settings; `custom` reads `pasted` as a Hugging Face
    /// config.json. Errors name the setting (or the config field) and the fix.
    pub fn plan(&self, pasted: Option<&str>) -> Result<Plan, String> {
        let arch = if self.model == "custom" {
            let text = pasted.filter(|t| !t.trim().is_empty()).ok_or("paste a config.json to estimate a custom model")?;
            Arch::from_hf_config(text, "pasted config.json").map_err(|e| e.to_string())?
        } else {
            Arch::preset(&self.model).map_err(|e| e.to_string())?
        };
        if !METHODS.contains(&self.method.as_str()) {
            return Err(format!("method {:?}: choose {}", self.method, METHODS.join(", ")));
        }
        let kind: MethodKind = self.method.parse()?;
        // The widget's fixed sizes (the CLI's defaults), the family's PEFT targets.
        let sizes = PlanSizes { rank: self.rank, targets: None, layers: 2.min(arch.layers), bottleneck: 64, tokens: 20, encoder: 64 };
        let method = PlanMethod::of_kind(kind, &arch, &sizes);
        if arch.positions > 0 && self.seq > arch.positions {
            return Err(format!("seq {} is longer than {}'s {} positions", self.seq, arch.name, arch.positions));
        }
        let tiny = ["nano", "micro", "mini"].contains(&self.model.as_str());
        let precision: Precision = kebab("precision", &self.precision, &PRECISIONS)?;
        let plan = Plan {
            method,
            precision,
            optimizer: kebab::<OptimizerKind>("optimizer", &self.optimizer, &OPTIMIZERS)?,
            batch: self.batch,
            checkpoint_every: self.checkpointing,
            accumulate: self.accumulate,
            zero: self.zero,
            gpus: self.gpus,
            offload: kebab::<Offload>("offload", &self.offload, &OFFLOADS)?,
            // tinytune's own models run on a CPU or in a browser tab: no CUDA context. Their
            // FP32 runs are counted the way tinytune's code keeps tensors.
            overhead: if tiny { 0 } else { tinytune::memory::estimate::DEFAULT_GPU_OVERHEAD },
            activations: if self.attention == "flash" {
                tinytune::memory::ActivationModel::Flash
            } else if tiny && precision == Precision::Fp32 {
                tinytune::memory::ActivationModel::Tinytune
            } else {
                tinytune::memory::ActivationModel::Megatron
            },
            base: kebab("base", &self.base, &BASES)?,
            ..Plan::new(arch, self.seq)
        };
        plan.validate("memory").map_err(|e| crate::fields::describe(&e))?;
        Ok(plan)
    }

    /// Checks a model name for `Widget::set`.
    pub fn check_model(value: &str) -> Result<(), String> {
        if value == "custom" || ARCH_PRESETS.contains(&value) { Ok(()) } else { Err(format!("choose custom or one of {}", ARCH_PRESETS.join(", "))) }
    }
}

/// Settings of the `memory-timeline` widget: one measured step of the micro model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineParams {
    pub batch: usize,
    pub seq: usize,
    /// `full` or `lora` (rank 8 on c_attn).
    pub method: String,
}

impl Default for TimelineParams {
    fn default() -> Self {
        Self { batch: 8, seq: 128, method: "full".into() }
    }
}

impl TimelineParams {
    pub fn tinytune_method(&self) -> Method {
        match self.method.as_str() {
            "lora" => Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() }),
            _ => Method::Full,
        }
    }

    /// The estimate of the same step with tinytune's accounting.
    pub fn estimate(&self) -> Estimate {
        Plan::for_tinytune(&ModelConfig::micro(), &self.tinytune_method(), self.batch as u64, self.seq as u64).estimate()
    }
}

/// The worker's answer to a timeline request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineResult {
    pub measured: StepMemory,
    pub estimate: Estimate,
}

impl Settings for MemoryParams {
    const NAME: &'static str = "memory";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field {
                key: "model",
                get: |p| p.model.clone(),
                set: |p, v| {
                    MemoryParams::check_model(v)?;
                    p.model = v.to_string();
                    Ok(())
                },
            },
            Field { key: "method", get: |p| p.method.clone(), set: |p, v| assign(&mut p.method, one_of(v, &METHODS)) },
            Field { key: "rank", get: |p| p.rank.to_string(), set: |p, v| assign(&mut p.rank, int(v, 1, 1024).map(|x| x as u64)) },
            Field { key: "precision", get: |p| p.precision.clone(), set: |p, v| assign(&mut p.precision, one_of(v, &PRECISIONS)) },
            Field { key: "optimizer", get: |p| p.optimizer.clone(), set: |p, v| assign(&mut p.optimizer, one_of(v, &OPTIMIZERS)) },
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 1024).map(|x| x as u64)) },
            Field { key: "seq", get: |p| p.seq.to_string(), set: |p, v| assign(&mut p.seq, int(v, 1, 131_072).map(|x| x as u64)) },
            Field { key: "checkpointing", get: |p| p.checkpointing.to_string(), set: |p, v| assign(&mut p.checkpointing, int(v, 0, 128).map(|x| x as u64)) },
            Field { key: "accumulate", get: |p| p.accumulate.to_string(), set: |p, v| assign(&mut p.accumulate, int(v, 1, 1024).map(|x| x as u64)) },
            Field { key: "zero", get: |p| p.zero.to_string(), set: |p, v| assign(&mut p.zero, int(v, 0, 3).map(|x| x as u8)) },
            Field { key: "gpus", get: |p| p.gpus.to_string(), set: |p, v| assign(&mut p.gpus, int(v, 1, 4096).map(|x| x as u64)) },
            Field { key: "offload", get: |p| p.offload.clone(), set: |p, v| assign(&mut p.offload, one_of(v, &OFFLOADS)) },
            Field { key: "base", get: |p| p.base.clone(), set: |p, v| assign(&mut p.base, one_of(v, &BASES)) },
            Field { key: "attention", get: |p| p.attention.clone(), set: |p, v| assign(&mut p.attention, one_of(v, &ATTENTIONS)) },
        ]
    }
}

impl Settings for TimelineParams {
    const NAME: &'static str = "memory-timeline";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 32)) },
            Field { key: "seq", get: |p| p.seq.to_string(), set: |p, v| assign(&mut p.seq, int(v, 8, 128)) },
            Field { key: "method", get: |p| p.method.clone(), set: |p, v| assign(&mut p.method, one_of(v, &["full", "lora"])) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calculator_reproduces_the_cli() {
        let p = MemoryParams { model: "gpt2-medium".into(), zero: 3, ..MemoryParams::default() }.plan(None).unwrap();
        let g = p.estimate().gpu;
        // DeepSpeed's ZeRO-3 row without offload: 6.14 "GB" of model states.
        assert_eq!(tinytune::memory::deepspeed::gib2(g.params + g.master + g.gradients + g.optimizer), 6.14);
    }

    #[test]
    fn pasted_configs_are_read_and_bad_ones_named() {
        let params = MemoryParams { model: "custom".into(), seq: 512, ..MemoryParams::default() };
        let cfg = r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"intermediate_size":14336}"#;
        assert_eq!(params.plan(Some(cfg)).unwrap().arch.num_params(), 7_241_732_096);
        let e = params.plan(Some(r#"{"model_type":"llama","hidden_size":4096}"#)).unwrap_err();
        assert!(e.contains("pasted config.json") && e.contains("is missing"), "{e}");
        assert!(params.plan(None).unwrap_err().contains("paste"));
    }

    #[test]
    fn impossible_settings_are_explained() {
        let e = MemoryParams { offload: "all".into(), zero: 2, ..MemoryParams::default() }.plan(None).unwrap_err();
        assert!(e.contains("offload") && e.contains("ZeRO stage 3"), "{e}");
        let e = MemoryParams { model: "gpt2".into(), seq: 2048, ..MemoryParams::default() }.plan(None).unwrap_err();
        assert!(e.contains("1024"), "{e}");
    }

    #[test]
    fn timeline_estimates_the_micro_model() {
        let t = TimelineParams::default();
        let e = t.estimate();
        assert_eq!(e.gpu.params, ModelConfig::micro().num_params() as u64 * 4);
        let lora = TimelineParams { method: "lora".into(), ..t }.estimate();
        assert!(lora.trainable_params < e.trainable_params / 10);
    }
}

/// The estimate's phases of a *first* step, named as `measure_step` names the measured
/// ones: no optimizer state until the optimizer step allocates it.
pub fn first_step_phases(est: &Estimate) -> Vec<(&'static str, u64)> {
    let opt = est.gpu.optimizer;
    let at = |name: &str| est.phases.iter().find(|p| p.phase == name).map(|p| p.bytes).unwrap_or(0);
    vec![
        ("load weights", at("load weights")),
        ("forward", at("forward peak").saturating_sub(opt)),
        ("backward", at("backward peak").saturating_sub(opt)),
        ("optimizer step", at("optimizer step")),
    ]
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    #[test]
    fn first_step_phases_leave_out_the_optimizer_state_until_the_step() {
        let e = TimelineParams::default().estimate();
        let phases = first_step_phases(&e);
        assert_eq!(phases[0].1, e.gpu.params);
        assert_eq!(phases.iter().map(|p| p.1).max().unwrap(), e.first_step_peak);
        assert!(phases[3].1 >= e.gpu.params + e.gpu.optimizer);
    }
}
