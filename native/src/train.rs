//! `pretrain` and `finetune`: resolve flags into core configs, then drive the core's step
//! loop with a progress bar, `metrics.jsonl`, checkpoints and a loss plot at the end.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use burn::tensor::Device;
use indicatif::ProgressBar;
use tinytune::checkpoint::{TrainerState, files, load_optimizer, save_model, save_optimizer};
use tinytune::data::{CHARSET, Split};
use tinytune::methods::Method;
use tinytune::optim::{OptimConfig, OptimKind, Warmup};
use tinytune::tokenizer::chat::ChatTemplate;
use tinytune::train::teacher_cache::{self, TeacherCache};
use tinytune::train::{Control, DataSource, LossScale, Objective, Outcome, Precision, Run, RunHost, TrainConfig, TrainEvent, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

use crate::cli::{DistillArgs, FinetuneArgs, PretrainArgs, TrainArgs};
use crate::flags::flag_error;
use crate::fsutil::{CheckpointDirs, read, read_text, write_atomic};
use crate::model_dir::Companions;
use crate::{model_dir, plot};

/// The learning rate a fine-tuning run takes when `--lr` is left out: the method's
/// suggestion with an AdamW-family optimizer, the optimizer's own otherwise
/// (`OptimKind::suggested_lr_for`; `finetune`, `compare` and the page share it).
pub fn finetune_lr(args: &TrainArgs, method: &Method) -> f64 {
    args.optimizer.parse::<OptimKind>().unwrap_or(OptimKind::AdamW).suggested_lr_for(method.kind())
}

/// The one place flags become a `TrainConfig`.
pub fn resolve(args: &TrainArgs, method: Method, default_data: DataSource, default_lr: f64, n_positions: usize) -> Result<TrainConfig, String> {
    let beta = args.beta.unwrap_or_else(|| Objective::default_beta(&args.objective));
    let mut objective = Objective::from_name(&args.objective, beta, args.label_smoothing).map_err(|e| format!("--objective: {e}"))?;
    if let Objective::Grpo { group_size, temperature, max_completion_len, epsilon, loss_type, .. } = &mut objective {
        *group_size = args.group_size;
        *temperature = args.temperature.unwrap_or(1.0);
        *max_completion_len = args.max_completion_len;
        *epsilon = args.epsilon;
        *loss_type = args.grpo_loss.parse().map_err(|e| format!("--grpo-loss: {e}"))?;
    }
    args.kto.apply(&mut objective);
    // A preference objective learns from the default task's pairs.
    let default_data = match default_data {
        DataSource::Task(task) if objective.is_preference() => DataSource::Pairs(task, tinytune::data::PairKind::Correct),
        other => other,
    };
    // A .jsonl path is a data set of the user's (Alpaca or prompt/completion); `data` then
    // keeps the default and `data_file` wins.
    let (data, data_file) = match &args.data {
        Some(s) if s.ends_with(".jsonl") => {
            let path = std::fs::canonicalize(s).map_err(|e| format!("--data: {s}: {e}; give the path of a .jsonl file"))?;
            (default_data, Some(path.display().to_string()))
        }
        Some(s) => (s.parse::<DataSource>().map_err(|e| format!("--data: {e}"))?, None),
        None => (default_data, None),
    };
    let precision = args.precision.parse::<Precision>().map_err(|e| format!("--precision: {e}"))?;
    let loss_scale = loss_scale(precision, args.loss_scale.as_deref(), args.scale_growth_interval)?;
    let warmup = args.warmup.parse::<Warmup>().map_err(|e| format!("--warmup: {e}"))?;
    let config = TrainConfig {
        data,
        train_examples: args.train_examples,
        eval_examples: args.eval_examples,
        data_seed: args.data_seed,
        seed: args.seed,
        steps: args.steps,
        batch_size: args.batch,
        // By default the rows fill what a soft prompt leaves of the context (at most 128).
        seq_len: args.seq_len.unwrap_or(n_positions.saturating_sub(method.virtual_tokens()).min(128)),
        lr: args.lr.unwrap_or(default_lr),
        warmup_steps: warmup.steps(args.steps),
        warmup_ratio: match warmup {
            Warmup::Ratio(r) => Some(r),
            Warmup::Steps(_) => None,
        },
        decay: args.schedule.into(),
        min_lr_ratio: args.min_lr_ratio,
        optimizer: optimizer(args)?,
        accumulate: args.accumulate,
        data_parallel: args.data_parallel,
        zero: args.zero,
        checkpointing: args.checkpointing,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        checkpoint_every: args.checkpoint_every,
        prompt_loss_weight: args.prompt_loss_weight,
        precision,
        loss_scale,
        objective,
        method,
        data_file,
        data_sha256: None,
        teacher: None,
        teacher_cache: None,
    };
    // A soft prompt that leaves no room is the prompt's error, not the sequence length's.
    if let Method::Prompt(p) = &config.method {
        p.validate(n_positions, usize::MAX, "command line").map_err(flag_error)?;
    }
    config.validate("command line", n_positions.saturating_sub(config.method.virtual_tokens())).map_err(flag_error)?;
    Ok(config)
}

/// `--loss-scale` as given (None when not), for `precision`: dynamic scaling growing every
/// `interval` finite steps is fp16's default, no scaling the others'.
pub fn loss_scale(precision: Precision, given: Option<&str>, interval: usize) -> Result<LossScale, String> {
    Ok(match given {
        None if precision == Precision::Fp16 => LossScale::dynamic_every(interval),
        None | Some("none") => LossScale::None,
        Some("dynamic") => LossScale::dynamic_every(interval),
        Some(v) => LossScale::Fixed { scale: v.parse().map_err(|_| format!("--loss-scale: '{v}' is not dynamic, none or a number such as 1024"))? },
    })
}

/// A trainer for `config`: on its built-in data, or on its JSON Lines file, read here
/// (core never touches the file system), split into training and held-out examples
/// (conversations rendered with the model's `chat` template).
pub fn trainer(model: Gpt, tok: &TextTokenizer, chat: Option<&ChatTemplate>, config: TrainConfig, ad: &Device) -> Result<Trainer, String> {
    let replicas = crate::backend::replica_devices(config.data_parallel)?;
    let mut trainer = build_trainer(model, tok, chat, config, ad)?;
    trainer.set_replica_devices(replicas);
    Ok(trainer)
}

fn build_trainer(model: Gpt, tok: &TextTokenizer, chat: Option<&ChatTemplate>, mut config: TrainConfig, ad: &Device) -> Result<Trainer, String> {
    // Core errors name config fields; the command line shows them as its flags.
    let Some(file) = config.data_file.clone() else {
        return Trainer::new(model, tok, config, ad).map_err(crate::flags::run_error);
    };
    // The file's SHA-256 goes into train.json; a resumed run checks the file is the same.
    let text = read_text(Path::new(&file))?;
    let sha = tinytune::checkpoint::sha256_hex(text.as_bytes());
    if let Some(saved) = config.data_sha256.as_deref().filter(|saved| **saved != sha) {
        return Err(format!(
            "{file}: the data file changed since the run started (SHA-256 {} then, {} now; train.json's data_sha256); a resumed run must read the same data: restore the file, or start a new run with another --out",
            &saved[..saved.len().min(12)],
            &sha[..12]
        ));
    }
    config.data_sha256 = Some(sha.clone());
    let trainer = Trainer::from_jsonl(model, tok, chat, &text, &file, config, ad).map_err(crate::flags::run_error)?;
    eprintln!("{file}: {} training and {} held-out examples (SHA-256 {})", trainer.train.len(), trainer.eval.len(), &sha[..12]);
    Ok(trainer)
}

/// The optimizer flags as a config: the kind's defaults, then whatever was given.
fn optimizer(args: &TrainArgs) -> Result<OptimConfig, String> {
    let kind = args.optimizer.parse::<OptimKind>().map_err(|e| format!("--optimizer: {e}"))?;
    let d = OptimConfig::for_kind(kind);
    Ok(OptimConfig {
        beta1: args.beta1.unwrap_or(d.beta1),
        beta2: args.beta2.unwrap_or(d.beta2),
        weight_decay: args.weight_decay.unwrap_or(d.weight_decay),
        momentum: args.momentum.unwrap_or(d.momentum),
        mezo_eps: args.mezo_eps,
        loraplus_lr_ratio: args.loraplus_ratio,
        clip_grad_norm: if kind == OptimKind::Mezo { None } else { (args.clip > 0.0).then_some(args.clip) },
        ..d
    })
}

pub fn pretrain(args: PretrainArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    if args.train.resume {
        return resume(&args.train, &ad, "pretrain");
    }
    refuse_to_overwrite(&args.train.out)?;
    let mut config = ModelConfig::preset(&args.preset).map_err(|e| format!("--preset: {e}"))?.with_dropout(args.dropout);
    config.validate("--dropout").map_err(|e| e.to_string())?;
    // Pre-training trains every weight.
    let train = resolve(&args.train, Method::Full, DataSource::Stories, 1e-3, config.n_positions)?;
    let tokenizer = match args.tokenizer.as_str() {
        "char" => TextTokenizer::char_level(CHARSET),
        "bpe" => {
            let texts = train.data.texts(train.data_seed, Split::Train, train.train_examples);
            TextTokenizer::train_bpe(texts.iter().map(String::as_str), args.vocab).map_err(|e| format!("--vocab: {e}"))?
        }
        other => return Err(format!("--tokenizer: unknown tokenizer '{other}'; choose char or bpe")),
    };
    // The embedding table has exactly one row per token id.
    config.vocab_size = tokenizer.vocab_size();
    // Checked before the weights are allocated (and again in `run`, on the built model).
    crate::memory::check_fits(&config, &train, &args.train, &[])?;
    let model = Gpt::init(&config, train.seed, &ad);
    run(trainer(model, &tokenizer, None, train, &ad)?, &tokenizer, &Vec::new(), &args.train, "pretrain")
}

pub fn finetune(args: FinetuneArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    if args.train.resume {
        return resume(&args.train, &ad, "finetune");
    }
    refuse_to_overwrite(&args.train.out)?;
    let model_dir = args.model.as_deref().ok_or("--model: name the model to fine-tune (a model or run folder)")?;
    check_before_loading(model_dir, &args)?;
    let loaded = model_dir::load(model_dir, &ad)?;
    let method = args.method.to_method(Some(&loaded.tokenizer), loaded.config.family)?;
    let lr = finetune_lr(&args.train, &method);
    let train = resolve(&args.train, method, DataSource::Task(tinytune::data::Task::StoryQa), lr, loaded.config.n_positions)?;
    // A reward model is the language model with a score head in place of its LM head
    // (TRL's RewardTrainer loads the model as a sequence classifier with num_labels = 1);
    // a model that already is one trains on.
    let model = match (train.objective.is_reward_model(), loaded.model.score.is_some()) {
        (true, false) => {
            let pad =
                loaded.config.pad_token_id().or(loaded.tokenizer.eot()).ok_or("--objective reward: the tokenizer has no end-of-text token to pad with")?;
            loaded.model.into_reward_model(pad, train.seed)
        }
        _ => loaded.model,
    };
    let model = train.method.apply(model, train.seed, &ad).map_err(flag_error)?;
    let mut trainer = trainer(model, &loaded.tokenizer, loaded.chat.as_ref(), train, &ad)?;
    match &args.reference {
        Some(dir) if trainer.config.objective.needs_reference() => {
            let reference = model_dir::load_reference(dir, &loaded.tokenizer, device)?;
            trainer.score_references(Some(&reference)).map_err(|e| format!("--reference: {e}"))?;
        }
        Some(_) => {
            return Err(format!(
                "--reference: the {} objective has no reference model; pass --objective dpo (or ipo, hinge, robust)",
                trainer.config.objective.name()
            ));
        }
        None => {}
    }
    run(trainer, &loaded.tokenizer, &loaded.companions, &args.train, "finetune")
}

/// The memory check from the model folder's `config.json` alone, before its weights are read
/// (a model too large for the machine is refused at once, not after loading it). Anything
/// this cannot read is left to the loader, which names it, and the check in `run` follows.
fn check_before_loading(dir: &Path, args: &FinetuneArgs) -> Result<(), String> {
    let Ok(dir) = model_dir::resolve(dir) else { return Ok(()) };
    let Ok(text) = std::fs::read_to_string(dir.join(files::CONFIG)) else { return Ok(()) };
    let Ok(config) = ModelConfig::from_json(&text, dir.join(files::CONFIG).display().to_string()) else { return Ok(()) };
    let Ok(method) = args.method.to_method(None, config.family) else { return Ok(()) };
    let lr = finetune_lr(&args.train, &method);
    let Ok(train) = resolve(&args.train, method, DataSource::Task(tinytune::data::Task::StoryQa), lr, config.n_positions) else { return Ok(()) };
    crate::memory::check_fits(&config, &train, &args.train, &[])
}

/// `tinytune distill`: a student trained on a teacher's softened distributions (see
/// `tinytune::train::distill`), as a resumable run like `finetune`'s.
pub fn distill(args: DistillArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    if args.train.resume {
        return resume(&args.train, &ad, "distill");
    }
    refuse_to_overwrite(&args.train.out)?;
    if args.train.objective != "next-token" {
        return Err(format!("--objective: distill trains on the teacher's distributions; leave --objective out (it was {})", args.train.objective));
    }
    let teacher_dir = args.teacher.as_deref().ok_or("--teacher: name the teacher model (a model or run folder)")?;
    let teacher = model_dir::load_language_model(teacher_dir, &ad).map_err(|e| e.replace("--model:", "--teacher:"))?;
    let divergence = args.divergence.parse::<tinytune::train::Divergence>().map_err(|e| format!("--divergence: {e}"))?;
    // The student: a model folder, or a fresh model of a preset's shape or of the teacher's
    // shape with fewer layers, on the teacher's tokenizer.
    let fresh_config = match (&args.student_preset, args.student_layers) {
        (Some(name), _) => {
            let mut c = ModelConfig::preset(name).map_err(|e| format!("--student-preset: {e}"))?;
            c.vocab_size = teacher.tokenizer.vocab_size();
            Some(c)
        }
        (None, Some(layers)) => {
            if layers == 0 || layers > teacher.config.n_layer {
                return Err(format!(
                    "--student-layers: {layers}; the teacher has {} layers, so choose 1 to {}",
                    teacher.config.n_layer, teacher.config.n_layer
                ));
            }
            Some(ModelConfig { n_layer: layers, ..teacher.config.clone() })
        }
        (None, None) => None,
    };
    let (student, tokenizer, chat, companions, fresh) = match (&args.student, fresh_config) {
        (Some(dir), _) => {
            if args.init_from_teacher {
                return Err("--init-from-teacher: the student comes from --student's folder; use it with --student-preset or --student-layers".into());
            }
            let s = model_dir::load_language_model(dir, &ad).map_err(|e| e.replace("--model:", "--student:"))?;
            if s.tokenizer.to_json() != teacher.tokenizer.to_json() {
                return Err(format!(
                    "--student: {}'s tokenizer differs from the teacher's ({}); distillation compares distributions token by token, so they must share one",
                    s.dir.display(),
                    teacher.dir.display()
                ));
            }
            (s.model, s.tokenizer, s.chat, s.companions, false)
        }
        (None, Some(config)) => {
            config.validate("--student-preset").map_err(|e| e.to_string())?;
            let model = if args.init_from_teacher {
                tinytune::train::distill::student_from_teacher(&teacher.model, &config, &ad).map_err(|e| format!("--init-from-teacher: {e}"))?
            } else {
                Gpt::init(&config, args.train.seed, &ad)
            };
            (model, teacher.tokenizer.clone(), teacher.chat.clone(), teacher.companions.clone(), !args.init_from_teacher)
        }
        (None, None) => return Err("--student: name the student: a model folder (--student DIR), a preset's shape (--student-preset NAME) or the teacher's shape with fewer layers (--student-layers N)".into()),
    };
    let n_positions = student.config().n_positions;
    let train = distill_config(&args, divergence, fresh, n_positions)?;
    eprintln!(
        "teacher {} ({} parameters), student {} parameters{}",
        teacher.dir.display(),
        teacher.config.num_params(),
        student.config().num_params(),
        if args.init_from_teacher { " (initialised from the teacher)" } else { "" }
    );
    let model = train.method.apply(student, train.seed, &ad).map_err(flag_error)?;
    let mut trainer = trainer(model, &tokenizer, chat.as_ref(), train, &ad)?;
    trainer.teacher_cache = open_teacher_cache(trainer.config.teacher_cache.as_deref(), &teacher.model, "--teacher-cache")?;
    trainer.set_teacher(teacher.model).map_err(|e| format!("--teacher: {e}"))?;
    run(trainer, &tokenizer, &companions, &args.train, "distill")
}

/// Where a data-parallel run's optimizer state lives, measured, beside the memory
/// estimator's per-GPU figure for the same run.
fn replica_state_line(trainer: &Trainer) -> String {
    let human = tinytune::memory::human;
    let shares = trainer.optim.state_bytes_by_replica();
    let estimate = human(trainer.estimated_state_per_replica());
    if trainer.config.zero >= 1 {
        let list: Vec<String> = shares.iter().map(|&b| human(b as u64)).collect();
        format!("optimizer state by replica (ZeRO-1): {}; the memory estimator's per-GPU figure: {estimate}", list.join(", "))
    } else {
        format!(
            "optimizer state: {} on the first device (without --zero 1 it is not shared out); the memory estimator's per-GPU figure: {estimate}",
            human(trainer.optim.state_bytes() as u64)
        )
    }
}

/// Opens a distillation run's teacher cache (`path` None: none), or starts an empty one
/// when the file does not exist yet; `flag` names where the path came from in errors.
fn open_teacher_cache(path: Option<&str>, teacher: &Gpt, flag: &str) -> Result<Option<TeacherCache>, String> {
    let Some(path) = path else { return Ok(None) };
    let (print, vocab) = (teacher_cache::fingerprint(teacher), teacher.config().vocab_size);
    let cache = match std::fs::read(path) {
        Ok(bytes) => TeacherCache::from_bytes(&bytes, path, &print, vocab).map_err(|e| format!("{flag}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TeacherCache::new(print, vocab),
        Err(e) => return Err(format!("{flag}: {path}: cannot read: {e}")),
    };
    if !cache.is_empty() {
        eprintln!("teacher cache {path}: {} rows ({:.1} MB of logits)", cache.len(), cache.logit_bytes() as f64 / 1e6);
    }
    Ok(Some(cache))
}

/// A distillation run's config from its flags (`fresh`: the student starts from scratch,
/// which wants a higher default learning rate), validated for a student with `n_positions`.
fn distill_config(args: &DistillArgs, divergence: tinytune::train::Divergence, fresh: bool, n_positions: usize) -> Result<TrainConfig, String> {
    let teacher_dir = args.teacher.as_deref().ok_or("--teacher: name the teacher model (a model or run folder)")?;
    let mut train =
        resolve(&args.train, tinytune::methods::Method::Full, DataSource::Task(tinytune::data::Task::StoryQa), if fresh { 1e-3 } else { 3e-4 }, n_positions)?;
    train.objective = Objective::Distill {
        divergence,
        beta: args.train.beta.unwrap_or(0.5),
        temperature: args.train.temperature.unwrap_or(2.0),
        alpha: args.alpha,
        lmbda: args.lmbda,
        seq_kd: args.seq_kd,
    };
    train.teacher = Some(std::fs::canonicalize(teacher_dir).unwrap_or(teacher_dir.to_path_buf()).display().to_string());
    train.teacher_cache = args.teacher_cache.as_deref().map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf()).display().to_string());
    train.validate("command line", n_positions.saturating_sub(train.method.virtual_tokens())).map_err(flag_error)?;
    Ok(train)
}

fn refuse_to_overwrite(out: &Path) -> Result<(), String> {
    if CheckpointDirs::new(out).existing().is_some() {
        return Err(format!("{}: already holds a run; pass --resume to continue it, or choose another --out", out.display()));
    }
    Ok(())
}

/// Rebuilds a trainer from the run's checkpoint and continues it. The saved `train.json`
/// wins over flags, because changing e.g. the step count would change the schedule and the
/// run would no longer be the one that was started.
fn resume(args: &TrainArgs, ad: &Device, command: &str) -> Result<(), String> {
    if CheckpointDirs::new(&args.out).existing().is_none() {
        return Err(format!("{}: no checkpoint to resume; start the run without --resume", args.out.display()));
    }
    let changed = args.changed_on_resume();
    if !changed.is_empty() {
        return Err(format!(
            "{}: a resumed run continues with the settings in {} (changing them mid-run would make it another run); resume with only --out and --resume, or start a new run with another --out",
            changed.join(", "),
            args.out.join("checkpoint").join(files::TRAIN).display()
        ));
    }
    // The same loader as every other command: config.json, tokenizer.json and the weights.
    let loaded = model_dir::load(&args.out, ad)?;
    let dir = &loaded.dir;
    let origin = |name: &str| dir.join(name).display().to_string();
    let train = TrainConfig::from_json(&read_text(&dir.join(files::TRAIN))?, origin(files::TRAIN)).map_err(|e| e.to_string())?;
    let state: TrainerState = serde_json::from_str(&read_text(&dir.join(files::STATE))?).map_err(|e| format!("{}: {e}", origin(files::STATE)))?;
    let mut trainer = trainer(loaded.model, &loaded.tokenizer, loaded.chat.as_ref(), train, ad)?;
    load_optimizer(&mut trainer.optim, state.optimizer_t, &read(&dir.join(files::OPTIMIZER))?, ad, origin(files::OPTIMIZER)).map_err(|e| e.to_string())?;
    trainer.step = state.step;
    if let Some(scaler) = state.scaler {
        trainer.scaler.state = scaler;
    }
    trainer.elapsed_before = state.elapsed_s;
    if let Some(refs) = state.reference {
        trainer.set_references(refs).map_err(|e| format!("{}: {e}", origin(files::STATE)))?;
    }
    // A GRPO run with a KL term saved its reference model beside the weights.
    if let (Objective::Grpo { beta, .. }, Some(rl)) = (&trainer.config.objective, trainer.rl.as_mut())
        && *beta > 0.0
    {
        let path = dir.join(files::REFERENCE);
        let reference = tinytune::checkpoint::load_model_for(&loaded.config, &trainer.config.method, &read(&path)?, ad, path.display().to_string())
            .map_err(|e| e.to_string())?;
        rl.reference = Some(burn::module::Module::valid(&reference));
    }
    // A distillation run reloads its teacher from where it was (train.json records it).
    if let Some(dir) = trainer.config.teacher.clone() {
        let teacher = model_dir::load_language_model(Path::new(&dir), ad).map_err(|e| format!("{} (the teacher {}): {e}", origin(files::TRAIN), dir))?;
        let flag = format!("{} (teacher_cache)", origin(files::TRAIN));
        trainer.teacher_cache = open_teacher_cache(trainer.config.teacher_cache.clone().as_deref(), &teacher.model, &flag)?;
        trainer.set_teacher(teacher.model).map_err(|e| format!("{}: {e}", origin(files::TRAIN)))?;
    }
    truncate_metrics(&args.out.join("metrics.jsonl"), state.step)?;
    eprintln!("resuming {} at step {}/{}", args.out.display(), state.step, trainer.config.steps);
    run(trainer, &loaded.tokenizer, &loaded.companions, args, command)
}

/// Drops metric lines from steps after the checkpoint: a resumed run writes them again.
fn truncate_metrics(path: &Path, step: usize) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn save(trainer: &Trainer, tokenizer: &TextTokenizer, companions: &Companions, out: &Path, eval_loss: Option<f32>) -> Result<(), String> {
    let state = TrainerState {
        step: trainer.step,
        optimizer_t: trainer.optim.t,
        elapsed_s: trainer.elapsed(),
        eval_loss,
        scaler: (trainer.config.loss_scale != LossScale::None).then(|| trainer.scaler.state.clone()),
        reference: trainer.references(),
    };
    let mut all: Vec<(&str, Vec<u8>)> = companions.iter().map(|(n, b)| (*n, b.clone())).collect();
    all.extend([
        // Special token ids from the tokenizer, so transformers reads a self-consistent config.
        (files::CONFIG, trainer.model.config().with_token_ids(tokenizer.eot()).to_json().into_bytes()),
        (files::TOKENIZER, tokenizer.to_json().into_bytes()),
        (files::TRAIN, trainer.config.to_json().into_bytes()),
        (files::WEIGHTS, save_model(&trainer.model)),
        (files::OPTIMIZER, save_optimizer(&trainer.optim)),
    ]);
    if let Some(reference) = trainer.rl.as_ref().and_then(|rl| rl.reference.as_ref()) {
        all.push((files::REFERENCE, save_model(reference)));
    }
    // The teacher cache lives where its flag put it (shared between runs), not in the
    // checkpoint; it is rewritten whenever this run has added rows.
    if let (Some(cache), Some(path)) = (&trainer.teacher_cache, &trainer.config.teacher_cache)
        && cache.misses > 0
    {
        write_atomic(Path::new(path), &cache.to_bytes())?;
    }
    all.extend([
        // Written last, and its presence marks a complete checkpoint.
        (files::STATE, serde_json::to_vec_pretty(&state).expect("state serialises")),
    ]);
    CheckpointDirs::new(out).commit(&all)
}

/// Drives a run (`command`, pretrain or finetune, names it in the hints it prints).
fn run(trainer: Trainer, tokenizer: &TextTokenizer, companions: &Companions, args: &TrainArgs, command: &str) -> Result<(), String> {
    let micro_batch = trainer.config.batch_size / trainer.config.accumulate.max(1);
    let teacher =
        trainer.teacher.as_ref().map(|t| ("the teacher's weights and logits", crate::memory::teacher_bytes(t.config(), micro_batch, trainer.config.seq_len)));
    crate::memory::check_fits(trainer.model.config(), &trainer.config, args, teacher.as_slice())?;
    trainer.check_held_out().map_err(crate::flags::run_error)?;
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: cannot create run folder: {e}; choose an --out folder you can write to", out.display()))?;
    let metrics_path = out.join("metrics.jsonl");
    // A fresh run starts a fresh log: lines left by an earlier run that never saved a
    // checkpoint (stopped by a second Ctrl-C) would interleave with this one's. A resumed
    // run keeps the lines up to its checkpoint (`truncate_metrics`).
    let fresh = trainer.step == 0;
    let metrics = OpenOptions::new()
        .create(true)
        .append(!fresh)
        .write(true)
        .truncate(fresh)
        .open(&metrics_path)
        .map_err(|e| format!("{}: cannot write: {e}; choose an --out folder you can write to (nothing was trained)", metrics_path.display()))?;
    let bar = crate::progress::bar(trainer.config.steps as u64, "");
    bar.set_position(trainer.step as u64);
    crate::interrupt::install();
    let plain = !crate::progress::on_terminal();
    let mut host = CliHost { tokenizer, companions, args, metrics, metrics_path, bar, steps_here: 0, last_loss: f32::NAN, plain };
    let mut run = Run::new(trainer, tokenizer.clone());
    let outcome = run.drive(&mut host);
    let (trainer, bar) = (&run.trainer, &host.bar);
    match outcome {
        Err(e) => {
            bar.abandon();
            // The plot is a convenience: on a full disk its own failure must not hide why
            // the run stopped.
            let _ = write_plot(out);
            if e.starts_with("saving the checkpoint failed") && CheckpointDirs::new(out).existing().is_some() {
                return Err(format!("{e}; free some space and continue with `tinytune {command} --out {} --resume`", out.display()));
            }
            Err(e)
        }
        Ok(Outcome::Finished) => {
            bar.finish();
            write_plot(out)?;
            let held_out = run.last_eval().map(|l| format!(", held-out loss {l:.4}")).unwrap_or_default();
            eprintln!("finished {} steps in {:.1} s: last train loss {:.4}{held_out}", trainer.step, trainer.elapsed(), host.last_loss);
            if trainer.config.data_parallel > 1 {
                eprintln!("{}", replica_state_line(trainer));
            }
            if let (Some(cache), Some(path)) = (&trainer.teacher_cache, &trainer.config.teacher_cache) {
                eprintln!(
                    "teacher cache {path}: {} rows ({:.1} MB of logits); this run read {} rows from it and added {}",
                    cache.len(),
                    cache.logit_bytes() as f64 / 1e6,
                    cache.hits,
                    cache.misses
                );
            }
            eprintln!("saved {} (model, tokenizer, optimizer state), metrics.jsonl and loss.svg", out.join("checkpoint").display());
            Ok(())
        }
        Ok(_) if crate::interrupt::requested() => {
            save(trainer, tokenizer, companions, out, run.last_eval())?;
            write_plot(out)?;
            bar.abandon();
            Err(format!(
                "interrupted after step {}/{}; saved a checkpoint in {} — continue with `tinytune {command} --out {} --resume`",
                trainer.step,
                trainer.config.steps,
                out.join("checkpoint").display(),
                out.display()
            ))
        }
        Ok(_) => {
            save(trainer, tokenizer, companions, out, run.last_eval())?;
            bar.abandon_with_message(format!("stopped early (--stop-after); continue with `tinytune {command} --out {} --resume`", out.display()));
            Ok(())
        }
    }
}

/// The command line's side of a run: a progress bar, `metrics.jsonl`, checkpoints, and
/// Ctrl-C or `--stop-after` as a stop.
struct CliHost<'a> {
    tokenizer: &'a TextTokenizer,
    companions: &'a Companions,
    args: &'a TrainArgs,
    metrics: std::fs::File,
    metrics_path: std::path::PathBuf,
    bar: ProgressBar,
    steps_here: usize,
    last_loss: f32,
    /// stderr is not a terminal (a log file, CI, a pipe): the bar draws nothing there, so
    /// progress goes out as plain lines instead.
    plain: bool,
}

impl RunHost for CliHost<'_> {
    type Error = String;

    fn control(&mut self) -> Control {
        let stop_after = self.args.stop_after.is_some_and(|n| self.steps_here >= n);
        if crate::interrupt::requested() || stop_after { Control::Stop } else { Control::Run }
    }

    fn event(&mut self, _: &Trainer, event: &TrainEvent) -> Result<(), String> {
        match event {
            TrainEvent::Start(s) => {
                if !s.summary.is_empty() {
                    self.bar.suspend(|| eprintln!("{}", s.summary));
                }
                self.bar.suspend(|| {
                    eprintln!("{}", s.technique);
                    eprintln!("training {:.2} M parameters on {}, {} steps of {}×{} tokens", s.total as f64 / 1e6, s.data, s.steps, s.batch_size, s.seq_len);
                });
            }
            TrainEvent::Step(e) => {
                self.bar.set_position(e.step as u64);
                self.bar.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", e.loss, e.lr, e.tokens_per_s));
                self.steps_here += 1;
                self.last_loss = e.loss;
                // Without a terminal: about twenty lines a run, and the last step.
                let steps = self.bar.length().unwrap_or(1) as usize;
                if self.plain && (e.step.is_multiple_of(steps.div_ceil(20).max(1)) || e.step == steps) {
                    eprintln!("step {:>6}/{steps}  loss {:.4}  lr {:.2e}  {:.0} tok/s", e.step, e.loss, e.lr, e.tokens_per_s);
                }
            }
            TrainEvent::Eval(e) => {
                let mut line = format!("step {:>6}  train loss {:.4}  held-out loss {:.4}", e.step, self.last_loss, e.eval_loss);
                for key in ["rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"] {
                    if let Some(v) = e.metrics.get(key) {
                        line += &format!("  {key} {v:.4}");
                    }
                }
                if self.plain { eprintln!("{line}") } else { self.bar.println(line) }
            }
            TrainEvent::Nearest(n) => {
                for (i, row) in n.tokens.iter().enumerate() {
                    let near: Vec<String> = row.iter().map(|(t, c)| format!("{t:?} ({c:.2})")).collect();
                    eprintln!("virtual token {i}: nearest {}", near.join(", "));
                }
            }
        }
        writeln!(self.metrics, "{}", serde_json::to_string(event).expect("events serialise")).map_err(|e| format!("{}: {e}", self.metrics_path.display()))
    }

    fn after_step(&mut self, trainer: &Trainer, last_eval: Option<f32>) -> Result<(), String> {
        let (step, every) = (trainer.step, trainer.config.checkpoint_every);
        if (every > 0 && step % every == 0) || step == trainer.config.steps {
            save(trainer, self.tokenizer, self.companions, &self.args.out, last_eval)?;
        }
        Ok(())
    }
}

/// Draws `loss.svg` from `metrics.jsonl`.
pub fn write_plot(out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines() {
        match serde_json::from_str::<TrainEvent>(line) {
            Ok(TrainEvent::Step(s)) => train.push((s.step as f64, s.loss as f64)),
            Ok(TrainEvent::Eval(e)) => eval.push((e.step as f64, e.eval_loss as f64)),
            Ok(_) | Err(_) => {}
        }
    }
    let svg = plot::svg(
        &format!("{} — loss", out.display()),
        "step",
        "cross-entropy (nats/token)",
        &[
            plot::Series { label: "train loss", color: "#1f77b4", points: train, line: true },
            plot::Series { label: "held-out loss", color: "#d62728", points: eval, line: false },
        ],
    );
    write_atomic(&out.join("loss.svg"), svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tinytune::ModelConfig;
    use tinytune::train::DataSource;
    use tinytune_web::widgets::{ModelChoice, TrainParams};

    use super::resolve;
    use crate::cli::{Cli, Command};
    use tinytune::methods::MethodKind;
    use tinytune::train::Precision;

    /// The browser's "Run this at scale" command, parsed by this CLI, trains with exactly
    /// the configuration the browser used (checkpointing aside: the browser keeps its run
    /// in memory).
    #[test]
    fn the_browser_command_reproduces_the_browser_run() {
        let cases = [
            TrainParams::default(),
            TrainParams {
                model: ModelChoice::Nano,
                task: DataSource::Stories,
                steps: 7,
                lr: 0.003,
                batch: 3,
                seq: 40,
                seed: 9,
                compare: true,
                ..TrainParams::default()
            },
            TrainParams { task: "json-extract".parse().unwrap(), steps: 1234, lr: 2.5e-4, seq: 128, ..TrainParams::default() },
            TrainParams { precision: Precision::Fp16, loss_scale: "dynamic".into(), ..TrainParams::default() },
            TrainParams { precision: Precision::Fp16, loss_scale: "none".into(), ..TrainParams::default() },
            TrainParams { precision: Precision::Bf16, loss_scale: "none".into(), ..TrainParams::default() },
            TrainParams { method: MethodKind::Lora, rank: 4, alpha: 8.0, targets: "c_attn,mlp.c_proj".into(), ..TrainParams::default() },
            TrainParams { method: MethodKind::Qlora, ..TrainParams::default() },
            // Pre-training a fresh model is always full: the method does not apply.
            TrainParams { model: ModelChoice::Nano, task: DataSource::Stories, method: MethodKind::Lora, ..TrainParams::default() },
            TrainParams {
                optimizer: "adafactor".into(),
                schedule: "linear".into(),
                warmup: "5".into(),
                accumulate: 4,
                checkpointing: true,
                ..TrainParams::default()
            },
            TrainParams { optimizer: "adamw8bit".into(), schedule: "constant".into(), warmup: "25%".into(), ..TrainParams::default() },
            TrainParams { optimizer: "mezo".into(), ..TrainParams::default() },
            TrainParams { method: MethodKind::LastLayers, last_n: 2, ..TrainParams::default() },
            TrainParams { method: MethodKind::Bitfit, ..TrainParams::default() },
            TrainParams { method: MethodKind::Layernorm, ..TrainParams::default() },
            TrainParams { optimizer: "lion".into(), warmup: "0.05".into(), ..TrainParams::default() },
            TrainParams { model: ModelChoice::MicroLlama, ..TrainParams::default() },
            TrainParams { model: ModelChoice::MicroLlama, method: MethodKind::Lora, targets: "q_proj,v_proj,down_proj".into(), ..TrainParams::default() },
            TrainParams { model: ModelChoice::MicroLlama, method: MethodKind::Ia3, ..TrainParams::default() },
        ];
        for params in cases {
            let mut argv = vec!["tinytune".to_string()];
            argv.extend(params.command_args());
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", params.command()));
            let resolved = match cli.command {
                Command::Finetune(a) => {
                    let dir = match params.model {
                        ModelChoice::Micro => tinytune_web::run::MICRO_DIR,
                        ModelChoice::MicroLlama => tinytune_web::run::MICRO_LLAMA_DIR,
                        ModelChoice::Nano => panic!("a fresh nano model is pre-trained, not fine-tuned"),
                    };
                    assert_eq!(a.model.as_deref().and_then(|m| m.to_str()), Some(dir));
                    // The shipped checkpoint's config is the one the widget assumes.
                    let mut config = crate::model_dir::load(&std::path::PathBuf::from(format!("../{dir}")), &burn::tensor::Device::flex()).unwrap().config;
                    // The shape, that is: the file also names its tokenizer's special ids.
                    for key in ["bos_token_id", "eos_token_id"] {
                        config.extra.remove(key);
                    }
                    assert_eq!(config, params.model.config(), "{dir}");
                    a.method
                        .to_method(None, config.family)
                        .and_then(|m| resolve(&a.train, m, DataSource::Task(tinytune::data::Task::StoryQa), 3e-4, config.n_positions))
                }
                Command::Pretrain(a) => {
                    assert_eq!((params.model, a.preset.as_str(), a.tokenizer.as_str(), a.dropout), (ModelChoice::Nano, "nano", "char", 0.0));
                    resolve(&a.train, tinytune::methods::Method::Full, DataSource::Stories, 1e-3, ModelConfig::nano().n_positions)
                }
                other => panic!("{other:?}"),
            };
            let mut native = resolved.unwrap();
            native.checkpoint_every = 0;
            assert_eq!(native, params.train_config(), "{}", params.command());
        }
    }

    /// The preference widget's "Run this at scale" command resolves to the run the worker
    /// trains, for every objective and pair set it offers.
    #[test]
    fn the_preference_widgets_command_reproduces_its_run() {
        use tinytune_web::preference::{DATA, PreferenceParams, objectives};
        assert!(objectives().contains(&"orpo"), "{:?}", objectives());
        for name in objectives() {
            for data in DATA {
                let params = PreferenceParams { objective: name.into(), data: data.parse().unwrap(), beta: 0.25, ..Default::default() };
                let mut argv = vec!["tinytune".to_string()];
                argv.extend(params.command_args());
                let Command::Finetune(a) = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", params.command())).command else {
                    panic!("{}", params.command())
                };
                assert_eq!(a.model.as_deref().and_then(|m| m.to_str()), Some(tinytune_web::run::MICRO_DIR));
                let config = ModelConfig::micro();
                let method = a.method.to_method(None, config.family).unwrap();
                let mut native = resolve(&a.train, method, DataSource::Task(tinytune::data::Task::StoryQa), 3e-4, config.n_positions).unwrap();
                native.checkpoint_every = 0;
                assert_eq!(native, params.train_config(), "{}", params.command());
            }
        }
    }

    /// The grpo widget's "Run this at scale" commands resolve to the two runs the worker
    /// trains: the SFT run on micro, and GRPO on the model it writes; and the held-out
    /// reward is measured as the GRPO run's evaluations measure it. For every task the
    /// widget offers, with and without the KL term.
    #[test]
    fn the_grpo_widgets_command_reproduces_its_run() {
        use tinytune::train::Objective;
        use tinytune_web::grpo::{GrpoParams, TASKS};
        let config = ModelConfig::micro();
        for task in TASKS {
            for params in [
                GrpoParams { task: task.parse().unwrap(), ..Default::default() },
                GrpoParams { task: task.parse().unwrap(), group_size: 4, prompts: 3, steps: 7, lr: 1e-3, beta: 0.04, temperature: 0.7, sft_steps: 9 },
            ] {
                let parse = |args: Vec<String>| {
                    let argv: Vec<String> = std::iter::once("tinytune".to_string()).chain(args).collect();
                    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", argv.join(" "))).command
                };
                let finetune = |args: Vec<String>| {
                    let Command::Finetune(a) = parse(args) else { panic!("{}", params.commands()) };
                    let method = a.method.to_method(None, config.family).unwrap();
                    let mut native = resolve(&a.train, method, DataSource::Task(tinytune::data::Task::StoryQa), 3e-4, config.n_positions).unwrap();
                    native.checkpoint_every = 0;
                    (a.model, a.train.out, native)
                };
                let (sft_model, sft_out, sft) = finetune(params.sft_command_args());
                assert_eq!(sft_model.as_deref().and_then(|m| m.to_str()), Some(tinytune_web::run::MICRO_DIR));
                assert_eq!(sft, params.sft_config(), "{}", params.commands());
                let (grpo_model, _, grpo) = finetune(params.command_args());
                assert_eq!(grpo_model.as_ref(), Some(&sft_out), "stage 2 starts from stage 1's model");
                assert_eq!(grpo, params.train_config(), "{}", params.commands());
                let Command::Eval(e) = parse(params.eval_command_args()) else { panic!("{}", params.commands()) };
                let Objective::Grpo { group_size, temperature, max_completion_len, .. } = grpo.objective else { panic!("{:?}", grpo.objective) };
                assert_eq!(e.model, sft_out);
                assert_eq!((e.data.as_deref(), e.objective.as_deref()), (Some(task), Some("grpo")));
                assert_eq!(
                    (e.accuracy_examples, e.group_size, e.temperature, e.max_completion_len, e.seq_len),
                    (grpo.eval_examples, group_size, temperature, max_completion_len, Some(grpo.seq_len))
                );
            }
        }
    }

    /// The distill widget's "Run this at scale" commands resolve to the four runs the worker
    /// trains: the teacher, micro fine-tuned on the task; and each student, a fresh model of
    /// the teacher's shape with the widget's layers (`Gpt::init` from the run's seed, as the
    /// worker builds it), learning from the folder the teacher run writes. For every task the
    /// widget offers, with the defaults and with every setting changed.
    #[test]
    fn the_distill_widgets_commands_reproduce_its_runs() {
        use tinytune::train::Divergence;
        use tinytune_web::distill::{DistillParams, Student, TASKS};
        let config = ModelConfig::micro();
        for task in TASKS {
            let task = task.parse().unwrap();
            for params in [
                DistillParams { task, ..Default::default() },
                DistillParams {
                    task,
                    teacher_steps: 9,
                    student_layers: 1,
                    examples: 32,
                    steps: 7,
                    t1: 0.5,
                    t2: 2.5,
                    alpha: 0.3,
                    lr: 1e-3,
                    divergence: Divergence::Jsd,
                },
            ] {
                let parse = |args: Vec<String>| {
                    let argv: Vec<String> = std::iter::once("tinytune".to_string()).chain(args).collect();
                    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", argv.join(" "))).command
                };
                let Command::Finetune(a) = parse(params.teacher_command_args()) else { panic!("{}", params.commands()) };
                assert_eq!(a.model.as_deref().and_then(|m| m.to_str()), Some(tinytune_web::run::MICRO_DIR));
                let method = a.method.to_method(None, config.family).unwrap();
                let mut teacher = resolve(&a.train, method, DataSource::Task(tinytune::data::Task::StoryQa), 3e-4, config.n_positions).unwrap();
                teacher.checkpoint_every = 0;
                assert_eq!(teacher, params.teacher_config(), "{}", params.commands());
                for s in Student::ALL {
                    let Command::Distill(d) = parse(params.student_command_args(s)) else { panic!("{}", params.commands()) };
                    assert_eq!(d.teacher.as_ref(), Some(&a.train.out), "every student learns from the teacher run's model");
                    assert!(d.student.is_none() && d.student_preset.is_none() && !d.init_from_teacher, "a fresh student");
                    let student = ModelConfig { n_layer: d.student_layers.unwrap(), ..config.clone() };
                    assert_eq!(student, params.student_model_config(&config));
                    let divergence = d.divergence.parse().unwrap();
                    let mut native = super::distill_config(&d, divergence, true, student.n_positions).unwrap();
                    native.checkpoint_every = 0;
                    assert_eq!(native, params.student_config(s), "{}", params.commands());
                }
                // The students write apart, and none over the teacher.
                let mut outs: Vec<_> = Student::ALL.map(|s| params.student_dir(s)).into();
                outs.push(params.teacher_dir());
                outs.sort();
                outs.dedup();
                assert_eq!(outs.len(), 4);
            }
        }
    }

    /// The real-model widget's "Run this at scale" command resolves to the run the worker
    /// trains (the data file's path aside, which the CLI makes absolute).
    #[test]
    fn the_real_model_widgets_command_reproduces_its_run() {
        use tinytune_web::real::{CHAT_FILE, RealModelParams, SMOLLM2_FILE};
        let cases = [RealModelParams::default(), RealModelParams { steps: 8, lr: 0.005, rank: 4, batch: 1, seq: 64, ..RealModelParams::default() }];
        // The command runs from the repository root; this test from native/.
        let resolved: Vec<_> = cases
            .iter()
            .map(|params| {
                let mut argv = vec!["tinytune".to_string()];
                argv.extend(params.command_args().into_iter().map(|a| if a == CHAT_FILE { format!("../{a}") } else { a }));
                let Command::Finetune(a) = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", params.command())).command else {
                    panic!("{}", params.command())
                };
                assert_eq!(a.model.as_deref().and_then(|m| m.to_str()), Some(SMOLLM2_FILE));
                // SmolLM2's context (8192) and family, as its GGUF file gives them.
                let method = a.method.to_method(None, tinytune::model::Family::Llama).unwrap();
                resolve(&a.train, method, DataSource::Task(tinytune::data::Task::StoryQa), 3e-4, 8192)
            })
            .collect();
        for (params, native) in cases.iter().zip(resolved) {
            let mut native = native.unwrap();
            assert!(native.data_file.as_deref().is_some_and(|f| f.ends_with(CHAT_FILE)), "{:?}", native.data_file);
            native.data_file = Some(CHAT_FILE.into());
            native.checkpoint_every = 0;
            assert_eq!(native, params.train_config(), "{}", params.command());
        }
    }

    /// The count the train widget shows before a run equals the trainable parameters of
    /// the real adapted model, for every method the widget offers.
    #[test]
    fn the_widgets_live_trainable_count_is_the_adapted_models() {
        let device = burn::tensor::Device::flex().autodiff();
        for method in tinytune::methods::MethodKind::ALL {
            let p = TrainParams { method, last_n: 2, rank: 4, targets: "c_attn,mlp.c_fc".into(), ..TrainParams::default() };
            let model = p.method().apply(tinytune::Gpt::init(&ModelConfig::micro(), 0, &device), 0, &device).unwrap();
            let real = tinytune::model::trainable_count(&model);
            assert_eq!(p.trainable(), (real as u64, 875_264), "{method}");
            // micro-llama has no biases, so BitFit has nothing to train there (and says so).
            if method != tinytune::methods::MethodKind::Bitfit {
                let p = TrainParams { model: ModelChoice::MicroLlama, targets: "q_proj,down_proj".into(), ..p };
                let model = p.method().apply(tinytune::Gpt::init(&ModelConfig::micro_llama(), 0, &device), 0, &device).unwrap();
                let real = tinytune::model::trainable_count(&model);
                assert_eq!(p.trainable(), (real as u64, 791_680), "micro-llama {method}");
            }
        }
    }
}
