//! Finding and loading a model folder: a run folder (its `checkpoint/`), a checkpoint
//! folder, or a Hugging Face style folder with `config.json`, `model.safetensors` and
//! `tokenizer.json`. Every error names the file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tinytune::checkpoint::{files, load_model};
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

/// Loads model, config and tokenizer from `dir` onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Loaded, String> {
    let dir = resolve(dir)?;
    let config_path = dir.join(files::CONFIG);
    let config = ModelConfig::from_json(&read_text(&config_path)?, config_path.display().to_string()).map_err(|e| e.to_string())?;
    let tok_path = dir.join(files::TOKENIZER);
    let tokenizer = TextTokenizer::from_json(&read_text(&tok_path)?, tok_path.display().to_string()).map_err(|e| e.to_string())?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(format!(
            "{}: vocab_size: {} is smaller than the {} tokens of {}; the tokenizer and the model do not belong together",
            config_path.display(),
            config.vocab_size,
            tokenizer.vocab_size(),
            tok_path.display()
        ));
    }
    let weights_path = dir.join(files::WEIGHTS);
    let model = load_model(&config, &read(&weights_path)?, device, weights_path.display().to_string()).map_err(|e| e.to_string())?;
    Ok(Loaded { model, config, tokenizer, dir })
}
