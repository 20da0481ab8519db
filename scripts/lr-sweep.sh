#!/usr/bin/env bash
# The suggested learning rates (`MethodKind::suggested_lr`, the default `--lr` of finetune
# and compare with an AdamW-family optimizer): every method fine-tunes the shipped micro on
# sentiment for 60 steps of 16 at five peak learning rates, 3e-4 to 3e-2, or 3e-3 to 3e-1 for
# the methods that train only biases, gains, scales or soft prompts (cosine schedule, the
# CLI's defaults otherwise; LoRA and QLoRA at rank 4 on all linear layers), and the script prints
# each run's held-out loss, the learning rate with the lowest, and the suggestion: the
# smallest of the five within 1% of the lowest loss (on a flat optimum the smaller step is
# the safer default for models larger than micro). About 12 minutes on 2 cores with a
# release build.
#
#   bash scripts/lr-sweep.sh [OUT_DIR]     (default runs/lr-sweep)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/lr-sweep}"
bin="${TINYTUNE_BIN:-target/release/tinytune}"
[ -x "$bin" ] || cargo build -q --release -p tinytune-cli
rm -rf "$out"
mkdir -p "$out"
for method in full last-layers bitfit layernorm lora qlora adapter prompt p-tuning prefix ia3; do
  case "$method" in
    bitfit|layernorm|prompt|prefix|ia3) lrs="3e-3 1e-2 3e-2 1e-1 3e-1" ;;
    *) lrs="3e-4 1e-3 3e-3 1e-2 3e-2" ;;
  esac
  items=""
  for lr in $lrs; do items="$items${items:+,}$method@$lr"; done
  "$bin" compare --model assets/micro --methods "$items" --rank 4 --alpha 8 --targets all-linear \
    --data sentiment --steps 60 --batch 16 --seq-len 64 --out "$out/$method" --json > "$out/$method.json" 2> "$out/$method.log"
  python3 - "$out/$method.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
best = min(rows, key=lambda r: r["eval_loss"])
suggested = min(r["lr"] for r in rows if r["eval_loss"] <= 1.01 * best["eval_loss"])
cells = "  ".join(f"{r['lr']:.0e} {r['eval_loss']:.4f}" for r in rows)
print(f"{rows[0]['method']:<12} {cells}   best {best['lr']:.0e}, suggested {suggested:.0e}")
PY
done
