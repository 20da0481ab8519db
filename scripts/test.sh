#!/usr/bin/env bash
# Every check tinytune has, in one command (CI runs exactly this after scripts/install.sh):
#   1. the workspace's tests (core, CLI end to end, shipped checkpoint),
#   2. core built for wasm32-unknown-unknown (it must stay browser-ready),
#   3. the native binary type-checked with the wgpu feature,
#   4. the CUDA code path type-checked (DOCS_RS=1 skips the LLVM download that
#      cubecl-cuda's build script would otherwise make; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

echo "== 1/4 cargo test --workspace"
cargo test --workspace --locked

echo "== 2/4 core for wasm32-unknown-unknown"
cargo build -p tinytune --target wasm32-unknown-unknown --locked

echo "== 3/4 native with --features wgpu"
cargo check -p tinytune-cli --features wgpu --locked

echo "== 4/4 native with --features cuda (type-check only)"
DOCS_RS=1 cargo check -p tinytune-cli --features cuda --locked

echo "all checks passed"
