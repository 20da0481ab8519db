#!/usr/bin/env bash
# Every check tinytune has, in one command (CI runs exactly this):
#   1. the workspace's tests (core, CLI end to end, shipped checkpoint, lesson parser and
#      widget registry, the browser's CLI command parsed by the CLI),
#   2. the browser playground built by trunk (page + worker, core for wasm32),
#   3. the playground end to end in headless Chromium (tests/e2e/run.mjs),
#   4. the native binary type-checked with its GPU backends, wgpu and cuda, in one pass
#      (DOCS_RS=1 skips the LLVM download that cubecl-cuda's build script would otherwise
#      make; see README).
#
# With TINYTUNE_SLIM=1 (.ci/run sets it) each stage deletes the build outputs later stages
# do not read, so the whole run fits on a machine with little free disk; a CI run once
# failed with "No space left on device" in stage 4. Every stage prints the free space first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/node_modules/.bin:$PATH"
# Incremental caches only pay off when the same tree is rebuilt; a test run builds it once.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
slim="${TINYTUNE_SLIM:-0}"
disk() { echo "   disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ holds $(du -sh target 2>/dev/null | cut -f1)"; }

echo "== 1/4 cargo test --workspace"
disk
cargo test --workspace --locked
if [ "$slim" = 1 ]; then
  # The linked test binaries (no extension, executable) are read by no later stage.
  find target/debug/deps -maxdepth 1 -type f -perm -u+x ! -name '*.*' -delete
fi

echo "== 2/4 trunk build (the browser playground, into dist/)"
disk
trunk build

echo "== 3/4 the playground in headless Chromium"
disk
node tests/e2e/run.mjs dist
if [ "$slim" = 1 ]; then
  # The wasm build is finished with; stage 4 is native.
  rm -rf target/wasm32-unknown-unknown
fi

echo "== 4/4 native with --features wgpu,cuda (type-check only)"
disk
DOCS_RS=1 cargo check -p tinytune-cli --features wgpu,cuda --locked
disk

echo "all checks passed"
