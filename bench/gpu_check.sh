#!/usr/bin/env bash
# GPU check for a lent machine (one H100/H200; its image as it is: no network, no installs,
# no `datasets`; torch >= 2.11, transformers >= 5.17), in under 6 minutes:
#   bash bench/gpu_check.sh            # prints each part as it finishes; a copy in $OUT (or /tmp)
# Part 1: tests/test_gpu.py (NCCL DDP path, bf16 / fp16 / fp32, compile vs eager). Part 2:
# bench.py for bert-base and ModernBERT-base shapes at L128 and L512, batch 32, bf16, ours against
# HF Trainer on identical work (same attention kernel, TF32 off on both sides), MFU, peak memory,
# and what --compile compiled. Each part has its own time limit, so a hang costs one part only.
set -uo pipefail
cd "$(dirname "$0")/.."
missing=$(python3 - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "accelerate", "pytest", "pandas")
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    echo "error: missing Python packages: $missing (pip install -r requirements-dev.txt)" >&2
    exit 2
fi
log="${OUT:-/tmp}/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$log"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled FTKIT_CACHE="${FTKIT_CACHE:-/tmp/ftkit-cache}" PYTHONUNBUFFERED=1
timeout 350 python3 bench/gpu_check.py "$@" 2>&1 | tee -a "$log"
