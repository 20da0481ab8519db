#!/usr/bin/env bash
# Every check tinytune has, in one command (CI runs exactly this):
#   1. the workspace's tests (core, CLI end to end, shipped checkpoint, lesson parser and
#      widget registry, the browser's CLI command parsed by the CLI),
#   2. the browser playground built by trunk (page + worker, core for wasm32),
#   3. the playground end to end in headless Chromium (tests/e2e/run.mjs),
#   4. the native binary type-checked with its GPU backends, wgpu and cuda, in one pass
#      (DOCS_RS=1 skips the LLVM download that cubecl-cuda's build script would otherwise
#      make; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/node_modules/.bin:$PATH"

echo "== 1/4 cargo test --workspace"
cargo test --workspace --locked

echo "== 2/4 trunk build (the browser playground, into dist/)"
trunk build

echo "== 3/4 the playground in headless Chromium"
node tests/e2e/run.mjs dist

echo "== 4/4 native with --features wgpu,cuda (type-check only)"
DOCS_RS=1 cargo check -p tinytune-cli --features wgpu,cuda --locked

echo "all checks passed"
