"""train.py under torchrun with the host syncs of one optimizer step counted on each rank.

    torchrun --nproc_per_node=2 tests/sync_probe.py OUT TRAIN_ARGS...

From before_step to after_step of the third step (global_step 2) it records every operation that
makes the host wait for the device on a GPU: reading a tensor's value into Python (item, float(),
bool(): aten._local_scalar_dense; aten.equal), ops whose output size depends on the data
(nonzero, masked_select, boolean indexing), and Tensor.tolist / .cpu(). On a CPU none
of these waits, but each would on a GPU. Writes {"step": 2, "syncs": [...]} to OUT.<rank>, each
sync with the file and function that made it."""

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from train import Hooks

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.equal.default, aten.nonzero.default, aten.masked_select.default}
BOOLEAN_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
COUNTED_STEP = 2


class HostSyncs(TorchDispatchMode):
    def __init__(self, syncs: list):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in BOOLEAN_INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in READS or boolean_index:
            self.syncs.append(f"{func} in {where()}")
        return func(*args, **(kwargs or {}))


def where() -> str:
    """The innermost caller outside torch: file:function ("transformers/masking_utils.py:..." for
    transformers' own code)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" not in path and not path.endswith("sync_probe.py"):
            inside = path.split("/site-packages/")[-1] if "/site-packages/" in path else os.path.basename(path)
            return f"{inside}:{frame.name}"
    return "?"


class CountOneStep(Hooks):
    def __init__(self, out: str):
        self.out, self.syncs, self.mode, self.patched = out, [], None, {}

    def before_step(self, run, state, micro_batches):
        if state.global_step != COUNTED_STEP:
            return
        for name in ("tolist", "cpu"):  # .numpy() needs .cpu() first on a GPU
            self.patched[name] = real = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, real))
        self.mode = HostSyncs(self.syncs)
        self.mode.__enter__()

    def _counting(self, name, real):
        def method(tensor, *args, **kwargs):
            self.syncs.append(f"Tensor.{name}")
            return real(tensor, *args, **kwargs)

        return method

    def after_step(self, run, state, figures):
        if self.mode is None:
            return
        self.mode.__exit__(None, None, None)
        self.mode = None
        for name, real in self.patched.items():
            setattr(torch.Tensor, name, real)
        with open(f"{self.out}.{run.info.rank}", "w") as f:
            json.dump({"step": COUNTED_STEP, "syncs": self.syncs}, f)


if __name__ == "__main__":
    sys.exit(train.main(sys.argv[2:], hooks=CountOneStep(sys.argv[1])))
