//! Finding and loading a model folder: a run folder (its `checkpoint/`), a checkpoint
//! folder, or a Hugging Face style folder with `config.json`, `model.safetensors` and
//! `tokenizer.json`; or a llama.cpp GGUF file (`.gguf`), whose metadata gives the config,
//! the tokenizer and the chat template. Every error names the file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tinytune::checkpoint::{files, load_parts_sharded};
use tinytune::methods::Method;
use tinytune::tokenizer::chat::ChatTemplate;
use tinytune::train::TrainConfig;
use tinytune::{Gpt, ModelConfig, TextTokenizer};

use crate::fsutil::{CheckpointDirs, read, read_text};

pub struct Loaded {
    pub model: Gpt,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    /// The chat template (`chat_template.jinja`, or `tokenizer_config.json`'s), if any.
    pub chat: Option<ChatTemplate>,
    /// Files that travel with the model unchanged (the template, the tokenizer's config,
    /// the generation settings): written into every checkpoint of a run on it.
    pub companions: Companions,
    /// The folder the files came from.
    pub dir: PathBuf,
}

/// The folder that holds the weights for `dir`.
pub fn resolve(dir: &Path) -> Result<PathBuf, String> {
    if !dir.exists() {
        return Err(format!(
            "{}: no such folder; pass a run folder or a folder with {} and {} (or a sharded {})",
            dir.display(),
            files::CONFIG,
            files::WEIGHTS,
            files::WEIGHTS_INDEX
        ));
    }
    if dir.is_file() && crate::fsutil::is_pickle(dir) {
        return Err(crate::fsutil::refuse_pickle(dir));
    }
    if let Some(ckpt) = CheckpointDirs::new(dir).existing() {
        return Ok(ckpt.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// The fine-tuning method a run was trained with (from its `train.json`; full without one).
pub fn method_of(dir: &Path) -> Result<Method, String> {
    let dir = resolve(dir)?;
    match std::fs::read_to_string(dir.join(files::TRAIN)) {
        Ok(text) => Ok(TrainConfig::from_json(&text, dir.join(files::TRAIN).display().to_string()).map_err(|e| e.to_string())?.method),
        Err(_) => Ok(Method::Full),
    }
}

/// Loads model, config and tokenizer from `dir` onto `device`. A LoRA or QLoRA run's
/// checkpoint loads with its adapters (its `train.json` names the method).
/// [`load`], refusing a reward model (a sequence classifier has a score head and no LM
/// head: it scores text, it does not predict it): for commands that generate or measure
/// next-token loss.
pub fn load_language_model(dir: &Path, device: &Device) -> Result<Loaded, String> {
    let loaded = load(dir, device)?;
    if loaded.model.score.is_some() {
        return Err(format!(
            "--model: {} is a reward model ({}: a score head, no LM head); it scores text rather than writing it — use `tinytune eval --objective reward`",
            loaded.dir.display(),
            loaded.config.family.classifier_architecture()
        ));
    }
    Ok(loaded)
}

pub fn load(dir: &Path, device: &Device) -> Result<Loaded, String> {
    if is_gguf(dir) {
        return load_gguf(dir, device);
    }
    let dir = resolve(dir)?;
    let config = read_text(&dir.join(files::CONFIG))?;
    let tokenizer = read_text(&dir.join(files::TOKENIZER))?;
    // Reading and building a large model takes a while: say so on a terminal.
    let size: u64 = std::fs::read_dir(&dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors")).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let spinner = (size > 200_000_000).then(|| crate::progress::spinner(format!("loading {} ({:.1} GB of weights)", dir.display(), size as f64 / 1e9)));
    let shards = read_weights(&dir)?;
    let method = method_of(&dir)?;
    let shards: Vec<(String, &[u8])> = shards.iter().map(|(f, b)| (f.clone(), b.as_slice())).collect();
    let loaded = load_parts_sharded(&dir.display().to_string(), &config, &tokenizer, &shards, &method, device).map_err(|e| e.to_string());
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let loaded = loaded?;
    let companions: Companions = COMPANIONS.iter().filter_map(|&name| std::fs::read(dir.join(name)).ok().map(|bytes| (name, bytes))).collect();
    let text = |name: &str| companions.iter().find(|(n, _)| *n == name).map(|(_, b)| String::from_utf8_lossy(b).into_owned());
    let (config_text, jinja) = (text(TOKENIZER_CONFIG), text(CHAT_TEMPLATE));
    let origin = |name: &str| dir.join(name).display().to_string();
    let (config_origin, jinja_origin) = (origin(TOKENIZER_CONFIG), origin(CHAT_TEMPLATE));
    let chat = ChatTemplate::from_files(config_text.as_deref().map(|t| (t, config_origin.as_str())), jinja.as_deref().map(|t| (t, jinja_origin.as_str())))
        .map_err(|e| e.to_string())?;
    Ok(Loaded { model: loaded.model, config: loaded.config, tokenizer: loaded.tokenizer, chat, companions, dir })
}

/// A preference objective's reference model from `dir` (`--reference`), refused unless it
/// shares the tokenizer size of the model it is compared with.
pub fn load_reference(dir: &Path, tokenizer: &TextTokenizer, device: &Device) -> Result<Gpt, String> {
    let reference = load(dir, device)?;
    if reference.tokenizer.vocab_size() != tokenizer.vocab_size() {
        return Err(format!(
            "--reference: {} has {} tokens and the model {}; the two must share a tokenizer",
            dir.display(),
            reference.tokenizer.vocab_size(),
            tokenizer.vocab_size()
        ));
    }
    Ok(reference.model)
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A GGUF model, with the files a Hugging Face folder would have beside its weights
/// (`tokenizer_config.json` with the chat template, `generation_config.json`) made from its
/// metadata, so a run on it saves complete folders.
fn load_gguf(path: &Path, device: &Device) -> Result<Loaded, String> {
    use tinytune::gguf::{self, Gguf};
    let bytes = read(path)?;
    let origin = path.display().to_string();
    let err = |e: tinytune::Error| e.to_string();
    let g = Gguf::parse(&bytes, origin.as_str()).map_err(err)?;
    let gguf::llama::Opened { model, config, tokenizer, chat } = gguf::llama::open(&g, device).map_err(err)?;
    let pretty = |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("JSON serialises");
    let tokenizer_config = gguf::tokenizer::tokenizer_config_json(&g).map_err(err)?;
    let companions = vec![(TOKENIZER_CONFIG, pretty(tokenizer_config)), (GENERATION_CONFIG, pretty(gguf::tokenizer::generation_config_json(&g)))];
    Ok(Loaded { model, config, tokenizer, chat, companions, dir: path.to_path_buf() })
}

/// `tinytune import gguf FILE --out DIR`: the GGUF model as a Hugging Face folder
/// (config.json, model.safetensors in FP32, tokenizer.json, tokenizer_config.json with the
/// chat template, generation_config.json) that transformers and tinytune load.
pub fn import_gguf(file: &Path, out: &Path, device: &Device) -> Result<(), String> {
    if !is_gguf(file) {
        return Err(format!("{}: expected a .gguf file", file.display()));
    }
    if out.exists() {
        return Err(format!("{}: already exists; choose a new --out folder", out.display()));
    }
    let loaded = load_gguf(file, device)?;
    write_model_folder(out, &loaded.companions, &loaded.config, &loaded.tokenizer, &loaded.model)?;
    eprintln!(
        "imported {} into {}: {} layers, {} parameters as FP32, {} tokens{}",
        file.display(),
        out.display(),
        loaded.config.n_layer,
        loaded.config.num_params(),
        loaded.tokenizer.vocab_size(),
        if loaded.chat.is_some() { ", with its chat template" } else { "" }
    );
    Ok(())
}

/// Creates the model folder `out` (complete or absent): the companions, config.json,
/// tokenizer.json and `model` as model.safetensors. What merge-adapter and import write.
pub fn write_model_folder(out: &Path, companions: &Companions, config: &ModelConfig, tokenizer: &TextTokenizer, model: &Gpt) -> Result<(), String> {
    // Special token ids from the tokenizer, so transformers reads a self-consistent config.
    let config = config.with_token_ids(tokenizer.eot());
    let written = [config.to_json().into_bytes(), tokenizer.to_json().into_bytes(), tinytune::checkpoint::save_model(model)];
    let mut all: Vec<(&str, &[u8])> = companions.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    all.extend([(files::CONFIG, written[0].as_slice()), (files::TOKENIZER, written[1].as_slice()), (files::WEIGHTS, written[2].as_slice())]);
    crate::fsutil::write_new_folder(out, &all)
}

/// A model folder's files besides config, tokenizer and weights, by name and bytes.
pub type Companions = Vec<(&'static str, Vec<u8>)>;

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const CHAT_TEMPLATE: &str = "chat_template.jinja";
const GENERATION_CONFIG: &str = "generation_config.json";
/// The files copied from a model folder into each checkpoint of a run on it.
pub const COMPANIONS: [&str; 4] = [TOKENIZER_CONFIG, CHAT_TEMPLATE, "special_tokens_map.json", GENERATION_CONFIG];

/// The weight files of a model folder, by file name: `model.safetensors`, or the shards a
/// `model.safetensors.index.json` lists (its `weight_map`, as transformers writes for
/// checkpoints over 5 GB).
pub fn read_weights(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let single = dir.join(files::WEIGHTS);
    let index = dir.join(files::WEIGHTS_INDEX);
    if single.exists() || !index.exists() {
        return Ok(vec![(files::WEIGHTS.to_string(), read(&single)?)]);
    }
    let text = read_text(&index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON ({e})", index.display()))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(format!("{}: weight_map: missing; a sharded checkpoint's index maps each tensor name to its shard file", index.display()));
    };
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str().filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors")) else {
            return Err(format!("{}: weight_map.{tensor}: {file} is not a .safetensors file name in the same folder", index.display()));
        };
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    files.into_iter().map(|f| Ok((f.clone(), read(&dir.join(&f))?))).collect()
}
