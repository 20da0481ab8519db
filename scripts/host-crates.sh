#!/usr/bin/env bash
# Prints the crates that only ever run on the build machine (proc macros, build scripts and
# what they alone depend on), as lines for Cargo.toml's `[profile.dev.package]` table: the
# crates that `"*" = { opt-level = 3 }` should not reach (see the comment there). A crate is
# host-only when it is in the workspace's dependency graph but not in the graph that leaves
# out build and proc-macro edges. Two run-time crates link the syntax crates (syn, quote,
# proc-macro2, rstml) without a hot path through them: leptos_hot_reload (hot reloading,
# which tinytune does not use) and awint_macro_internals (awint's literal parser, reached
# through cubecl's pliron); they are pruned from the run-time graph, so they count too.
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree --workspace --target all --prefix none --locked "$@" | awk '{print $1}' | sort -u; }
all=$(tree -e normal,build,dev)
runtime=$(tree -e normal,dev,no-proc-macro --prune leptos_hot_reload --prune awint_macro_internals)
comm -23 <(echo "$all") <(echo "$runtime") | sed 's/.*/& = { opt-level = 1 }/'
