//! The one table from core's config field names to this command line's flags. Core errors
//! name fields (`Error::Config`'s `field`, and `` `field` `` in a message's text); this is
//! where they become the flags a user types.

/// Fields whose flag is not the field's name with `_` written `-`.
const FLAGS: &[(&str, &str)] = &[
    ("r", "rank"),
    ("combination_type", "combination"),
    ("lora_alpha", "alpha"),
    ("target_modules", "targets"),
    ("feedforward_modules", "ia3-feedforward"),
    ("init", "lora-init"),
    ("size", "bottleneck"),
    ("scaling", "adapter-scaling"),
    ("num_virtual_tokens", "virtual-tokens"),
    ("encoder_hidden_size", "encoder-hidden"),
    ("init_text", "prompt-text"),
    ("init_ids", "prompt-text"),
    ("block", "qlora-block"),
    ("n", "last-n"),
    ("n_head", "heads"),
    ("n_embd", "d-model"),
    ("batch_size", "batch"),
    ("clip_grad_norm", "clip"),
    ("warmup_ratio", "warmup"),
    ("warmup_steps", "warmup"),
];

/// The flag (without `--`) that sets `field`. `origin` tells IA³'s targets from LoRA's.
pub fn flag(field: &str, origin: &str) -> String {
    if field == "target_modules" && origin.contains("IA³") {
        return "ia3-targets".into();
    }
    // The objective's settings (`objective.beta`, …) each have a flag of their own name;
    // the only loss type a flag sets is GRPO's (DPO's is the objective's name).
    if let Some(setting) = field.strip_prefix("objective.") {
        return if setting == "loss_type" { "grpo-loss".into() } else { setting.replace('_', "-") };
    }
    FLAGS.iter().find(|(f, _)| *f == field).map(|(_, flag)| flag.to_string()).unwrap_or_else(|| field.replace('_', "-"))
}

/// `text` with every field core wrote in backticks (`` `seq_len` ``) as its flag
/// (`--seq-len`). Backticked text that is not a field name (a command to run) stays.
pub fn render(text: &str) -> String {
    tinytune::error::render_fields(text, |field| format!("--{}", flag(field, "")))
}

/// A core error that may be about flags (a `training config` field: phrased as the flag) or
/// about a file the flags named (a data file's line: kept as it is, file and all).
pub fn run_error(e: tinytune::Error) -> String {
    match &e {
        tinytune::Error::Config { origin, .. } if origin.to_string() == "training config" => flag_error(e),
        _ => render(&e.to_string()),
    }
}

/// A core error about values that came from flags, phrased in terms of the flag.
pub fn flag_error(e: tinytune::Error) -> String {
    match e {
        tinytune::Error::Config { origin, field, problem } => format!("--{}: {}", flag(&field, &origin.to_string()), render(&problem)),
        other => render(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_flags() {
        assert_eq!(render("lower `seq_len` or add examples"), "lower --seq-len or add examples");
        assert_eq!(render("keep clipping on (`clip_grad_norm` 1.0); run `--out x --resume`"), "keep clipping on (--clip 1.0); run `--out x --resume`");
        assert_eq!(render("an odd ` tick"), "an odd ` tick");
        assert_eq!(flag("target_modules", "IA³ config"), "ia3-targets");
        assert_eq!(flag("objective.desirable_weight", "command line"), "desirable-weight");
        assert_eq!(flag("objective.group_size", "command line"), "group-size");
        assert_eq!(flag("target_modules", "LoRA config"), "targets");
        assert_eq!(flag("mezo_eps", ""), "mezo-eps");
        let e = tinytune::Error::config("command line", "zero", "offloading parameters needs ZeRO stage 3 (`zero` 3)");
        assert_eq!(flag_error(e), "--zero: offloading parameters needs ZeRO stage 3 (--zero 3)");
    }
}
