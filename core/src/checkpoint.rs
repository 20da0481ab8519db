//! Checkpoints as bytes: weights and optimizer moments in safetensors, configs in JSON.
//! The file system is the caller's (the native CLI writes these atomically; the browser
//! keeps them in memory or storage), so this module never touches a path.
//!
//! Weight names and layouts are the family's Hugging Face ones (`model::names`): GPT-2's
//! (`h.0.attn.c_attn.weight`, `[in, out]`, tied head) or the Llama family's
//! (`model.layers.0.self_attn.q_proj.weight`, `[out, in]`). Loading also accepts Hugging
//! Face's variants: a `transformer.` prefix, an `lm_head.weight` equal to the tied
//! embedding, the old causal-mask buffers `attn.bias` / `attn.masked_bias` and rotary
//! `inv_freq` buffers, and f16/bf16 storage (cast to f32).

use std::collections::HashMap;

use burn::tensor::{DType, Device, TensorData};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};
use crate::methods::{FrozenWeight, Method};
use crate::model::params::{load_params, param_data};
use crate::model::{Gpt, ModelConfig, names};
use crate::optim::Optimizer;
use crate::tokenizer::TextTokenizer;

/// The file names of a checkpoint folder.
pub mod files {
    pub const CONFIG: &str = "config.json";
    pub const WEIGHTS: &str = "model.safetensors";
    /// A sharded checkpoint's map from tensor names to shard files.
    pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
    pub const TOKENIZER: &str = "tokenizer.json";
    pub const TRAIN: &str = "train.json";
    pub const OPTIMIZER: &str = "optimizer.safetensors";
    pub const STATE: &str = "trainer_state.json";
    /// A GRPO run's frozen reference model (its KL term's; only when β > 0).
    pub const REFERENCE: &str = "reference.safetensors";
}

/// Where a run stands, saved with its optimizer so it can resume exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps completed.
    pub step: usize,
    /// Optimizer updates taken (equals `step` unless mixed precision skipped some).
    pub optimizer_t: u64,
    /// Seconds of training so far.
    pub elapsed_s: f64,
    /// Last held-out loss, if evaluated.
    pub eval_loss: Option<f32>,
    /// The loss scaler's state (mixed precision runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<crate::train::ScalerState>,
    /// A preference run's reference log-probabilities (training rows, then held-out rows),
    /// scored once when the run started: a resumed run needs them and no longer has the
    /// model that made them (TRL's `precompute_ref_log_probs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::train::trainer::ReferenceLogps>,
}

pub(crate) struct Owned {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// SHA-256 of `bytes` in lower-case hex, as `sha256sum` prints it: how tinytune records
/// which data file a run read (`TrainConfig::data_sha256`) and which teacher a teacher
/// cache was made with.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialises named tensors as safetensors (with `{"format": "pt"}` metadata, which
/// transformers expects): U8 tensors (packed 4-bit codes) as U8, everything else as F32.
pub fn to_safetensors(tensors: Vec<(String, TensorData)>) -> Vec<u8> {
    let owned: Vec<(String, Owned)> = tensors
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape().to_vec();
            if data.dtype() == DType::U8 {
                let bytes = data.try_to_vec::<u8>().expect("u8 data");
                return (name, Owned { dtype: Dtype::U8, shape, bytes });
            }
            let values: Vec<f32> = data.convert::<f32>().try_to_vec::<f32>().expect("converted to f32");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, Owned { dtype: Dtype::F32, shape, bytes })
        })
        .collect();
    let views: Vec<(&str, &Owned)> = owned.iter().map(|(n, o)| (n.as_str(), o)).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).expect("in-memory safetensors serialisation cannot fail")
}

/// Parses safetensors bytes into f32 tensor data by name.
pub fn from_safetensors(bytes: &[u8], origin: &Origin) -> Result<HashMap<String, TensorData>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::parse(origin.clone(), format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::from_bytes_vec(raw.to_vec(), shape, DType::F32),
            Dtype::F16 => TensorData::from_bytes_vec(raw.to_vec(), shape, DType::F16).convert::<f32>(),
            Dtype::BF16 => TensorData::from_bytes_vec(raw.to_vec(), shape, DType::BF16).convert::<f32>(),
            Dtype::F64 => TensorData::from_bytes_vec(raw.to_vec(), shape, DType::F64).convert::<f32>(),
            // Packed 4-bit codes of a QLoRA base.
            Dtype::U8 => TensorData::new(raw.to_vec(), shape),
            other => {
                return Err(Error::tensor(
                    origin.clone(),
                    name,
                    format!("has dtype {other:?}; tinytune loads F32, F16, BF16 or F64 weights (and U8 packed 4-bit codes)"),
                ));
            }
        };
        out.insert(name, data);
    }
    Ok(out)
}

/// The model's weights as safetensors bytes, under the family's file names
/// (`model::names`). A quantized base (QLoRA) is stored packed, as `{path}.weight.nf4.*`
/// (or `{path}.weight.ggml.*`, a GGUF file's blocks)
/// tensors (`path` in the file's names). A model merged in place (`methods::merge_in_place`) is
/// written unmerged: the base weights and the adapters apart, as it was trained, so loading
/// never applies an update twice.
pub fn save_model(model: &Gpt) -> Vec<u8> {
    if crate::methods::is_merged(model) {
        let mut unmerged = model.clone();
        crate::methods::unmerge(&mut unmerged);
        return save_model(&unmerged);
    }
    let family = model.config().family;
    let mut tensors: Vec<(String, TensorData)> = param_data(model)
        .into_iter()
        .map(|(path, data)| {
            let data = if names::is_linear_weight(family, &path) { transpose(&data) } else { data };
            (names::to_file(family, &path), data)
        })
        .collect();
    crate::methods::for_each_projection_ref(model, |path, p| {
        if let Some(q) = &p.frozen {
            tensors.extend(q.tensors().into_iter().map(|(suffix, d)| (names::to_file(family, &format!("{path}.weight.{suffix}")), d)));
        }
    });
    to_safetensors(tensors)
}

/// A `[rows, cols]` matrix as `[cols, rows]` (between `nn.Linear`'s layout and tinytune's).
pub fn transpose(data: &TensorData) -> TensorData {
    let [rows, cols] = [data.shape()[0], data.shape()[1]];
    let v = data.clone().convert::<f32>().try_into_vec::<f32>().expect("f32 values");
    let mut t = vec![0.0f32; v.len()];
    // Blocks of 64 × 64 keep both the reads and the writes in cache on large matrices.
    const B: usize = 64;
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for i in i0..(i0 + B).min(rows) {
                for j in j0..(j0 + B).min(cols) {
                    t[j * rows + i] = v[i * cols + j];
                }
            }
        }
    }
    TensorData::new(t, [cols, rows])
}

/// Builds a model of `config` and fills it from safetensors `bytes`.
pub fn load_model(config: &ModelConfig, bytes: &[u8], device: &Device, origin: impl Into<Origin>) -> Result<Gpt> {
    load_model_for(config, &Method::Full, bytes, device, origin)
}

/// Builds a model of `config` adapted by `method` (so its extra parameters exist) and fills
/// every parameter from safetensors `bytes`.
pub fn load_model_for(config: &ModelConfig, method: &Method, bytes: &[u8], device: &Device, origin: impl Into<Origin>) -> Result<Gpt> {
    let origin = origin.into();
    load_model_shards(config, method, &[(origin.clone(), bytes)], origin, device)
}

/// [`load_model_for`] from a checkpoint split into several safetensors files (a sharded
/// Hugging Face checkpoint, `model-00001-of-00002.safetensors` ...), each with the origin
/// that names it in errors; `origin` names the checkpoint as a whole (its index), for a
/// tensor that is missing or the wrong shape. A tensor in two shards is an error.
pub fn load_model_shards(config: &ModelConfig, method: &Method, shards: &[(Origin, &[u8])], origin: Origin, device: &Device) -> Result<Gpt> {
    let mut tensors = HashMap::new();
    for (shard_origin, bytes) in shards {
        for (name, data) in model_tensors(config, from_safetensors(bytes, shard_origin)?, shard_origin)? {
            if tensors.insert(name.clone(), data).is_some() {
                return Err(Error::tensor(shard_origin.clone(), name, "is also in an earlier shard; a checkpoint holds each tensor once"));
            }
        }
    }
    check_config_against_weights(config, method, &tensors, &origin)?;
    load_model_tensors(config, method, tensors, origin, device)
}

/// Checks `config` against the shapes the weight files hold before a model is allocated:
/// a config.json whose sizes do not describe these weights (`n_layer` 1000000000 beside a
/// 4-block file, `n_embd` 100000) is an error naming the field and what the weights hold,
/// never an attempt to allocate terabytes.
fn check_config_against_weights(config: &ModelConfig, method: &Method, tensors: &HashMap<String, TensorData>, weights: &Origin) -> Result<()> {
    let llama = config.family.is_llama_like();
    let name = |gpt2: &'static str, hf: &'static str| if llama { hf } else { gpt2 };
    // The config sits beside the weights.
    let config_file = Origin::from(match weights.0.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}", files::CONFIG),
        None => files::CONFIG.to_string(),
    });
    let blocks = tensors.keys().filter_map(|k| k.strip_prefix("h.")?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
    if blocks != config.n_layer {
        return Err(Error::config(
            config_file,
            name("n_layer", "num_hidden_layers"),
            format!(
                "is {}, but {weights} holds the weights of {blocks} block{}; set it to {blocks}, or use the config.json that came with these weights",
                config.n_layer,
                if blocks == 1 { "" } else { "s" }
            ),
        ));
    }
    // With the block count right, every base parameter's shape by formula (no allocation)
    // must be the file's. Adapted checkpoints rename and pack some tensors; their adapters
    // are checked as they load.
    if *method == Method::Full {
        for p in config.param_summaries() {
            let Some(held) = tensors.get(&p.name).map(|t| t.shape().to_vec()) else { continue };
            if held == p.shape {
                continue;
            }
            // The field to blame: the dimension that disagrees.
            let d = config.n_embd;
            let field = match p.name.as_str() {
                "wte.weight" if held.first() != p.shape.first() => "vocab_size",
                "wpe.weight" if held.first() != p.shape.first() => name("n_positions", "max_position_embeddings"),
                _ if !held.contains(&d) => name("n_embd", "hidden_size"),
                n if n.contains(".mlp.") => name("n_inner", "intermediate_size"),
                n if n.contains(".attn.") && config.head_dim.is_some() => "head_dim",
                n if n.contains(".attn.") => name("n_head", "num_attention_heads"),
                _ => name("n_embd", "hidden_size"),
            };
            return Err(Error::config(
                config_file,
                field,
                format!(
                    "makes {} of shape {:?}, but {weights} holds it as {held:?}; the config's sizes do not describe these weights (use the config.json that came with them)",
                    p.name, p.shape
                ),
            ));
        }
    }
    Ok(())
}

/// A model of `config` adapted by `method`, every parameter filled from `tensors` (under
/// tinytune's names and layouts, as [`model_tensors`] gives them); `origin` names the
/// checkpoint in errors. Every tensor must be used.
pub fn load_model_tensors(config: &ModelConfig, method: &Method, mut tensors: HashMap<String, TensorData>, origin: Origin, device: &Device) -> Result<Gpt> {
    // A model of zeros gives every parameter its shape without drawing random weights that
    // the file's would replace.
    let mut model = Gpt::zeros(config, device);
    if let Method::Qlora(q) = method {
        // Each projection's stored base becomes the quantized form QLoRA keeps as it is
        // (`Projection::source`), so nothing is quantized only to be replaced.
        let mut failure = None;
        crate::methods::for_each_projection(&mut model, |path, p| {
            if p.weight.is_none() || failure.is_some() {
                return;
            }
            let prefix = format!("{path}.weight.");
            let (d_in, d_out) = (p.d_in(), p.d_out());
            match FrozenWeight::from_tensors(
                device,
                d_in,
                d_out,
                q.block,
                |part| tensors.remove(&format!("{prefix}{part}")),
                &origin,
                &format!("{path}.weight"),
            ) {
                Ok(w) => p.source = Some(w),
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
    }
    let model = method.apply(model, 0, device)?;
    let (model, unused) = load_params(model, tensors, &origin)?;
    if let Some(name) = unused.first() {
        return Err(Error::tensor(
            origin,
            name.clone(),
            format!("is not a parameter of a {} model with this config.json ({} unexpected tensors)", config.family.model_type(), unused.len()),
        ));
    }
    Ok(model)
}

/// A checkpoint's tensors under tinytune's parameter names and layouts: Hugging Face
/// names mapped (`model::names`), `nn.Linear` weights transposed, and the buffers that
/// carry no parameter dropped (causal masks, rotary frequencies, a tied head's copy).
pub fn model_tensors(config: &ModelConfig, raw: HashMap<String, TensorData>, origin: &Origin) -> Result<HashMap<String, TensorData>> {
    let family = config.family;
    let mut tensors = HashMap::new();
    for (name, data) in raw {
        let skip = name.ends_with(".attn.bias") && !family.is_llama_like()
            || name.ends_with(".attn.masked_bias")
            || name.ends_with("rotary_emb.inv_freq")
            || (name == "lm_head.weight" && config.tie_word_embeddings);
        if skip {
            continue;
        }
        let Some(path) = names::from_hf(family, &name) else {
            return Err(Error::tensor(
                origin.clone(),
                name,
                format!("is not a parameter of a {} model; is this the checkpoint config.json describes?", family.model_type()),
            ));
        };
        let data = if names::is_linear_weight(family, &path) && data.shape().len() == 2 { transpose(&data) } else { data };
        tensors.insert(path, data);
    }
    Ok(tensors)
}

/// A model folder's three files, loaded and checked against each other.
pub struct LoadedModel {
    pub model: Gpt,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
}

/// Loads a model folder from the contents of its `config.json`, `tokenizer.json` and
/// `model.safetensors` (read from disk by the CLI, fetched over HTTP by the browser).
/// `dir` only labels errors, which name the file at fault.
pub fn load_parts(dir: &str, config_json: &str, tokenizer_json: &str, weights: &[u8], device: &Device) -> Result<LoadedModel> {
    load_parts_for(dir, config_json, tokenizer_json, weights, &Method::Full, device)
}

/// [`load_parts`] for weights saved from a model adapted by `method` (a LoRA or QLoRA run's
/// checkpoint).
pub fn load_parts_for(dir: &str, config_json: &str, tokenizer_json: &str, weights: &[u8], method: &Method, device: &Device) -> Result<LoadedModel> {
    load_parts_sharded(dir, config_json, tokenizer_json, &[(files::WEIGHTS.to_string(), weights)], method, device)
}

/// [`load_parts_for`] with the weights in one or more safetensors files, each given by its
/// file name in `dir` and its bytes.
pub fn load_parts_sharded(
    dir: &str,
    config_json: &str,
    tokenizer_json: &str,
    shards: &[(String, &[u8])],
    method: &Method,
    device: &Device,
) -> Result<LoadedModel> {
    let path = |file: &str| if dir.is_empty() { file.to_string() } else { format!("{}/{file}", dir.trim_end_matches('/')) };
    let config = ModelConfig::from_json(config_json, path(files::CONFIG))?;
    let tokenizer = TextTokenizer::from_json(tokenizer_json, path(files::TOKENIZER))?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::config(
            path(files::CONFIG),
            "vocab_size",
            format!(
                "{} is smaller than the {} tokens of {}; the tokenizer and the model do not belong together",
                config.vocab_size,
                tokenizer.vocab_size(),
                path(files::TOKENIZER)
            ),
        ));
    }
    let whole = Origin::from(path(match shards {
        [(one, _)] => one.as_str(),
        _ => files::WEIGHTS_INDEX,
    }));
    let shards: Vec<(Origin, &[u8])> = shards.iter().map(|(file, bytes)| (Origin::from(path(file)), *bytes)).collect();
    let model = load_model_shards(&config, method, &shards, whole, device)?;
    Ok(LoadedModel { model, config, tokenizer })
}

/// The optimizer's moments as safetensors bytes.
pub fn save_optimizer(optim: &Optimizer) -> Vec<u8> {
    to_safetensors(optim.state_data())
}

/// Restores moments saved by `save_optimizer`.
pub fn load_optimizer(optim: &mut Optimizer, t: u64, bytes: &[u8], device: &Device, origin: impl Into<Origin>) -> Result<()> {
    let tensors = from_safetensors(bytes, &origin.into())?;
    optim.load_state(t, tensors, device);
    Ok(())
}
