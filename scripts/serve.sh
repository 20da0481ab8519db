#!/usr/bin/env bash
# Runs the playground: installs what is missing, then builds the page and its worker and
# serves them on http://127.0.0.1:8080 (rebuilding when a file changes). The first build
# compiles Burn for WebAssembly and takes several minutes; later ones take seconds.
#
#   bash scripts/serve.sh              # development build
#   bash scripts/serve.sh --release    # the small, optimised build
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/node_modules/.bin:$PATH"
# trunk serve injects its live-reload script inline at serve time, which the built site's
# Content-Security-Policy (scripts/csp.mjs) would refuse: the development server goes
# without it; `trunk build` output (what the tests and a static host serve) carries it.
export TINYTUNE_NO_CSP=1
exec trunk serve "$@"
