#!/usr/bin/env bash
# Builds `worker-cpu`, the CPU-only build of the compute worker, with WebAssembly threads,
# and writes it where trunk stages the page (a trunk hook, Trunk.toml; run by `trunk build`
# and `trunk serve`):
#
#   worker-cpu.js, worker-cpu_bg.wasm   wasm-bindgen's output (--target no-modules)
#   worker-cpu_loader.js                what the page starts as the worker
#   worker-thread.js                    what the worker starts for each extra rayon thread
#
# Threads need the wasm compiled with atomics, and the standard library compiled again with
# them, which only the nightly toolchain can do (`-Z build-std`; rust-src). So this build
# is not one of trunk's own: trunk builds the page and the WebGPU worker on stable.
#
# Standalone: TRUNK_STAGING_DIR=dist TRUNK_PROFILE=release bash scripts/build-worker-threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=${TRUNK_STAGING_DIR:?run by trunk (Trunk.toml), or set TRUNK_STAGING_DIR to the output folder}
profile=${TRUNK_PROFILE:-debug}
mkdir -p "$out"

if ! rustup run nightly rustc --version >/dev/null 2>&1 || ! [ -d "$(rustup run nightly rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
  echo "build-worker-threads.sh: the nightly toolchain with rust-src is needed for the worker's threads:" >&2
  echo "  rustup toolchain install nightly --component rust-src   (scripts/install.sh does this)" >&2
  exit 1
fi

# The page's flags (.cargo/config.toml) plus atomics. RUSTFLAGS replaces the config's flags,
# so they are repeated. 4 GiB is wasm32's most; a shared memory must declare its maximum.
export RUSTFLAGS='--cfg getrandom_backend="wasm_js" -C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C link-arg=--max-memory=4294967296'
# A target folder of its own: the standard library and every crate are compiled with
# atomics, so nothing is shared with the stable builds in target/.
target_dir=target/wasm-threads
cargo_profile=dev
dir=debug
# A dev build compiles every dependency at opt-level 3 (Cargo.toml), and here the standard
# library too, which is compiled with the build's profile. Debug assertions and overflow
# checks stay off for all of them: the prebuilt standard library never has them (dlmalloc,
# the allocator, would check its whole state on every allocation), and with atomics their
# checks cost gemm's microkernel its accumulators in registers. The unsafe-pointer checks
# that debug assertions add take the accumulators' address, so LLVM can no longer prove that
# no other thread sees them and stores all twelve to memory on every step of the inner loop
# (without atomics LLVM treats the whole program as one thread): a dev build with them
# trained at 0.7x the speed of one without atomics, a release build (no such checks) at
# 0.93-1.06x on one thread (ARCHITECTURE.md, "In the browser").
dev_profile=(--config 'profile.dev.package."*".debug-assertions=false' --config 'profile.dev.package."*".overflow-checks=false')
if [ "$profile" = release ]; then
  cargo_profile=web-release
  dir=web-release
  dev_profile=()
fi

# The binary's link makes its memory shared (imported, so every thread instantiates the
# module on the same memory) and exports what wasm-bindgen needs to give each thread its
# own thread-local storage. `cargo rustc` passes these to the final link only.
cargo +nightly rustc "${dev_profile[@]}" -Z build-std=panic_abort,std --target wasm32-unknown-unknown \
  -p tinytune-worker --bin worker-cpu --no-default-features --features threads \
  --profile "$cargo_profile" --target-dir "$target_dir" --locked --offline -- \
  -C link-arg=--shared-memory -C link-arg=--import-memory \
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
  -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base

wasm-bindgen --target no-modules --no-typescript --out-dir "$out" --out-name worker-cpu \
  "$target_dir/wasm32-unknown-unknown/$dir/worker-cpu.wasm"

if [ "$profile" = release ]; then
  wasm_opt=node_modules/.bin/wasm-opt
  command -v "$wasm_opt" >/dev/null 2>&1 || wasm_opt=wasm-opt
  "$wasm_opt" -Os --enable-threads --enable-bulk-memory --enable-simd --enable-mutable-globals \
    --enable-sign-ext --enable-nontrapping-float-to-int \
    "$out/worker-cpu_bg.wasm" -o "$out/worker-cpu_bg.wasm"
fi

# What the page starts (web/src/app/client.rs).
cat > "$out/worker-cpu_loader.js" <<'EOF'
importScripts("./worker-cpu.js");wasm_bindgen({ module_or_path: "./worker-cpu_bg.wasm" });
EOF

# One extra rayon thread (web/worker/src/threads.rs). The first message brings the module
# and the worker's memory: instantiate them and say so. The second brings the pointer to
# the thread's builder: run the thread (for as long as the pool lives).
cat > "$out/worker-thread.js" <<'EOF'
importScripts("./worker-cpu.js");
self.tinytuneThread = true;
self.onmessage = (e) => {
  const [module, memory] = e.data;
  self.onmessage = (e) => wasm_bindgen.tinytune_thread(e.data);
  wasm_bindgen({ module_or_path: module, memory }).then(() => postMessage("ready"));
};
EOF
