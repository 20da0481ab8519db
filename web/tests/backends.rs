//! Which backends each browser build compiles.
//!
//! Three wasm builds come out of the workspace, and a package's features hold for all its
//! binaries:
//! - the page (`tinytune-web`), which must hold no backend at all: cubecl's IR registers
//!   itself at start-up, so whole-program optimisation cannot drop it (when the worker was a
//!   second binary of the page's package the page shipped 3 MB of it), and a page that
//!   compiles flex only makes CI compile it once more;
//! - the WebGPU worker (`tinytune-worker`, binary `worker`, built by trunk), with flex and
//!   wgpu;
//! - the CPU-only worker (binary `worker-cpu`, `--no-default-features --features threads`,
//!   built on nightly with atomics by scripts/build-worker-threads.sh), with flex and rayon.
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

/// The CPU-only worker as scripts/build-worker-threads.sh builds it.
const CPU_WORKER: &[&str] = &["--no-default-features", "--features", "threads"];

#[test]
fn only_the_webgpu_worker_holds_the_webgpu_stack() {
    let page = wasm_graph("tinytune-web", &[]);
    let cpu = wasm_graph("tinytune-worker", CPU_WORKER);
    let gpu = wasm_graph("tinytune-worker", &[]);
    for (name, graph) in [("the page", &page), ("the CPU-only worker", &cpu)] {
        let stack: Vec<&&str> = WEBGPU.iter().filter(|c| has(graph, c)).collect();
        assert!(stack.is_empty(), "{name}'s wasm build pulls in {stack:?}; only the worker's `webgpu` feature may turn on Burn's wgpu backend");
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
fn the_page_compiles_no_backend_and_the_cpu_worker_has_threads() {
    let page = wasm_graph("tinytune-web", &[]);
    let cpu = wasm_graph("tinytune-worker", CPU_WORKER);
    assert!(!has(&page, "burn-flex"), "the page's build compiles burn-flex: the page runs no model, and CI would compile flex once more for it");
    for needed in ["burn-flex", "rayon-core"] {
        assert!(has(&cpu, needed), "the CPU-only worker's graph lacks {needed}, which its threads need");
    }
    let flex = cpu.iter().find(|(k, _)| k.starts_with("burn-flex ")).map(|(_, f)| f.clone()).unwrap_or_default();
    assert!(flex.iter().any(|f| f.split(',').any(|f| f == "rayon")), "the CPU-only worker's flex is built without rayon: {flex:?}");
}
