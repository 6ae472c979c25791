"""HF Trainer's side of the benchmark: its run per seed, and the worker that trains with Trainer
in its own process (classification, or masked LM with DataCollatorForLanguageModeling)."""

import json
import math
import os
import time

import numpy as np
from bench_tables import run_line
from both_sides import (
    MEMORY_KEYS,
    example_ids,
    one_gpu_env,
    row_from_slices,
    run_offline,
    test_figures,
    trained_totals,
    val_figures,
    worker_cmd,
)


def run_trainer(args, out_dir: str, flops: float, seed: int) -> dict:
    result_path = os.path.join(out_dir, f"trainer-s{seed}.json")
    cmd = worker_cmd(args, "trainer", result_path, seed)
    print(f"\n[trainer-s{seed}] HF Trainer, padding {args.trainer_padding}, seed {seed}", flush=True)
    started = time.time()
    run_offline(cmd, "the HF Trainer run", env=one_gpu_env())
    with open(result_path) as f:
        raw = json.load(f)
    row = row_from_slices(raw["slices"], flops)
    if args.task == "mlm":
        row.update(val_figures(raw["val"]), **trained_totals(raw["slices"]))
        side = f"HF Trainer + DataCollatorForLanguageModeling (padding {args.trainer_padding}, optim {raw['optim']})"
    else:
        row.update(test_figures(raw["test"], raw["eval_seconds"]))
        side = f"HF Trainer (padding {args.trainer_padding}, optim {raw['optim']})"
    row.update(
        side=side,
        seed=raw["seed"],
        train_batch_size=raw["train_batch_size"],
        eval_batch_size=raw["eval_batch_size"],
        attention=raw["attention"],
        **{k: raw[k] for k in MEMORY_KEYS if k in raw},
        wall_s=time.time() - started,
        result_path=result_path,
    )
    print(run_line(f"trainer-s{seed}", row), flush=True)
    return row


def trainer_worker(args) -> int:
    """In its own process: HF Trainer on the subsets train.py uses; writes timings to args.worker."""
    import torch
    import torch.nn.functional as F
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        default_data_collator,
        set_seed,
    )

    import data
    import model as models
    import utils

    splits, label_names = data.load_splits(
        args.data, args.text_col, args.label_col, 0.1, args.train_samples, args.eval_samples
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad = "max_length" if args.trainer_padding == "max_length" else False

    def dataset(split):  # a list of examples: Trainer takes any sized dataset, no `datasets` needed
        # run_glue's encoding: tokenizer(sentence1, sentence2) for a pair
        enc = tokenizer(*split.encoder_inputs(pairs=True), truncation=True, max_length=args.max_len, padding=pad)
        return [
            {**{key: column[i] for key, column in enc.items()}, "labels": int(label)}
            for i, label in enumerate(split.labels)
        ]

    set_seed(args.seed)  # the new head's init: Trainer seeds only when it is built, after the model
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # the attention kernel and master dtype our side uses (train.py: model.build_model)
    family = models.FAMILIES.get(AutoConfig.from_pretrained(args.model).model_type)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(label_names),
        dtype=torch.float32,
        attn_implementation=models.attention_for(family, device, args.precision),
    )
    base_collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    trainer, slices = train_timed(args, model, dataset(splits["train"]), base_collator)

    test_set = dataset(splits["test"])
    started = time.perf_counter()
    logits = torch.from_numpy(trainer.predict(test_set).predictions).float()
    eval_seconds = time.perf_counter() - started
    labels = torch.from_numpy(splits["test"].labels)
    test = {
        "n": len(labels),
        "acc": float((logits.argmax(-1) == labels).float().mean()),
        "correct": (logits.argmax(-1) == labels).tolist(),  # per example, in split order
        "loss": float(F.cross_entropy(logits, labels)),
    }
    with open(args.worker, "w") as f:
        json.dump(
            {
                "slices": slices,
                "test": test,
                "eval_seconds": eval_seconds,
                **trainer_facts(trainer, device),
                **utils.peak_memory(device),
            },
            f,
        )
    return 0


def trainer_facts(trainer, device) -> dict:
    """The seed and batch sizes Trainer's data loaders used (per device x its GPU count), its optimizer
    and the model's attention kernel."""
    targs = trainer.args
    return {
        "seed": targs.seed,
        "train_batch_size": targs.train_batch_size,
        "eval_batch_size": targs.eval_batch_size,
        "optim": getattr(targs.optim, "value", str(targs.optim)),
        "attention": trainer.model.config._attn_implementation,
    }


def train_timed(args, model, train_set: list, base_collator):
    """HF Trainer trains `model` on train_set with this invocation's settings, each batch counted
    (examples, real tokens, positions) and each step timed; returns (trainer, the timed slices of
    each epoch, as row_from_slices takes them)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    batches = []  # (examples, real tokens, positions) per collated batch, in step order

    def counting_collator(features):
        batch = base_collator(features)
        mask = batch["attention_mask"]
        batches.append((mask.shape[0], int(mask.sum()), mask.numel()))
        return batch

    step_end = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_end.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            step_end.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(args.worker), f"trainer-s{args.seed}"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        num_train_epochs=args.epochs,
        weight_decay=0.0,
        max_grad_norm=0.0,  # train.py's default: no clipping (Trainer's is 1.0)
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=train_set, data_collator=counting_collator, callbacks=[Timer()]
    )
    trainer.train()
    train_batches = batches[: len(step_end) - 1]
    slices, steps = [], len(train_batches)
    per_epoch = steps // args.epochs
    slice_steps = math.ceil(per_epoch / args.chunks)
    for epoch_start in range(0, steps, per_epoch):
        for start in range(epoch_start, epoch_start + per_epoch, slice_steps):
            end = min(start + slice_steps, epoch_start + per_epoch)
            part = train_batches[start:end]
            slices.append(
                {
                    "samples": sum(b[0] for b in part),
                    "tokens": sum(b[1] for b in part),
                    "positions": sum(b[2] for b in part),
                    "seconds": step_end[end] - step_end[start],
                }
            )
    return trainer, slices


def mlm_trainer_worker(args) -> int:
    """In its own process: HF Trainer + DataCollatorForLanguageModeling on the texts (or blocks)
    train.py --task mlm trains on; then the masked-token loss on train.py's validation masks."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, set_seed

    import data
    import mlm
    import model as models
    import utils

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    splits = data.load_texts(args.data, args.text_col, 0.1, args.train_samples, args.eval_samples)
    ids = {name: [np.asarray(x) for x in example_ids(args, split, tokenizer)] for name, split in splits.items()}
    # train.py's validation masks: fixed, one seed for every run (train.py: val_masker)
    val_masker = mlm.make_masker(tokenizer, args.mlm_prob, "static", data.SPLIT_SEED)
    # run_mlm's examples: ids, attention mask and special-tokens mask (so the collator never masks [CLS] / [SEP])
    train_set = [
        {
            "input_ids": x.tolist(),
            "attention_mask": [1] * len(x),
            "special_tokens_mask": val_masker.is_special[x].astype(int).tolist(),
        }
        for x in ids["train"]
    ]
    set_seed(args.seed)  # a new masked-LM head's init, as train.py seeds before building the model
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    family = models.FAMILIES.get(AutoConfig.from_pretrained(args.model).model_type)
    attention = models.attention_for(family, device, args.precision)  # our side's kernel (mlm.build_masked_lm)
    model = AutoModelForMaskedLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attention)
    # padded to the longest, rounded up to a multiple of 8 as our collate does; or to max_len
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=args.mlm_prob,
        pad_to_multiple_of=args.max_len if args.trainer_padding == "max_length" else 8,
    )
    trainer, slices = train_timed(args, model, train_set, collator)
    started = time.perf_counter()
    val = masked_lm_val(trainer.model, val_masker, ids["val"], args, device)
    with open(args.worker, "w") as f:
        json.dump(
            {
                "slices": slices,
                "val": val,
                "eval_seconds": time.perf_counter() - started,
                **trainer_facts(trainer, device),
                **utils.peak_memory(device),
            },
            f,
        )
    return 0


def masked_lm_val(hf_model, masker, ids: list, args, device) -> dict:
    """Masked-token loss and accuracy of an HF *ForMaskedLM model on the validation examples, with
    the masks and the sums train.py's evaluation uses (mlm.Masker.batch, mlm.MaskedLM: the
    vocabulary head on the masked positions only)."""
    import torch

    import mlm

    model = mlm.MaskedLM(hf_model).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(ids), args.eval_batch_size):
            indices = range(start, min(start + args.eval_batch_size, len(ids)))
            batch = masker.batch([ids[i] for i in indices], indices, 0, args.max_len)
            sums += model(**{k: v.to(device) for k, v in batch.items()}).sums().cpu()
    loss, correct, masked = sums.tolist()
    return {"n": len(ids), "loss": loss / masked, "acc": correct / masked, "masked": int(masked)}
