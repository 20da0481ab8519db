#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, serve and test tinytune. Idempotent: each
# step is skipped when its tool is already there at the right version, so a second run
# costs seconds.
#
#   bash scripts/install.sh          # build tools: wasm32 target, crates, trunk,
#                                    # wasm-bindgen-cli, wasm-opt + playwright-core (npm)
#   bash scripts/install.sh --test   # the same, plus Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "install.sh: $*"; }

if ! have cargo; then
  say "cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi

# The browser build and core's wasm check need the wasm32 target.
if have rustup && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The CPU-only worker's WebAssembly threads need the standard library compiled with atomics:
# the nightly toolchain with rust-src (scripts/build-worker-threads.sh, a trunk hook).
if have rustup && ! { rustup run nightly rustc --version >/dev/null 2>&1 && [ -d "$(rustup run nightly rustc --print sysroot)/lib/rustlib/src/rust/library" ]; }; then
  say "installing the nightly toolchain with rust-src (the browser worker's threads)"
  rustup toolchain install nightly --profile minimal --component rust-src
fi

# Download every crate once, so later steps (and trunk, which runs offline) need no network.
cargo fetch --locked >/dev/null 2>&1 || cargo fetch

# trunk 0.22.1 declares rust-version 1.96.1 but builds with 1.95 (~15 min on 2 cores, once).
if ! trunk --version 2>/dev/null | grep -q '^trunk 0\.22\.1$'; then
  say "installing trunk 0.22.1 (takes a while, once)"
  cargo install trunk --version 0.22.1 --locked --ignore-rust-version
fi

# wasm-bindgen-cli must equal the wasm-bindgen crate in Cargo.lock. Installed without
# --locked: its own lock file wants a crate version the registry no longer has.
wbg=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q "^wasm-bindgen $wbg\$"; then
  say "installing wasm-bindgen-cli $wbg"
  cargo install wasm-bindgen-cli --version "$wbg"
fi

# wasm-opt (npm binaryen 132; Debian's binaryen 108 builds a page that fails to load) and
# playwright-core for the browser tests, both pinned in package-lock.json.
if ! [ -x node_modules/.bin/wasm-opt ] || ! [ -d node_modules/playwright-core ]; then
  if ! have npm; then
    say "npm not found; install Node.js 18 or newer (it brings npm)" >&2
    exit 1
  fi
  say "installing wasm-opt (binaryen) and playwright-core from npm"
  npm ci --no-audit --no-fund
fi

if [ "${1:-}" = "--test" ] && ! [ -x /usr/bin/chromium ] && ! have chromium; then
  say "installing Chromium for the browser tests"
  if [ "$(id -u)" = 0 ] && have apt-get; then
    apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
  else
    say "install Chromium (Debian/Ubuntu: sudo apt-get install chromium), or set CHROMIUM=/path/to/chrome" >&2
    exit 1
  fi
fi
