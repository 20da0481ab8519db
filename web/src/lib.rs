//! The tinytune browser playground. The page (`src/main.rs`, module `app`) shows lessons
//! and widgets; the worker (its own package, `web/worker`) owns the Burn device and does
//! every computation, linking this library for the protocol and the widgets' settings.
//! Everything here that is not DOM code is plain Rust and is tested natively.

pub mod adapter;
pub mod decide;
pub mod distill;
pub mod federated;
pub mod fields;
pub mod grpo;
pub mod lesson;
pub mod lessons;
pub mod memory;
pub mod merge;
pub mod optimizers;
pub mod precision;
pub mod preference;
pub mod protocol;
pub mod prune;
pub mod quantize;
pub mod rank;
pub mod real;
pub mod rope;
pub mod run;
pub mod settings;
pub mod urlstate;
pub mod verify;
pub mod widgets;

#[cfg(all(target_arch = "wasm32", feature = "page"))]
pub mod app;
