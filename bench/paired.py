"""Our loop paired with a bare training step, and our evaluation with HF Trainer's predict, in
one process.

train.py's own loop runs (train.main, in this process, one process) and on each picked step of
the first epoch a bare step runs on the very same batch: forward, loss, backward, optimizer step
and zero_grad on the run's own model, optimizer, autocast and scaler, with the batch collated
beforehand (untimed). The bare step runs after the loop's step on even picks and before it on
odd ones, so an order effect shows as a difference between the two. Loop step and bare step run
within seconds of each other, so a machine whose speed drifts over minutes slows both alike;
timing them in separate processes could not resolve a 5% difference on a noisy VM. The bare
steps are extra updates, so this run's accuracy means nothing; it stops after the first epoch's
last picked step.

The loop is observed through its hooks (train.Hooks; train.main(argv, hooks=...)), nothing in it
is replaced. A loop step is timed from the end of the previous step (its after_step hook) to the
end of this one, less any bare step in between: one whole iteration (collation, forward,
backward, the step's all-reduce of figures, optimizer step, scheduler, logging, progress bar and
checks). Inside it, forward_backward is timed from before_step to after_forward_backward (which
follows the step's host sync), and the optimizer step from there to after_step (so it also holds
the scheduler, counting and logging); collation is timed on the same micro-batches as the bare
step collates them, outside the loop. On a GPU the after_step hook synchronises, so each step
holds its own kernels and the loop loses the overlap of one step's tail with the next step's
collation: its share is, if anything, understated.

Then, on the same model, our predict() and HF Trainer's predict() score the test split in turn,
EVAL_ROUNDS times each (the order swapped each round), with the same eval batch size and
padding as bench.py gives Trainer: any difference is the evaluation loop's, not the model's.
"""

import time

import numpy as np
import torch

import data
import train
from train import Hooks

WARMUP_STEPS = 2  # the first steps: allocator and kernel warm-up, never paired
EVAL_ROUNDS = 5


class _Finished(Exception):
    """Raised from the after_step hook after the last paired step: no validation or test."""


def pick_steps(steps_per_epoch: int, wanted: int | None) -> list[int]:
    """Which steps of the first epoch get a bare step (0-based): all after the warm-up, or
    `wanted` of them evenly spread."""
    # step 0 is never paired: its loop time would start inside train.py's set-up
    candidates = np.arange(max(1, min(WARMUP_STEPS, steps_per_epoch - 1)), steps_per_epoch)
    if wanted is None or wanted >= len(candidates):
        return candidates.tolist()
    return np.unique(candidates[np.linspace(0, len(candidates) - 1, wanted).round().astype(int)]).tolist()


def measure(train_argv: list[str], wanted_steps: int | None) -> tuple[dict, "train.Run"]:
    """Run train.py's loop with a bare step on each picked step: per-step timings, and the run
    (its model trained up to the last picked step)."""
    pairing = Pairing(wanted_steps)
    try:
        code = train.main(train_argv, hooks=pairing)
    except _Finished:
        code = 0
    if code != 0 or not pairing.steps:
        raise RuntimeError(f"the paired loop run failed (exit {code}, {len(pairing.steps)} paired steps)")
    raw = {
        "steps": pairing.steps,
        "of_steps": pairing.run.steps_per_epoch,
        "warmup_steps": WARMUP_STEPS,
        "precision": pairing.run.config["precision_used"],
    }
    return raw, pairing.run


class Pairing(Hooks):
    """The loop's hooks that time its steps and run a bare step beside each picked one."""

    def __init__(self, wanted_steps: int | None):
        self.wanted, self.picked, self.run = wanted_steps, None, None
        self.steps = []
        self.micro_batches, self.bare_first = None, None
        self.began = self.forward_backward_done = self.resumed = None

    def before_step(self, run, state, micro_batches) -> None:
        if run.info.world_size != 1:
            raise RuntimeError("the paired measurement runs one process, not under torchrun")
        if self.picked is None:
            self.picked = pick_steps(run.steps_per_epoch, self.wanted)
        self.run, self.micro_batches, self.bare_first = run, micro_batches, None
        if state.epoch == 0 and state.step_in_epoch in self.picked and self.picked.index(state.step_in_epoch) % 2:
            self.bare_first = self.paired_bare_step()
        self.began = time.perf_counter()

    def after_forward_backward(self, run, state, figures) -> None:
        self.forward_backward_done = time.perf_counter()  # after the step's host sync

    def after_step(self, run, state, figures) -> None:
        _sync(run)  # the loop's queued GPU work belongs to the loop step
        ended = time.perf_counter()
        index = state.step_in_epoch - 1  # the step just counted
        if state.epoch == 0 and index in self.picked and self.resumed is not None:
            loop_s = ended - self.resumed - (self.bare_first["all_s"] if self.bare_first else 0.0)
            bare = self.bare_first or self.paired_bare_step()
            n = np.concatenate([run.train_lengths[mb] for mb in self.micro_batches]).astype(np.float64)
            self.steps.append(
                {
                    "step": index,
                    "samples": len(n),
                    "loop_s": loop_s,
                    "bare_s": bare["bare_s"],
                    "bare_first": self.bare_first is not None,
                    "flops": run.flops(n),
                    "collate_s": bare["collate_s"],
                    "forward_backward_s": self.forward_backward_done - self.began,
                    "optimizer_step_s": ended - self.forward_backward_done,
                }
            )
            if index == self.picked[-1]:
                raise _Finished
        self.resumed = time.perf_counter()

    def paired_bare_step(self) -> dict:
        """Seconds of the bare step, of its collation, and spent in all (synchronisation included)."""
        run, entered = self.run, time.perf_counter()
        host = [train.collate_split(run, "train", mb) for mb in self.micro_batches]
        collate_s = time.perf_counter() - entered
        micro = [
            (
                {k: v.to(run.info.device) for k, v in batch.items()},
                torch.from_numpy(run.labels["train"][mb]).to(run.info.device),
            )
            for batch, mb in zip(host, self.micro_batches, strict=True)
        ]
        _sync(run)
        began = time.perf_counter()
        _bare_step(run, micro, sum(len(mb) for mb in self.micro_batches))
        _sync(run)
        ended = time.perf_counter()
        return {"bare_s": ended - began, "collate_s": collate_s, "all_s": ended - entered}


def _sync(run) -> None:
    if run.info.device.type == "cuda":
        torch.cuda.synchronize()


def _bare_step(run, micro: list, examples: int) -> None:
    for inputs, target in micro:
        with run.autocast:
            logits = run.ddp_model(**inputs)
        loss = run.task_rules.loss_sum(logits, target) / examples
        run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def eval_rounds(run, pad_to_max_len: bool, output_dir: str, rounds: int = EVAL_ROUNDS) -> dict:
    """Seconds per round of our predict() and of HF Trainer's predict() on the run's test split."""
    from transformers import Trainer, TrainingArguments

    dataset = [{"input_ids": x.tolist()} for x in run.encoded["test"].ids]  # any sized dataset will do

    def collator(features):  # Trainer's batch: the split's order, padded as bench.py pads for it
        return data.collate(
            [np.asarray(f["input_ids"]) for f in features], run.pad_id, run.args.max_len, pad_to_max_len
        )

    class Logits(torch.nn.Module):
        """Our model as Trainer expects one: logits under a key. (Given a bare tensor, Trainer
        drops the batch dimension of a one-example batch; and its prepare step would wrap our
        model's own forward for mixed precision, changing what our predict() runs.)"""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return {"logits": self.model(input_ids=input_ids, attention_mask=attention_mask)}

    args = TrainingArguments(
        output_dir=output_dir,
        per_device_eval_batch_size=run.eval_batch_size,
        report_to="none",
        use_cpu=run.info.device.type == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=run.config["precision_used"] == "bf16",
        fp16=run.config["precision_used"] == "fp16",
    )
    trainer = Trainer(model=Logits(run.model), args=args, data_collator=collator)

    def ours():
        return train.predict(run, "test")

    def theirs():
        logits = torch.from_numpy(trainer.predict(dataset).predictions).float()
        return torch.softmax(logits, -1).numpy()

    seconds, probs = {"ours": [], "trainer": []}, {}
    for r in range(rounds):
        for side in ("ours", "trainer") if r % 2 == 0 else ("trainer", "ours"):
            _sync(run)
            began = time.perf_counter()
            probs[side] = ours() if side == "ours" else theirs()
            _sync(run)
            seconds[side].append(time.perf_counter() - began)
    return {
        "n": len(dataset),
        "seconds": seconds,
        "max_prob_diff": float(np.abs(probs["ours"] - probs["trainer"]).max()),
    }


def figures(raw: dict, chunks: int, matmul_peak_flops: float, gpu_peak_flops: float | None) -> dict:
    """Bare-step and loop rates on the paired steps, the loop's share of the bare step's rate
    (total bare time / total loop time over the same batches), per-slice shares, and the loop's
    median time per step split into collation, forward+backward, optimizer step and the rest."""
    steps = raw["steps"]
    slices = [part for part in np.array_split(np.arange(len(steps)), min(chunks, len(steps))) if len(part)]

    def total(key, part=None):
        return sum(steps[i][key] for i in (range(len(steps)) if part is None else part))

    samples = total("samples")
    bare_rates = [total("samples", p) / total("bare_s", p) for p in slices]
    out = {
        "steps": len(steps),
        "of_steps": raw["of_steps"],
        "warmup_steps": raw["warmup_steps"],
        "samples_per_s": samples / total("bare_s"),
        "samples_per_s_slices": bare_rates,
        "loop_samples_per_s": samples / total("loop_s"),
        "loop_share": total("bare_s") / total("loop_s"),
        "loop_share_slices": [total("bare_s", p) / total("loop_s", p) for p in slices],
        # the bare step after the loop's step, and before it: a difference is an order effect
        "loop_share_by_order": {
            order: total("bare_s", idx) / total("loop_s", idx)
            for order, idx in (
                ("bare_after", [i for i, s in enumerate(steps) if not s["bare_first"]]),
                ("bare_before", [i for i, s in enumerate(steps) if s["bare_first"]]),
            )
            if idx
        },
        "tflops_per_s": total("flops") / total("bare_s") / 1e12,
    }
    out["useful_peak_share"] = out["tflops_per_s"] * 1e12 / matmul_peak_flops
    if gpu_peak_flops:
        out["mfu"] = out["tflops_per_s"] * 1e12 / gpu_peak_flops
    if "eval" in raw:
        e = raw["eval"]
        ours, theirs = (e["n"] / np.median(e["seconds"][side]) for side in ("ours", "trainer"))
        out["eval"] = {
            "samples_per_s": ours,
            "trainer_samples_per_s": theirs,
            "ratio": ours / theirs,
            "round_ratios": [t / o for o, t in zip(e["seconds"]["ours"], e["seconds"]["trainer"], strict=True)],
            "max_prob_diff": e["max_prob_diff"],
        }

    def median_ms(per_step):
        return 1e3 * float(np.median([per_step(s) for s in steps]))

    out["loop_ms"] = {
        "step": median_ms(lambda s: s["loop_s"]),
        "bare_step": median_ms(lambda s: s["bare_s"]),
        "collate": median_ms(lambda s: s["collate_s"]),
        "forward_backward_without_collate": median_ms(lambda s: s["forward_backward_s"] - s["collate_s"]),
        "optimizer_step": median_ms(lambda s: s["optimizer_step_s"]),
        "rest": median_ms(lambda s: s["loop_s"] - s["forward_backward_s"] - s["optimizer_step_s"]),
    }
    return out
