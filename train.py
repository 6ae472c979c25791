"""Fine-tune a pretrained encoder for text classification with a hand-written DDP loop.

One process (CPU or one GPU):
    python train.py --model bert --pool cls
Two GPUs on one machine (or 2 CPU processes with gloo):
    torchrun --standalone --nproc_per_node=2 train.py --model bert --pool cls
Two nodes, 8 GPUs each (run on both; MASTER = the first node's address):
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 train.py ...
    torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 train.py ...
Offline demo in seconds:
    python train.py --model tiny-bert --data synthetic --epochs 3 --wandb disabled

Rerunning the same command resumes an interrupted run from its newest checkpoint.
"""
import argparse
import contextlib
import errno
import glob
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import config as settings
import data
import model as models
import utils
from utils import UserError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Settings that do not change what a run computes: left out of the run name and the config
# fingerprint that guards resume. (--padding and --compile are not among them: dropout masks are
# drawn over the padded width, and compiled dropout draws its masks differently.)
OPERATIONAL = {"out_dir", "run_name", "cache_dir", "wandb", "wandb_project", "wandb_group",
               "log_every", "save_every", "keep_checkpoints", "resume", "fresh", "eval_batch_size",
               "on_nan"}
# Short names for the run name, in the order they appear there.
NAME_KEYS = {"max_len": "L", "batch_size": "bs", "grad_accum": "ga", "lr": "lr", "optimizer": "",
             "scheduler": "", "warmup_ratio": "wu", "dropout": "d", "encoder_dropout": "ed",
             "weight_decay": "wd", "clip": "clip", "epochs": "ep", "truncation": "",
             "precision": "", "val_ratio": "val", "max_train_samples": "ntr",
             "max_eval_samples": "nev", "data": "", "text_col": "", "label_col": "",
             "group_by_length": "group", "padding": "pad", "compile": "compile"}
EXIT_SIGNAL = 128  # + signal number, as shells report a signal death
EXIT_DIVERGED = 3


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags end in one line, not the whole usage text; or raise `raise_as` (grid checks)."""
    raise_as = None

    def error(self, message):
        if self.raise_as is not None:
            raise self.raise_as(message)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default="bert", help="bert | modernbert | tiny-bert | tiny-modernbert, a hub id, "
      "or a local model folder (default: %(default)s)")
    a("--pool", default="cls", choices=["cls", "mean"], help="cls = first token; mean = average "
      "of non-padding tokens (default: %(default)s)")
    a("--max_len", type=int, default=128, help="tokens per example incl. special tokens (default: %(default)s)")
    a("--truncation", default="head", choices=["head", "tail", "head_tail"], help="which tokens "
      "a long text keeps: first, last, or first 128 + the rest from the end (default: %(default)s)")
    a("--batch_size", type=int, default=16, help="GLOBAL examples per optimizer step; per-process "
      "batch = batch_size / (world size x grad_accum) (default: %(default)s)")
    a("--grad_accum", type=int, default=1, help="micro-batches per optimizer step (default: %(default)s)")
    a("--eval_batch_size", type=int, default=64, help="per-process batch for evaluation (default: %(default)s)")
    a("--lr", type=float, default=None, help="peak learning rate (default: 5e-5; 1e-3 for tiny-* models)")
    a("--optimizer", default="adam", choices=["adam", "adamw"], help="adam: L2 weight decay "
      "added to the gradient; adamw: decoupled weight decay (default: %(default)s)")
    a("--scheduler", default="constant", choices=["constant", "linear", "cosine"],
      help="learning-rate schedule after warmup (default: %(default)s)")
    a("--warmup_ratio", type=float, default=0.0, help="share of steps with linear warmup (default: %(default)s)")
    a("--dropout", type=float, default=0.1, help="dropout before the classification head (default: %(default)s)")
    a("--encoder_dropout", type=float, default=None, help="the encoder's internal dropouts, mapped "
      "to each family's config names (default: the checkpoint's own values)")
    a("--weight_decay", type=float, default=0.0, help="weight decay, not applied to biases and "
      "norms (default: %(default)s)")
    a("--clip", type=float, default=0.0, help="max gradient norm; 0 = no clipping (default: %(default)s)")
    a("--epochs", type=int, default=3, help="passes over the training set (default: %(default)s)")
    a("--seed", type=int, default=42, help="seed for init, data order and dropout (default: %(default)s)")
    a("--data", default="imdb", help="hub dataset name (imdb = stanfordnlp/imdb), a local folder "
      "with train/test(/validation) .parquet/.csv/.jsonl, one such file, or 'synthetic' "
      "(a generated task, no network) (default: %(default)s)")
    a("--text_col", nargs="+", default=["text"], help="text column(s), joined with a space (default: text)")
    a("--label_col", default="label", help="label column: integers or strings (default: %(default)s)")
    a("--val_ratio", type=float, default=0.1, help="share of train carved out (stratified, fixed "
      "seed) as validation when the data has no validation split (default: %(default)s)")
    a("--max_train_samples", type=int, default=None, help="balanced seeded subset of train (default: all)")
    a("--max_eval_samples", type=int, default=None, help="balanced seeded subset of val and test (default: all)")
    a("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="autocast dtype; "
      "auto = bf16 on GPUs that support it, else fp16 with loss scaling; on CPU bf16 where oneDNN "
      "has fast bf16 kernels (AVX512 and newer), else fp32 (default: %(default)s)")
    a("--group_by_length", action=argparse.BooleanOptionalAction, default=True, help="batch "
      "examples of similar length together (shuffled within groups of 50 batches, batches in "
      "random order) so little compute goes to padding (default: %(default)s)")
    a("--padding", default="longest", choices=["longest", "max_len"], help="pad each batch to its "
      "longest example (rounded up to a multiple of 8), or always to --max_len (default: %(default)s)")
    a("--compile", action="store_true", help="torch.compile the model for training; falls back "
      "to eager with a message where it cannot compile")
    a("--out_dir", default="runs", help="runs are written to OUT_DIR/RUN_NAME (default: %(default)s)")
    a("--run_name", default=None, help="default: model, pooling, the settings that differ from "
      "the defaults, and the seed")
    a("--cache_dir", default=os.environ.get("FTKIT_CACHE", os.path.expanduser("~/.cache/ftkit")),
      help="tokenized data and locally trained tokenizers (default: $FTKIT_CACHE or %(default)s)")
    a("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"], help="W&B "
      "logging; auto = $WANDB_MODE if set, else online when logged in, else offline "
      "(default: %(default)s)")
    a("--wandb_project", default=os.environ.get("WANDB_PROJECT", "encoder-finetune"),
      help="W&B project (default: $WANDB_PROJECT or %(default)s)")
    a("--wandb_group", default=None, help="W&B group, e.g. the grid name (default: none)")
    a("--log_every", type=int, default=50, help="optimizer steps between train log lines (default: %(default)s)")
    a("--save_every", type=int, default=500, help="optimizer steps between checkpoints; one is also "
      "written at each epoch end (default: %(default)s)")
    a("--keep_checkpoints", type=int, default=2, help="newest checkpoints kept (default: %(default)s)")
    a("--resume", default="auto", choices=["auto", "never"], help="auto: continue from the newest "
      "valid checkpoint in the run folder (default: %(default)s)")
    a("--fresh", action="store_true", help="delete this run's old checkpoints and results first")
    a("--on_nan", default="stop", choices=["stop", "skip"], help="on a non-finite loss: stop "
      "(keeping the last good checkpoint) or skip that step (default: %(default)s)")
    a("--smoke", action="store_true", help="check the whole path in seconds: 64 train / 64 val / "
      "64 test examples, 1 epoch, run name suffixed -smoke, no W&B")
    return p


def parse_args(argv=None, on_error=None) -> argparse.Namespace:
    parser = build_parser()
    parser.raise_as = on_error
    args = parser.parse_args(argv)
    defaults = vars(parser.parse_args([]))
    if args.smoke:  # keeps a user's smaller (or invalid) subset, so the smoke run fails like the real one
        args.max_train_samples = 64 if args.max_train_samples is None else min(args.max_train_samples, 64)
        args.max_eval_samples = 64 if args.max_eval_samples is None else min(args.max_eval_samples, 64)
        args.epochs = 1
        args.wandb = "disabled"
    check_args(args)
    entry = models.resolve_model(args.model)
    if args.run_name is None:
        args.run_name = derive_run_name(args, defaults)
    check_run_name(args.run_name)
    if args.lr is None:
        args.lr = entry.default_lr
    return args


def check_args(args) -> None:
    """Range checks that need neither the model nor the world size; a UserError names the flag."""
    def bad(flag, rule):
        raise UserError(f"--{flag} must be {rule} (got {getattr(args, flag)})")

    for key in ("max_len", "batch_size", "grad_accum", "epochs", "eval_batch_size", "log_every",
                "save_every", "keep_checkpoints"):
        if getattr(args, key) < 1:
            bad(key, "at least 1")
    for key in ("max_train_samples", "max_eval_samples"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            bad(key, "at least 1 (leave it out for all examples)")
    for key in ("dropout", "val_ratio", "warmup_ratio", "encoder_dropout"):
        value = getattr(args, key)
        if value is not None and not 0 <= value < 1:  # also false for nan
            bad(key, "in [0, 1)")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        bad("lr", "a positive number")
    for key in ("weight_decay", "clip"):  # a negative clip would scale gradients by a negative factor
        if not (math.isfinite(getattr(args, key)) and getattr(args, key) >= 0):
            bad(key, "a number >= 0")
    if not 0 <= args.seed < 2 ** 31:
        bad("seed", "in [0, 2^31)")
    if args.label_col in args.text_col:
        raise UserError(f"--label_col {args.label_col} is also a --text_col: the label would be part "
                        "of the input")


def check_run_name(name: str) -> None:
    """A run name is one plain folder name inside --out_dir: --fresh deletes inside it."""
    if name in ("", ".", "..") or os.sep in name or "/" in name or name != name.strip():
        raise UserError(f"--run_name {name!r} must be one plain folder name (no '/', not '.' or '..')")


def setting_labels(values: dict, defaults: dict) -> dict:
    """{setting: short label} for the NAME_KEYS settings that differ from `defaults`, e.g.
    {"batch_size": "bs32", "clip": "clip1"}: the run name's middle, and report.py's setup column."""
    labels = {}
    for key, short in NAME_KEYS.items():
        value = values.get(key)
        if value == defaults[key]:
            continue
        if isinstance(value, list):
            value = "+".join(value)
        if key == "data":
            value = os.path.basename(os.path.normpath(value))
        if isinstance(value, bool):
            labels[key] = short if value else f"no{short}"
        else:
            labels[key] = f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}"
    return labels


def derive_run_name(args, defaults: dict) -> str:
    model_name = os.path.basename(os.path.normpath(args.model)).replace("/", "_")
    labels = setting_labels(vars(args), defaults)
    if args.smoke:  # --smoke sets these itself; the -smoke suffix says so
        for key in ("max_train_samples", "max_eval_samples", "epochs"):
            labels.pop(key, None)
    return "-".join([model_name, args.pool, *labels.values(), f"s{args.seed}"]) + ("-smoke" if args.smoke else "")


def run_fingerprint(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in OPERATIONAL}


def validate(args, entry, info: utils.DistInfo) -> int:
    """Checks that need the world size or the model; returns the per-process batch size."""
    shards = info.world_size * args.grad_accum
    if args.batch_size % shards:
        raise UserError(f"--batch_size {args.batch_size} is not divisible by world size "
                        f"{info.world_size} x grad_accum {args.grad_accum}")
    limit = models.model_max_positions(entry)
    if args.max_len > limit:
        raise UserError(f"--max_len {args.max_len} exceeds the model's limit of {limit} positions")
    return args.batch_size // shards


def resolve_precision(name: str, device: torch.device, warn) -> str:
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return name
    native_bf16 = utils.cpu_has_native_bf16()
    if name == "auto":
        return "bf16" if native_bf16 else "fp32"
    if name == "bf16" and not native_bf16:
        warn("warning: this CPU has no fast bf16 kernels (needs AVX512 or newer): bf16 matrix "
             "products take a fallback path many times slower than --precision fp32")
    return name


def make_optimizer(model, args):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)  # biases and norm weights
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr, fused=True)  # one kernel for all parameters, on CPU too


def make_scheduler(optimizer, args, total_steps: int):
    warmup = int(args.warmup_ratio * total_steps)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if args.scheduler == "linear":
            return max(0.0, 1 - progress)
        if args.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@torch.inference_mode()
def predict(model, encoded: data.Encoded, info, args, pad_id, autocast, stop=None) -> np.ndarray:
    """Class probabilities for every example of a split, in split order, exact across ranks:
    each rank scores its own shard and the shards are gathered. Raises Interrupted on every
    rank when any rank got a stop signal."""
    lengths = np.array([len(x) for x in encoded.ids])
    shard = data.eval_shard(lengths, info.rank, info.world_size)
    was_training = model.training
    model.eval()
    probs = []
    for start in range(0, len(shard), args.eval_batch_size):
        batch = data.collate([encoded.ids[i] for i in shard[start:start + args.eval_batch_size]],
                             pad_id, args.max_len, args.padding == "max_len")
        with autocast:
            logits = model(**{k: v.to(info.device, non_blocking=True) for k, v in batch.items()})
        probs.append(torch.softmax(logits.float(), -1).cpu().numpy())
        utils.fault_point("eval")
        if stop is not None and stop.poll():
            break
    model.train(was_training)
    num_labels = model.head.out_features
    local = np.concatenate(probs) if probs else np.zeros((0, num_labels), np.float32)
    gathered = utils.all_gather_objects((shard, local, stop.signum if stop else 0), info)
    if any(g[2] for g in gathered):
        raise Interrupted(stop.signum or signal.SIGTERM)
    index = np.concatenate([g[0] for g in gathered])
    out = np.concatenate([g[1] for g in gathered])
    if len(index) != len(lengths) or len(np.unique(index)) != len(lengths):
        raise RuntimeError("distributed evaluation did not score every example exactly once")
    return out[np.argsort(index)]


def is_collapsed(history: list[dict], majority_rate: float, num_labels: int) -> bool:
    """After every epoch, val accuracy at the majority-class rate and loss near ln K or above:
    the model is no better than the label prior (the original BERT bs32 run, 0.5000 / 0.6944)."""
    chance_loss = math.log(num_labels)
    return bool(history) and all(abs(h["acc"] - majority_rate) <= 0.01 and
                                 h["loss"] >= 0.95 * chance_loss for h in history)


class StopRequest:
    """While active, SIGTERM / SIGINT / SIGHUP only set a flag: the loop finishes its step,
    checkpoints and exits. Under torchrun the death of the launcher counts as SIGTERM: a
    `kill -9` of torchrun (whose workers run in their own sessions) must not leave orphans
    holding the run lock and the GPUs."""
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __enter__(self):
        self.signum = 0
        self.launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def poll(self) -> int:
        """The signal to stop for, or 0."""
        if not self.signum and self.launcher is not None and os.getppid() != self.launcher:
            print(f"the launcher (pid {self.launcher}) is gone: stopping", file=sys.stderr, flush=True)
            self.signum = signal.SIGTERM
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signum = signum


def main(argv=None) -> int:
    try:
        args = parse_args(argv)  # before the process group: a bad flag costs no rendezvous
    except UserError as e:
        return _user_error(e, is_main=True)
    info = utils.setup_distributed()
    try:
        return train(args, info)
    except UserError as e:
        return _user_error(e, info.is_main)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        return _user_error(UserError(f"no space left on the device{where}; free space, then rerun "
                                     "(what was written before is kept)"), info.is_main)
    finally:
        utils.cleanup_distributed()


def _user_error(e: UserError, is_main: bool) -> int:
    """One line on stderr and exit 2; under torchrun also torchrun's error file, so its failure
    summary shows this line instead of a traceback."""
    if is_main:
        print(f"error: {e}", file=sys.stderr, flush=True)
    utils.write_torchrun_error_file(f"error: {e}")
    return 2


def train(args, info: utils.DistInfo) -> int:
    with StopRequest() as stop:
        return _train(args, info, stop)


def _train(args, info: utils.DistInfo, stop: StopRequest) -> int:
    started = time.time()
    entry = models.resolve_model(args.model)
    per_proc_batch = validate(args, entry, info)
    run_dir = os.path.join(args.out_dir, args.run_name)
    ckpt_dir = os.path.join(run_dir, "ckpt")
    try:
        os.makedirs(run_dir, exist_ok=True)
        log = utils.get_logger(os.path.join(run_dir, "train.log"), info.is_main)
    except OSError as e:
        raise UserError(f"cannot write the run folder {run_dir}: {e.strerror} (check --out_dir)") from None
    with checkpoint.RunLock(run_dir, log.info, active=info.is_main) as lock:
        utils.main_process_first(info, lock.acquire)
        return _train_locked(args, info, entry, per_proc_batch, run_dir, ckpt_dir, log, stop, started)


def _train_locked(args, info, entry, per_proc_batch, run_dir, ckpt_dir, log, stop, started) -> int:
    precision = resolve_precision(args.precision, info.device, log.warning)
    config = dict(vars(args), precision_used=precision)
    fingerprint = run_fingerprint(config)
    config_path = os.path.join(run_dir, "config.json")

    if utils.main_process_first(info, _prepare_run_dir, args, config, run_dir, info.is_main, log):
        log.info(f"{run_dir} is already finished (results.json exists); --fresh reruns it")
        return 0

    env = utils.environment_info(info)
    log.info(f"environment: {env}")
    log.info(f"config: {config}")
    utils.seed_everything(args.seed)

    splits, label_names = utils.main_process_first(
        info, data.load_splits, args.data, args.text_col, args.label_col, args.val_ratio,
        args.max_train_samples, args.max_eval_samples, log.warning if info.is_main else lambda message: None)
    tokenizer = utils.main_process_first(info, models.load_tokenizer, entry, splits["train"].texts, args.cache_dir)
    # token ids index the checkpoint's embeddings: a resume with another tokenizer is refused
    config["tokenizer_sha256"] = data.tokenizer_fingerprint(tokenizer)
    fingerprint = run_fingerprint(config)
    encoded = {name: utils.main_process_first(info, data.encode, split.texts, tokenizer, args.max_len,
                                              args.truncation, args.cache_dir)
               for name, split in splits.items()}
    labels = {name: split.labels for name, split in splits.items()}
    num_labels = len(label_names)
    log.info(f"data: {', '.join(f'{k} {len(v.texts)}' for k, v in splits.items())}; "
             f"labels {label_names}")

    model = models.build_model(entry, tokenizer, num_labels, args.pool, args.dropout,
                               args.encoder_dropout, info.device).to(info.device)
    flops_per_token, flops_per_token_pair = models.training_flops(model)
    peak_flops = utils.device_peak_flops(info.device)
    log.info(f"model: {type(model.encoder).__name__}, {sum(p.numel() for p in model.parameters()):,} "
             f"parameters ({flops_per_token // 6:,} outside embeddings), encoder dropouts "
             f"{models.encoder_dropout_values(model)}, attention {model.encoder.config._attn_implementation}")
    train_lengths = np.array([len(x) for x in encoded["train"].ids])
    n_train = len(train_lengths)
    steps_per_epoch = math.ceil(math.ceil(n_train / info.world_size) / (per_proc_batch * args.grad_accum))
    total_steps = steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, total_steps)
    scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16")
    autocast = torch.autocast(info.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
    pad_id = tokenizer.pad_token_id

    # ---- resume
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val_acc": -1.0,
                "best_epoch": -1, "best_file": None, "history": [], "train_time": 0.0,
                "train_samples": 0, "train_tokens": 0, "train_positions": 0, "train_flops": 0,
                "wandb_id": None}
    state = checkpoint.load_latest_checkpoint(ckpt_dir, log.warning) if args.resume == "auto" else None
    if state is not None:
        _check_same_settings(state, fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        if len(state["rng"]) == info.world_size:
            utils.set_rng_state(state["rng"][info.rank])
        else:
            log.warning(f"warning: resuming with {info.world_size} processes instead of "
                        f"{len(state['rng'])}: data order is kept, dropout randomness is not")
            utils.seed_everything(args.seed + info.rank + progress["global_step"])
        log.info(f"resumed from {state['path']}: epoch {progress['epoch']}, step "
                 f"{progress['global_step']}/{total_steps}")
        del state
    else:
        utils.seed_everything(args.seed + info.rank)  # distinct dropout masks per rank
    config.update(label_names=label_names, world_size=info.world_size, per_process_batch=per_proc_batch,
                  effective_batch=args.batch_size, steps_per_epoch=steps_per_epoch, env=env,
                  code_version=settings.code_version())
    if info.is_main:
        utils.write_json(config_path, config)
    earlier_events = []
    if info.is_main:  # events logged after the checkpoint are logged again as the steps replay
        earlier_events = utils.truncate_jsonl(os.path.join(run_dir, "metrics.jsonl"), progress["global_step"],
                                              log.warning)
    ddp_model = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
        if info.is_distributed else model
    if args.compile:
        ddp_model = models.compile_or_explain(ddp_model, info.device, log.info)
    wandb_run = utils.WandbRun(args, config, run_dir, info, log, earlier_events)
    progress["wandb_id"] = wandb_run.run_id

    drop_newer = args.resume == "never"  # a run started over: older runs' later checkpoints must go

    def save(reason: str) -> str:
        nonlocal drop_newer, last_saved_step
        rng = utils.all_gather_objects(utils.get_rng_state(), info)
        last_saved_step = progress["global_step"]
        if not info.is_main:
            return ""
        path = checkpoint.save_checkpoint(ckpt_dir, progress["global_step"], {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "progress": dict(progress), "rng": rng, "fingerprint": fingerprint},
            keep=args.keep_checkpoints, drop_newer=drop_newer)
        drop_newer = False
        log.info(f"checkpoint ({reason}): {path}")
        return path

    def stop_for_signal(signum: int, unsaved: bool) -> int:
        """Checkpoint (unless nothing changed since the last one), say how to resume, exit 128+N."""
        path = save("signal") if unsaved else ""
        if info.is_main and not path:
            path = next(iter(checkpoint.list_checkpoints(ckpt_dir)), "")
        rerun = "rerun the same command" + (" without --fresh" if args.fresh else "") + \
            (" without --resume never" if args.resume == "never" else "")
        log.info(f"checkpointed at step {progress['global_step']} — {rerun} to resume"
                 + (f" ({path})" if path else ""))
        wandb_run.finish(exit_code=EXIT_SIGNAL + signum)
        return EXIT_SIGNAL + signum

    # ---- train
    log.info(f"training: {n_train} examples, {args.epochs} epochs x {steps_per_epoch} steps, "
             f"batch {args.batch_size} = {info.world_size} processes x {per_proc_batch} x "
             f"{args.grad_accum} accumulation, precision {precision}")
    model.train()
    window = _new_window()
    last_saved_step = progress["global_step"]
    best_weights = None
    bar = _progress_bar(info, total_steps, progress["global_step"])
    while progress["epoch"] < args.epochs:
        epoch = progress["epoch"]
        batches = data.train_batches(train_lengths, args.batch_size, epoch, args.seed, info.world_size,
                                     args.group_by_length)
        while progress["step_in_epoch"] < steps_per_epoch:
            step_start = time.time()
            step_indices = data.rank_slice(batches[progress["step_in_epoch"]], info.rank, info.world_size)
            loss_sum = torch.zeros((), device=info.device)
            counts = np.zeros(3)  # real tokens, padded positions, useful FLOPs
            micro = [step_indices[i:i + per_proc_batch] for i in range(0, len(step_indices), per_proc_batch)]
            for k, mb in enumerate(micro):
                batch = data.collate([encoded["train"].ids[i] for i in mb], pad_id, args.max_len,
                                     args.padding == "max_len")
                lengths = train_lengths[mb]
                counts += [lengths.sum(), batch["input_ids"].numel(),
                           flops_per_token * lengths.sum() + flops_per_token_pair * (lengths ** 2).sum()]
                batch = {key: v.to(info.device, non_blocking=True) for key, v in batch.items()}
                target = torch.from_numpy(labels["train"][mb]).to(info.device, non_blocking=True)
                sync_now = k == len(micro) - 1
                with ddp_model.no_sync() if info.is_distributed and not sync_now else contextlib.nullcontext():
                    with autocast:
                        logits = ddp_model(**batch)
                    # sum / this rank's examples in the step; DDP's gradient mean over ranks
                    # then gives the mean over the whole global batch
                    loss = F.cross_entropy(logits.float(), target, reduction="sum") / len(step_indices)
                    if utils.NAN_AT_STEP == progress["global_step"]:  # divergence tests
                        loss = loss * float("nan")
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()

            # one small all-reduce per step: global loss, token counts, and whether any rank got a signal
            stats = torch.tensor([loss_sum.item(), *counts, stop.poll()], dtype=torch.float64,
                                 device=info.device)
            if info.is_distributed:
                torch.distributed.all_reduce(stats)
            loss_total, tokens, positions, flops, signal_sum = stats.tolist()
            step_loss = loss_total / info.world_size
            log_now = (progress["global_step"] + 1) % args.log_every == 0 or \
                progress["step_in_epoch"] + 1 == steps_per_epoch
            grad_norm = math.nan
            if not math.isfinite(step_loss):
                optimizer.zero_grad(set_to_none=True)
                if args.on_nan == "stop":
                    log.error(f"error: loss is not finite at step {progress['global_step'] + 1} "
                              f"(epoch {epoch}); stopped. The last good checkpoint is kept; lower "
                              f"--lr, try --clip 1.0 or --precision fp32, or --on_nan skip")
                    wandb_run.finish(exit_code=EXIT_DIVERGED)
                    return EXIT_DIVERGED
                log.warning(f"warning: non-finite loss at step {progress['global_step'] + 1}: step skipped")
                scaler.update()
            else:
                scaler.unscale_(optimizer)  # clip and report the norm of the true gradients
                if args.clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                elif log_now:  # a pass over all gradients: only for steps whose norm is shown
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress["step_in_epoch"] += 1
            progress["global_step"] += 1
            step_time = time.time() - step_start
            progress["train_time"] += step_time
            step_counts = {"samples": len(step_indices) * info.world_size, "tokens": tokens,
                           "positions": positions, "flops": flops}
            for key, value in step_counts.items():
                progress[f"train_{key}"] += value
                window[key] += value
            window["loss"] += step_loss if math.isfinite(step_loss) else 0.0
            window["steps"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if log_now:
                event = {"event": "train", "step": progress["global_step"], "epoch": epoch,
                         "loss": window["loss"] / window["steps"], "lr": scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm),
                         **throughput(window, time.time() - window["time"], peak_flops, info.world_size)}
                _record(event, run_dir, info, log, wandb_run)
                window = _new_window()
            utils.fault_point("step")
            if signal_sum > 0:  # another rank may have got it: stop with the usual SIGTERM code
                return stop_for_signal(stop.signum or signal.SIGTERM, progress["global_step"] > last_saved_step)
            if progress["global_step"] % args.save_every == 0 and progress["step_in_epoch"] < steps_per_epoch:
                save("every")

        # ---- end of epoch: validate, keep the best weights, checkpoint
        utils.fault_point("epoch_end")
        try:
            val_probs = predict(model, encoded["val"], info, args, pad_id, autocast, stop)
        except Interrupted as e:  # saved with the epoch trained and not yet validated
            return stop_for_signal(e.signum, progress["global_step"] > last_saved_step)
        val = utils.classification_metrics(val_probs, labels["val"])
        progress["history"].append(val)
        improved = val["acc"] > progress["best_val_acc"]
        if improved:
            progress["best_val_acc"], progress["best_epoch"] = val["acc"], epoch
            progress["best_file"] = f"best_step{progress['global_step']}.pt"
            # every rank keeps a copy, so the test needs no shared file system across nodes;
            # the file (rank 0) serves a resumed run
            best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if info.is_main:
                checkpoint.save_weights(os.path.join(run_dir, progress["best_file"]), best_weights)
        _record({"event": "eval", "split": "val", "step": progress["global_step"], "epoch": epoch,
                 **val, "best": improved}, run_dir, info, log, wandb_run)
        progress["epoch"] += 1
        progress["step_in_epoch"] = 0
        save(f"end of epoch {epoch}")
        if info.is_main:
            checkpoint.remove_unreferenced_weights(run_dir, ckpt_dir)
    if bar is not None:
        bar.close()

    # ---- test with the best weights
    if best_weights is None:
        best_weights = _load_best_weights(run_dir, progress, model, log)
    model.load_state_dict(best_weights)
    eval_start = time.time()
    try:
        test_probs = predict(model, encoded["test"], info, args, pad_id, autocast, stop)
    except Interrupted as e:  # training is checkpointed: a rerun only redoes the evaluation
        return stop_for_signal(e.signum, False)
    test_samples_per_s = len(test_probs) / max(time.time() - eval_start, 1e-9)
    test = utils.classification_metrics(test_probs, labels["test"])
    best = progress["history"][progress["best_epoch"]]
    majority = np.bincount(labels["val"], minlength=num_labels).max() / len(labels["val"])
    results = {"val_acc": best["acc"], "val_loss": best["loss"], "val_f1": best["f1"], "val_ece": best["ece"],
               "test_acc": test["acc"], "test_loss": test["loss"], "test_f1": test["f1"], "test_ece": test["ece"],
               "best_epoch": progress["best_epoch"], "epochs": args.epochs, "global_step": progress["global_step"],
               "collapsed": is_collapsed(progress["history"], majority, num_labels),
               **{f"train_{k}": v for k, v in throughput(progress, progress["train_time"], peak_flops,
                                                          info.world_size, prefix="train_").items()},
               "eval_samples_per_s": test_samples_per_s,
               "wall_s": time.time() - started, "run_name": args.run_name}
    _record({"event": "eval", "split": "test", "step": progress["global_step"], "epoch": progress["best_epoch"],
             **test}, run_dir, info, log, wandb_run)
    if results["collapsed"]:
        log.warning(f"WARNING: COLLAPSED RUN — val accuracy stayed at the majority rate {majority:.4f} and "
                    f"loss near ln {num_labels} = {math.log(num_labels):.4f}; this is not a result. "
                    "Lower --lr or change batch size / clipping.")
    if info.is_main:
        np.savez_compressed(os.path.join(run_dir, "test_predictions.npz"), probs=test_probs.astype(np.float32),
                            labels=labels["test"], n_tokens=encoded["test"].n_tokens)
        utils.write_json(os.path.join(run_dir, "results.json"), results)
    wandb_run.summary(results)
    wandb_run.final_plots(test_probs, labels["test"], splits["test"].texts, label_names)
    wandb_run.finish()
    log.info(f"results: val_acc {results['val_acc']:.4f}  test_acc {results['test_acc']:.4f}  "
             f"test_loss {results['test_loss']:.4f}  ({run_dir}/results.json)")
    return 0


def _new_window() -> dict:
    return {"loss": 0.0, "steps": 0, "samples": 0, "tokens": 0, "positions": 0, "flops": 0, "time": time.time()}


def throughput(counts: dict, seconds: float, peak_flops: float | None, world_size: int, prefix: str = "") -> dict:
    """samples/s, real tokens/s, the share of padding in the batches, useful (real-token)
    TFLOP/s and, where the device's bf16 peak is known, model FLOPs utilisation."""
    seconds = max(seconds, 1e-9)
    flops_per_s = counts[f"{prefix}flops"] / seconds
    return {"samples_per_s": counts[f"{prefix}samples"] / seconds,
            "tokens_per_s": counts[f"{prefix}tokens"] / seconds,
            "padding_share": 1 - counts[f"{prefix}tokens"] / max(counts[f"{prefix}positions"], 1),
            "tflops_per_s": flops_per_s / 1e12,
            **({"mfu": flops_per_s / (peak_flops * world_size)} if peak_flops else {})}


def _prepare_run_dir(args, config: dict, run_dir: str, is_main: bool, log) -> bool:
    """Apply --fresh, refuse a run dir that holds other settings; True if already finished."""
    config_path = os.path.join(run_dir, "config.json")
    if is_main:
        for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp*")):  # from a kill mid-write
            os.remove(stale)
    if args.fresh and is_main:
        ours = {"train.log", ".lock"}
        if not _is_our_config(config_path) and set(os.listdir(run_dir)) - ours:
            raise UserError(f"--fresh: {run_dir} holds files but no config.json of a run of this "
                            "toolkit; not deleting anything there")
        log.info(f"--fresh: deleting earlier checkpoints and results in {run_dir}")
        for name in set(os.listdir(run_dir)) - ours:
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if not os.path.exists(config_path):
        return False
    old, new = run_fingerprint(utils.read_json(config_path)), run_fingerprint(config)
    differing = sorted(k for k in new if old.get(k) != new[k])
    if differing:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                        "use another --run_name, or --fresh to discard it")
    return os.path.exists(os.path.join(run_dir, "results.json"))


def _is_our_config(path: str) -> bool:
    try:
        config = utils.read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"run_name", "model", "pool", "seed"} <= set(config)


def _check_same_settings(state: dict, fingerprint: dict) -> None:
    """The checkpoint's settings must be this run's (config.json may be gone or edited)."""
    saved = state.get("fingerprint", {})
    differing = sorted(k for k in saved if k in fingerprint and saved[k] != fingerprint[k])
    if differing:
        shown = ", ".join(f"{k}: {saved[k]!r} there, {fingerprint[k]!r} now" for k in differing)
        raise UserError(f"checkpoint {state['path']} was made with other settings ({shown}); rerun with "
                        "its settings, or use --fresh / another --run_name")


def _load_best_weights(run_dir: str, progress: dict, model, log) -> dict:
    """The best epoch's weights from their file; if that file is unreadable and the best epoch is
    the last checkpointed one, the model (just resumed from that checkpoint) holds them."""
    path = os.path.join(run_dir, progress["best_file"])
    try:
        return checkpoint.load_weights(path)
    except Exception as e:  # truncated, corrupt or missing: the unpickler raises many types
        if progress["best_file"] == f"best_step{progress['global_step']}.pt":
            log.warning(f"warning: {path} is unreadable ({type(e).__name__}); using the same weights "
                        "from the last checkpoint")
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
        raise UserError(f"the best weights {path} are unreadable ({type(e).__name__}) and no checkpoint "
                        "holds them; rerun with --fresh to train again") from None


def _record(event: dict, run_dir: str, info, log, wandb_run) -> None:
    if not info.is_main:
        return
    utils.append_jsonl(os.path.join(run_dir, "metrics.jsonl"), event)
    wandb_run.log(event)
    shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in event.items()
                     if k != "event" and v is not None)
    log.info(f"{event['event']}: {shown}")


def _progress_bar(info, total: int, done: int):
    if not info.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)


if __name__ == "__main__":
    sys.exit(main())
