//! The commands that use a trained model: generate, eval, info, bench and demo.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;
use tinytune::data::rng::Rng;
use tinytune::data::Split;
use tinytune::model::{ModelConfig, named_params};
use tinytune::sample::{SampleConfig, generate};
use tinytune::train::{DataSource, Dataset, TrainConfig, Trainer, eval_loss};
use tinytune::{Gpt, TextTokenizer};

use crate::cli::{BenchArgs, DemoArgs, EvalArgs, GenerateArgs, InfoArgs};
use crate::model_dir;

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, String> {
    tok.encode(text).map_err(|e| e.to_string())
}

pub fn generate_cmd(args: GenerateArgs, device: &Device) -> Result<(), String> {
    let loaded = model_dir::load(&args.model, device)?;
    let tok = &loaded.tokenizer;
    let prompt_text = args.prompt.replace("\\n", "\n");
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
            stop_ids: if args.stop_at_newline { tok.line_stop_ids() } else { tok.eot().into_iter().collect() },
        };
        let out = generate(&loaded.model, &prompt, &config);
        let text = tok.decode(&out);
        if args.samples > 1 {
            println!("--- sample {} ---", i + 1);
        }
        println!("{}{}", prompt_text, text.trim_end_matches(tinytune::tokenizer::EOT));
    }
    Ok(())
}

/// Greedy answers to held-out prompts, scored by the task's exact-match rule.
pub fn task_accuracy(model: &Gpt, tok: &TextTokenizer, data: DataSource, seed: u64, n: usize) -> Result<Option<(f64, Vec<(String, String, bool)>)>, String> {
    let DataSource::Task(task) = data else { return Ok(None) };
    if n == 0 {
        return Ok(None);
    }
    let stop = tok.line_stop_ids();
    let examples = task.examples(seed, Split::Eval, n);
    let mut rows = Vec::new();
    for ex in &examples {
        let prompt = encode(tok, &ex.prompt)?;
        let config = SampleConfig { max_new_tokens: 48, temperature: 0.0, top_k: None, seed: 0, stop_ids: stop.clone() };
        let answer = tok.decode(&generate(model, &prompt, &config));
        let ok = task.is_correct(ex, &answer);
        rows.push((ex.response.trim().to_string(), answer.trim().to_string(), ok));
    }
    let acc = rows.iter().filter(|r| r.2).count() as f64 / rows.len() as f64;
    Ok(Some((acc, rows)))
}

pub fn eval_cmd(args: EvalArgs, device: &Device) -> Result<(), String> {
    let loaded = model_dir::load(&args.model, device)?;
    let data: DataSource = args.data.parse().map_err(|e| format!("--data: {e}"))?;
    let seq_len = args.seq_len.unwrap_or(loaded.config.n_positions.min(128));
    if seq_len > loaded.config.n_positions {
        return Err(format!("--seq-len: {seq_len} is longer than the model's n_positions = {}", loaded.config.n_positions));
    }
    let ds = data.dataset(&loaded.tokenizer, args.data_seed, Split::Eval, args.examples, seq_len, 0.0).map_err(|e| e.to_string())?;
    let loss = eval_loss(&loaded.model, &ds, args.batch, seq_len, usize::MAX).map_err(|e| e.to_string())?;
    let acc = task_accuracy(&loaded.model, &loaded.tokenizer, data, args.data_seed, args.accuracy_examples)?;
    if args.json {
        println!("{}", json!({"model": loaded.dir, "data": data.to_string(), "eval_loss": loss, "perplexity": (loss as f64).exp(), "accuracy": acc.as_ref().map(|a| a.0)}));
        return Ok(());
    }
    println!("{}: held-out {data} loss {loss:.4} nats/token (perplexity {:.2})", loaded.dir.display(), (loss as f64).exp());
    if let Some((acc, rows)) = acc {
        println!("exact-match accuracy on {} held-out prompts: {:.1}%", rows.len(), acc * 100.0);
        for (want, got, ok) in rows.iter().take(5) {
            println!("  {} expected {want:?}, answered {got:?}", if *ok { "✓" } else { "✗" });
        }
    }
    Ok(())
}

pub fn info_cmd(args: InfoArgs, device: &Device) -> Result<(), String> {
    let (config, params) = match (&args.model, &args.preset) {
        (Some(dir), None) => {
            let loaded = model_dir::load(dir, device)?;
            (loaded.config, named_params(&loaded.model))
        }
        (None, Some(p)) => {
            let config = ModelConfig::preset(p).map_err(|e| format!("--preset: {e}"))?;
            // Counting needs only shapes; build the model lazily-sized for small presets and
            // by formula for GPT-2 sizes (initialising 1.5 B weights just to count them is slow).
            if config.num_params() > 20_000_000 {
                (config.clone(), config.param_summaries())
            } else {
                let model = Gpt::init(&config, 0, device);
                (config, named_params(&model))
            }
        }
        _ => return Err("info: pass exactly one of --model DIR or --preset NAME".into()),
    };
    let total: usize = params.iter().map(|p| p.numel).sum();
    if args.json {
        println!("{}", json!({"config": config, "total": total, "params": params}));
        return Ok(());
    }
    println!("{:<28} {:>16} {:>12} {:>7}", "parameter", "shape", "count", "share");
    let mut group = String::new();
    let mut group_total = 0usize;
    let flush = |g: &str, n: usize| {
        if !g.is_empty() {
            println!("{:<28} {:>16} {:>12} {:>6.2}%", format!("  = {g}"), "", n, 100.0 * n as f64 / total as f64);
        }
    };
    for p in &params {
        let g = layer_group(&p.name);
        if g != group {
            flush(&group, group_total);
            group = g;
            group_total = 0;
        }
        group_total += p.numel;
        println!("{:<28} {:>16} {:>12} {:>6.2}%", p.name, format!("{:?}", p.shape), p.numel, 100.0 * p.numel as f64 / total as f64);
    }
    flush(&group, group_total);
    println!("total {total} parameters ({:.3} M); closed form {}", total as f64 / 1e6, config.num_params());
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
    let config = ModelConfig::new(args.vocab, args.ctx, args.d_model, args.layers, args.heads);
    // Name the bench flag, not the config.json field it fills.
    config.validate("bench flags").map_err(|e| crate::train::flag_error(e).replace("--n-head", "--heads").replace("--n-embd", "--d-model"))?;
    let ad = device.clone().autodiff();
    // Uniformly random tokens: throughput does not depend on what the tokens say.
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..200_000).map(|_| rng.below(args.vocab) as u32).collect();
    let data = Dataset::Stream { tokens };
    let train = TrainConfig {
        steps: args.steps + 3,
        batch_size: args.batch,
        seq_len: args.ctx,
        warmup_steps: 0,
        optimizer: tinytune::optim::OptimConfig { clip_grad_norm: None, ..Default::default() },
        ..TrainConfig::default()
    };
    let model = Gpt::init(&config, 0, &ad);
    let mut trainer = Trainer::from_datasets(model, train, data.clone(), data, &ad).map_err(|e| e.to_string())?;
    for _ in 0..3 {
        trainer.step().map_err(|e| e.to_string())?;
    }
    let start = web_time::Instant::now();
    let mut last = 0.0;
    for _ in 0..args.steps {
        last = trainer.step().map_err(|e| e.to_string())?.loss;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens = (args.steps * args.batch * args.ctx) as f64;
    let tps = tokens / secs;
    if args.json {
        println!(
            "{}",
            json!({"tokens_per_s": tps, "steps_per_s": args.steps as f64 / secs, "params": config.num_params(), "d_model": args.d_model, "layers": args.layers, "heads": args.heads, "ctx": args.ctx, "batch": args.batch, "vocab": args.vocab, "steps": args.steps, "seconds": secs, "final_loss": last})
        );
    } else {
        println!(
            "{:.2} M params, batch {}×{}: {:.0} tokens/s ({:.2} steps/s over {} timed steps, {:.1} s)",
            config.num_params() as f64 / 1e6,
            args.batch,
            args.ctx,
            tps,
            args.steps as f64 / secs,
            args.steps,
            secs
        );
    }
    Ok(())
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
    println!("tinytune demo: {} ({:.2} M parameters: {} layers, {} heads, width {}, context {}, {} tokenizer with {} tokens)\n",
        dir.display(), c.num_params() as f64 / 1e6, c.n_layer, c.n_head, c.n_embd, c.n_positions, loaded.tokenizer.kind(), loaded.tokenizer.vocab_size());
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
    println!("held-out story loss: {loss:.3} nats/token (an untrained model of the same shape: {base:.3}; uniform guessing: {:.3})", (c.vocab_size as f64).ln());
    println!("\nNext: `tinytune finetune --model {} --data story-qa --out runs/qa` teaches it to answer questions.", dir.display());
    Ok(())
}

/// `tinytune merge-adapter`: the run's model with every LoRA update folded in (`W + s·A·B`;
/// an NF4 base is dequantized first), saved as an ordinary model folder.
pub fn merge_adapter_cmd(a: crate::cli::MergeAdapterArgs, device: &Device) -> Result<(), String> {
    use tinytune::checkpoint::{files, save_model};
    use tinytune::methods::merge;
    if a.out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", a.out.display()));
    }
    let loaded = crate::model_dir::load(&a.model, device)?;
    let method = crate::model_dir::method_of(&loaded.dir)?;
    if method.lora().is_none() {
        return Err(format!("{}: its method is {}, which adds no adapter to merge; its weights are already a plain model", a.model.display(), method.name()));
    }
    let merged = merge(loaded.model);
    // Written to a staging folder and renamed, so --out is either complete or absent.
    let staging = a.out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    for (name, bytes) in [(files::CONFIG, loaded.config.to_json().into_bytes()), (files::TOKENIZER, loaded.tokenizer.to_json().into_bytes()), (files::WEIGHTS, save_model(&merged))] {
        crate::fsutil::write_atomic(&staging.join(name), &bytes)?;
    }
    std::fs::rename(&staging, &a.out).map_err(|e| format!("{}: cannot create: {e}", a.out.display()))?;
    eprintln!("merged the {} adapters of {} into {} ({} parameters, no adapters)", method.name(), a.model.display(), a.out.display(), loaded.config.num_params());
    Ok(())
}

/// `tinytune logits`: token ids of the prompt and the logits at its last position.
pub fn logits_cmd(a: crate::cli::LogitsArgs, device: &Device) -> Result<(), String> {
    use burn::tensor::{Int, Tensor, TensorData};
    let loaded = crate::model_dir::load(&a.model, device)?;
    let model = if a.merge { tinytune::methods::merge(loaded.model) } else { loaded.model };
    let ids = loaded.tokenizer.encode(&a.prompt).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("--prompt: the prompt has no tokens".into());
    }
    if ids.len() > loaded.config.n_positions {
        return Err(format!("--prompt: {} tokens is longer than the model's {} positions", ids.len(), loaded.config.n_positions));
    }
    let n = ids.len();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]), device);
    let logits = model.forward(x);
    let vocab = logits.dims()[2];
    let last: Vec<f32> = logits.slice([0..1, n - 1..n, 0..vocab]).into_data().convert::<f32>().try_to_vec().map_err(|e| format!("{e:?}"))?;
    let out = if a.top > 0 {
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&i, &j| last[j].total_cmp(&last[i]));
        let top: Vec<serde_json::Value> = order.into_iter().take(a.top).map(|i| serde_json::json!({ "id": i, "token": loaded.tokenizer.decode(&[i as u32]), "logit": last[i] })).collect();
        serde_json::json!({ "ids": ids, "top": top })
    } else {
        serde_json::json!({ "ids": ids, "logits": last })
    };
    println!("{out}");
    Ok(())
}
