//! A decoder-only transformer described by its sizes, for memory estimates: GPT-2, the
//! Llama family (Llama 2/3, Mistral, Qwen2) and Phi-2. Every linear layer is listed with
//! its shape, so parameter counts, LoRA targets, quantized bytes and activations all come
//! from one list rather than from separate formulas that could disagree.
//!
//! Presets carry the published shapes (each model's Hugging Face `config.json`); the tests
//! check that each preset's parameter count equals the count its model card publishes.
//! [`Arch::from_hf_config`] reads any `config.json` of these families and names the field
//! that is missing or wrong.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Origin, Result};
use crate::model::ModelConfig;

/// The block layout a family uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// GPT-2: learned positions, fused q/k/v (`c_attn`), GELU MLP, LayerNorm with bias,
    /// biases on every linear layer, LM head tied to the token embedding.
    Gpt2,
    /// Llama, Mistral, Qwen2: rotary positions, separate q/k/v with grouped-query attention,
    /// gated SiLU MLP (gate, up, down), RMSNorm (weight only), no biases (Qwen2 has them on
    /// q/k/v only).
    Llama,
    /// Phi-2: separate q/k/v/dense with biases, GELU MLP (fc1, fc2), one LayerNorm per
    /// block feeding attention and MLP in parallel, untied LM head with a bias.
    Phi,
}

/// One linear layer of a block: its module name (PEFT's `target_modules` names) and shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linear {
    pub name: &'static str,
    pub d_in: u64,
    pub d_out: u64,
    pub bias: bool,
}

impl Linear {
    pub fn params(&self) -> u64 {
        self.d_in * self.d_out + if self.bias { self.d_out } else { 0 }
    }
}

/// The sizes of a decoder-only model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    pub name: String,
    pub family: Family,
    pub vocab: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    /// Key/value heads (grouped-query attention); equal to `heads` without it.
    pub kv_heads: u64,
    /// Width of the MLP's hidden layer.
    pub intermediate: u64,
    /// Rows of the learned position table (GPT-2 only; 0 for rotary models).
    pub positions: u64,
    /// Whether the LM head reuses the token embedding.
    pub tied: bool,
    /// Biases on q/k/v (Qwen2) in a family that otherwise has none.
    pub qkv_bias: bool,
}

/// Every preset name [`Arch::preset`] knows, smallest first within a family.
pub const ARCH_PRESETS: [&str; 21] = [
    "nano",
    "micro",
    "mini",
    "nano-llama",
    "micro-llama",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.2-3b",
    "mistral-7b",
    "phi-2",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
];

impl Arch {
    /// The architecture of a tinytune model (GPT-2 or Llama layout).
    pub fn from_model_config(name: &str, c: &ModelConfig) -> Self {
        if c.family.is_llama_like() {
            // (An explicit head_dim other than hidden / heads is not modelled by the estimator.)
            return Self::llama(
                name,
                c.vocab_size as u64,
                c.n_embd as u64,
                c.n_layer as u64,
                c.n_head as u64,
                c.n_kv_head as u64,
                c.inner() as u64,
                c.tie_word_embeddings,
                c.qkv_bias,
            );
        }
        Self {
            name: name.to_string(),
            family: Family::Gpt2,
            vocab: c.vocab_size as u64,
            hidden: c.n_embd as u64,
            layers: c.n_layer as u64,
            heads: c.n_head as u64,
            kv_heads: c.n_head as u64,
            intermediate: c.inner() as u64,
            positions: c.n_positions as u64,
            tied: true,
            qkv_bias: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn llama(name: &str, vocab: u64, hidden: u64, layers: u64, heads: u64, kv_heads: u64, intermediate: u64, tied: bool, qkv_bias: bool) -> Self {
        Self { name: name.into(), family: Family::Llama, vocab, hidden, layers, heads, kv_heads, intermediate, positions: 0, tied, qkv_bias }
    }

    /// A named preset. Shapes are from each model's published `config.json`.
    pub fn preset(name: &str) -> Result<Self> {
        let l = Self::llama;
        Ok(match name {
            "nano" | "micro" | "mini" | "nano-llama" | "micro-llama" | "gpt2" | "gpt2-small" | "gpt2-medium" | "gpt2-large" | "gpt2-xl" => {
                Self::from_model_config(name, &ModelConfig::preset(name)?)
            }
            "llama-2-7b" => l(name, 32000, 4096, 32, 32, 32, 11008, false, false),
            "llama-2-13b" => l(name, 32000, 5120, 40, 40, 40, 13824, false, false),
            "llama-2-70b" => l(name, 32000, 8192, 80, 64, 8, 28672, false, false),
            "llama-3.1-8b" => l(name, 128256, 4096, 32, 32, 8, 14336, false, false),
            "llama-3.1-70b" => l(name, 128256, 8192, 80, 64, 8, 28672, false, false),
            "llama-3.2-3b" => l(name, 128256, 3072, 28, 24, 8, 8192, true, false),
            "mistral-7b" => l(name, 32000, 4096, 32, 32, 8, 14336, false, false),
            "qwen2.5-0.5b" => l(name, 151936, 896, 24, 14, 2, 4864, true, true),
            "qwen2.5-1.5b" => l(name, 151936, 1536, 28, 12, 2, 8960, true, true),
            "qwen2.5-3b" => l(name, 151936, 2048, 36, 16, 2, 11008, true, true),
            "qwen2.5-7b" => l(name, 152064, 3584, 28, 28, 4, 18944, false, true),
            "phi-2" => Self {
                name: name.into(),
                family: Family::Phi,
                vocab: 51200,
                hidden: 2560,
                layers: 32,
                heads: 32,
                kv_heads: 32,
                intermediate: 10240,
                positions: 0,
                tied: false,
                qkv_bias: true,
            },
            other => {
                return Err(Error::Invalid(format!(
                    "unknown model '{other}'; choose one of {}, or give the path of a Hugging Face config.json",
                    ARCH_PRESETS.join(", ")
                )));
            }
        })
    }

    /// Reads a Hugging Face `config.json` of the GPT-2, Llama, Mistral, Qwen2 or Phi
    /// families. `origin` names the file in errors.
    pub fn from_hf_config(json: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        let v: Value = serde_json::from_str(json).map_err(|e| Error::parse(origin.clone(), format!("not valid JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| Error::parse(origin.clone(), "expected a JSON object of model settings"))?;
        let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("");
        // The first of `names` that is present must be a positive integer.
        let int = |names: &[&str], fix: &str| -> Result<u64> {
            for n in names {
                if let Some(x) = obj.get(*n) {
                    return match x.as_u64() {
                        Some(0) => Err(Error::config(origin.clone(), *n, format!("is 0; {fix}"))),
                        Some(k) => Ok(k),
                        None => Err(Error::config(origin.clone(), *n, format!("{x} is not a positive integer; {fix}"))),
                    };
                }
            }
            Err(Error::config(origin.clone(), names[0], format!("is missing; {fix}")))
        };
        let opt_int = |name: &str, fix: &str| -> Result<Option<u64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => int(&[name], fix).map(Some),
            }
        };
        let boolean = |name: &str, default: bool| obj.get(name).and_then(Value::as_bool).unwrap_or(default);
        let name = obj.get("_name_or_path").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(model_type).to_string();

        let family = match model_type {
            "gpt2" => Family::Gpt2,
            "llama" | "mistral" | "qwen2" => Family::Llama,
            "phi" => Family::Phi,
            "" => {
                return Err(Error::config(origin, "model_type", "is missing; add \"model_type\": \"gpt2\", \"llama\", \"mistral\", \"qwen2\" or \"phi\""));
            }
            other => {
                return Err(Error::config(
                    origin,
                    "model_type",
                    format!("'{other}' is not a family the estimator knows; it reads gpt2, llama, mistral, qwen2 and phi"),
                ));
            }
        };
        let arch = if family == Family::Gpt2 {
            let hidden = int(&["n_embd", "hidden_size"], "set it to the width of the residual stream (768 for GPT-2 small)")?;
            Self {
                name,
                family,
                vocab: int(&["vocab_size"], "set it to the tokenizer's size (50257 for GPT-2)")?,
                hidden,
                layers: int(&["n_layer", "num_hidden_layers"], "set it to the number of transformer blocks")?,
                heads: int(&["n_head", "num_attention_heads"], "set it to the number of attention heads")?,
                kv_heads: 0,
                intermediate: opt_int("n_inner", "use null for GPT-2's default of 4·n_embd")?.unwrap_or(4 * hidden),
                positions: int(&["n_positions", "n_ctx"], "set it to the longest sequence (1024 for GPT-2)")?,
                tied: boolean("tie_word_embeddings", true),
                qkv_bias: false,
            }
        } else {
            let heads = int(&["num_attention_heads"], "set it to the number of attention heads")?;
            Self {
                name,
                family,
                vocab: int(&["vocab_size"], "set it to the tokenizer's size")?,
                hidden: int(&["hidden_size"], "set it to the width of the residual stream")?,
                layers: int(&["num_hidden_layers"], "set it to the number of transformer blocks")?,
                heads,
                kv_heads: opt_int("num_key_value_heads", "set it to the number of key/value heads, or remove it for ordinary attention")?.unwrap_or(heads),
                intermediate: int(&["intermediate_size"], "set it to the MLP's hidden width")?,
                positions: 0,
                tied: boolean("tie_word_embeddings", false),
                qkv_bias: family == Family::Phi || model_type == "qwen2",
            }
        };
        let arch = Self { kv_heads: if arch.kv_heads == 0 { arch.heads } else { arch.kv_heads }, ..arch };
        arch.validate(origin)?;
        Ok(arch)
    }

    /// Checks that the sizes fit together, naming the field at fault (as in `config.json`).
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let gpt2 = self.family == Family::Gpt2;
        let (hidden, heads, kv) = if gpt2 { ("n_embd", "n_head", "n_head") } else { ("hidden_size", "num_attention_heads", "num_key_value_heads") };
        for (field, v) in [(hidden, self.hidden), (heads, self.heads), ("vocab_size", self.vocab), ("layers", self.layers), ("intermediate", self.intermediate)]
        {
            if v == 0 {
                return Err(Error::config(origin, field, "is 0; it must be at least 1"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::config(
                origin,
                hidden,
                format!("{} does not divide evenly among {} heads ({heads}); choose a multiple of {}", self.hidden, self.heads, self.heads),
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::config(origin, kv, format!("{} key/value heads do not divide {} attention heads evenly", self.kv_heads, self.heads)));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// The linear layers of one block, in forward order, with PEFT's module names.
    pub fn block_linears(&self) -> Vec<Linear> {
        let (h, i) = (self.hidden, self.intermediate);
        let kv = self.kv_heads * self.head_dim();
        let lin = |name, d_in, d_out, bias| Linear { name, d_in, d_out, bias };
        match self.family {
            // Named by their path inside a block, as tinytune's parameters are, so a dotted
            // target (mlp.c_fc) matches here exactly as it does in `LoraConfig::targets`.
            Family::Gpt2 => {
                vec![lin("attn.c_attn", h, 3 * h, true), lin("attn.c_proj", h, h, true), lin("mlp.c_fc", h, i, true), lin("mlp.c_proj", i, h, true)]
            }
            Family::Llama => vec![
                lin("q_proj", h, h, self.qkv_bias),
                lin("k_proj", h, kv, self.qkv_bias),
                lin("v_proj", h, kv, self.qkv_bias),
                lin("o_proj", h, h, false),
                lin("gate_proj", h, i, false),
                lin("up_proj", h, i, false),
                lin("down_proj", i, h, false),
            ],
            Family::Phi => vec![
                lin("q_proj", h, h, true),
                lin("k_proj", h, kv, true),
                lin("v_proj", h, kv, true),
                lin("dense", h, h, true),
                lin("fc1", h, i, true),
                lin("fc2", i, h, true),
            ],
        }
    }

    /// Parameters of one block's norms: LayerNorm has weight and bias, RMSNorm a weight;
    /// Phi has one norm per block.
    pub fn block_norm_params(&self) -> u64 {
        match self.family {
            Family::Gpt2 => 4 * self.hidden,
            Family::Llama => 2 * self.hidden,
            Family::Phi => 2 * self.hidden,
        }
    }

    pub fn block_params(&self) -> u64 {
        self.block_linears().iter().map(Linear::params).sum::<u64>() + self.block_norm_params()
    }

    pub fn embedding_params(&self) -> u64 {
        self.vocab * self.hidden + self.positions * self.hidden
    }

    /// The final norm and, when untied, the LM head (Phi's has a bias).
    pub fn head_params(&self) -> u64 {
        let norm = if self.family == Family::Llama { self.hidden } else { 2 * self.hidden };
        let head = if self.tied { 0 } else { self.vocab * self.hidden + if self.family == Family::Phi { self.vocab } else { 0 } };
        norm + head
    }

    pub fn num_params(&self) -> u64 {
        self.embedding_params() + self.layers * self.block_params() + self.head_params()
    }

    /// The largest single parameter tensor (DeepSpeed's `largest_layer_params`, which its
    /// estimator takes as the biggest module's parameters): the embedding for every preset.
    pub fn largest_layer_params(&self) -> u64 {
        let biggest_linear = self.block_linears().iter().map(Linear::params).max().unwrap_or(0);
        (self.vocab * self.hidden).max(biggest_linear)
    }

    /// The module names a LoRA target list selects: `all-linear` selects every block linear;
    /// otherwise a name matches itself or any name ending in `.{name}` (so `c_proj` selects
    /// both of GPT-2's).
    pub fn lora_targets(&self, targets: &[String]) -> Vec<Linear> {
        self.block_linears().into_iter().filter(|l| targets.iter().any(|t| t == "all-linear" || l.name == t || l.name.ends_with(&format!(".{t}")))).collect()
    }

    /// Default IA³ targets and feedforward modules: PEFT's for GPT-2 and Llama
    /// (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING` and its feedforward twin); for
    /// Phi the same pattern (keys, values and the MLP's down projection).
    pub fn default_ia3_targets(&self) -> (Vec<String>, Vec<String>) {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self.family {
            Family::Gpt2 => (v(&["c_attn", "mlp.c_proj"]), v(&["mlp.c_proj"])),
            Family::Llama => (v(&["k_proj", "v_proj", "down_proj"]), v(&["down_proj"])),
            Family::Phi => (v(&["k_proj", "v_proj", "fc2"]), v(&["fc2"])),
        }
    }

    /// PEFT's default LoRA targets for the family (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn default_lora_targets(&self) -> Vec<String> {
        match self.family {
            Family::Gpt2 => vec!["c_attn".into()],
            Family::Llama | Family::Phi => vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts as published (model cards, or the sum of the released safetensors).
    #[test]
    fn presets_have_their_published_parameter_counts() {
        for (name, want) in [
            ("gpt2", 124_439_808),
            ("gpt2-medium", 354_823_168),
            ("gpt2-large", 774_030_080),
            ("gpt2-xl", 1_557_611_200),
            ("llama-2-7b", 6_738_415_616),
            ("llama-2-13b", 13_015_864_320),
            ("llama-2-70b", 68_976_648_192),
            ("llama-3.1-8b", 8_030_261_248),
            ("llama-3.1-70b", 70_553_706_496),
            ("llama-3.2-3b", 3_212_749_824),
            ("mistral-7b", 7_241_732_096),
            ("phi-2", 2_779_683_840),
            ("qwen2.5-0.5b", 494_032_768),
            ("qwen2.5-1.5b", 1_543_714_304),
            ("qwen2.5-3b", 3_085_938_688),
            ("qwen2.5-7b", 7_615_616_512),
        ] {
            assert_eq!(Arch::preset(name).unwrap().num_params(), want, "{name}");
        }
    }

    #[test]
    fn tinytune_presets_agree_with_the_model_formula() {
        for name in crate::model::PRESETS {
            let c = ModelConfig::preset(name).unwrap();
            assert_eq!(Arch::preset(name).unwrap().num_params(), c.num_params() as u64, "{name}");
        }
    }

    #[test]
    fn hf_configs_of_each_family_load() {
        let gpt2 = r#"{"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_embd":1024,"n_layer":24,"n_head":16,"n_inner":null}"#;
        assert_eq!(Arch::from_hf_config(gpt2, "config.json").unwrap().num_params(), 354_823_168);
        let mistral = r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"num_hidden_layers":32,
            "num_attention_heads":32,"num_key_value_heads":8,"intermediate_size":14336,"tie_word_embeddings":false}"#;
        assert_eq!(Arch::from_hf_config(mistral, "config.json").unwrap().num_params(), 7_241_732_096);
        let qwen = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"num_hidden_layers":24,
            "num_attention_heads":14,"num_key_value_heads":2,"intermediate_size":4864,"tie_word_embeddings":true}"#;
        assert_eq!(Arch::from_hf_config(qwen, "config.json").unwrap().num_params(), 494_032_768);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |json: &str| Arch::from_hf_config(json, "my/config.json").unwrap_err().to_string();
        let e = err(r#"{"model_type":"llama","vocab_size":32000,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64}"#);
        assert!(e.contains("my/config.json") && e.contains("hidden_size") && e.contains("missing"), "{e}");
        let e = err(r#"{"model_type":"gpt2","vocab_size":100,"n_positions":64,"n_embd":64,"n_layer":2,"n_head":0}"#);
        assert!(e.contains("n_head") && e.contains("is 0"), "{e}");
        let e = err(r#"{"model_type":"gpt2","vocab_size":100,"n_positions":64,"n_embd":100,"n_layer":2,"n_head":3}"#);
        assert!(e.contains("n_embd") && e.contains("divide evenly"), "{e}");
        let e = err(
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3,"intermediate_size":64}"#,
        );
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = err(r#"{"model_type":"bert"}"#);
        assert!(e.contains("model_type") && e.contains("bert"), "{e}");
        let e = err(r#"{"model_type":"gpt2","n_embd":64,"vocab_size":"many"}"#);
        assert!(e.contains("vocab_size") && e.contains("not a positive integer"), "{e}");
        let e = err("{not json");
        assert!(e.contains("my/config.json") && e.contains("JSON"), "{e}");
    }

    #[test]
    fn lora_targets_select_by_module_name() {
        let gpt2 = Arch::preset("gpt2").unwrap();
        let names = |t: &[&str]| gpt2.lora_targets(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>()).iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(&["c_attn"]), vec!["attn.c_attn"]);
        assert_eq!(names(&["mlp.c_fc", "attn.c_attn"]), vec!["attn.c_attn", "mlp.c_fc"]);
        assert_eq!(names(&["c_proj"]), vec!["attn.c_proj", "mlp.c_proj"]);
        assert_eq!(names(&["all-linear"]).len(), 4);
    }
}
