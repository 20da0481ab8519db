#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test tinytune. Idempotent: each step is
# skipped when its tool is already there, so running it twice costs seconds.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
  echo "install.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi

# core must stay browser-ready: the test command builds it for wasm32.
if have rustup && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "install.sh: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# Download every crate once, so later steps can run offline.
cargo fetch --locked >/dev/null 2>&1 || cargo fetch
