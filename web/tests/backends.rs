//! The page links no Burn backend; the worker links both of the browser's.
//!
//! A package's features are the same for all its binaries, and trunk builds each package
//! with a cargo command of its own, so the page (`tinytune-web`) and the worker
//! (`tinytune-worker`) are built with different features of Burn and core. When the worker
//! was a second binary of this package, the page compiled Burn's wgpu backend and its
//! compiler (cubecl's IR registers itself at start-up, so whole-program optimisation could
//! not drop it) and shipped 3 MB of code it never ran. This reads the wasm dependency graph
//! of each package from `cargo tree`, offline, and fails if a backend creeps back into the
//! page: through a dependency's feature, a new dependency, or the worker merged back in.

use std::process::Command;

/// The crates of `package`'s normal dependency graph for the browser target.
fn wasm_graph(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", package, "--target", "wasm32-unknown-unknown", "-e", "normal", "--prefix", "none", "--offline", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("cargo tree prints UTF-8");
    let mut names: Vec<String> = text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
    names.sort();
    names.dedup();
    names
}

/// Crates that are a backend, or exist only to run one.
const BACKEND: &[&str] =
    &["burn-flex", "burn-cubecl", "burn-wgpu", "burn-ndarray", "burn-fusion", "cubecl-wgpu", "cubecl-ir", "cubecl-core", "wgpu", "pliron", "gemm"];

#[test]
fn the_page_links_no_backend_and_the_worker_links_flex_and_webgpu() {
    let page = wasm_graph("tinytune-web");
    assert!(page.iter().any(|c| c == "tinytune"), "the page's graph should hold core: {page:?}");
    let linked: Vec<&String> = page.iter().filter(|c| BACKEND.contains(&c.as_str())).collect();
    assert!(
        linked.is_empty(),
        "the page's wasm build pulls in Burn backend crates {linked:?}; only web/worker may depend on Burn's flex or wgpu features or core's `fused`"
    );
    assert!(!page.iter().any(|c| c == "tinytune-worker"), "the page must not depend on the worker");

    let worker = wasm_graph("tinytune-worker");
    for needed in ["burn-flex", "cubecl-wgpu", "tinytune-web"] {
        assert!(worker.iter().any(|c| c == needed), "the worker's graph lacks {needed}: {worker:?}");
    }
    assert!(!worker.iter().any(|c| c == "leptos"), "the worker links tinytune-web without its `page` feature, so no Leptos");
}
