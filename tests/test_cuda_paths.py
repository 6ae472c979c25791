"""The CUDA / NCCL / fp16 paths in the forms a CPU can run: GradScaler on CPU, checkpoints tagged
with a GPU, mocked device queries, gloo for the collectives, and the GPU check without the
packages the lent GPU machine's image lacks."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import ROOT, read_results, run_cli, tiny_run

import checkpoint
import model as models
import train
import utils
from config import UserError

SMALL = tiny_run(epochs=1, run_name="r")


@pytest.mark.slow
def test_fp16_with_loss_scaling_skips_a_non_finite_step_and_finishes(cache_dir, tmp_path):
    """GradScaler("cpu") through the skip path: update() without recorded inf checks used to raise."""
    done = run_cli(*SMALL, "--precision", "fp16", "--on_nan", "skip", "--out_dir", tmp_path, env={"FTKIT_NAN_AT": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "non-finite loss at step 4: step skipped" in done.stdout + done.stderr
    assert read_results(tmp_path / "r")["global_step"] == 16


@pytest.fixture
def gpu_tagged_saves(monkeypatch):
    """torch.save tags every storage 'cuda:0', as a checkpoint written on a GPU is."""
    registry = list(torch.serialization._package_registry)
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    torch.serialization.register_package(0, lambda obj: "cuda:0", lambda obj, location: None)


def _quiet_log(warnings: list):
    return types.SimpleNamespace(info=lambda message: None, warning=warnings.append)


def test_a_checkpoint_written_on_a_gpu_is_read_to_cpu_and_keeps_its_best_weights(tmp_path, gpu_tagged_saves):
    ckpt = tmp_path / "ckpt"
    checkpoint.save_checkpoint(
        str(ckpt), 10, {"progress": {"best_file": "best_step10.pt", "global_step": 10}, "model": {"w": torch.ones(3)}}
    )
    for name in ("best_step10.pt", "best_step5.pt"):
        (tmp_path / name).write_bytes(b"weights")
    with pytest.raises(RuntimeError, match="CUDA"):  # as a plain torch.load on this CPU machine fails
        torch.load(checkpoint.list_checkpoints(str(ckpt))[0], weights_only=True)
    warnings = []
    keeper = checkpoint.Checkpointer(str(tmp_path), every=100, keep=2, is_main=True, log=_quiet_log(warnings))
    assert keeper.resume()["model"]["w"].device.type == "cpu" and keeper.best_file == "best_step10.pt"
    keeper.save(11, lambda: {"progress": {}}, "test")
    assert sorted(p.name for p in tmp_path.glob("best_step*.pt")) == ["best_step10.pt"] and not warnings


def test_an_unreadable_checkpoint_deletes_no_best_weights(tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint.save_checkpoint(str(ckpt), 5, {"progress": {"best_file": "best_step5.pt", "global_step": 5}})
    (ckpt / "step_00000010.pt").write_bytes(b"not a checkpoint")
    for name in ("best_step10.pt", "best_step5.pt", "best_step1.pt"):
        (tmp_path / name).write_bytes(b"weights")
    warnings = []
    keeper = checkpoint.Checkpointer(str(tmp_path), every=100, keep=2, is_main=True, log=_quiet_log(warnings))
    keeper.resume()  # step 5; which file the unreadable step 10 names is unknown
    keeper.save(6, lambda: {"progress": {}}, "test")  # keeps steps 10 and 6
    assert len(list(tmp_path.glob("best_step*.pt"))) == 3
    assert "step_00000010.pt is unreadable" in warnings[0]


def test_precision_auto_picks_fp16_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    cuda, warnings = torch.device("cuda", 0), []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert train.resolve_precision("auto", cuda, warnings.append) == "fp16"  # V100, T4
    assert train.resolve_precision("bf16", cuda, warnings.append) == "bf16"
    assert len(warnings) == 1 and "emulated" in warnings[0]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.resolve_precision("auto", cuda, warnings.append) == "bf16"  # A100 and newer


class FakeCudaRng:
    """Per-device generator states of a machine whose GPU count the test sets, behaving like
    torch.cuda's RNG functions (an unknown device index raises)."""

    def __init__(self, monkeypatch, devices: int, current: int):
        self.states = {i: torch.tensor([i], dtype=torch.uint8) for i in range(devices)}
        self.current = current
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))

    def _index(self, device):
        index = self.current if device == "cuda" else int(getattr(device, "index", device))
        if index not in self.states:
            raise IndexError(f"no CUDA device {index}")
        return index

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()

    def get_rng_state_all(self):
        return [self.states[i].clone() for i in sorted(self.states)]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, i)


def test_cuda_rng_is_saved_per_rank_and_restored_on_a_machine_with_fewer_gpus(monkeypatch):
    """Rank 1 of a run on 2 GPUs resumes as a job that sees only its own GPU (cuda:0 there)."""
    saved = utils.get_rng_state() if FakeCudaRng(monkeypatch, devices=2, current=1) else None
    assert saved["cuda"].tolist() == [1]  # its own device's stream only
    resumed = FakeCudaRng(monkeypatch, devices=1, current=0)
    utils.set_rng_state(saved)
    assert resumed.states[0].tolist() == [1]


def _resume_worker(rank: int, port: int, steps: list, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        checkpoint.check_ranks_resume_alike(steps[rank], utils.DistInfo(rank, 2, rank, torch.device("cpu")))
        errors[rank] = ""
    except UserError as e:
        errors[rank] = str(e)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns process groups
def test_ranks_that_found_different_checkpoints_stop_on_every_rank_before_training():
    port = 29000 + os.getpid() % 1000
    for steps in ([10, 5], [None, 10], [10, 10]):
        errors = mp.Manager().dict()
        mp.spawn(_resume_worker, args=(port, steps, errors), nprocs=2)
        if steps[0] == steps[1]:
            assert errors.values() == ["", ""]
        else:
            assert len(errors) == 2 and all("ranks found different newest checkpoints" in e for e in errors.values())
            assert "rank 0: " + ("none" if steps[0] is None else f"step {steps[0]}") in errors[1]
        port += 1


def test_flash_attention_only_for_16_bit_runs_on_a_gpu_with_flash_attn(monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else real_find_spec(name)
    )
    modernbert, cuda = models.FAMILIES["modernbert"], torch.device("cuda", 0)
    assert models.attention_for(modernbert, cuda, "bf16") == "flash_attention_2"
    assert models.attention_for(modernbert, cuda, "fp16") == "flash_attention_2"
    assert models.attention_for(modernbert, cuda, "fp32") == "sdpa"  # flash-attn has no fp32 kernels
    assert models.attention_for(modernbert, torch.device("cpu"), "bf16") == "sdpa"
    assert models.attention_for(models.FAMILIES["bert"], cuda, "bf16") == "sdpa"


def test_weights_saved_in_bf16_train_as_fp32_master_weights(tmp_path, tiny_model_folder):
    from transformers import AutoModel, AutoTokenizer

    folder = str(tmp_path / "bf16-model")
    AutoModel.from_pretrained(tiny_model_folder).to(torch.bfloat16).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder)
    tokenizer.save_pretrained(folder)
    model = models.build_model(models.resolve_model(folder), tokenizer, 2, "cls", 0.1, None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
def test_encoder_buffers_never_change_in_training(name, tmp_path):
    """Why DDP need not broadcast buffers before every forward (broadcast_buffers=False)."""
    entry = models.resolve_model(name)
    tokenizer = models.load_tokenizer(entry, ["good film", "bad plot", "fine acting"] * 20, str(tmp_path))
    model = models.build_model(entry, tokenizer, 2, "mean", 0.1, None)
    before = {k: v.clone() for k, v in model.named_buffers()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        ids = torch.randint(5, len(tokenizer), (4, 16))
        model(ids, torch.ones_like(ids)).sum().backward()
        optimizer.step()
    after = dict(model.named_buffers())
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_mfu_peaks_per_device_name_and_precision():
    assert utils.peak_flops_for("NVIDIA H200", "bf16") == 989e12
    assert utils.peak_flops_for("NVIDIA H200 NVL", "bf16") == 835e12
    assert utils.peak_flops_for("NVIDIA GH200 480GB", "fp16") == 989e12
    assert utils.peak_flops_for("NVIDIA H100 80GB HBM3", "fp32") == 67e12  # TF32 off: the fp32 peak
    assert utils.peak_flops_for("Tesla V100-SXM2-16GB", "fp16") == 125e12
    assert utils.peak_flops_for("Tesla V100-SXM2-16GB", "bf16") is None
    assert utils.peak_flops_for("Tesla V100-PCIE-32GB", "bf16") is None
    assert utils.peak_flops_for("Tesla V100-PCIE-32GB", "fp16") == 112e12
    assert utils.peak_flops_for("Some Future GPU", "bf16") is None


def test_bench_mfu_is_against_the_gpu_peak_it_was_given():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench

    run = {"tflops_per_s": 100.0}
    bench.add_peak_shares(run, {"matmul_peak_flops": 400e12, "gpu_peak_flops": 1000e12})
    assert run["useful_peak_share"] == 0.25 and run["mfu"] == 0.1


def test_sliding_window_layers_count_only_the_pairs_their_mask_keeps(tmp_path):
    from transformers.masking_utils import sliding_window_bidirectional_overlay

    entry = models.resolve_model("tiny-modernbert")
    tokenizer = models.load_tokenizer(entry, ["good film", "bad plot"] * 20, str(tmp_path))
    model = models.build_model(entry, tokenizer, 2, "cls", 0.1, None)
    config, flops = model.encoder.config, models.training_flops(model)
    assert flops.window_layers == config.layer_types.count("sliding_attention") > 0
    keeps = sliding_window_bidirectional_overlay(config.sliding_window)
    for n in (8, 200):
        kept = sum(bool(keeps(0, 0, i, j)) for i in range(n) for j in range(n))
        assert models.window_pairs(np.array([n]), flops.half_window)[0] == kept
    full = models.TrainingFlops(flops.per_token, flops.per_pair, flops.full_layers + flops.window_layers)
    assert flops([8]) == full([8]) and flops([200]) < full([200])


def test_compile_errors_are_not_hidden_and_what_compiled_is_reported():
    torch._dynamo.reset()
    compiled = models.compile_or_explain(torch.nn.Linear(2, 2), torch.device("cpu"), lambda message: None)
    assert torch._dynamo.config.suppress_errors is False  # a failure stops the run, never runs eagerly unseen
    before = models.compile_report()["compiled_graphs"]
    torch.compile(torch.nn.Linear(2, 2), backend="eager")(torch.ones(1, 2))
    assert models.compile_report()["compiled_graphs"] == before + 1
    assert compiled is not None


def hide_datasets(tmp_path) -> str:
    """A PYTHONPATH whose sitecustomize hides `datasets`, as the lent GPU machine's image lacks it."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['datasets'] = None\n")
    return str(hide)


@pytest.mark.slow
def test_without_datasets_local_files_load_the_same_and_the_hub_is_one_clear_error(tmp_path, syn_folder):
    code = (
        f"import json, sys; sys.path.insert(0, {ROOT!r}); import data\n"
        f"splits, names = data.load_splits({syn_folder!r}, ['text'], 'label', 0.1, 300, 100)\n"
        "print(json.dumps({k: [s.texts, s.labels.tolist()] for k, s in splits.items()}))\n"
        "try:\n    data.load_splits('imdb', ['text'], 'label', 0.1, None, None)\n"
        "except data.UserError as e:\n    print(e)\n"
    )
    runs = {
        name: subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ, **env)
        ).stdout.splitlines()
        for name, env in (("with", {}), ("without", {"PYTHONPATH": hide_datasets(tmp_path)}))
    }
    assert runs["without"][0] == runs["with"][0]  # same texts, labels, splits and subsets
    assert (
        runs["without"][1] == "--data imdb: loading from the hub needs the datasets package "
        "(pip install -r requirements.txt), or pass a local folder"
    )
