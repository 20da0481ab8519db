//! What every widget's settings are made of: one table of [`Field`]s per settings type
//! ([`Settings`]), and the value parsers the tables share. Depends on nothing else in the
//! crate, so each widget's own file (`quantize.rs`, `rank.rs`, ...) and the registry
//! (`widgets.rs`) both build on it without importing each other.

/// One setting of a widget: its key (in lesson blocks, links and the URL), how it is shown
/// as text, and how text sets it (with the value's range or choices checked).
pub struct Field<S> {
    pub key: &'static str,
    pub get: fn(&S) -> String,
    /// Sets the value from text; the error says what is accepted (the caller adds which
    /// widget, key and value).
    pub set: fn(&mut S, &str) -> Result<(), String>,
}

/// A widget's settings: its name and its one table of fields, from which its keys, lesson
/// block parsing, link parsing and URL state all follow.
pub trait Settings: Clone + Default + PartialEq + Sized {
    /// The name a lesson's `name:` line and the URL use.
    const NAME: &'static str;
    /// Every setting, in the order links and the URL write them.
    fn fields() -> Vec<Field<Self>>;
}

/// Sets `slot` to a parsed value, or passes the parse error on (for `Field::set`).
pub(crate) fn assign<T, E: ToString>(slot: &mut T, value: Result<T, E>) -> Result<(), String> {
    *slot = value.map_err(|e| e.to_string())?;
    Ok(())
}

/// A warmup as typed (`25%`, `0.1`, `5`), checked.
pub(crate) fn warmup(value: &str) -> Result<String, String> {
    value.parse::<tinytune::optim::Warmup>()?;
    Ok(value.to_string())
}

pub(crate) fn one_of(value: &str, choices: &[&str]) -> Result<String, String> {
    if choices.contains(&value) { Ok(value.to_string()) } else { Err(format!("choose {}", choices.join(", "))) }
}

pub(crate) fn int(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let v: usize = value.parse().map_err(|_| format!("expected a whole number from {min} to {max}"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(v)
}

pub(crate) fn float(value: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = value.parse().map_err(|_| format!("expected a number from {min} to {max}"))?;
    if !(v >= min && v <= max) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(v)
}

pub(crate) fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}
