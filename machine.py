"""What a run ran on: its environment, the device's peak FLOP/s and the process's peak memory."""

import contextlib
import importlib.metadata
import os
import platform
import resource
import subprocess

import numpy as np
import torch
import torch.distributed as dist

from distributed import DistInfo

# Dense peaks (FLOP/s) from the vendors' data sheets, per precision: bf16 and fp16 on the tensor
# cores (V100 and T4 have none for bf16), fp32 without them (TF32 stays off, see
# distributed.setup_distributed). Matched in order against torch.cuda.get_device_name(), so "H200 NVL" comes
# before "H200"; MFU is reported only for devices and precisions listed here.
PEAK_FLOPS = [  # (name, bf16, fp16, fp32)
    ("H100 NVL", 835e12, 835e12, 60e12),
    ("H100 PCIe", 756e12, 756e12, 51e12),
    ("H100", 989e12, 989e12, 67e12),
    ("H200 NVL", 835e12, 835e12, 60e12),
    ("GH200", 989e12, 989e12, 67e12),
    ("H200", 989e12, 989e12, 67e12),
    ("B200", 2250e12, 2250e12, None),
    ("A100", 312e12, 312e12, 19.5e12),
    ("A800", 312e12, 312e12, 19.5e12),
    ("L40S", 362e12, 362e12, 91.6e12),
    ("L40", 181e12, 181e12, 90.5e12),
    ("L4", 121e12, 121e12, 30.3e12),
    ("A10", 125e12, 125e12, 31.2e12),
    ("RTX 4090", 165e12, 165e12, 82.6e12),
    ("RTX 3090", 71e12, 71e12, 35.6e12),
    ("V100-PCIE", None, 112e12, 14e12),
    ("V100", None, 125e12, 15.7e12),
    ("T4", None, 65e12, 8.1e12),
]
PRECISION_COLUMN = {"bf16": 1, "fp16": 2, "fp32": 3}


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """The data-sheet peak for this device at a run's precision (bf16 | fp16 | fp32), or None."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device), precision)


def peak_flops_for(device_name: str, precision: str) -> float | None:
    row = next((row for row in PEAK_FLOPS if row[0] in device_name), None)
    return row[PRECISION_COLUMN[precision]] if row else None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512 or newer); on AVX2-only CPUs bf16
    matrix products take a fallback path far slower than fp32 (measured: docs/speed.md, "What pays
    and what does not")."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(info: DistInfo) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device)
        if info.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": info.world_size,
        "backend": dist.get_backend() if info.is_distributed else None,
        "git_commit": git_commit(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        env["datasets"] = importlib.metadata.version("datasets")  # importing it costs 1.5 s
    return env


def peak_memory(device: torch.device) -> dict:
    """Peak memory of this process so far, in MiB: resident set on CPU; allocated and reserved
    by torch's caching allocator on CUDA."""
    if device.type == "cuda":
        return {
            "peak_mem_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
