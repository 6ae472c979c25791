#!/usr/bin/env bash
# GPU check for a lent machine (one H100; no network; under 8 minutes):
#   bash bench/gpu_check.sh
# runs tests/test_gpu.py (NCCL DDP path, bf16 / fp16 / fp32, compile vs eager), then bench.py
# for bert-base and ModernBERT-base shapes at L128 and L512, batch 32, bf16, against HF Trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=$(python - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "datasets", "accelerate", "pytest", "pandas")
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    echo "error: missing Python packages: $missing (pip install -r requirements-dev.txt)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled FTKIT_CACHE="${FTKIT_CACHE:-/tmp/ftkit-cache}"
exec timeout 470 python bench/gpu_check.py "$@"
