#!/usr/bin/env bash
# GPU check for a lent machine (one H100/H200; its image as it is: no network, no installs, no
# `datasets`, no `wandb`; torch >= 2.11, transformers >= 5.17), within a 300 s budget:
#   bash bench/gpu_check.sh            # reports in $OUT (else /tmp/gpu-check-report)
# Parts in order of value (bench/gpu_check.py's docstring; docs/speed.md has the time estimate):
# bert-base L128 ours vs HF Trainer first, then ModernBERT-base L128, L512 for both, the CUDA
# tests, --compile last. Each part's figures are printed and appended to gpu_check.log and
# gpu_check.jsonl as it ends; a part past its limit, or the check stopped, leaves nothing running.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
missing=$(python3 - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "accelerate", "pytest", "pandas", "pyarrow")
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    echo "error: missing Python packages: $missing (pip install -r requirements-dev.txt)" >&2
    exit 2
fi
report_dir="${OUT:-/tmp/gpu-check-report}"
mkdir -p "$report_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$report_dir/gpu_check.log"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 WANDB_MODE=disabled FTKIT_CACHE="${FTKIT_CACHE:-/tmp/ftkit-cache}" PYTHONUNBUFFERED=1
# gpu_check.py keeps to its own --budget (300 s); this outer limit only catches a check that does
# not: SIGTERM first (the running part is killed whole, the finished parts stay reported), SIGKILL
# 15 s later (the part's guard then kills it all the same)
timeout -k 15 340 python3 bench/gpu_check.py --report_dir "$report_dir" "$@"
