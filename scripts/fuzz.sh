#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser a user's files reach (fuzz/targets.rs), with
# cargo-fuzz (libFuzzer) on the nightly toolchain:
#
#   bash scripts/fuzz.sh [seconds per target, default 120] [target ...]
#
# Installs cargo-fuzz if missing. Each target starts from its committed seeds
# (fuzz/corpus/<target>/) and grows a working corpus in target/fuzz-corpus/<target>/; a crash
# is copied to fuzz/regressions/<target>/, which tests/tests/fuzz_corpus.rs replays on
# stable in every test run. Prints one line per target: executions, coverage, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
shift || true
all=(safetensors config_json tokenizer_json jsonl peft_adapter lesson url_state merge_yaml gguf serve_request)
targets=("${@:-${all[@]}}")
rustup toolchain list | grep -q nightly || { echo "scripts/fuzz.sh needs the nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
(cd fuzz && for t in "${targets[@]}"; do cargo +nightly fuzz build -O "$t"; done)
printf '%-16s %12s %10s %8s %8s\n' target executions exec/s cov crashes
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/regressions/$t" "target/fuzz-artifacts/$t"
  # Earlier runs' crashes are already in fuzz/regressions: count this run's only.
  rm -f "target/fuzz-artifacts/$t"/*
  log="target/fuzz-artifacts/$t.log"
  # -rss_limit_mb: a parser that allocates past 2 GB on some input is a finding too.
  (cd fuzz && cargo +nightly fuzz run -O "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="../target/fuzz-artifacts/$t/") >"$log" 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  crashes=0
  for f in target/fuzz-artifacts/"$t"/crash-* target/fuzz-artifacts/"$t"/oom-* target/fuzz-artifacts/"$t"/timeout-*; do
    [ -e "$f" ] || continue
    cp "$f" "fuzz/regressions/$t/"
    crashes=$((crashes + 1))
  done
  printf '%-16s %12s %10s %8s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$crashes"
done
echo "logs in target/fuzz-artifacts/<target>.log; crashes (if any) copied to fuzz/regressions/"
