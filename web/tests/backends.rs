//! Which backends each browser build compiles, and that two of them compile Burn once.
//!
//! trunk builds each wasm binary with a cargo command of its own, and a package's features
//! hold for all its binaries. Three builds come out of it:
//! - the page (`tinytune-web`), which must hold none of the WebGPU stack: cubecl's IR
//!   registers itself at start-up, so whole-program optimisation cannot drop it, and when
//!   the worker was a second binary of the page's package the page shipped 3 MB of it;
//! - the WebGPU worker (`tinytune-worker`, binary `worker`), with flex and wgpu;
//! - the CPU-only worker (binary `worker-cpu`, `--no-default-features`), with flex only.
//!
//! The page's code calls no backend, but its build of Burn and core has the CPU worker's
//! features (and the worker pins the features Leptos turns on in crates they share), so
//! trunk compiles Burn's crates once for both. Cargo compiles a crate again for every
//! different set of features below it, so one crate drifting apart costs CI a second
//! compile of all of Burn; the last test catches that.
//!
//! Each graph is read with `cargo tree`, offline (about a second each).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each crate of the package's graph for the browser target (normal and build edges), with
/// every set of features it is built with.
fn wasm_graph(package: &str, extra: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut args =
        vec!["tree", "-p", package, "--target", "wasm32-unknown-unknown", "-e", "normal,build", "--prefix", "none", "-f", "{p} {f}", "--offline", "--locked"];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO")).args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("cargo runs");
    assert!(out.status.success(), "cargo {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("cargo tree prints UTF-8");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_end_matches(" (*)");
        let mut words = line.splitn(3, ' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else { continue };
        // A path dependency prints its folder before its features.
        let features = words.next().unwrap_or("").rsplit(") ").next().unwrap_or("").to_string();
        graph.entry(format!("{name} {version}")).or_default().insert(features);
    }
    graph
}

fn has(graph: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> bool {
    graph.keys().any(|k| k.split(' ').next() == Some(krate))
}

/// The WebGPU stack: crates that only the WebGPU worker may hold.
const WEBGPU: &[&str] = &["burn-cubecl", "burn-wgpu", "burn-fusion", "cubecl-wgpu", "cubecl-ir", "cubecl-core", "cubecl-opt", "wgpu", "pliron"];

#[test]
fn only_the_webgpu_worker_holds_the_webgpu_stack() {
    let page = wasm_graph("tinytune-web", &[]);
    let cpu = wasm_graph("tinytune-worker", &["--no-default-features"]);
    let gpu = wasm_graph("tinytune-worker", &[]);
    for (name, graph) in [("the page", &page), ("the CPU-only worker", &cpu)] {
        let stack: Vec<&&str> = WEBGPU.iter().filter(|c| has(graph, c)).collect();
        assert!(stack.is_empty(), "{name}'s wasm build pulls in {stack:?}; only the worker's `webgpu` feature may turn on Burn's wgpu backend");
        assert!(has(graph, "burn-flex"), "{name}'s build should compile Burn's flex backend, as the CPU worker runs on it");
        assert!(!has(graph, "burn-ndarray"), "{name}'s build pulls in burn-ndarray, which no browser build uses");
    }
    for needed in ["burn-flex", "cubecl-wgpu", "tinytune-web"] {
        assert!(has(&gpu, needed), "the WebGPU worker's graph lacks {needed}");
    }
    assert!(!has(&page, "tinytune-worker"), "the page must not depend on the worker");
    for (name, graph) in [("WebGPU", &gpu), ("CPU-only", &cpu)] {
        assert!(!has(graph, "leptos"), "the {name} worker links tinytune-web without its `page` feature, so no Leptos");
    }
}

#[test]
fn the_page_and_the_cpu_worker_compile_the_same_burn() {
    let page = wasm_graph("tinytune-web", &[]);
    let cpu = wasm_graph("tinytune-worker", &["--no-default-features"]);
    // The packages themselves differ, and web-sys's features are per API (only the two
    // packages use web-sys, so no shared crate is built on it).
    let own = ["tinytune-web", "tinytune-worker", "web-sys"];
    let mut drifted = Vec::new();
    for (krate, sets) in &cpu {
        if own.contains(&krate.split(' ').next().unwrap_or("")) {
            continue;
        }
        // The page's graph also builds some crates for the host (Leptos's macros), with
        // other features; the CPU worker's build of a crate must be one of the page's.
        match page.get(krate) {
            Some(page_sets) if sets.is_subset(page_sets) => {}
            Some(page_sets) => drifted.push(format!("{krate}: worker-cpu {sets:?}, page {page_sets:?}")),
            None => drifted.push(format!("{krate}: not in the page's graph")),
        }
    }
    assert!(
        drifted.is_empty(),
        "the CPU-only worker builds these crates with features the page does not, so trunk would compile them (and all of Burn above them) twice; \
         pin the page's features in web/worker/Cargo.toml:\n{}",
        drifted.join("\n")
    );
}
