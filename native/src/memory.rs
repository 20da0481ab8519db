//! `tinytune memory`: the estimator's breakdown for any model and setting, optionally next
//! to a measured step; and the check that refuses a training run that will not fit.

use burn::tensor::Device;
use serde_json::json;
use tinytune::ModelConfig;
use tinytune::memory::arch::Arch;
use tinytune::memory::estimate::PlanSizes;
use tinytune::memory::estimate::{DEFAULT_GPU_OVERHEAD, Estimate};
use tinytune::memory::measure::{measure_step, synthetic_batch};
use tinytune::memory::{GPUS, Offload, OptimizerKind, Plan, PlanMethod, Precision, deepspeed, human};
use tinytune::methods::{AdapterConfig, Ia3Config, LoraConfig, Method, MethodKind, MethodOptions};

use crate::cli::{MemoryArgs, TrainArgs};
use crate::fsutil::read_text;

/// Parses a kebab-case value into one of the estimator's enums, naming the flag and the
/// choices when it is not one of them.
fn choice<T: serde::de::DeserializeOwned>(flag: &str, value: &str, choices: &str) -> Result<T, String> {
    serde_json::from_value(json!(value)).map_err(|_| format!("--{flag}: '{value}' is not one of {choices}"))
}

/// The architecture named by --model: a preset, a config.json path, a model folder, or a
/// GGUF file (its metadata read as the config.json transformers would build).
fn arch(model: &str) -> Result<Arch, String> {
    let path = std::path::Path::new(model);
    if crate::model_dir::is_gguf(path) {
        let bytes = crate::fsutil::read(path)?;
        let g = tinytune::gguf::Gguf::parse(&bytes, model).map_err(|e| e.to_string())?;
        let config = tinytune::gguf::llama::config_json(&g).map_err(|e| e.to_string())?;
        return Arch::from_hf_config(&serde_json::Value::Object(config).to_string(), model).map_err(|e| e.to_string());
    }
    if model.ends_with(".json") || path.is_file() {
        let text = read_text(path)?;
        return Arch::from_hf_config(&text, path.display().to_string()).map_err(|e| e.to_string());
    }
    if path.is_dir() {
        let file = path.join("config.json");
        let text = read_text(&file)?;
        return Arch::from_hf_config(&text, file.display().to_string()).map_err(|e| e.to_string());
    }
    Arch::preset(model).map_err(|e| format!("--model: {e}"))
}

pub fn plan(a: &MemoryArgs) -> Result<Plan, String> {
    let arch = arch(&a.model)?;
    let kind: MethodKind = a.method.parse().map_err(|e| format!("--method: {e}"))?;
    let sizes = PlanSizes {
        rank: a.rank,
        targets: a.targets.as_ref().map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
        layers: a.layers,
        bottleneck: a.bottleneck,
        tokens: a.prompt_tokens,
        encoder: a.encoder_hidden,
    };
    let method = PlanMethod::of_kind(kind, &arch, &sizes);
    if !(a.overhead_gib.is_finite() && a.overhead_gib >= 0.0) {
        return Err(format!("--overhead-gib: {} is not a size; give GiB as a number ≥ 0", a.overhead_gib));
    }
    // By default 1024 tokens, or the model's whole context when it is shorter.
    let seq = a.seq.unwrap_or(if arch.positions > 0 { arch.positions.min(1024) } else { 1024 });
    if arch.positions > 0 && seq > arch.positions {
        return Err(format!("--seq: {seq} is longer than {}'s {} learned positions; choose --seq {} or less", arch.name, arch.positions, arch.positions));
    }
    let plan = Plan {
        method,
        precision: choice("precision", &a.precision, "fp32, bf16-mixed, fp16-mixed, bf16")?,
        optimizer: choice("optimizer", &a.optimizer, "sgd, sgd-momentum, adamw, adafactor, adamw8bit, lion, mezo")?,
        batch: a.batch,
        seq,
        checkpoint_every: a.checkpoint_every.unwrap_or(a.checkpointing as u64),
        accumulate: a.accumulate,
        zero: a.zero,
        gpus: a.gpus,
        offload: choice("offload", &a.offload, "none, optimizer, all")?,
        overhead: (a.overhead_gib * (1u64 << 30) as f64) as u64,
        activations: choice("activations", &a.activations, "megatron, flash, tinytune")?,
        base: choice("base", &a.base, "native, int8, nf4")?,
        ..Plan::new(arch, seq)
    };
    plan.validate("command line").map_err(crate::flags::flag_error)?;
    Ok(plan)
}

pub fn memory_cmd(a: MemoryArgs, device: &Device) -> Result<(), String> {
    let plan = plan(&a)?;
    let est = plan.estimate();
    let measured = match a.measure {
        true => Some(measure(&plan, a.method.parse().map_err(|e| format!("--method: {e}"))?, &a, device)?),
        false => None,
    };
    if a.json {
        let mut out = json!({ "plan": plan, "estimate": est, "deepspeed": deepspeed_rows(&plan), "zero_paper": deepspeed::zero_paper(plan.arch.num_params(), plan.gpus) });
        if let Some((m, tiny)) = &measured {
            out["measured"] = json!(m);
            out["measured_estimate"] = json!(tiny);
        }
        println!("{}", serde_json::to_string_pretty(&out).expect("plain data"));
        return Ok(());
    }
    print_table(&plan, &est);
    if matches!(plan.method, PlanMethod::Qlora { .. }) && crate::model_dir::is_gguf(std::path::Path::new(&a.model)) {
        gguf_base(std::path::Path::new(&a.model))?;
    }
    if let Some((m, tiny)) = measured {
        println!("\nmeasured: one real step of this shape on the CPU (tinytune's FP32 model, AdamW, first step)");
        println!("  {:<16} {:>12} {:>12}", "phase", "peak", "live after");
        for p in &m.phases {
            println!("  {:<16} {:>12} {:>12}", p.phase, human(p.peak), human(p.end));
        }
        println!(
            "  parameters {}, gradients {}, optimizer state {}, activations {}",
            human(m.params),
            human(m.grads),
            human(m.optimizer),
            human(m.activations)
        );
        let err = tiny.first_step_peak as f64 / m.peak as f64 - 1.0;
        println!(
            "  measured peak {} · estimated {} (tinytune activations, FP32, no overhead) · error {:+.1}%",
            human(m.peak),
            human(tiny.first_step_peak),
            err * 100.0
        );
        println!("  (the backend kept a further {} of thread pools and buffers after warm-up: framework overhead)", human(m.overhead));
    }
    Ok(())
}

/// QLoRA on a GGUF file keeps the file's own blocks as its frozen base (NF4 only where the
/// file stores plain floats): those bytes, beside the NF4 the estimate counts.
fn gguf_base(file: &std::path::Path) -> Result<(), String> {
    use tinytune::memory::estimate::nf4_bytes;
    let bytes = crate::fsutil::read(file)?;
    let g = tinytune::gguf::Gguf::parse(&bytes, file.display().to_string()).map_err(|e| e.to_string())?;
    let linear = |name: &str| {
        name.starts_with("blk.") && ["attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down."].iter().any(|p| name.contains(p))
    };
    let (mut weights, mut kept, mut as_nf4, mut types) = (0u64, 0u64, 0u64, Vec::new());
    for t in g.tensors.iter().filter(|t| linear(&t.name)) {
        let n = t.elements();
        weights += n;
        as_nf4 += nf4_bytes(n);
        let (name, b) = if t.ggml_type.is_block() { (t.ggml_type.name(), t.bytes()) } else { ("NF4", nf4_bytes(n)) };
        kept += b;
        if !types.contains(&name) {
            types.push(name);
        }
    }
    println!(
        "
  QLoRA on this GGUF file keeps its own blocks as the frozen base: {weights} linear weights in {} ({}), where the table above counts NF4's {}",
        human(kept),
        types.join(", "),
        human(as_nf4)
    );
    Ok(())
}

/// An enum value as the command line spells it (`bf16-mixed`, `adamw8bit`).
fn kebab<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_value(x).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn method_name(m: &PlanMethod) -> String {
    match m {
        PlanMethod::Full => "full fine-tuning".into(),
        PlanMethod::LastLayers { n } => format!("last {n} blocks"),
        PlanMethod::Bitfit => "BitFit (biases)".into(),
        PlanMethod::Layernorm => "LayerNorm only".into(),
        PlanMethod::Lora { rank, targets } => format!("LoRA r={rank} on {}", targets.join(",")),
        PlanMethod::Qlora { rank, targets } => format!("QLoRA (NF4 base) r={rank} on {}", targets.join(",")),
        PlanMethod::Adapter { bottleneck, per_block: 2 } => format!("Houlsby adapters, bottleneck {bottleneck}"),
        PlanMethod::Adapter { bottleneck, .. } => format!("one adapter per block, bottleneck {bottleneck}"),
        PlanMethod::Prompt { tokens, encoder: 0 } => format!("prompt tuning, {tokens} virtual tokens"),
        PlanMethod::Prompt { tokens, encoder } => format!("P-tuning, {tokens} virtual tokens, encoder width {encoder}"),
        PlanMethod::Prefix { tokens, .. } => format!("prefix tuning, {tokens} keys and values per layer"),
        PlanMethod::Ia3 { targets, .. } => format!("IA³ on {}", targets.join(",")),
    }
}

fn print_table(plan: &Plan, est: &Estimate) {
    let share = est.trainable_params as f64 / est.total_params as f64 * 100.0;
    // What the total includes: the model's own weights, and what the method adds to them.
    let base = plan.arch.num_params();
    let added = est.total_params.saturating_sub(base);
    let parts = if added > 0 { format!(" ({:.1} M of the model + {:.2} M added by the method)", base as f64 / 1e6, added as f64 / 1e6) } else { String::new() };
    println!(
        "{}: {:.1} M parameters{parts}, {:.2} M trainable ({share:.3}%)",
        plan.arch.name,
        est.total_params as f64 / 1e6,
        est.trainable_params as f64 / 1e6
    );
    println!(
        "{}{} · {} · {} · batch {} × seq {} · accumulate {} (effective batch {}) · ZeRO {} on {} GPU(s) · offload {} · checkpointing {}",
        method_name(&plan.method),
        if plan.base != tinytune::memory::BaseFormat::Native { format!(" on a {} base", kebab(&plan.base)) } else { String::new() },
        kebab(&plan.precision),
        kebab(&plan.optimizer),
        plan.batch,
        plan.seq,
        plan.accumulate,
        est.effective_batch,
        plan.zero,
        plan.gpus,
        kebab(&plan.offload),
        match plan.checkpoint_every {
            0 => "off".to_string(),
            1 => "every block".to_string(),
            k => format!("every {k} blocks"),
        }
    );
    println!("\n  {:<18} {:>12} {:>12}", "component", "per GPU", "per CPU");
    for ((label, g), (_, c)) in est.gpu.parts().iter().zip(est.cpu.parts()) {
        println!("  {:<18} {:>12} {:>12}", label, human(*g), if c > 0 { human(c) } else { "-".into() });
    }
    println!("  {:<18} {:>12} {:>12}", "sum", human(est.gpu.total()), human(est.cpu.total()));
    println!("\n  phases of a step (per GPU, live bytes):");
    for p in &est.phases {
        println!("  {:<18} {:>12}", p.phase, human(p.bytes));
    }
    println!("  {:<18} {:>12}  (first step: {})", "peak", human(est.peak), human(est.first_step_peak));
    let fits: Vec<&str> = GPUS.iter().filter(|g| est.peak <= g.bytes()).map(|g| g.name).collect();
    let not: Vec<&str> = GPUS.iter().filter(|g| est.peak > g.bytes()).map(|g| g.name).collect();
    println!("\n  fits on: {}", if fits.is_empty() { "none of the common GPUs".into() } else { fits.join(", ") });
    if !not.is_empty() {
        println!("  too big for: {}", not.join(", "));
    }
    if let Some(rows) = deepspeed_rows(plan) {
        println!(
            "\n  DeepSpeed's estimate_zero{}_model_states_mem_needs for {} parameters on {} GPU(s), model states only (mixed-precision Adam; CPU with its 1.5× head-room):",
            plan.zero,
            plan.arch.num_params(),
            plan.gpus
        );
        for (label, s) in rows {
            println!("  {:<34} GPU {:>6.2} GB  CPU {:>6.2} GB", label, deepspeed::gib2(s.gpu), deepspeed::gib2(s.cpu));
        }
    }
    if plan.zero >= 1 {
        let paper = deepspeed::zero_paper(plan.arch.num_params(), plan.gpus);
        println!(
            "\n  The ZeRO paper's model states per GPU on {} GPU(s) (mixed-precision Adam, 16 bytes a parameter): stage 0 {:.2} GB, 1 {:.2} GB, 2 {:.2} GB, 3 {:.2} GB.",
            plan.gpus,
            deepspeed::gib2(paper[0]),
            deepspeed::gib2(paper[1]),
            deepspeed::gib2(paper[2]),
            deepspeed::gib2(paper[3])
        );
        println!(
            "  DeepSpeed's estimator (and this table, which follows it) also counts an FP32 copy of each GPU's gradient shard (4 bytes a parameter over the GPUs), which the paper leaves out."
        );
    }
    println!(
        "\n  Sizes in GiB/MiB (2^30/2^20 bytes). Activations counted the {} way; overhead is the --overhead-gib constant. Assumptions: docs/memory.md.",
        kebab(&plan.activations)
    );
}

/// DeepSpeed's rows for this model when the plan uses ZeRO-2 or ZeRO-3.
fn deepspeed_rows(plan: &Plan) -> Option<Vec<(&'static str, deepspeed::ModelStates)>> {
    deepspeed::rows(plan.arch.num_params(), plan.arch.largest_layer_params(), plan.zero, plan.gpus)
}

/// Measures one real step of the plan's model shape (the GPT-2 or Llama layout, small
/// enough for the CPU) and estimates the same step with tinytune's accounting.
fn measure(plan: &Plan, kind: MethodKind, args: &MemoryArgs, device: &Device) -> Result<(tinytune::memory::StepMemory, Estimate), String> {
    let a = &plan.arch;
    if a.family == tinytune::memory::Family::Phi || a.num_params() > 50_000_000 {
        return Err(format!(
            "--measure runs a real step on the CPU, so it takes a GPT-2 or Llama-layout model of at most 50 M parameters (nano, micro, mini, nano-llama, micro-llama); {} is not one",
            a.name
        ));
    }
    let llama = a.family == tinytune::memory::Family::Llama;
    if !crate::backend::on_cpu() {
        return Err("--measure counts CPU allocations; use --backend flex or ndarray".into());
    }
    // The flags' method as tinytune trains it (LoRA's alpha at twice the rank).
    let targets = match &plan.method {
        PlanMethod::Lora { targets, .. } | PlanMethod::Qlora { targets, .. } => targets.clone(),
        _ if llama => LoraConfig::default_targets(tinytune::model::Family::Llama),
        _ => LoraConfig::default().target_modules,
    };
    let d = MethodOptions::default();
    let options = MethodOptions {
        lora: LoraConfig { r: args.rank as usize, lora_alpha: 2.0 * args.rank as f64, target_modules: targets, ..LoraConfig::default() },
        last_n: args.layers as usize,
        adapter: AdapterConfig { size: args.bottleneck as usize, ..d.adapter.clone() },
        virtual_tokens: args.prompt_tokens as usize,
        encoder_hidden: args.encoder_hidden as usize,
        ia3: Ia3Config::for_family(if llama { tinytune::model::Family::Llama } else { tinytune::model::Family::Gpt2 }),
        ..d
    };
    let method = Method::of_kind(kind, &options);
    if plan.optimizer != OptimizerKind::Adamw
        || plan.precision != Precision::Fp32
        || plan.zero != 0
        || plan.checkpoint_every != 0
        || plan.offload != Offload::None
    {
        return Err("--measure runs tinytune's trainer as it is: --precision fp32 --optimizer adamw, no ZeRO, offload or checkpointing".into());
    }
    let (vocab, hidden, layers, heads) = (a.vocab as usize, a.hidden as usize, a.layers as usize, a.heads as usize);
    let mut config = if llama {
        let positions = (a.positions as usize).max(plan.seq as usize);
        ModelConfig {
            qkv_bias: a.qkv_bias,
            ..ModelConfig::llama(vocab, positions, hidden, layers, heads, a.kv_heads as usize, a.intermediate as usize, a.tied)
        }
    } else {
        ModelConfig::new(vocab, a.positions as usize, hidden, layers, heads)
    };
    config.n_inner = Some(a.intermediate as usize);
    let batch = synthetic_batch(plan.batch as usize, plan.seq as usize, a.vocab as usize);
    let measured = measure_step(&config, &method, &batch, &device.clone().autodiff()).map_err(|e| e.to_string())?;
    let tiny = Plan::for_tinytune(&config, &method, plan.batch, plan.seq).estimate();
    Ok((measured, tiny))
}

/// Refuses, before training starts, a run the estimator says will not fit the device.
/// `beside` are other models the run holds (a distillation's teacher), by what they are and
/// their bytes.
pub fn check_fits(config: &ModelConfig, run: &tinytune::train::TrainConfig, args: &TrainArgs, beside: &[(&str, u64)]) -> Result<(), String> {
    if args.ignore_memory_check {
        return Ok(());
    }
    let (limit, what) = match args.device_memory_gib {
        Some(gib) => ((gib * (1u64 << 30) as f64) as u64, format!("--device-memory-gib {gib}")),
        None if crate::backend::on_cpu() => match available_ram() {
            Some(bytes) => (bytes, "the memory this machine has available".to_string()),
            None => return Ok(()),
        },
        // A GPU's size is not something wgpu reports; check only when told.
        None => return Ok(()),
    };
    // Activations scale with the micro-batch; the optimizer decides the state.
    let mut plan = Plan::for_run(config, run);
    let (batch, seq) = (plan.batch, plan.seq);
    if !crate::backend::on_cpu() {
        plan.overhead = DEFAULT_GPU_OVERHEAD;
    }
    let need = plan.estimate().peak + beside.iter().map(|(_, b)| b).sum::<u64>();
    if need > limit {
        let others: String = beside.iter().map(|(what, b)| format!("; with {what}, {}", human(*b))).collect();
        return Err(format!(
            "this run needs about {} at its peak (tinytune memory --model <config> --precision fp32 --activations tinytune --batch {batch} --seq {seq} shows the breakdown{others}), more than {what} ({}). Lower --batch or --seq-len, or pass --ignore-memory-check to start anyway",
            human(need),
            human(limit)
        ));
    }
    Ok(())
}

/// A frozen teacher's share of a distillation run's memory: its FP32 weights, and its logits
/// with the log-probabilities the divergence takes of them (`[B, T, V]` each, per
/// micro-batch of `batch` rows).
pub fn teacher_bytes(teacher: &ModelConfig, batch: usize, seq: usize) -> u64 {
    teacher.num_params() as u64 * 4 + 2 * (batch * seq * teacher.vocab_size) as u64 * 4
}

/// MemAvailable from /proc/meminfo (Linux); None elsewhere.
fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
