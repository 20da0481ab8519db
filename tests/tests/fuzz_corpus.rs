//! The fuzz targets on stable, in CI: every committed seed and every regression input
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the same functions the
//! fuzzer drives (`fuzz/targets.rs`), plus each seed cut short at several lengths and with
//! bytes overwritten (a fixed, seeded set), so the error paths run in every test run. A
//! panic fails the test and names the target and the input.

#[path = "../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn inputs(dir: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&d) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> =
        entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    out.sort();
    out
}

/// Runs `f` on `data`, failing with the target and what was fed on a panic.
fn run(name: &str, what: &str, f: fn(&[u8]), data: &[u8]) {
    if std::panic::catch_unwind(|| f(data)).is_err() {
        panic!("fuzz target {name} panicked on {what}; save the input under fuzz/regressions/{name}/ and fix the parser");
    }
}

#[test]
fn every_fuzz_seed_regression_and_mutation_parses_without_panicking() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, f) in targets::TARGETS {
        let seeds = inputs("corpus", name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} holds no seeds");
        for (path, data) in seeds.iter().chain(&inputs("regressions", name)) {
            run(name, &path.display().to_string(), *f, data);
        }
        for (path, data) in &seeds {
            for k in 1..=8 {
                let cut = data.len() * k / 9;
                run(name, &format!("{} cut to {cut} bytes", path.display()), *f, &data[..cut]);
            }
            for i in 0..24 {
                let mut m = data.clone();
                for _ in 0..=(i % 4) {
                    let at = (next() as usize) % m.len().max(1);
                    if let Some(b) = m.get_mut(at) {
                        *b = next() as u8;
                    }
                }
                run(name, &format!("{} mutation {i}", path.display()), *f, &m);
            }
        }
    }
}
