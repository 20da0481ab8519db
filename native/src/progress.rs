//! Progress on the terminal for the commands that work for a while: one style for every
//! bar, drawn on stderr only when stderr is a terminal (indicatif hides it otherwise, and
//! the commands print a plain summary line when they finish).

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress goes to a person watching (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A bar of `len` units, labelled `prefix` (none when empty), with a message slot for the
/// current figure.
pub fn bar(len: u64, prefix: impl Into<String>) -> ProgressBar {
    const BAR: &str = "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]";
    let prefix = prefix.into();
    let bar = ProgressBar::new(len);
    let template = if prefix.is_empty() { BAR.to_string() } else { format!("{{prefix}} {BAR}") };
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_prefix(prefix);
    bar
}

/// A spinner for work of unknown length (reading and building a large model), ticking on
/// its own until finished.
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]").expect("valid template"));
    bar.set_message(message.into());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
