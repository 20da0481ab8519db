//! The commands that use a trained model: generate, eval, info, bench and demo.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;
use tinytune::data::Feedback;
use tinytune::data::Split;
use tinytune::data::rng::Rng;
use tinytune::model::{ModelConfig, named_params};
use tinytune::sample::{SampleConfig, generate};
use tinytune::train::score::{accuracy, task_answers};
use tinytune::train::{DataSource, Dataset, Objective, TrainConfig, Trainer, eval_loss, preference_eval, reference_logps};
use tinytune::{Gpt, TextTokenizer};

use crate::cli::{BenchArgs, DemoArgs, EvalArgs, GenerateArgs, InfoArgs};
use crate::model_dir;

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, String> {
    tok.encode(text).map_err(|e| e.to_string())
}

pub fn generate_cmd(args: GenerateArgs, device: &Device) -> Result<(), String> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(format!("--temperature: {} is not a temperature; use 0 for greedy decoding or a positive number such as 0.8", args.temperature));
    }
    let loaded = model_dir::load_language_model(&args.model, device)?;
    let tok = &loaded.tokenizer;
    let mut prompt_text = args.prompt.replace("\\n", "\n");
    let mut stop_ids: Vec<u32> = if args.stop_at_newline { tok.line_stop_ids() } else { tok.eot().into_iter().collect() };
    if args.chat {
        let Some(chat) = &loaded.chat else {
            return Err(format!(
                "--chat: {} has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json); drop --chat to continue plain text",
                loaded.dir.display()
            ));
        };
        prompt_text = chat.user_prompt(&prompt_text).map_err(|e| e.to_string())?;
        // The reply ends at the template's end-of-turn token.
        stop_ids.extend(chat.stop_ids(tok));
    }
    let end_ids: Vec<u32> = match &loaded.chat {
        Some(chat) => chat.stop_ids(tok),
        None => tok.eot().into_iter().collect(),
    };
    let mut prompt = encode(tok, &prompt_text)?;
    if prompt.is_empty() {
        // An empty prompt starts a new document, as after <|endoftext|> in pre-training.
        prompt = tok.eot().into_iter().collect();
    }
    for i in 0..args.samples {
        let config = SampleConfig {
            max_new_tokens: args.max_tokens,
            temperature: args.temperature,
            top_k: (args.top_k > 0).then_some(args.top_k),
            seed: args.seed + i as u64,
            stop_ids: stop_ids.clone(),
            cache: !args.no_cache,
        };
        let started = std::time::Instant::now();
        let out = generate(&loaded.model, &prompt, &config);
        if args.stats {
            let s = started.elapsed().as_secs_f64();
            let cache = if args.no_cache { "off" } else { "on" };
            eprintln!("{} tokens in {s:.3} s: {:.1} tokens/s (key/value cache {cache})", out.len(), out.len() as f64 / s);
        }
        let text = tok.decode(&out);
        if args.samples > 1 {
            println!("--- sample {} ---", i + 1);
        }
        // A reply that ends with the end-of-text or end-of-turn token is shown without it
        // (a line stop's token is text, and stays).
        let ended = out.last().is_some_and(|id| end_ids.contains(id));
        let text = if ended { tok.decode(&out[..out.len() - 1]) } else { text };
        if args.chat {
            println!("{}", text.trim_end());
        } else {
            println!("{}{}", prompt_text, text.trim_end_matches(tinytune::tokenizer::EOT));
        }
    }
    Ok(())
}

pub fn eval_cmd(mut args: EvalArgs, device: &Device) -> Result<(), String> {
    // Without --data: what the run trained on (a file it read, or its built-in data).
    if args.data.is_none()
        && let Ok(dir) = model_dir::resolve(&args.model)
        && let Ok(text) = std::fs::read_to_string(dir.join(tinytune::checkpoint::files::TRAIN))
        && let Ok(train) = tinytune::train::TrainConfig::from_json(&text, "train.json")
    {
        let data = train.data_file.clone().unwrap_or_else(|| train.data.to_string());
        eprintln!("evaluating on {data}, the data the run trained on (--data to choose)");
        args.data = Some(data);
    }
    if args.objective.as_deref() == Some("grpo") {
        return rl_eval_cmd(args, device);
    }
    if let Some(name) = args.objective.clone() {
        return preference_eval_cmd(args, &name, device);
    }
    if args.adapter.is_some() || args.reference.is_some() {
        return Err("--adapter and --reference go with a preference objective (--objective dpo, ipo, hinge, robust, orpo, kto or reward)".into());
    }
    let loaded = model_dir::load_language_model(&args.model, device)?;
    // A soft prompt takes positions of its own: the rows get what is left.
    let context = loaded.model.context_len();
    let seq_len = args.seq_len.unwrap_or(context.min(128));
    if seq_len > context {
        return Err(format!(
            "--seq-len: {seq_len} is longer than the {context} tokens the model takes (n_positions = {}, less any soft prompt)",
            loaded.config.n_positions
        ));
    }
    if args.data().ends_with(".jsonl") {
        // The whole file is held out: its loss on the response (assistant) tokens, each
        // conversation rendered with the model's template, e.g. a forgetting meter.
        let file = args.data();
        let text = crate::fsutil::read_text(std::path::Path::new(file))?;
        let groups = tinytune::data::jsonl::parse(&text, file, loaded.chat.as_ref()).map_err(|e| e.to_string())?;
        let examples: Vec<_> = groups.into_iter().flatten().collect();
        let ds = Dataset::from_examples(&loaded.tokenizer, &examples, seq_len, 0.0).map_err(|e| format!("{file}: {e}"))?;
        // Fewer examples than --batch make one smaller batch, not an error.
        let loss = eval_loss(&loaded.model, &ds, args.batch.min(ds.len()).max(1), seq_len, usize::MAX).map_err(|e| e.to_string())?;
        if args.json {
            println!("{}", json!({"model": loaded.dir, "data": file, "eval_loss": loss, "perplexity": (loss as f64).exp(), "examples": examples.len()}));
        } else {
            println!(
                "{}: {file} ({} examples) response loss {loss:.4} nats/token (perplexity {:.2})",
                loaded.dir.display(),
                examples.len(),
                (loss as f64).exp()
            );
        }
        return Ok(());
    }
    let data: DataSource = args.data().parse().map_err(|e| format!("--data: {e}"))?;
    let ds = data.dataset(&loaded.tokenizer, args.data_seed, Split::Eval, args.examples, seq_len, 0.0).map_err(|e| e.to_string())?;
    let batch = if matches!(ds, Dataset::Stream { .. }) { args.batch } else { args.batch.min(ds.len()).max(1) };
    let loss = eval_loss(&loaded.model, &ds, batch, seq_len, usize::MAX).map_err(|e| e.to_string())?;
    let acc = match data {
        DataSource::Task(task) if args.accuracy_examples > 0 => {
            let answers = task_answers(&loaded.model, &loaded.tokenizer, task, args.data_seed, args.accuracy_examples).map_err(|e| e.to_string())?;
            Some((accuracy(&answers), answers))
        }
        _ => None,
    };
    if args.json {
        println!(
            "{}",
            json!({"model": loaded.dir, "data": data.to_string(), "eval_loss": loss, "perplexity": (loss as f64).exp(), "accuracy": acc.as_ref().map(|a| a.0)})
        );
        return Ok(());
    }
    println!("{}: held-out {data} loss {loss:.4} nats/token (perplexity {:.2})", loaded.dir.display(), (loss as f64).exp());
    if let Some((acc, rows)) = acc {
        println!("exact-match accuracy on {} held-out prompts: {:.1}%", rows.len(), acc * 100.0);
        for a in rows.iter().take(5) {
            println!("  {} expected {:?}, answered {:?}", if a.correct { "✓" } else { "✗" }, a.expected, a.answered);
        }
    }
    Ok(())
}

/// `tinytune eval --objective dpo …`: TRL's DPO metrics of a model (with its adapter) on
/// preference pairs against a reference, without training: what `DPOTrainer.evaluate()`
/// reports, under the same names.
fn preference_eval_cmd(args: EvalArgs, name: &str, device: &Device) -> Result<(), String> {
    let mut objective = Objective::from_name(name, args.beta, args.label_smoothing).map_err(|e| format!("--objective: {e}"))?;
    args.kto.apply(&mut objective);
    if !objective.is_preference() {
        return Err(format!("--objective: {name} is not a preference objective; leave --objective out for the next-token loss"));
    }
    objective.validate("command line").map_err(|e| e.to_string())?;
    let loaded = model_dir::load(&args.model, device)?;
    let context = loaded.model.context_len();
    let seq_len = args.seq_len.unwrap_or(context.min(128)).min(context);
    // The reference is named: a model scored against itself has every reward 0 (what TRL
    // 1.16 does by default for a model with a trained adapter, which it copies). ORPO has
    // none.
    let reference = match (&args.reference, objective.needs_reference()) {
        (Some(dir), true) => Some(model_dir::load_reference(dir, &loaded.tokenizer, device)?),
        (None, true) => {
            return Err(format!(
                "--reference: a {} evaluation scores the model against a reference model; pass its folder (e.g. the base model the adapter was trained on)",
                objective.name()
            ));
        }
        (Some(_), false) => return Err(format!("--reference: {} has no reference model; leave --reference out", objective.name())),
        (None, false) => None,
    };
    if objective.is_reward_model() != loaded.model.score.is_some() {
        return Err(if objective.is_reward_model() {
            format!(
                "--model: {} is a language model; a reward evaluation needs a reward model (config.json's architectures a *ForSequenceClassification, as `finetune --objective reward` writes)",
                loaded.dir.display()
            )
        } else {
            format!("--model: {} is a reward model (a score head, no LM head); evaluate it with --objective reward", loaded.dir.display())
        });
    }
    let policy = with_adapter(loaded.model, &loaded.dir, args.adapter.as_deref(), device)?;
    let feedback = if args.data().ends_with(".jsonl") {
        let text = crate::fsutil::read_text(std::path::Path::new(&args.data()))?;
        if objective.is_unpaired() {
            tinytune::data::preference::parse_feedback(&text, args.data(), loaded.chat.as_ref()).map_err(|e| e.to_string())?
        } else {
            Feedback::Pairs(tinytune::data::preference::parse(&text, args.data(), loaded.chat.as_ref()).map_err(|e| e.to_string())?)
        }
    } else {
        match args.data().parse::<DataSource>().map_err(|e| format!("--data: {e}"))? {
            DataSource::Pairs(task, kind) => Feedback::Pairs(task.pairs(kind, args.data_seed, Split::Eval, args.examples)),
            other => {
                return Err(format!("--data: {other} is not preference data; use a task's pairs (story-qa-pairs, …) or a prompt/chosen/rejected .jsonl file"));
            }
        }
    };
    // KTO's mismatched completions rotate within chunks of --batch examples (TRL's
    // per_device_train_batch_size).
    let ds = match &feedback {
        Feedback::Pairs(pairs) => Dataset::from_pairs_for(&objective, &loaded.tokenizer, pairs, seq_len, args.batch),
        Feedback::Unpaired(examples) => Dataset::from_unpaired(&loaded.tokenizer, examples, seq_len, args.batch),
    };
    let mut ds = ds.map_err(|e| format!("{}: {e}", args.data()))?;
    if let Some(reference) = &reference {
        ds.set_refs(reference_logps(reference, &ds, args.batch, seq_len).map_err(|e| e.to_string())?);
    }
    let m = preference_eval(&objective, &policy, &ds, args.batch, seq_len, usize::MAX).map_err(|e| e.to_string())?;
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("model".into(), json!(loaded.dir));
        out.insert("adapter".into(), json!(args.adapter));
        out.insert("data".into(), json!(args.data()));
        out.insert("objective".into(), json!(objective));
        out.insert(if objective.is_unpaired() { "examples" } else { "pairs" }.into(), json!(m.pairs));
        out.insert("loss".into(), json!(m.loss));
        for (k, v) in &m.metrics {
            out.insert(k.clone(), json!(v));
        }
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    let unit = if objective.is_unpaired() { "examples" } else { "pairs" };
    let beta = if objective.is_reward_model() { String::new() } else { format!(" (beta {})", args.beta) };
    println!("{}: {} on {} {unit} of {}{beta}", loaded.dir.display(), objective.name(), m.pairs, args.data());
    println!("  {:<20} {:.6}", "loss", m.loss);
    for (k, v) in &m.metrics {
        println!("  {k:<20} {v:.6}");
    }
    Ok(())
}

/// `tinytune eval --objective grpo`: a model's verifiable reward on a task's held-out
/// prompts, as a GRPO run's evaluation measures it (the same prompts for the same data seed
/// and count): G completions sampled per prompt, and the greedy answer.
fn rl_eval_cmd(args: EvalArgs, device: &Device) -> Result<(), String> {
    if args.reference.is_some() {
        return Err("--reference: the grpo evaluation scores rewards, not a reference; leave --reference out".into());
    }
    let task = match args.data().parse::<DataSource>().map_err(|e| format!("--data: {e}"))? {
        DataSource::Task(task) => task,
        other => return Err(format!("--data: {other} has no verifiable answers; use story-qa, sentiment or json-extract")),
    };
    let loaded = model_dir::load(&args.model, device)?;
    let context = loaded.model.context_len();
    let seq_len = args.seq_len.unwrap_or(context.min(128)).min(context);
    let policy = with_adapter(loaded.model, &loaded.dir, args.adapter.as_deref(), device)?;
    let objective = Objective::Grpo {
        group_size: args.group_size,
        beta: 0.0,
        epsilon: 0.2,
        temperature: args.temperature,
        max_completion_len: args.max_completion_len,
        loss_type: Default::default(),
    };
    objective.validate("command line").map_err(|e| e.to_string().replace("objective.", "--").replace('_', "-"))?;
    let set = tinytune::train::grpo::PromptSet::new(task, &loaded.tokenizer, args.data_seed, Split::Eval, args.accuracy_examples).map_err(|e| e.to_string())?;
    let settings = tinytune::train::grpo::RolloutSettings {
        group_size: args.group_size,
        temperature: args.temperature,
        max_completion_len: args.max_completion_len,
        seq_len,
        seed: 0,
    };
    let m = tinytune::train::grpo::held_out_reward(&policy, &set, &loaded.tokenizer, args.accuracy_examples, &settings).map_err(|e| e.to_string())?;
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("model".into(), json!(loaded.dir));
        out.insert("data".into(), json!(args.data()));
        out.insert("prompts".into(), json!(set.len().min(args.accuracy_examples)));
        out.insert("group_size".into(), json!(args.group_size));
        out.insert("temperature".into(), json!(args.temperature));
        for (k, v) in &m {
            out.insert(k.clone(), json!(v));
        }
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    println!(
        "{}: {task} reward on {} held-out prompts ({} samples each at temperature {})",
        loaded.dir.display(),
        set.len().min(args.accuracy_examples),
        args.group_size,
        args.temperature
    );
    for (k, v) in &m {
        println!("  {k:<14} {v:.4}");
    }
    Ok(())
}

pub fn info_cmd(args: InfoArgs, device: &Device) -> Result<(), String> {
    // For a run: which parameters its method trains (an autodiff device records it), and
    // the method's closed-form count to check the table against.
    let (config, params, method) = match (&args.model, &args.preset) {
        (Some(dir), None) => {
            let loaded = model_dir::load(dir, &device.clone().autodiff())?;
            let method = model_dir::method_of(&loaded.dir)?;
            let params = named_params(&loaded.model);
            let closed = method.trainable_params(&loaded.model);
            (loaded.config, params, Some((method, closed)))
        }
        (None, Some(p)) => {
            let config = ModelConfig::preset(p).map_err(|e| format!("--preset: {e}"))?;
            // Counting needs only shapes; build the model lazily-sized for small presets and
            // by formula for GPT-2 sizes (initialising 1.5 B weights just to count them is slow).
            if config.num_params() > 20_000_000 {
                (config.clone(), config.param_summaries(), None)
            } else {
                let model = Gpt::init(&config, 0, device);
                (config, named_params(&model), None)
            }
        }
        _ => return Err("info: pass exactly one of --model DIR or --preset NAME".into()),
    };
    let total: usize = params.iter().map(|p| p.numel).sum();
    let trainable: usize = params.iter().filter(|p| p.trainable).map(|p| p.numel).sum();
    if args.json {
        let method = method.as_ref().map(|(m, closed)| json!({"method": m.name(), "trainable": trainable, "closed_form": closed}));
        println!("{}", json!({"config": config, "total": total, "params": params, "method": method}));
        return Ok(());
    }
    let run = method.is_some();
    println!("{:<32} {:>16} {:>12} {:>7}{}", "parameter", "shape", "count", "share", if run { "  trains" } else { "" });
    let mut group = String::new();
    let (mut group_total, mut group_trains) = (0usize, 0usize);
    let flush = |g: &str, n: usize, t: usize| {
        if !g.is_empty() {
            let trains = if run { format!("  {t} train") } else { String::new() };
            println!("{:<32} {:>16} {:>12} {:>6.2}%{trains}", format!("  = {g}"), "", n, 100.0 * n as f64 / total as f64);
        }
    };
    for p in &params {
        let g = layer_group(&p.name);
        if g != group {
            flush(&group, group_total, group_trains);
            group = g;
            (group_total, group_trains) = (0, 0);
        }
        group_total += p.numel;
        group_trains += if p.trainable { p.numel } else { 0 };
        let mark = if run { if p.trainable { "  yes" } else { "  no" } } else { "" };
        println!("{:<32} {:>16} {:>12} {:>6.2}%{mark}", p.name, format!("{:?}", p.shape), p.numel, 100.0 * p.numel as f64 / total as f64);
    }
    flush(&group, group_total, group_trains);
    println!("total {total} parameters ({:.3} M); closed form {}", total as f64 / 1e6, config.num_params());
    if let Some((m, closed)) = method {
        println!(
            "{}: {trainable} trainable ({:.2}% of the base model's {}); closed form {closed}",
            m.name(),
            100.0 * trainable as f64 / config.num_params() as f64,
            config.num_params()
        );
    }
    if let Some(file) = args.model.as_ref().filter(|m| model_dir::is_gguf(m)) {
        gguf_storage(file)?;
    }
    Ok(())
}

/// How a GGUF file stores its weights, by type, against the FP32 they load as.
fn gguf_storage(file: &std::path::Path) -> Result<(), String> {
    let bytes = crate::fsutil::read(file)?;
    let g = tinytune::gguf::Gguf::parse(&bytes, file.display().to_string()).map_err(|e| e.to_string())?;
    let rows = g.storage();
    let (weights, stored): (u64, u64) = rows.iter().fold((0, 0), |(w, b), r| (w + r.2, b + r.3));
    println!("stored in {} as:", file.display());
    for (t, tensors, w, b) in &rows {
        println!("  {:<6} {tensors:>4} tensors {w:>12} weights {:>9.2} MiB  {:.2} bits/weight", t.name(), *b as f64 / 1048576.0, *b as f64 * 8.0 / *w as f64);
    }
    println!(
        "  total  {:.2} MiB ({:.2} bits/weight); {:.2} MiB as the FP32 tinytune computes in ({:.1}× more)",
        stored as f64 / 1048576.0,
        stored as f64 * 8.0 / weights as f64,
        weights as f64 * 4.0 / 1048576.0,
        weights as f64 * 4.0 / stored as f64
    );
    Ok(())
}

fn layer_group(name: &str) -> String {
    match name.split('.').collect::<Vec<_>>().as_slice() {
        ["h", i, ..] => format!("h.{i}"),
        [first, ..] => first.to_string(),
        [] => String::new(),
    }
}

/// Parameter names and shapes of a GPT-2 model without allocating it.
pub fn bench_cmd(args: BenchArgs, device: &Device) -> Result<(), String> {
    if args.steps == 0 {
        return Err("--steps: 0 timed steps measure nothing; use at least 1 (the default is 20)".into());
    }
    let config = match &args.preset {
        Some(name) => {
            let c = ModelConfig::preset(name).map_err(|e| format!("--preset: {e}"))?;
            ModelConfig { n_positions: c.n_positions.max(args.ctx), ..c }
        }
        None => ModelConfig::new(args.vocab, args.ctx, args.d_model, args.layers, args.heads),
    };
    // Name the bench flag, not the config.json field it fills.
    config.validate("bench flags").map_err(crate::flags::flag_error)?;
    let method = args.method.to_method(None, config.family)?;
    let precision: tinytune::train::Precision = args.precision.parse().map_err(|e| format!("--precision: {e}"))?;
    let ad = device.clone().autodiff();
    precision.check(&ad, "bench flags").map_err(crate::flags::flag_error)?;
    // Uniformly random tokens: throughput does not depend on what the tokens say.
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..200_000).map(|_| rng.below(config.vocab_size) as u32).collect();
    let data = Dataset::Stream { tokens };
    let train = TrainConfig {
        steps: args.steps + 3,
        batch_size: args.batch,
        seq_len: args.ctx,
        warmup_steps: 0,
        optimizer: tinytune::optim::OptimConfig { clip_grad_norm: None, ..Default::default() },
        method: method.clone(),
        precision,
        // GradScaler's growth interval, the --scale-growth-interval default of training runs.
        loss_scale: crate::train::loss_scale(precision, None, 2000)?,
        checkpointing: args.checkpointing,
        ..TrainConfig::default()
    };
    // The peak covers the whole run: weights, optimizer state and every step's work.
    let meter = crate::devmem::Meter::start(&ad);
    let model = method.apply(Gpt::init(&config, 0, &ad), 0, &ad).map_err(crate::flags::flag_error)?;
    let trainable = tinytune::model::trainable_count(&model);
    let mut trainer = Trainer::from_datasets(model, train, data.clone(), data, &ad).map_err(|e| e.to_string())?;
    let bar = crate::progress::bar(args.steps as u64 + 3, "bench");
    bar.set_message("3 warm-up steps (untimed)");
    for _ in 0..3 {
        trainer.step().map_err(|e| e.to_string())?;
        bar.inc(1);
    }
    let start = web_time::Instant::now();
    let mut last = 0.0;
    for i in 0..args.steps {
        last = trainer.step().map_err(|e| e.to_string())?.loss;
        bar.inc(1);
        let tokens = ((i + 1) * args.batch * args.ctx) as f64;
        bar.set_message(format!("{:.0} tokens/s", tokens / start.elapsed().as_secs_f64()));
    }
    // Finished work, not queued work, is timed: GPU backends run asynchronously.
    let _ = ad.sync();
    let secs = start.elapsed().as_secs_f64();
    let memory = meter.finish();
    bar.finish_and_clear();
    let tokens = (args.steps * args.batch * args.ctx) as f64;
    let tps = tokens / secs;
    let flops = training_flops_per_token(&config, args.ctx) * tokens / secs;
    if args.json {
        println!(
            "{}",
            json!({"tokens_per_s": tps, "tflops": flops / 1e12, "steps_per_s": args.steps as f64 / secs, "seconds_per_step": secs / args.steps as f64, "params": config.num_params(), "trainable": trainable, "method": method.name(), "precision": precision.name(), "checkpointing": args.checkpointing, "d_model": config.n_embd, "layers": config.n_layer, "heads": config.n_head, "ctx": args.ctx, "batch": args.batch, "vocab": config.vocab_size, "steps": args.steps, "seconds": secs, "final_loss": last, "peak_bytes": memory.map(|m| m.peak_bytes), "resting_bytes": memory.map(|m| m.resting_bytes), "peak_source": memory.map(|m| m.source)})
        );
    } else {
        let peak = memory.map_or_else(
            || "not measured".to_string(),
            |m| format!("{}, between steps {} ({})", tinytune::memory::human(m.peak_bytes), tinytune::memory::human(m.resting_bytes), m.source),
        );
        println!(
            "{:.2} M params ({} trains {}, {}{}), batch {}×{}: {:.0} tokens/s, {:.3} TFLOP/s ({:.2} steps/s over {} timed steps, {:.1} s), peak memory {peak}",
            config.num_params() as f64 / 1e6,
            method.name(),
            trainable,
            precision.name(),
            if args.checkpointing { ", gradient checkpointing" } else { "" },
            args.batch,
            args.ctx,
            tps,
            flops / 1e12,
            args.steps as f64 / secs,
            args.steps,
            secs
        );
        println!(
            "TFLOP/s counts a full training step as PaLM's appendix B does: 6 × the parameters that multiply activations, plus 12 × layers × width × context for attention, per token (other methods skip some of that work)"
        );
    }
    Ok(())
}

/// Floating-point operations of one training step per token, as PaLM (Chowdhery et al.
/// 2022, appendix B) counts model FLOPs: `6·N` for the forward and backward passes through
/// the N parameters that multiply activations (every weight matrix and the output layer;
/// not position embeddings, and not the input embedding when it is a separate lookup table),
/// plus `12·L·d·T` for the attention scores and weighted values over a context of T.
pub fn training_flops_per_token(config: &ModelConfig, ctx: usize) -> f64 {
    let d = config.n_embd as f64;
    let mut n = config.num_params() as f64;
    if config.family == tinytune::model::Family::Gpt2 {
        n -= (config.n_positions * config.n_embd) as f64;
    }
    if !config.tie_word_embeddings {
        n -= (config.vocab_size * config.n_embd) as f64;
    }
    6.0 * n + 12.0 * config.n_layer as f64 * d * ctx as f64
}

/// The pretrained checkpoint committed to the repository.
pub fn shipped_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets").join("micro");
    path.canonicalize().unwrap_or(path)
}

pub fn demo_cmd(args: DemoArgs, device: &Device) -> Result<(), String> {
    let dir = args.model.unwrap_or_else(shipped_model);
    let loaded = model_dir::load(&dir, device)?;
    let c = &loaded.config;
    println!(
        "tinytune demo: {} ({:.2} M parameters: {} layers, {} heads, width {}, context {}, {} tokenizer with {} tokens)\n",
        dir.display(),
        c.num_params() as f64 / 1e6,
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.n_positions,
        loaded.tokenizer.kind(),
        loaded.tokenizer.vocab_size()
    );
    println!("Three stories it writes from the prompt \"one day,\" (temperature 0.8, top-k 40):\n");
    for seed in 0..3 {
        let prompt = encode(&loaded.tokenizer, "one day,")?;
        let cfg = SampleConfig { max_new_tokens: 80, seed, stop_ids: loaded.tokenizer.eot().into_iter().collect(), ..Default::default() };
        let text = loaded.tokenizer.decode(&generate(&loaded.model, &prompt, &cfg));
        println!("  one day,{}\n", text.trim_end_matches(tinytune::tokenizer::EOT).trim_end());
    }
    let seq = c.n_positions.min(128);
    let stories = DataSource::Stories.dataset(&loaded.tokenizer, 0, Split::Eval, 200, seq, 0.0).map_err(|e| e.to_string())?;
    let loss = eval_loss(&loaded.model, &stories, 16, seq, 8).map_err(|e| e.to_string())?;
    let untrained = Gpt::init(c, 1, device);
    let base = eval_loss(&untrained.valid(), &stories, 16, seq, 8).map_err(|e| e.to_string())?;
    println!(
        "held-out story loss: {loss:.3} nats/token (an untrained model of the same shape: {base:.3}; uniform guessing: {:.3})",
        (c.vocab_size as f64).ln()
    );
    println!("\nNext: `tinytune finetune --model {} --data story-qa --out runs/qa` teaches it to answer questions.", dir.display());
    Ok(())
}

/// `tinytune merge-adapter`: the run's model with every LoRA or IA³ update folded in
/// (`W + s·A·B`, W scaled by IA³'s vectors; an NF4 base is dequantized first), saved as an
/// ordinary model folder. Adapters and soft prompts cannot merge, and the error says why.
pub fn merge_adapter_cmd(a: crate::cli::MergeAdapterArgs, device: &Device) -> Result<(), String> {
    use tinytune::methods::merge;
    if a.out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", a.out.display()));
    }
    let loaded = crate::model_dir::load(&a.model, device)?;
    let method = crate::model_dir::method_of(&loaded.dir)?;
    if let Some(why) = method.merge_blocker() {
        return Err(format!("{}: its method is {}, which cannot be merged: {why}. Load the run folder itself to use it", a.model.display(), method.name()));
    }
    if method == tinytune::methods::Method::Full || method.selection().is_some() {
        return Err(format!("{}: its method is {}, which adds no adapter to merge; its weights are already a plain model", a.model.display(), method.name()));
    }
    let merged = merge(loaded.model);
    crate::model_dir::write_model_folder(&a.out, &loaded.companions, &loaded.config, &loaded.tokenizer, &merged)?;
    eprintln!(
        "merged the {} adapters of {} into {} ({} parameters, no adapters)",
        method.name(),
        a.model.display(),
        a.out.display(),
        loaded.config.num_params()
    );
    Ok(())
}

/// `tinytune export-adapter`: the run's adapter as PEFT's two files, written to a staging
/// folder and renamed, so --out is either complete or absent.
pub fn export_adapter_cmd(a: crate::cli::ExportAdapterArgs, device: &Device) -> Result<(), String> {
    use tinytune::methods::peft;
    if a.out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", a.out.display()));
    }
    let loaded = crate::model_dir::load(&a.model, device)?;
    let method = crate::model_dir::method_of(&loaded.dir)?;
    let pissa = matches!(&method, tinytune::methods::Method::Lora(l) if l.init == tinytune::methods::lora::LoraInit::Pissa);
    let (config, weights) = match (&a.pissa_base, pissa) {
        (None, true) => {
            return Err(format!(
                "{}: a PiSSA run trained on a changed base (W minus the adapter's starting value), so its adapter alone does not apply to the original model; pass --pissa-base DIR (the model the run started from) to export it as an ordinary rank-{} LoRA of that model, as PEFT converts PiSSA adapters, or use merge-adapter for a plain model",
                a.model.display(),
                match &method {
                    tinytune::methods::Method::Lora(l) => 2 * l.r,
                    _ => 0,
                }
            ));
        }
        (Some(_), false) => return Err(format!("--pissa-base: {} is a {} run, not a PiSSA one; leave --pissa-base out", a.model.display(), method.name())),
        (Some(dir), true) => {
            // The run's starting point: the original base with the run's method applied
            // (PiSSA's start is a function of the weights and the run's seed).
            let original = crate::model_dir::load(dir, device).map_err(|e| format!("--pissa-base: {e}"))?;
            let train = tinytune::train::TrainConfig::from_json(&crate::fsutil::read_text(&loaded.dir.join(tinytune::checkpoint::files::TRAIN))?, "train.json")
                .map_err(|e| e.to_string())?;
            let initial = method.apply(original.model, train.seed, device).map_err(|e| format!("--pissa-base: {e}"))?;
            peft::save_pissa_as_lora(&loaded.model, &initial, &method, a.base_model.as_deref()).map_err(|e| format!("{}: {e}", a.model.display()))?
        }
        (None, false) => peft::save(&loaded.model, &method, a.base_model.as_deref()).map_err(|e| format!("{}: {e}", a.model.display()))?,
    };
    let mut files = vec![(peft::CONFIG, config.into_bytes()), (peft::WEIGHTS, weights)];
    let note = match &method {
        tinytune::methods::Method::Qlora(q) => Some(format!(
            "This LoRA adapter was trained by tinytune's QLoRA against its base weights quantized to NF4 (blocks of {}, double quantization {}). Load the base in 4 bits (bitsandbytes nf4, as QLoRA does) to reproduce the run; on a 16- or 32-bit base the outputs differ by the rounding the adapter learned around.\n",
            q.block, q.double_quant
        )),
        _ if pissa => Some("Converted from a PiSSA run: an ordinary LoRA of the original base at twice the run's rank (the trained adapter minus its starting value), as PEFT converts PiSSA adapters.\n".to_string()),
        _ => None,
    };
    if let Some(note) = &note {
        files.push(("README.md", note.clone().into_bytes()));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    crate::fsutil::write_new_folder(&a.out, &refs)?;
    eprintln!("wrote {}'s {} adapter to {} in PEFT's format", a.model.display(), method.name(), a.out.display());
    if let Some(note) = note {
        eprint!("note: {note}");
    }
    Ok(())
}

/// `tinytune merge CONFIG --out DIR`: the models a mergekit config names, merged tensor by
/// tensor, written as a model folder with the base's (or the first model's) tokenizer and
/// companion files.
pub fn merge_cmd(a: crate::cli::MergeArgs, device: &Device) -> Result<(), String> {
    use tinytune::merging::{MergeConfig, merge_models};
    if a.out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", a.out.display()));
    }
    let origin = a.config.display().to_string();
    let config = MergeConfig::from_yaml(&crate::fsutil::read_text(&a.config)?, origin.as_str()).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    for name in config.model_names() {
        let model = crate::model_dir::load(std::path::Path::new(&name), device).map_err(|e| format!("{origin}: model {name}: {e}"))?;
        loaded.push((name, model));
    }
    let models: Vec<(String, tinytune::Gpt)> = loaded.iter().map(|(n, l)| (n.clone(), l.model.clone())).collect();
    let merged = merge_models(&config, &models, a.seed, device).map_err(|e| e.to_string())?;
    let source = &loaded[0].1;
    // The merged model's own config: a passthrough merge has its own depth.
    crate::model_dir::write_model_folder(&a.out, &source.companions, merged.config(), &source.tokenizer, &merged)?;
    eprintln!("merged {} models with {} into {} (tokenizer from {})", loaded.len(), config.method_name, a.out.display(), loaded[0].0);
    Ok(())
}

/// `tinytune combine-adapters`: LoRA adapters combined as PEFT's add_weighted_adapter.
pub fn combine_adapters_cmd(a: crate::cli::CombineAdaptersArgs, device: &Device) -> Result<(), String> {
    use tinytune::merging::adapters::{Combine, LoraAdapter, Majority, add_weighted_adapter};
    use tinytune::methods::peft;
    if a.out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", a.out.display()));
    }
    let majority = match a.majority_sign_method.as_str() {
        "total" => Majority::Total,
        "frequency" => Majority::Frequency,
        other => return Err(format!("--majority-sign-method: {other:?} is not total or frequency")),
    };
    let mut sources = Vec::new();
    for dir in &a.adapters {
        let name = dir.display().to_string();
        let (config, weights) = if dir.join(peft::CONFIG).exists() {
            (crate::fsutil::read_text(&dir.join(peft::CONFIG))?, crate::fsutil::read(&dir.join(peft::WEIGHTS))?)
        } else {
            // A tinytune run: its adapter as PEFT writes it.
            let loaded = model_dir::load(dir, device)?;
            let method = model_dir::method_of(&loaded.dir)?;
            peft::save(&loaded.model, &method, None).map_err(|e| format!("{name}: {e}"))?
        };
        sources.push(LoraAdapter::read(&config, &weights, &name).map_err(|e| e.to_string())?);
    }
    let opts = Combine {
        combination: a.combination.clone(),
        weights: a.weights.clone(),
        density: a.density,
        majority,
        svd_rank: a.svd_rank,
        svd_clamp: a.svd_clamp,
        seed: a.seed,
    };
    // Errors about the settings name their flag; those about a source name its file.
    let (config, weights) = add_weighted_adapter(&sources, &opts).map_err(|e| match &e {
        tinytune::Error::Config { origin, .. } if origin.to_string() == "combine adapters" => crate::flags::flag_error(e),
        _ => e.to_string(),
    })?;
    crate::fsutil::write_new_folder(&a.out, &[(peft::CONFIG, config.as_bytes()), (peft::WEIGHTS, &weights)])?;
    let r = serde_json::from_str::<serde_json::Value>(&config).ok().and_then(|v| v["r"].as_u64()).unwrap_or(0);
    eprintln!("combined {} adapters with {} into {} (rank {r}, lora_alpha {r})", sources.len(), a.combination, a.out.display());
    Ok(())
}

/// `tinytune federated`: FedAvg rounds, and the pooled baseline beside them.
pub fn federated_cmd(a: crate::cli::FederatedArgs, device: &Device) -> Result<(), String> {
    use tinytune::merging::federated::{FedConfig, Federated};
    let task = a.task.parse::<tinytune::data::Task>().map_err(|e| format!("--task: {e}"))?;
    let ad = device.clone().autodiff();
    let loaded = model_dir::load(&a.model, &ad)?;
    let config = FedConfig {
        task,
        clients: a.clients,
        rounds: a.rounds,
        local_steps: a.local_steps,
        lr: a.lr,
        examples_per_client: a.examples_per_client,
        seed: a.seed,
    };
    let mut fed = Federated::new(loaded.model, &loaded.tokenizer, config.clone(), &ad).map_err(crate::flags::flag_error)?;
    eprintln!("{} clients, {} examples each, {} steps per round", a.clients, a.examples_per_client, a.local_steps);
    let rounds = fed.run(&ad).map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", json!({"config": config, "start_loss": fed.start_loss, "rounds": rounds}));
        return Ok(());
    }
    println!("federated averaging on {task}: held-out loss before any round {:.4}", fed.start_loss);
    println!("{:>5} {:>12} {:>12} {:>10} {:>10}", "round", "best client", "worst client", "averaged", "pooled");
    for r in &rounds {
        let best = r.clients.iter().copied().fold(f32::INFINITY, f32::min);
        let worst = r.clients.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        println!("{:>5} {best:>12.4} {worst:>12.4} {:>10.4} {:>10.4}", r.round, r.averaged, r.pooled);
    }
    Ok(())
}

/// `tinytune merge-study`: two fine-tunes of one model, every merge method, both tasks'
/// scores.
pub fn merge_study_cmd(a: crate::cli::MergeStudyArgs, device: &Device) -> Result<(), String> {
    use tinytune::merging::study::{Knobs, METHODS, Scored, Study, finetune_config, study_yaml};
    let task = |flag: &str, v: &str| v.parse::<tinytune::data::Task>().map_err(|e| format!("{flag}: {e}"));
    let tasks = [task("--task-a", &a.task_a)?, task("--task-b", &a.task_b)?];
    if let Some(m) = &a.curve
        && !METHODS.contains(&m.as_str())
    {
        return Err(format!("--curve: {m:?} is not one of {}", METHODS.join(", ")));
    }
    for (flag, v) in [("--t", a.t), ("--density", a.density)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{flag}: {v} is outside 0..=1"));
        }
    }
    if let Some(dir) = &a.save_dir
        && dir.exists()
    {
        return Err(format!("--save-dir: {} already exists; choose a new folder", dir.display()));
    }
    let ad = device.clone().autodiff();
    let loaded = model_dir::load(&a.model, &ad)?;
    let mut tuned = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let config = finetune_config(*t, a.steps, a.lr, a.seed);
        let mut trainer = Trainer::new(loaded.model.clone(), &loaded.tokenizer, config, &ad).map_err(crate::flags::flag_error)?;
        eprintln!("fully fine-tuning copy {} of {} on {t} for {} steps", ["A", "B"][i], a.model.display(), a.steps);
        for _ in 0..a.steps {
            trainer.step().map_err(|e| e.to_string())?;
        }
        tuned.push(trainer.model.valid());
    }
    let tok = &loaded.tokenizer;
    let b = tuned.pop().expect("two fine-tunes");
    let study =
        Study::new(loaded.model.valid(), tuned.pop().expect("two fine-tunes"), b, tasks, tok, a.examples, a.accuracy_examples).map_err(|e| e.to_string())?;
    let knobs = Knobs { method: a.curve.clone().unwrap_or_else(|| "ties".into()), t: a.t, density: a.density, lambda: a.lambda, seed: a.seed };
    let err = |e: tinytune::Error| e.to_string();
    let endpoints = study.endpoints(tok).map_err(err)?;
    let methods = study.methods(&knobs, tok, device).map_err(err)?;
    let curve = match &a.curve {
        Some(_) => study.curve(&knobs, &[0.0, 0.25, 0.5, 0.75, 1.0], tok, device).map_err(err)?,
        None => Vec::new(),
    };
    if let Some(dir) = &a.save_dir {
        let names = [a.model.display().to_string(), dir.join("task-a").display().to_string(), dir.join("task-b").display().to_string()];
        let mut files = Vec::new();
        for m in METHODS {
            files.push((format!("{m}.yml"), study_yaml(&Knobs { method: m.into(), ..knobs.clone() }, [&names[0], &names[1], &names[2]]).into_bytes()));
        }
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        crate::fsutil::write_new_folder(dir, &refs)?;
        for (name, model) in [("task-a", &study.a), ("task-b", &study.b)] {
            model_dir::write_model_folder(&dir.join(name), &loaded.companions, &loaded.config, tok, model)?;
        }
        eprintln!("saved the fine-tunes and each method's YAML in {}: tinytune merge {}/ties.yml --out merged", dir.display(), dir.display());
    }
    if a.json {
        let out = json!({"tasks": [tasks[0].name(), tasks[1].name()], "knobs": knobs, "steps": a.steps, "lr": a.lr, "endpoints": endpoints, "methods": methods, "curve": curve});
        println!("{out}");
        return Ok(());
    }
    println!("A = {}, B = {}; each copy fully fine-tuned {} steps at lr {}", tasks[0], tasks[1], a.steps, a.lr);
    println!("merges at t = {} (weights {} and {}), density {}, lambda {}", a.t, 1.0 - a.t, a.t, a.density, a.lambda);
    println!("{:<18} {:>6} {:>10} {:>7} {:>10} {:>7}", "model", "t", "A loss", "A acc", "B loss", "B acc");
    let row = |r: &Scored| {
        println!("{:<18} {:>6.2} {:>10.4} {:>6.1}% {:>10.4} {:>6.1}%", r.label, r.t, r.a.loss, 100.0 * r.a.accuracy, r.b.loss, 100.0 * r.b.accuracy)
    };
    endpoints.iter().chain(&methods).for_each(row);
    if !curve.is_empty() {
        println!("{} as t moves from A to B:", knobs.method);
        curve.iter().for_each(row);
    }
    Ok(())
}

/// `model` (loaded from `dir`) with the PEFT adapter folder `adapter` on it, if one is given.
fn with_adapter(model: Gpt, dir: &std::path::Path, adapter: Option<&std::path::Path>, device: &Device) -> Result<Gpt, String> {
    let Some(adapter) = adapter else { return Ok(model) };
    let own = crate::model_dir::method_of(dir)?;
    if own != tinytune::methods::Method::Full {
        return Err(format!("--adapter: {} is already adapted ({}); load a PEFT adapter onto a plain model folder", dir.display(), own.name()));
    }
    let config = crate::fsutil::read_text(&adapter.join(tinytune::methods::peft::CONFIG))?;
    let weights = crate::fsutil::read(&adapter.join(tinytune::methods::peft::WEIGHTS))?;
    Ok(tinytune::methods::peft::load(model, &config, &weights, &adapter.display().to_string(), device).map_err(|e| e.to_string())?.0)
}

/// `tinytune logits`: token ids of the prompt and the logits at its last position.
pub fn logits_cmd(a: crate::cli::LogitsArgs, device: &Device) -> Result<(), String> {
    use burn::tensor::{Int, Tensor, TensorData};
    let loaded = crate::model_dir::load(&a.model, device)?;
    let model = with_adapter(loaded.model, &loaded.dir, a.adapter.as_deref(), device)?;
    let model = if a.merge { tinytune::methods::merge(model) } else { model };
    let ids = loaded.tokenizer.encode(&a.prompt).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("--prompt: the prompt has no tokens".into());
    }
    if ids.len() > model.context_len() {
        return Err(format!("--prompt: {} tokens is longer than the model's {} positions (less any soft prompt)", ids.len(), model.context_len()));
    }
    let n = ids.len();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]), device);
    let logits = model.forward(x);
    let vocab = logits.dims()[2];
    let last: Vec<f32> = logits.slice([0..1, n - 1..n, 0..vocab]).into_data().convert::<f32>().try_to_vec().map_err(|e| format!("{e:?}"))?;
    let out = if a.top > 0 {
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&i, &j| last[j].total_cmp(&last[i]));
        let top: Vec<serde_json::Value> =
            order.into_iter().take(a.top).map(|i| serde_json::json!({ "id": i, "token": loaded.tokenizer.decode(&[i as u32]), "logit": last[i] })).collect();
        serde_json::json!({ "ids": ids, "top": top })
    } else {
        serde_json::json!({ "ids": ids, "logits": last })
    };
    println!("{out}");
    Ok(())
}

/// `tinytune lora-rank`: a full fine-tune, then `methods::rank::rank_report` on one matrix.
pub fn lora_rank_cmd(a: crate::cli::LoraRankArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    let loaded = crate::model_dir::load(&a.model, &ad)?;
    let data = a.data.parse::<DataSource>().map_err(|e| format!("--data: {e}"))?;
    let config = tinytune::methods::rank::finetune_config(data, a.steps, a.lr, a.batch, a.seq_len, a.seed);
    let mut trainer = Trainer::new(loaded.model.clone(), &loaded.tokenizer, config, &ad).map_err(crate::flags::flag_error)?;
    eprintln!("fully fine-tuning {} on {} for {} steps", a.model.display(), a.data, a.steps);
    for _ in 0..a.steps {
        trainer.step().map_err(|e| e.to_string())?;
    }
    let r =
        tinytune::methods::rank::rank_report(&loaded.model.valid(), &trainer.model.valid(), &a.matrix, a.rank, &trainer.eval, a.batch, a.seq_len, 4, device)
            .map_err(crate::flags::flag_error)?;
    if a.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let top: Vec<String> = r.delta_spectrum.iter().take(8).map(|s| format!("{s:.4}")).collect();
    let wtop: Vec<String> = r.weight_spectrum.iter().take(8).map(|s| format!("{s:.3}")).collect();
    println!("{} ({}×{}): a dense update trains {} numbers, rank-{} LoRA {}", r.matrix, r.d_in, r.d_out, r.dense_params, r.rank, r.lora_params);
    println!("singular values of the learned update ΔW: {} …", top.join(", "));
    println!("singular values of the pretrained W:      {} …", wtop.join(", "));
    println!(
        "rank {} keeps {:.1}% of ΔW's energy (relative error {:.3}); 90% needs rank {} for ΔW, {} for W",
        r.rank,
        100.0 * r.energy_kept,
        r.relative_error,
        r.rank_for_90,
        r.weight_rank_for_90
    );
    println!("held-out loss: base {:.4}, full fine-tune {:.4}, every update cut to rank {}: {:.4}", r.loss_base, r.loss_full, r.rank, r.loss_truncated);
    println!("rank-{} LoRA beside W vs merged into W: largest logit difference {:.2e}", r.rank, r.merge_max_diff);
    println!("merged in place and unmerged again: W comes back within {:.2e}", r.unmerge_max_diff);
    Ok(())
}
