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

/// A source file without its `#[cfg(test)]` items (tests may use a backend), wherever they
/// sit: code after a mid-file test module is still checked.
fn non_test_source(p: &Path) -> String {
    strip_test_items(&std::fs::read_to_string(p).unwrap())
}

/// Removes every item marked `#[cfg(test)]`: up to its `;`, or its whole `{ … }` block,
/// braces counted outside string and character literals and comments.
fn strip_test_items(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        rest = &rest[i + MARK.len()..];
        rest = &rest[item_end(rest)..];
    }
    out.push_str(rest);
    out
}

/// The byte length of the item at the start of `s` (through its `;` or closing brace).
fn item_end(s: &str) -> usize {
    let b = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

#[test]
fn the_purity_check_sees_code_after_a_test_module() {
    let src =
        "use a;\n#[cfg(test)]\nmod tests {\n    fn f() { let s = \"}\"; let c = '{'; } // }\n}\npub struct Block;\n#[cfg(test)]\nuse std::fs;\nfn g() {}\n";
    let kept = strip_test_items(src);
    assert!(kept.contains("pub struct Block;") && kept.contains("fn g() {}"), "{kept}");
    assert!(!kept.contains("fn f()") && !kept.contains("std::fs"), "{kept}");
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
