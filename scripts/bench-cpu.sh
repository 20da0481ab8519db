#!/usr/bin/env bash
# Training speed on the CPU, tinytune beside PyTorch on the same shapes in the same run:
#
#   scripts/bench-cpu.sh [rounds, default 3]
#
# The micro shape (d 128, 4 layers, 4 heads, ctx 128, batch 16, vocab 256, AdamW), fully
# fine-tuned and with LoRA r8 on c_attn, both c_proj and c_fc. Each round runs every
# command once, alternating, so a drift in the machine's speed hits both sides; the table
# gives each figure's median over the rounds. PyTorch's rows need a python with torch (and
# peft for LoRA): PYTHON=... (default python3), skipped with a note if missing. THREADS
# (default: the machine's cores) is given to both. Needs a release build
# (cargo build --release -p tinytune-cli), or tinytune on PATH. Absolute figures move ±50%
# on shared machines; read the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
python="${PYTHON:-python3}"
bin="${TINYTUNE:-$(command -v tinytune || echo target/release/tinytune)}"
threads="${THREADS:-$(nproc)}"
steps="${STEPS:-20}"
shape=(128 4 4 128 16 256)
[ -x "$bin" ] || { echo "no tinytune binary at $bin: cargo build --release -p tinytune-cli" >&2; exit 1; }
peer=1
"$python" -c 'import torch, transformers, peft' 2>/dev/null || { peer=0; echo "note: $python lacks torch/transformers/peft; PyTorch rows skipped" >&2; }

tt() { # method extra...
  local m="$1"; shift
  RAYON_NUM_THREADS="$threads" "$bin" bench --json --steps "$steps" --d-model "${shape[0]}" --layers "${shape[1]}" --heads "${shape[2]}" \
    --ctx "${shape[3]}" --batch "${shape[4]}" --vocab "${shape[5]}" --method "$m" "$@" | grep -o '"tokens_per_s":[0-9.]*' | cut -d: -f2
}
pt() { "$python" scripts/bench_cpu_peer.py "$1" "${shape[@]}" "$steps" "$threads" 8 2>/dev/null | "$python" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])'; }

declare -A runs
names=(tt_full tt_lora tt_full_plain tt_lora_plain pt_full pt_lora)
lora=(--rank 8 --alpha 8 --targets c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj)
for r in $(seq "$rounds"); do
  runs[tt_full]+="$(tt full) "
  runs[tt_lora]+="$(tt lora "${lora[@]}") "
  # The same without the fused CPU kernels (core/src/kernels.rs): what they buy.
  runs[tt_full_plain]+="$(TINYTUNE_FUSED=0 tt full) "
  runs[tt_lora_plain]+="$(TINYTUNE_FUSED=0 tt lora "${lora[@]}") "
  if [ "$peer" = 1 ]; then
    runs[pt_full]+="$(pt full) "
    runs[pt_lora]+="$(pt lora) "
  fi
  echo "round $r/$rounds: $(for n in "${names[@]}"; do printf '%s=%s ' "$n" "$(echo ${runs[$n]:-} | awk '{print $NF}')"; done)" >&2
done
median() { echo "$1" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) printf "%.0f", a[(NR+1)/2]; else printf "%.0f", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { [ "$2" = n/a ] && echo n/a || awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a/b}'; }
ver=""
[ "$peer" = 1 ] && ver=" $("$python" -c 'import torch; print(torch.__version__)')"
echo
echo "$(date -u +%F), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $threads threads, $rounds rounds × $steps steps, micro shape"
printf "| %-44s | %12s | %20s | %7s |\n" "tokens/s (median)" tinytune "PyTorch$ver" ratio
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..14})" "$(printf -- "-%.0s" {1..22})" "$(printf -- "-%.0s" {1..9})"
f=$(median "${runs[tt_full]}"); pf=$(median "${runs[pt_full]:-}")
printf '| %-44s | %12s | %20s | %7s |\n' "full fine-tuning (AdamW)" "$f" "$pf" "$(ratio "$f" "$pf")"
l=$(median "${runs[tt_lora]}"); pl=$(median "${runs[pt_lora]:-}")
printf '| %-44s | %12s | %20s | %7s |\n' "LoRA r8 (c_attn, c_proj, c_fc; PyTorch + PEFT)" "$l" "$pl" "$(ratio "$l" "$pl")"
f0=$(median "${runs[tt_full_plain]}"); l0=$(median "${runs[tt_lora_plain]}")
printf '| %-44s | %12s | %20s | %7s |\n' "full, without fused kernels (TINYTUNE_FUSED=0)" "$f0" "$pf" "$(ratio "$f0" "$pf")"
printf '| %-44s | %12s | %20s | %7s |\n' "LoRA, without fused kernels" "$l0" "$pl" "$(ratio "$l0" "$pl")"
printf '| %-44s | %12s | %20s | %7s |\n' "LoRA over full fine-tuning, each side" "$(ratio "$l" "$f")" "$(ratio "$pl" "$pf" 2>/dev/null)" ""
