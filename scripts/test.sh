#!/usr/bin/env bash
# Every check tinytune has, in one command (CI runs exactly this):
#   1. the workspace's tests (core, CLI end to end, shipped checkpoint, lesson parser and
#      widget registry, the browser's CLI command parsed by the CLI),
#   2. the browser playground built by trunk (page + worker, core for wasm32),
#   3. the playground end to end in headless Chromium (tests/e2e/run.mjs),
#   0. formatting (cargo fmt --check; rustfmt.toml holds the house style), before anything
#      is compiled,
#   4. clippy with -D warnings over the whole workspace and every target, with the native
#      binary's GPU backends, wgpu and cuda, turned on: one pass that is both the GPU
#      type-check and the lint, so Burn is compiled for checking once, not twice
#      (DOCS_RS=1 skips the LLVM download that cubecl-cuda's build script would otherwise
#      make; see README).
#
# Every stage prints its wall time, and the run ends with the time of each.
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
# Stage timing: `stage NAME` closes the previous stage and opens the next.
times=""
stage_name=""
stage_start=$SECONDS
stage() {
  if [ -n "$stage_name" ]; then
    local took=$((SECONDS - stage_start))
    echo "   ($stage_name took ${took}s)"
    times="$times\n   $(printf '%4ds' "$took")  $stage_name"
  fi
  stage_name="$1"
  stage_start=$SECONDS
  [ -z "$1" ] || echo "== $1"
}

stage "0/4 cargo fmt --check"
cargo fmt --all --check

stage "1/4 cargo test --workspace"
disk
cargo test --workspace --locked
if [ "$slim" = 1 ]; then
  # The linked test binaries (no extension, executable) are read by no later stage.
  find target/debug/deps -maxdepth 1 -type f -perm -u+x ! -name '*.*' -delete
fi

stage "2/4 trunk build (the browser playground, into dist/)"
disk
trunk build

stage "3/4 the playground in headless Chromium"
disk
node tests/e2e/run.mjs dist
node tests/e2e/bench.mjs dist --quick  # sizes, first render, a few steps/s; fails when it cannot measure them
if [ "$slim" = 1 ]; then
  # The wasm builds are finished with; stage 4 is native.
  rm -rf target/wasm32-unknown-unknown target/wasm-threads
fi

stage "4/4 clippy -D warnings, whole workspace, all targets, with the wgpu and cuda backends (type-check + lint)"
disk
DOCS_RS=1 cargo clippy --workspace --all-targets --features tinytune-cli/wgpu,tinytune-cli/cuda --locked -- -D warnings
disk
stage ""

echo -e "stage times:$times"
echo "all checks passed"
