//! The one table from core's config field names to the page's controls. Core errors name
//! fields (`Error::Config`'s `field`, and `` `field` `` in a message's text); the page shows
//! them as the setting a reader changes (the same names lessons and links use).

/// Fields whose control is not called by the field's name.
const CONTROLS: &[(&str, &str)] = &[
    ("r", "rank"),
    ("lora_alpha", "alpha"),
    ("target_modules", "targets"),
    ("num_virtual_tokens", "tokens"),
    ("encoder_hidden_size", "encoder"),
    ("size", "bottleneck"),
    ("n", "last_n"),
    ("seq_len", "seq"),
    ("batch_size", "batch"),
    ("clip_grad_norm", "gradient clipping"),
    ("loss_scale", "loss scaling"),
    ("checkpoint_every", "checkpointing"),
    ("warmup_ratio", "warmup"),
    ("warmup_steps", "warmup"),
];

/// The control that sets `field`.
pub fn control(field: &str) -> &str {
    CONTROLS.iter().find(|(f, _)| *f == field).map(|(_, c)| *c).unwrap_or(field)
}

/// `text` with every field core wrote in backticks as the control's name.
pub fn render(text: &str) -> String {
    tinytune::error::render_fields(text, |field| control(field).to_string())
}

/// A core error as the page shows it: a config error as "control: problem".
pub fn describe(e: &tinytune::Error) -> String {
    match e {
        tinytune::Error::Config { field, problem, .. } => format!("{}: {}", control(field), render(problem)),
        other => render(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_controls() {
        assert_eq!(render("lower `seq_len` or add examples"), "lower seq or add examples");
        assert_eq!(render("choose `precision` fp16"), "choose precision fp16");
        let e = tinytune::Error::config("memory", "offload", "offloading parameters needs ZeRO stage 3 (`zero` 3)");
        assert_eq!(describe(&e), "offload: offloading parameters needs ZeRO stage 3 (zero 3)");
    }
}
