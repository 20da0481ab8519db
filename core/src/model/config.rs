//! The shape of a model: sizes, dropout and presets.
//!
//! `ModelConfig` serialises with the field names of Hugging Face's GPT-2 `config.json`
//! (`n_embd`, `n_layer`, ...), so a tinytune checkpoint's `config.json` is a GPT-2 config
//! that the Python ecosystem reads, and a GPT-2 config loads here unchanged.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};

/// Hyperparameters of a GPT-2-architecture decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of token ids the embedding table holds.
    pub vocab_size: usize,
    /// Longest sequence the model accepts (the learned position table has this many rows).
    pub n_positions: usize,
    /// Width of the residual stream, C.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; `n_embd` must divide evenly among them.
    pub n_head: usize,
    /// Width of the MLP's hidden layer; GPT-2 writes `null` for the default of 4·C.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Dropout on the residual branches (after attention and after the MLP).
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Dropout on the sum of token and position embeddings.
    #[serde(default)]
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attn_pdrop: f64,
    /// LayerNorm's epsilon; GPT-2 uses 1e-5.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// Always "gpt2": lets transformers recognise the file.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Which activation the MLP uses; only GPT-2's "gelu_new" (tanh approximation) is built.
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_ln_eps() -> f64 {
    1e-5
}
fn default_model_type() -> String {
    "gpt2".to_string()
}
fn default_activation() -> String {
    "gelu_new".to_string()
}

/// The named shapes: three tiny ones for the browser and tests, and GPT-2's four for
/// real-scale runs on a GPU.
pub const PRESETS: [&str; 7] = ["nano", "micro", "mini", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

impl ModelConfig {
    /// A config with GPT-2's defaults for everything but the sizes.
    pub fn new(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            layer_norm_epsilon: default_ln_eps(),
            model_type: default_model_type(),
            activation_function: default_activation(),
        }
    }

    /// About 0.1 M parameters with a 64-symbol character vocabulary: trains in seconds on a CPU.
    pub fn nano() -> Self {
        Self::new(64, 128, 64, 2, 4)
    }

    /// About 0.9 M parameters with a 512-token BPE vocabulary: the shipped pretrained model.
    /// A context of 128 BPE tokens holds every generated story and task example.
    pub fn micro() -> Self {
        Self::new(512, 128, 128, 4, 4)
    }

    /// About 5 M parameters: the largest shape that is pleasant in a browser.
    pub fn mini() -> Self {
        Self::new(2048, 256, 256, 6, 8)
    }

    /// GPT-2 small (124 M parameters), the shape of the `gpt2` checkpoint.
    pub fn gpt2() -> Self {
        Self::gpt2_shape(768, 12, 12)
    }
    /// GPT-2 medium (355 M).
    pub fn gpt2_medium() -> Self {
        Self::gpt2_shape(1024, 24, 16)
    }
    /// GPT-2 large (774 M).
    pub fn gpt2_large() -> Self {
        Self::gpt2_shape(1280, 36, 20)
    }
    /// GPT-2 XL (1.56 B).
    pub fn gpt2_xl() -> Self {
        Self::gpt2_shape(1600, 48, 25)
    }

    fn gpt2_shape(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        // The released GPT-2 checkpoints were trained with 0.1 dropout everywhere.
        Self { resid_pdrop: 0.1, embd_pdrop: 0.1, attn_pdrop: 0.1, ..Self::new(50257, 1024, n_embd, n_layer, n_head) }
    }

    /// Looks a preset up by name; the error lists the valid names.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "nano" => Self::nano(),
            "micro" => Self::micro(),
            "mini" => Self::mini(),
            "gpt2" | "gpt2-small" => Self::gpt2(),
            "gpt2-medium" => Self::gpt2_medium(),
            "gpt2-large" => Self::gpt2_large(),
            "gpt2-xl" => Self::gpt2_xl(),
            other => {
                return Err(Error::Invalid(format!("unknown preset '{other}'; choose one of {}", PRESETS.join(", "))));
            }
        })
    }

    /// Sets every dropout probability at once (fine-tuning small data often wants 0.0 or 0.1).
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self
    }

    /// Width of the MLP's hidden layer.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameter count by closed form (tied LM head, biases everywhere, as GPT-2).
    pub fn num_params(&self) -> usize {
        let (c, f) = (self.n_embd, self.inner());
        let block = 2 * 2 * c          // two LayerNorms
            + c * 3 * c + 3 * c        // fused q,k,v projection
            + c * c + c                // attention output projection
            + c * f + f                // MLP up
            + f * c + c; // MLP down
        self.vocab_size * c + self.n_positions * c + self.n_layer * block + 2 * c
    }

    /// Every parameter's name and shape, by formula, in the order the model declares them:
    /// what `named_params` reports for a freshly built model, without allocating one (a
    /// browser can describe GPT-2 XL this way).
    pub fn param_summaries(&self) -> Vec<crate::model::ParamSummary> {
        let (d, f) = (self.n_embd, self.inner());
        let p = |name: String, shape: Vec<usize>| crate::model::ParamSummary { numel: shape.iter().product(), name, shape, trainable: true };
        let mut out = vec![p("wte.weight".into(), vec![self.vocab_size, d]), p("wpe.weight".into(), vec![self.n_positions, d])];
        for i in 0..self.n_layer {
            for (n, s) in [
                ("ln_1.weight", vec![d]),
                ("ln_1.bias", vec![d]),
                ("attn.c_attn.weight", vec![d, 3 * d]),
                ("attn.c_attn.bias", vec![3 * d]),
                ("attn.c_proj.weight", vec![d, d]),
                ("attn.c_proj.bias", vec![d]),
                ("ln_2.weight", vec![d]),
                ("ln_2.bias", vec![d]),
                ("mlp.c_fc.weight", vec![d, f]),
                ("mlp.c_fc.bias", vec![f]),
                ("mlp.c_proj.weight", vec![f, d]),
                ("mlp.c_proj.bias", vec![d]),
            ] {
                out.push(p(format!("h.{i}.{n}"), s));
            }
        }
        out.push(p("ln_f.weight".into(), vec![d]));
        out.push(p("ln_f.bias".into(), vec![d]));
        out
    }

    /// Checks every field, naming the first bad one and how to fix it.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let positive =
            [("vocab_size", self.vocab_size), ("n_positions", self.n_positions), ("n_embd", self.n_embd), ("n_layer", self.n_layer), ("n_head", self.n_head)];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(origin, field, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::config(
                origin,
                "n_head",
                format!("n_embd = {} does not divide evenly into n_head = {} heads; pick a head count that divides n_embd", self.n_embd, self.n_head),
            ));
        }
        if self.n_inner == Some(0) {
            return Err(Error::config(origin, "n_inner", "must be at least 1 (or null for 4 × n_embd)"));
        }
        for (field, p) in [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(origin, field, format!("{p} is not a probability in [0, 1)")));
            }
        }
        if !(self.layer_norm_epsilon > 0.0) {
            return Err(Error::config(origin, "layer_norm_epsilon", "must be a small positive number such as 1e-5"));
        }
        if self.activation_function != "gelu_new" && self.activation_function != "gelu_pytorch_tanh" {
            return Err(Error::config(
                origin,
                "activation_function",
                format!("'{}' is not supported; tinytune builds GPT-2's \"gelu_new\"", self.activation_function),
            ));
        }
        Ok(())
    }

    /// Parses and validates a `config.json` text. `origin` names the file in errors.
    pub fn from_json(text: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        let config: Self = serde_json::from_str(text).map_err(|e| {
            // serde names the missing or mistyped field; add what the file should look like.
            Error::parse(origin.clone(), format!("{e} (expected a GPT-2 style config.json with vocab_size, n_positions, n_embd, n_layer, n_head)"))
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a ModelConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes_match_their_names() {
        // nano ~0.1 M, micro ~1 M, mini 5-10 M, and GPT-2 small's published 124 M.
        let check = |name: &str, lo: f64, hi: f64| {
            let n = ModelConfig::preset(name).unwrap().num_params() as f64 / 1e6;
            assert!(n >= lo && n <= hi, "{name}: {n} M not in [{lo}, {hi}]");
        };
        check("nano", 0.08, 0.15);
        check("micro", 0.8, 1.2);
        check("mini", 5.0, 10.0);
        check("gpt2", 124.0, 124.5); // 124,439,808 with the tied head
        check("gpt2-medium", 354.0, 356.0);
        check("gpt2-xl", 1550.0, 1560.0);
    }

    #[test]
    fn gpt2_small_count_is_exact() {
        // transformers: sum(p.numel() for p in GPT2LMHeadModel(GPT2Config()).parameters()) == 124439808
        assert_eq!(ModelConfig::gpt2().num_params(), 124_439_808);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let check = |json: &str, needle: &str| {
            let err = ModelConfig::from_json(json, "config.json").unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.starts_with("config.json"), "{err:?} should name the file");
        };
        check(r#"{"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#, "vocab_size");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":0}"#, "n_head");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":10,"n_layer":1,"n_head":3}"#, "divide");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"attn_pdrop":1.5}"#, "attn_pdrop");
        check("{not json", "config.json");
        assert!(ModelConfig::preset("huge").unwrap_err().to_string().contains("micro"));
    }

    #[test]
    fn json_round_trip_and_gpt2_fields() {
        let c = ModelConfig::micro();
        let json = c.to_json();
        assert!(json.contains("\"n_embd\": 128") && json.contains("\"model_type\": \"gpt2\""));
        assert_eq!(ModelConfig::from_json(&json, "x").unwrap(), c);
    }
}
