# Sourced by a session's device script (scripts/s47_a.sh, s48_a.sh): from the repository root, install
# tritonfuse (editable), start $OUT/a.log with the GPU's name and the torch and Triton versions, and give
# Inductor the machine's cores. Sets PY (the interpreter that has torch: python3 on the GPU machines).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
$PY -m pip install --no-build-isolation --no-deps -e . > /tmp/install.log 2>&1 || { tail /tmp/install.log; exit 3; }
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/a.log"
$PY -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/a.log"
export TORCHINDUCTOR_COMPILE_THREADS=16
