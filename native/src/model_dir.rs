//! Finding and loading a model folder: a run folder (its `checkpoint/`), a checkpoint
//! folder, or a Hugging Face style folder with `config.json`, `model.safetensors` and
//! `tokenizer.json`. Every error names the file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tinytune::checkpoint::{files, load_parts_for};
use tinytune::methods::Method;
use tinytune::train::TrainConfig;
use tinytune::{Gpt, ModelConfig, TextTokenizer};

use crate::fsutil::{CheckpointDirs, read, read_text};

pub struct Loaded {
    pub model: Gpt,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    /// The folder the files came from.
    pub dir: PathBuf,
}

/// The folder that holds the weights for `dir`.
pub fn resolve(dir: &Path) -> Result<PathBuf, String> {
    if !dir.exists() {
        return Err(format!("{}: no such folder; pass a run folder or a folder with {} and {}", dir.display(), files::CONFIG, files::WEIGHTS));
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
pub fn load(dir: &Path, device: &Device) -> Result<Loaded, String> {
    let dir = resolve(dir)?;
    let config = read_text(&dir.join(files::CONFIG))?;
    let tokenizer = read_text(&dir.join(files::TOKENIZER))?;
    let weights = read(&dir.join(files::WEIGHTS))?;
    let method = method_of(&dir)?;
    let loaded = load_parts_for(&dir.display().to_string(), &config, &tokenizer, &weights, &method, device).map_err(|e| e.to_string())?;
    Ok(Loaded { model: loaded.model, config: loaded.config, tokenizer: loaded.tokenizer, dir })
}
