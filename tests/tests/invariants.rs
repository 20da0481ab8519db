//! Invariants of ARCHITECTURE.md that are about the code itself rather than its behaviour:
//! core stays free of the file system, threads and any named backend, so it can run in a
//! browser and the binaries choose the device.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The part of a source file before its `#[cfg(test)]` module (tests may use a backend).
fn non_test_source(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[test]
fn core_never_uses_files_threads_or_a_named_backend() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the core sources");
    let forbidden = ["std::fs", "std::thread", "std::time::Instant", "Device::flex", "Device::ndarray", "Device::wgpu", "Device::cuda", "leptos"];
    for f in &files {
        let code = non_test_source(f);
        for word in forbidden {
            assert!(!code.contains(word), "{} uses {word}; core must stay browser-ready and backend-agnostic", f.display());
        }
    }
}

#[test]
fn core_declares_no_backend_feature() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/Cargo.toml")).unwrap();
    let deps = manifest.split("[dev-dependencies]").next().unwrap();
    for backend in ["\"flex\"", "\"ndarray\"", "\"wgpu\"", "\"cuda\""] {
        assert!(!deps.contains(backend), "core/Cargo.toml turns on the {backend} backend outside dev-dependencies");
    }
}
