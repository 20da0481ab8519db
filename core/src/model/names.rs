//! Parameter names at the file boundary. Inside tinytune every model's parameters are
//! named with GPT-2's scaffolding (`wte`, `h.N`, `ln_1`, `attn`, `ln_2`, `mlp`, `ln_f`),
//! whatever the family, so selective methods, LoRA targets and optimizer state read one
//! scheme. Files use each family's Hugging Face names and layouts:
//!
//! | tinytune | GPT-2 file | Llama-family file |
//! |---|---|---|
//! | `wte.weight` | `wte.weight` (`transformer.` optional) | `model.embed_tokens.weight` |
//! | `h.N.ln_1.*` | `h.N.ln_1.*` | `model.layers.N.input_layernorm.*` |
//! | `h.N.attn.X` | `h.N.attn.X` | `model.layers.N.self_attn.X` |
//! | `h.N.ln_2.*` | `h.N.ln_2.*` | `model.layers.N.post_attention_layernorm.*` |
//! | `h.N.mlp.X` | `h.N.mlp.X` | `model.layers.N.mlp.X` |
//! | `ln_f.*` | `ln_f.*` | `model.norm.*` |
//! | `lm_head.weight` | (tied) | `lm_head.weight` |
//! | `score.weight` (a classifier's head) | `score.weight` | `score.weight` |
//!
//! GPT-2's projections are `Conv1D` weights, `[in, out]`, as tinytune holds them; the Llama
//! family's are `nn.Linear` weights, `[out, in]`, transposed on the way in and out
//! ([`is_linear_weight`]).

use super::config::Family;

/// The module path transformers' `*ForCausalLM` model gives tinytune's parameter `path`
/// (GPT-2's under `transformer.`): what PEFT's keys are built from.
pub fn to_hf(family: Family, path: &str) -> String {
    if !family.is_llama_like() {
        return if path.starts_with("lm_head.") || path.starts_with("score.") { path.to_string() } else { format!("transformer.{path}") };
    }
    if let Some(rest) = path.strip_prefix("wte.") {
        return format!("model.embed_tokens.{rest}");
    }
    if let Some(rest) = path.strip_prefix("ln_f.") {
        return format!("model.norm.{rest}");
    }
    if let Some(rest) = path.strip_prefix("h.") {
        let (layer, inner) = rest.split_once('.').unwrap_or((rest, ""));
        let inner = match inner.split_once('.') {
            Some(("attn", r)) => format!("self_attn.{r}"),
            Some(("ln_1", r)) => format!("input_layernorm.{r}"),
            Some(("ln_2", r)) => format!("post_attention_layernorm.{r}"),
            _ => inner.to_string(),
        };
        return format!("model.layers.{layer}.{inner}");
    }
    path.to_string()
}

/// The name tinytune's checkpoint files use for `path`: the Hugging Face name, without
/// GPT-2's `transformer.` prefix (transformers reads both).
pub fn to_file(family: Family, path: &str) -> String {
    let hf = to_hf(family, path);
    hf.strip_prefix("transformer.").map(str::to_string).unwrap_or(hf)
}

/// tinytune's path for a Hugging Face name (with or without GPT-2's `transformer.` or a
/// leading `model.`); None for a name that is not a parameter of this family's layout.
pub fn from_hf(family: Family, name: &str) -> Option<String> {
    if !family.is_llama_like() {
        return Some(name.strip_prefix("transformer.").unwrap_or(name).to_string());
    }
    if name.starts_with("lm_head.") || name.starts_with("score.") || name.starts_with("prompt.") || name.starts_with("prefix.") {
        return Some(name.to_string());
    }
    let rest = name.strip_prefix("model.")?;
    if let Some(r) = rest.strip_prefix("embed_tokens.") {
        return Some(format!("wte.{r}"));
    }
    if let Some(r) = rest.strip_prefix("norm.") {
        return Some(format!("ln_f.{r}"));
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, inner) = rest.split_once('.')?;
    let inner = match inner.split_once('.') {
        Some(("self_attn", r)) => format!("attn.{r}"),
        Some(("input_layernorm", r)) => format!("ln_1.{r}"),
        Some(("post_attention_layernorm", r)) => format!("ln_2.{r}"),
        _ => inner.to_string(),
    };
    Some(format!("h.{layer}.{inner}"))
}

/// Whether tinytune parameter `path` is a Llama-family `nn.Linear` weight, which files
/// store `[out, in]` and tinytune `[in, out]`.
pub fn is_linear_weight(family: Family, path: &str) -> bool {
    family.is_llama_like() && path.starts_with("h.") && path.ends_with("_proj.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_names_round_trip() {
        let f = Family::Llama;
        for (ours, theirs) in [
            ("wte.weight", "model.embed_tokens.weight"),
            ("h.3.ln_1.weight", "model.layers.3.input_layernorm.weight"),
            ("h.3.attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight"),
            ("h.12.ln_2.weight", "model.layers.12.post_attention_layernorm.weight"),
            ("h.0.mlp.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight"),
            ("h.0.attn.v_proj.lora.lora_a", "model.layers.0.self_attn.v_proj.lora.lora_a"),
            ("ln_f.weight", "model.norm.weight"),
            ("lm_head.weight", "lm_head.weight"),
        ] {
            assert_eq!(to_hf(f, ours), theirs);
            assert_eq!(from_hf(f, theirs).as_deref(), Some(ours));
        }
        assert_eq!(from_hf(f, "model.rotary_emb.inv_freq"), None);
        assert!(
            is_linear_weight(f, "h.0.mlp.down_proj.weight")
                && !is_linear_weight(f, "lm_head.weight")
                && !is_linear_weight(Family::Gpt2, "h.0.attn.c_attn.weight")
        );
        assert_eq!(to_hf(Family::Gpt2, "h.0.attn.c_attn.weight"), "transformer.h.0.attn.c_attn.weight");
        assert_eq!(to_file(Family::Gpt2, "h.0.attn.c_attn.weight"), "h.0.attn.c_attn.weight");
        assert_eq!(from_hf(Family::Gpt2, "transformer.wte.weight").as_deref(), Some("wte.weight"));
    }
}
