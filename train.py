"""Fine-tune a pretrained encoder for text classification, sentence pairs or regression with a
hand-written DDP loop.

One process (CPU or one GPU):
    python train.py --model bert --pool cls
Two GPUs on one machine (or 2 CPU processes with gloo):
    torchrun --standalone --nproc_per_node=2 train.py --model bert --pool cls
Two nodes, 8 GPUs each (run on both; MASTER = the first node's address):
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 train.py ...
    torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 train.py ...
Offline demo in seconds:
    python train.py --model tiny-bert --data synthetic --epochs 3 --wandb disabled
Masked-LM (continued) pretraining through the same loop, then fine-tuning from its output:
    python train.py --task mlm --model bert --data FOLDER --run_name mlm
    python train.py --model run:mlm --data FOLDER        (runs/mlm/model; run mlm must have finished)

Rerunning the same command resumes an interrupted run from its newest checkpoint.
"""

import argparse
import contextlib
import errno
import functools
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import config as settings
import data
import metrics
import mlm
import model as models
import tracking
import utils
from config import UserError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXIT_SIGNAL = 128  # + signal number, as shells report a signal death
EXIT_DIVERGED = 3
EXIT_COLLAPSED = 4  # stopped as collapsed (--on_collapse stop); results.json is written
# a collapsed run is stopped after this many validations in a row at chance, over at least one
# epoch of training, whose scores separate the classes by at most COLLAPSE_RANKING_Z standard errors
COLLAPSE_VALIDATIONS = 2
COLLAPSE_RANKING_Z = 3.0
HISTORY_EXTRAS = ("step", "epoch", "train_loss", "ranking_z")  # a history entry's keys that are not val metrics


class Hooks:
    """Where tests and the benchmark reach into the training loop, passed as
    train.main(argv, hooks=...): called at step, evaluation-batch and epoch boundaries, never inside
    a step; these do nothing. The crash tests' faults come in this way (tests/faults.py)."""

    def before_step(self, run, state, micro_batches: list) -> None:
        """Before an optimizer step's forward and backward passes; micro_batches holds this
        rank's example indices, as the step will cut them."""

    def after_forward_backward(self, run, state, figures: dict) -> None:
        """After the step's backward passes and its all-reduce (a host sync), before the optimizer
        step. The figures (loss, samples, tokens, positions, flops, signal) may be changed."""

    def after_step(self, run, state, figures: dict) -> None:
        """The step is taken, counted (state.global_step) and logged; before the loop checks for a
        stop signal and takes any checkpoint."""

    def after_eval_batch(self, run, split: str) -> None:
        """An evaluation batch of split ("val", "test") scored, before the stop-signal check."""

    def before_validation(self, run, state) -> None:
        """Before a validation: after an epoch's last step, or every --eval_every steps."""


@dataclass
class TrainState:
    """Where the run is: everything a checkpoint restores besides the model, optimizer,
    scheduler, GradScaler and RNG states (saved as the checkpoint's "progress")."""

    epoch: int = 0  # epochs finished: trained, validated and checkpointed
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0  # optimizer steps done in all
    last_eval_step: int = 0  # the global step of the last validation: a resume neither repeats nor skips one
    best_val_metric: float | None = None  # of --metric_for_best
    best_epoch: int = -1  # the epoch of the best validation
    best_step: int = -1  # the global step of the best validation
    best_file: str | None = None  # best_step<N>.pt in the run folder: the best validation's weights
    # every validation: its metrics, and (HISTORY_EXTRAS, validation_context) where it was and
    # what the collapse rule reads besides them
    history: list = field(default_factory=list)
    train_loss_since_eval: float = 0.0  # summed over the steps since the last validation
    train_time: float = 0.0  # seconds spent in training steps (throughput figures)
    train_samples: int = 0  # counted over all ranks
    train_tokens: int = 0  # real (non-padding) tokens
    train_positions: int = 0  # padded positions
    train_flops: float = 0.0  # useful FLOPs of the real tokens
    wandb_id: str | None = None  # the W&B run a resume continues
    # the steps since the last train-log line: a resume logs the same averages (its "time" is a
    # clock reading in memory and the seconds elapsed in a checkpoint)
    log_window: dict = field(default_factory=lambda: _new_window())


@dataclass
class MicroBatches:
    """How this rank cuts its batches for the device now: the one part of a Run that changes while
    it trains. --micro_batch N (or the whole per-process batch) fixes the sizes; auto probes them
    before the first step and halves them where the device runs out of memory (back_off). Saved in
    every checkpoint: a resume cuts as the run did."""

    train: int  # examples per forward/backward pass (at most; each step's share is cut into them)
    eval: int  # examples per evaluation batch
    auto: bool  # --micro_batch auto: probe and back off; else an out-of-memory error stops the run
    back_offs: list = field(default_factory=list)  # each halving: where, step, batch, from, to
    steps_done: int = 0  # the optimizer steps done when an evaluation backs off (its events' step)

    def saved(self) -> dict:
        return {"train": self.train, "eval": self.eval, "back_offs": self.back_offs}

    def resume(self, saved: dict | None) -> None:
        """A checkpoint's sizes (auto: the run's own cut goes on; N: the flags' holds) and back-offs."""
        if saved is None:  # a checkpoint from before --micro_batch
            return
        if self.auto:
            self.train, self.eval = min(self.train, saved["train"]), min(self.eval, saved["eval"])
        self.back_offs = list(saved["back_offs"])


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: settings resolved once, data, model and its optimizer.
    Built by set_up, completed by restore (the DDP wrapper, W&B); never changed after that."""

    args: argparse.Namespace  # the flags, for set-up and W&B; the loop reads the fields below
    info: utils.DistInfo
    log: logging.Logger
    run_dir: str
    config: dict
    fingerprint: dict
    encoded: dict[str, data.Encoded]  # split -> token ids
    labels: dict[str, np.ndarray]  # split -> label ids (float targets for regression)
    label_names: list[str]  # class names; empty for regression and mlm
    task: str  # classification | regression | mlm
    task_rules: models.Task  # its loss and per-example outputs
    metric_for_best: str  # the validation metric that picks the best epoch
    test_texts: list[str]
    train_lengths: np.ndarray  # tokens in each training example
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: torch.autocast
    collate: Callable[..., dict]  # data.collate bound to the pad id, --max_len and --padding
    plan_epoch: Callable[[int], list[data.StepPlan]]  # data.plan_epoch of an epoch, for this rank, cut now
    pad_id: int
    per_proc_batch: int  # this rank's share of a full global batch
    batch_size: int  # global, per optimizer step
    micro: MicroBatches
    max_len: int
    pad_to_max: bool  # --padding max_len
    steps_per_epoch: int
    epochs: int
    clip: float  # max gradient norm; 0: no clipping
    log_every: int
    on_nan: str  # "stop" or "skip"
    eval_every: int  # validate every N global steps too; 0: at epoch ends only
    early_stop: int  # validations in a row without improvement that end training; 0: never
    on_collapse: str  # "stop" or "continue"
    eval_batch_size: int  # --eval_batch_size: where micro.eval starts
    flops: models.TrainingFlops  # useful training FLOPs of sequences of given lengths
    peak_flops: float | None
    started: float
    checkpointer: checkpoint.Checkpointer
    hooks: Hooks
    ddp_model: torch.nn.Module | None = None
    wandb: tracking.WandbRun | None = None
    tokenizer: object = None
    # --task mlm: the training masks, and the validation's fixed ones (one seed for every run)
    masker: mlm.Masker | None = None
    val_masker: mlm.Masker | None = None
    rerun_hint: str = "rerun the same command"  # how to resume, said when the run stops
    report_compile: bool = False  # --compile: results.json says what compiled


def parse_args(argv=None, on_error=None):
    """config.parse_args, with --lr defaulting to the model's own default."""
    args = settings.parse_args(argv, on_error, description=__doc__)
    if args.lr is None:
        args.lr = model_entry(args).default_lr
    return args


def model_entry(args) -> models.ModelEntry:
    """--model's registry entry; for run:NAME, the model folder run NAME wrote (whose default lr
    is the one its folder records, as for any model folder)."""
    return models.resolve_model(settings.model_source(args))


def main(argv=None, hooks: Hooks | None = None) -> int:
    """Train as the flags in argv say; the exit code. hooks: see Hooks (tests, the benchmark)."""
    if not utils.watch_launcher():  # torchrun died before this worker got here
        return EXIT_SIGNAL + signal.SIGTERM
    try:
        args = parse_args(argv)  # before the process group: a bad flag costs no rendezvous
        check_available(args)
    except UserError as e:
        return _user_error(e, node_main=os.environ.get("LOCAL_RANK", "0") == "0")
    info = utils.setup_distributed(args.dist_timeout)
    try:
        return train(args, info, hooks if hooks is not None else Hooks())
    except utils.Interrupted as e:  # the launcher died during set-up: nothing trained, nothing to checkpoint
        print(f"stopped during set-up, before any training step (signal {e.signum})", file=sys.stderr, flush=True)
        return EXIT_SIGNAL + e.signum
    except Exception as e:
        if utils.LAUNCHER_GONE.is_set():  # a rank that stopped first broke the collective this one was in
            print(f"stopped: the launcher is gone ({type(e).__name__} in a collective)", file=sys.stderr, flush=True)
            return EXIT_SIGNAL + signal.SIGTERM
        if isinstance(e, UserError):
            return _user_error(e, info.local_rank == 0 or isinstance(e, RankOutOfMemory))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return _user_error(
                UserError(
                    f"no space left on the device{where}; free space, then rerun (what was written before is kept)"
                ),
                info.local_rank == 0,
            )
        raise
    finally:
        utils.cleanup_distributed()


def check_available(args) -> None:
    """Model and data, together and in seconds, before the process group: the user learns both
    problems at once, without the hub client's retries on every rank."""
    model_problem = settings.model_run_unfinished(args) or models.model_unavailable(model_entry(args))
    problems = [p for p in (model_problem, data.data_unavailable(args.data)) if p]
    if problems:
        raise UserError("\nerror: ".join(problems))  # one error line each


def _user_error(e: UserError, node_main: bool) -> int:
    """One line on stderr (from each node's local rank 0: a node's output says why it stopped,
    be the error its own or another rank's) and exit 2; under torchrun also torchrun's error
    file, so its failure summary shows this line instead of a traceback."""
    if node_main:
        print(f"error: {e}", file=sys.stderr, flush=True)
    utils.write_torchrun_error_file(f"error: {e}")
    return 2


def train(args, info: utils.DistInfo, hooks: Hooks) -> int:
    """One run, from scratch or from its newest checkpoint, to results.json; the exit code."""
    started = time.time()
    if not info.is_main:  # one load report ("weights not initialized ..."), from rank 0
        import transformers

        transformers.logging.set_verbosity_error()
    entry = model_entry(args)
    per_proc_batch, micro = check_fits(args, entry, info)
    run_dir = os.path.join(args.out_dir, args.run_name)
    try:
        os.makedirs(run_dir, exist_ok=True)
        log = utils.get_logger(os.path.join(run_dir, "train.log"), info.is_main)
    except OSError as e:
        raise UserError(f"cannot write the run folder {run_dir}: {e.strerror} (check --out_dir)") from None
    with utils.StopRequest() as stop, checkpoint.RunLock(run_dir, log.info, active=info.is_main) as lock:
        utils.main_process_first(info, lock.acquire)
        run = set_up(args, info, entry, per_proc_batch, micro, run_dir, log, started, hooks)
        if run is None:
            return 0
        run, state = restore(run)
        choose_micro_batches(run, state)
        return fit(run, state, stop)


def check_fits(args, entry, info: utils.DistInfo) -> tuple[int, MicroBatches]:
    """Checks that need the world size or the model; the per-process batch, and how it is cut."""
    if args.batch_size % info.world_size:
        raise UserError(f"--batch_size {args.batch_size} is not divisible by world size {info.world_size}")
    limit = models.model_max_positions(entry)
    if args.max_len > limit:
        raise UserError(f"--max_len {args.max_len} exceeds the model's limit of {limit} positions")
    per_proc_batch = args.batch_size // info.world_size
    return per_proc_batch, requested_micro_batches(args, per_proc_batch, info.device)


def requested_micro_batches(args, per_proc_batch: int, device: torch.device) -> MicroBatches:
    """--micro_batch (auto by default on a GPU, else the whole per-process batch) or its alias
    --grad_accum; a fixed size must divide the per-process batch, so every micro-batch is as large."""
    if args.grad_accum is not None:
        if per_proc_batch % args.grad_accum:
            raise UserError(
                f"--batch_size {args.batch_size} is not divisible by world size "
                f"{args.batch_size // per_proc_batch} x grad_accum {args.grad_accum}"
            )
        return MicroBatches(per_proc_batch // args.grad_accum, args.eval_batch_size, auto=False)
    wanted = args.micro_batch if args.micro_batch is not None else "auto" if device.type == "cuda" else per_proc_batch
    if wanted == "auto":
        return MicroBatches(per_proc_batch, args.eval_batch_size, auto=True)
    if per_proc_batch % wanted:
        raise UserError(
            f"--micro_batch {wanted} must divide the per-process batch {per_proc_batch} "
            f"(--batch_size {args.batch_size} / world size {args.batch_size // per_proc_batch})"
        )
    return MicroBatches(wanted, args.eval_batch_size, auto=False)


def set_up(args, info, entry, per_proc_batch, micro, run_dir, log, started, hooks) -> Run | None:
    """Run folder, data, tokenizer, model, optimizer; None if the run already finished."""
    precision = resolve_precision(args.precision, info.device, log.warning)
    config = dict(vars(args), precision_used=precision)
    if utils.main_process_first(info, checkpoint.prepare_run_dir, args, config, run_dir, info.is_main, log):
        log.info(f"{run_dir} is already finished (results.json exists); --fresh reruns it")
        return None
    env = utils.environment_info(info)
    log.info(f"environment: {env}")
    log.info(f"config: {config}")
    utils.seed_everything(args.seed)
    data.make_cache_dir(args.cache_dir)

    pretraining = args.task == "mlm"
    splits, label_names = load_data(args, info, log)
    tokenizer = utils.node_main_first(info, models.load_tokenizer, entry, splits["train"].texts, args.cache_dir)
    masker = (
        mlm.make_masker(tokenizer, args.mlm_prob, args.masking, args.seed, args.whole_word_mask)
        if pretraining
        else None
    )
    # token ids index the checkpoint's embeddings: a resume with another tokenizer is refused,
    # and one with another train, validation or test file
    config["tokenizer_sha256"] = data.tokenizer_fingerprint(tokenizer)
    config.update({f"{name}_data_sha256": data.split_fingerprint(split, label_names) for name, split in splits.items()})
    fingerprint = settings.run_fingerprint(config)
    encoded = encode_splits(args, info, log, splits, tokenizer, masker)
    if pretraining:  # --pack: the examples are blocks
        log.info(
            f"data: {', '.join(f'{k} {len(v.texts)} texts, {len(encoded[k].ids)} examples' for k, v in splits.items())}"
        )
    else:
        log.info(f"data: {', '.join(f'{k} {len(v.texts)}' for k, v in splits.items())}; labels {label_names}")

    task_rules = models.TASK_HEADS[args.task]
    if pretraining:
        model = mlm.build_masked_lm(entry, tokenizer, args.init, args.encoder_dropout, info.device, precision).to(
            info.device
        )
    else:
        model = models.build_model(
            entry,
            tokenizer,
            task_rules.outputs(len(label_names)),
            args.pool,
            args.dropout,
            args.encoder_dropout,
            info.device,
            precision,
        ).to(info.device)
    if not data.uses_token_type_ids(model.encoder.config):  # ModernBERT, RoBERTa: one segment embedding
        encoded = {name: replace(enc, token_types=None) for name, enc in encoded.items()}
    flops = models.training_flops(model, encoder_only=pretraining)
    log.info(
        f"model: {type(model.encoder).__name__}, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters ({flops.per_token // 6:,} outside embeddings), encoder dropouts "
        f"{models.encoder_dropout_values(model)}, attention {model.encoder.config._attn_implementation}"
    )
    train_lengths = np.array([len(x) for x in encoded["train"].ids])

    def plan_epoch(epoch: int) -> list[data.StepPlan]:  # cut as micro.train is when the epoch starts
        return data.plan_epoch(
            train_lengths,
            args.batch_size,
            epoch,
            seed=args.seed,
            rank=info.rank,
            world_size=info.world_size,
            micro_batch=micro.train,
            group_by_length=args.group_by_length,
        )

    steps_per_epoch = len(plan_epoch(0))  # the same in every epoch
    optimizer = make_optimizer(model, args)
    test_split = splits["test"].source if "test" in splits else None  # mlm: none
    config.update(
        label_names=label_names,
        test_split=test_split,
        world_size=info.world_size,
        per_process_batch=per_proc_batch,
        effective_batch=args.batch_size,
        steps_per_epoch=steps_per_epoch,
        env=env,
        code_version=settings.code_version(),
        **{settings.START_MODEL: settings.start_model_hash(args)},
        model_default_lr=entry.default_lr,
        model_folder=entry.source,
        attention=model.encoder.config._attn_implementation,
    )
    return Run(
        args=args,
        info=info,
        log=log,
        run_dir=run_dir,
        config=config,
        fingerprint=fingerprint,
        encoded=encoded,
        labels={k: s.labels for k, s in splits.items()},
        label_names=label_names,
        task=args.task,
        task_rules=task_rules,
        metric_for_best=args.metric_for_best,
        test_texts=splits["test"].texts if test_split else [],
        train_lengths=train_lengths,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, args, steps_per_epoch * args.epochs),
        scaler=torch.amp.GradScaler(info.device.type, enabled=precision == "fp16"),
        autocast=torch.autocast(info.device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"),
        collate=functools.partial(
            data.collate, pad_id=tokenizer.pad_token_id, max_len=args.max_len, pad_to_max=args.padding == "max_len"
        ),
        plan_epoch=plan_epoch,
        pad_id=tokenizer.pad_token_id,
        per_proc_batch=per_proc_batch,
        batch_size=args.batch_size,
        micro=micro,
        max_len=args.max_len,
        pad_to_max=args.padding == "max_len",
        steps_per_epoch=steps_per_epoch,
        epochs=args.epochs,
        clip=args.clip,
        log_every=args.log_every,
        on_nan=args.on_nan,
        eval_every=args.eval_every,
        early_stop=args.early_stop,
        on_collapse=args.on_collapse,
        eval_batch_size=args.eval_batch_size,
        flops=flops,
        peak_flops=utils.device_peak_flops(info.device, precision),
        started=started,
        checkpointer=checkpoint.Checkpointer(
            run_dir, args.save_every, args.keep_checkpoints, info.is_main, log, start_over=args.resume == "never"
        ),
        hooks=hooks,
        tokenizer=tokenizer,
        masker=masker,
        val_masker=replace(masker, seed=data.SPLIT_SEED, masking="static") if pretraining else None,
        rerun_hint="rerun the same command"
        + (" without --fresh" if args.fresh else "")
        + (" without --resume never" if args.resume == "never" else ""),
        report_compile=args.compile,
    )


def load_data(args, info, log) -> tuple[dict, list]:
    """The splits and the class names (none for mlm, whose splits are texts only)."""
    if args.task == "mlm":
        return utils.node_main_first(
            info,
            data.load_texts,
            args.data,
            args.text_col,
            args.val_ratio,
            args.max_train_samples,
            args.max_eval_samples,
            args.unlabeled_split,
            args.label_col,
            log.warning if info.is_main else lambda message: None,
        ), []
    splits, label_names = utils.node_main_first(
        info,
        data.load_splits,
        args.data,
        args.text_col,
        args.label_col,
        args.val_ratio,
        args.max_train_samples,
        args.max_eval_samples,
        log.warning if info.is_main else lambda message: None,
        task=args.task,
    )
    if splits["test"].source != "test":
        log.info(
            f"the test split's labels are hidden: scoring the {splits['test'].source} split as the test "
            "(results.json: test_split)"
        )
    problem = metrics.metric_problem(args.task, args.metric_for_best, len(label_names) or None)
    if problem:
        raise UserError(problem)
    return splits, label_names


def encode_splits(args, info, log, splits: dict, tokenizer, masker) -> dict:
    """Token ids per split (the cache's, or --pack's blocks); mlm warns of examples with nothing to mask."""
    encoded = {}
    for name, split in splits.items():
        texts, text_pairs = split.encoder_inputs(args.text_pairs)
        if args.pack:
            encoded[name] = mlm.encode_packed(texts, tokenizer, args.max_len)
        else:
            encoded[name] = utils.node_main_first(
                info,
                data.encode,
                texts,
                tokenizer,
                args.max_len,
                args.truncation,
                args.cache_dir,
                log.warning,
                text_pairs=text_pairs,
            )
        if masker is not None:
            empty = mlm.unmaskable(masker, encoded[name].ids, f"the {name} texts")
            if empty:
                log.warning(
                    f"warning: {empty} of the {len(encoded[name].ids)} {name} examples hold no token to "
                    "mask (only special tokens); they train nothing"
                )
    return encoded


def restore(run: Run) -> tuple[Run, TrainState]:
    """Load the newest valid checkpoint (refusing one made with other settings), or seed a new
    run; then write config.json; the run completed with the DDP-wrapped model and W&B."""
    args, info, log = run.args, run.info, run.log
    state = TrainState()
    saved = run.checkpointer.resume() if args.resume == "auto" else None
    checkpoint.check_ranks_resume_alike(saved["progress"]["global_step"] if saved else None, info)
    if saved is not None:
        checkpoint.check_same_settings(saved, run.fingerprint)
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.scaler.load_state_dict(saved["scaler"])
        run.micro.resume(saved.get("micro_batches"))
        progress = saved["progress"]
        upgrade_progress(progress, run.steps_per_epoch)
        state = TrainState(**progress)
        state.log_window["time"] = time.time() - state.log_window["time"]
        if len(saved["rng"]) == info.world_size:
            utils.set_rng_state(saved["rng"][info.rank])
        else:
            log.warning(
                f"warning: resuming with {info.world_size} processes instead of "
                f"{len(saved['rng'])}: data order is kept, dropout randomness is not"
            )
            utils.seed_everything(args.seed + info.rank + state.global_step)
        log.info(
            f"resumed from {saved['path']}: epoch {state.epoch}, step "
            f"{state.global_step}/{run.steps_per_epoch * args.epochs}"
        )
        del saved
    else:
        utils.seed_everything(args.seed + info.rank)  # distinct dropout masks per rank
    earlier_events = []
    if info.is_main:
        utils.write_json(os.path.join(run.run_dir, "config.json"), run.config)
        # events logged after the checkpoint are logged again as the steps replay
        earlier_events = utils.truncate_jsonl(
            os.path.join(run.run_dir, "metrics.jsonl"), state.global_step, log.warning
        )
    # broadcast_buffers=False: the encoders' buffers (position and token-type ids) never change,
    # so rank 0 need not send them before every forward (tests/test_model.py checks they stay)
    ddp_model = (
        DDP(run.model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False)
        if info.is_distributed
        else run.model
    )
    if args.compile:
        ddp_model = models.compile_or_explain(ddp_model, info.device, log.info)
    wandb = tracking.WandbRun(args, run.config, run.run_dir, info, log, earlier_events)
    state.wandb_id = wandb.run_id
    return replace(run, ddp_model=ddp_model, wandb=wandb), state


def upgrade_progress(progress: dict, steps_per_epoch: int) -> None:
    """A checkpoint's progress from older code, in today's form."""
    if "best_val_acc" in progress:  # from before --metric_for_best (it was accuracy)
        old = progress.pop("best_val_acc")
        progress["best_val_metric"] = old if old >= 0 else None
    if "last_eval_step" not in progress:  # from before --eval_every: one validation per epoch, at its end
        for epoch, entry in enumerate(progress["history"]):
            entry.update(step=(epoch + 1) * steps_per_epoch, epoch=epoch, train_loss=math.nan, ranking_z=math.nan)
        progress["last_eval_step"] = progress["epoch"] * steps_per_epoch
        best_epoch = progress["best_epoch"]
        progress["best_step"] = (best_epoch + 1) * steps_per_epoch if best_epoch >= 0 else -1


def fit(run: Run, state: TrainState, stop) -> int:
    """The loop: optimizer steps, and a validation with its checkpoint at each epoch's end and
    every --eval_every steps, until the last epoch or an early end (--early_stop, a collapse);
    then the test with the best weights. Returns the exit code."""
    run.log.info(
        f"training: {len(run.train_lengths)} examples, {run.epochs} epochs x {run.steps_per_epoch} "
        f"steps, batch {run.batch_size} = {run.info.world_size} processes x {run.per_proc_batch}, precision "
        f"{run.config['precision_used']}"
    )
    run.model.train()
    stop.training = True
    snapshot = functools.partial(checkpoint_state, run, state)
    steps = StepLogger(run, state)
    best_weights = None
    try:
        while state.epoch < run.epochs and early_end(run, state) is None:
            plan = run.plan_epoch(state.epoch)
            while not validation_due(run, state):
                step_plan = plan[state.step_in_epoch]
                run.hooks.before_step(run, state, step_plan)
                started = time.time()
                figures = forward_backward_with_back_off(run, state, step_plan, stop)
                run.hooks.after_forward_backward(run, state, figures)
                log_now = steps.due()
                grad_norm = optimizer_step(run, state, figures["loss"], log_now)
                run.scheduler.step()
                count_step(state, figures, time.time() - started)
                steps.step_done(figures, grad_norm, log_now)
                run.hooks.after_step(run, state, figures)
                if figures["signal"] > 0:  # another rank may have got it: stop with the usual SIGTERM code
                    return stop_run(run, state, snapshot, stop.signum or signal.SIGTERM)
                run.checkpointer.step_done(state.global_step, validation_due(run, state), snapshot)
            best_weights = validate(run, state, snapshot, stop) or best_weights
    except utils.Interrupted as e:  # in validation: saved with its steps trained and not yet validated
        return stop_run(run, state, snapshot, e.signum)
    except Diverged:
        run.wandb.finish(exit_code=EXIT_DIVERGED)
        return EXIT_DIVERGED
    finally:
        steps.close()
    return test_and_write_results(run, state, snapshot, stop, best_weights)


class StepLogger:
    """The training log: a window of steps averaged into one train event (metrics.jsonl, W&B, the
    log) every --log_every steps and at each epoch end, and the progress bar on a terminal. The
    window lives in the TrainState, so a resumed run logs the same averages."""

    def __init__(self, run: Run, state: TrainState):
        self.run, self.state = run, state
        self.bar = _progress_bar(run.info, run.steps_per_epoch * run.epochs, state.global_step)

    def due(self) -> bool:
        """Whether the step about to be counted ends a window."""
        state = self.state
        return (state.global_step + 1) % self.run.log_every == 0 or state.step_in_epoch + 1 == self.run.steps_per_epoch

    def step_done(self, figures: dict, grad_norm: float, log_now: bool) -> None:
        run, state, window = self.run, self.state, self.state.log_window
        for key in ("samples", "tokens", "positions", "flops"):
            window[key] += figures[key]
        window["loss"] += figures["loss"] if math.isfinite(figures["loss"]) else 0.0
        window["steps"] += 1
        lr = run.scheduler.get_last_lr()[0]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=state.epoch, loss=f"{figures['loss']:.4f}", lr=f"{lr:.2e}")
        if log_now:
            seconds = time.time() - window["time"]
            record(
                run,
                {
                    "event": "train",
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "loss": window["loss"] / window["steps"],
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    **throughput(window, seconds, run.peak_flops, run.info.world_size),
                },
            )
            state.log_window = _new_window()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Diverged(Exception):
    """The loss was not finite and --on_nan stop: the run ends (its last good checkpoint kept)."""


def forward_backward_with_back_off(run: Run, state: TrainState, step: data.StepPlan, stop) -> dict:
    """forward_backward, redone from the same state while any rank ran out of device memory: the
    step's gradients dropped, the micro-batch halved on every rank (back_off; a fixed one stops the
    run), the rest of the epoch cut anew, dropout's generators rewound. The step's examples stay:
    only their cut changes, and with it the order of the gradient's sums."""
    rng = utils.torch_rng_state(run.info.device) if run.micro.auto else None
    while True:
        figures = forward_backward(run, step, state.epoch, stop)
        if not figures.pop("out_of_memory"):
            run.micro.steps_done = state.global_step + 1
            return figures
        run.optimizer.zero_grad(set_to_none=True)
        back_off(run, "train", "step", state.global_step + 1)
        following = step
        while following is not None:
            following.cut(run.micro.train)
            following = following.next_step
        utils.set_torch_rng_state(rng, run.info.device)


def forward_backward(run: Run, step: data.StepPlan, epoch: int, stop) -> dict:
    """Forward and backward over this rank's share of a global batch, in micro-batches
    (gradients synced across ranks on the last one only), and one small all-reduce of the
    step's figures: loss, real tokens, padded positions, useful FLOPs, any rank's signal, and the
    ranks that ran out of device memory (then the gradients are to be dropped). The next step's
    host batches are built before this step's one host sync, while the device still works on
    this one."""
    info = run.info
    batches = step.prepared or step_batches(run, step, epoch)
    step.prepared = None
    divisor = loss_divisor(run, step, batches)
    sums = utils.unless_out_of_memory(info.device, accumulate_gradients, run, step, batches, divisor)
    out_of_memory = sums is utils.OUT_OF_MEMORY
    if out_of_memory:
        sums = join_gradient_all_reduce(run, step, epoch)
    loss_sum, counts = sums
    # the step's one host sync: its figures and flags, summed over ranks (every rank then takes
    # the same decisions: back off, skip a non-finite step, stop on a signal)
    stats = torch.cat(
        [
            loss_sum.double().reshape(1),
            to_device(torch.tensor([*counts, stop.poll(), out_of_memory], dtype=torch.float64), info.device),
        ]
    )
    if info.is_distributed:
        torch.distributed.all_reduce(stats)
    if step.next_step is not None:
        step.next_step.prepared = step_batches(run, step.next_step, epoch)
    loss_total, tokens, positions, flops, signal_sum, out_of_memory_ranks = stats.tolist()
    return {
        "loss": loss_total / info.world_size,
        "samples": len(step.global_batch),
        "tokens": tokens,
        "positions": positions,
        "flops": flops,
        "signal": signal_sum,
        "out_of_memory": out_of_memory_ranks,
    }


def accumulate_gradients(run: Run, step: data.StepPlan, batches, divisor) -> tuple[torch.Tensor, np.ndarray]:
    """Forward and backward over this rank's micro-batches, DDP's gradient all-reduce in the last
    one's backward; the loss sum (on the device) and [real tokens, padded positions, useful FLOPs]."""
    info = run.info
    weight = 1.0 if step else 0.0  # a rank the short last batch left empty runs one example at weight 0
    loss_sum = torch.zeros((), device=info.device)
    counts = np.zeros(3)
    for k, (mb, (batch, target)) in enumerate(zip(step_micro_batches(step), batches, strict=True)):
        if step:
            n = run.train_lengths[mb]
            counts += [n.sum(), batch["input_ids"].numel(), run.flops(n)]
        batch = {key: to_device(v, info.device) for key, v in batch.items()}
        target = None if target is None else to_device(target, info.device)
        synced = info.is_distributed and k == len(batches) - 1
        with run.ddp_model.no_sync() if info.is_distributed and not synced else contextlib.nullcontext():
            with run.autocast:
                output = run.ddp_model(**batch)
            loss = run.task_rules.loss_sum(output, target) / divisor * weight
            backward(run, run.scaler.scale(loss), synced)
        loss_sum += loss.detach()
    return loss_sum, counts


def backward(run: Run, loss: torch.Tensor, synced: bool) -> None:
    """loss.backward(). Out of memory in a backward DDP syncs is past undoing: the gradient
    all-reduce is under way, and the other ranks wait in it for buckets this rank will never send;
    it stops the run (torchrun then stops the other ranks) with the size to rerun with."""
    try:
        loss.backward()
    except torch.OutOfMemoryError:
        if not synced:
            raise
    else:
        return
    size = run.micro.train
    raise RankOutOfMemory(
        f"rank {run.info.rank} ran out of device memory in the backward pass of its step's last "
        f"micro-batch ({size} examples), after DDP's gradient all-reduce had begun on the other ranks; "
        "that cannot be undone. "
        + (
            f"Rerun with --micro_batch {halved(size)}: it resumes from the last checkpoint"
            if size > 1
            else "Not even one example fits: lower --max_len, or use a device with more memory"
        )
    )


def join_gradient_all_reduce(run: Run, step: data.StepPlan, epoch: int) -> tuple[torch.Tensor, np.ndarray]:
    """After this rank ran out of memory before its step's synced backward (the step's tensors
    already freed), its part in DDP's gradient all-reduce, which the other ranks wait in: one
    example, its shortest, at weight 0. The step's figures then tell every rank to drop the step's
    gradients. Out of memory here too: the rank cannot take part, and stops the run."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.info.is_distributed:
        shortest = step.global_batch[np.argmin(run.train_lengths[step.global_batch])]
        batch, target = training_batch(run, np.array([shortest]), epoch)
        batch = {key: to_device(v, run.info.device) for key, v in batch.items()}
        target = None if target is None else to_device(target, run.info.device)
        try:
            with run.autocast:
                output = run.ddp_model(**batch)
            (run.task_rules.loss_sum(output, target) * 0.0).backward()
        except torch.OutOfMemoryError:
            raise RankOutOfMemory(
                f"rank {run.info.rank} ran out of device memory, and again with one example in the step's "
                "gradient all-reduce; lower --max_len, or use a device with more memory"
            ) from None
    return torch.zeros((), device=run.info.device), np.zeros(3)


def step_micro_batches(step: data.StepPlan) -> list[np.ndarray]:
    """The micro-batches this rank runs: its share of the global batch or, when a short last batch
    left it none, one example of that batch (at weight 0: every rank must take part in DDP's
    gradient all-reduce, and every parameter's gradient hook must fire)."""
    return list(step) or [step.global_batch[:1]]


def step_batches(run: Run, step: data.StepPlan, epoch: int) -> list[tuple[dict, torch.Tensor | None]]:
    """The host batches (training_batch) of the micro-batches this rank runs, pinned for an
    asynchronous copy to a GPU."""
    batches = []
    for mb in step_micro_batches(step):
        batch, target = training_batch(run, mb, epoch)
        batches.append(({k: pinned(v, run.info.device) for k, v in batch.items()}, pinned(target, run.info.device)))
    return batches


def pinned(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A host tensor in pinned memory when it is bound for a GPU (to_device then copies it as is)."""
    return tensor.pin_memory() if tensor is not None and device.type == "cuda" else tensor


def loss_divisor(run: Run, step: data.StepPlan, batches) -> float | torch.Tensor:
    """What each rank divides its loss sum by: the units (examples; masked tokens for mlm) of the
    GLOBAL step / world size, so DDP's gradient mean over ranks is the gradient of the mean over
    the whole global batch, however unevenly a short last batch is split. The plan gives the
    examples; the masked tokens of the ranks are summed on the device by a collective queued
    before the forward passes (no host sync)."""
    info = run.info
    if run.masker is None:
        return len(step.global_batch) / info.world_size
    # counted in numpy on the host batches (a torch op there would look like a device sync to the probe)
    masked = sum(np.count_nonzero(batch["masked_labels"].numpy() != mlm.IGNORE) for batch, _ in batches) if step else 0
    if not info.is_distributed:
        return max(masked, 1)
    total = to_device(torch.tensor(float(masked), dtype=torch.float64), info.device)
    torch.distributed.all_reduce(total)
    return (total.clamp(min=1) / info.world_size).float()


def training_batch(run: Run, indices: np.ndarray, epoch: int) -> tuple[dict, torch.Tensor | None]:
    """The model's inputs for training examples at `indices`, and the loss's targets: their
    labels, or None for mlm, whose inputs hold the labels (masked for `epoch`)."""
    if run.masker is not None:
        return masked_batch(run, run.masker, "train", indices, epoch), None
    return collate_split(run, "train", indices), torch.from_numpy(run.labels["train"][indices])


def masked_batch(run: Run, masker: mlm.Masker, split: str, indices, epoch: int) -> dict:
    return masker.batch([run.encoded[split].ids[i] for i in indices], indices, epoch, run.max_len, run.pad_to_max)


def collate_split(run: Run, split: str, indices) -> dict:
    """The batch of a split's examples at `indices`, with their segment ids where the model uses them."""
    encoded = run.encoded[split]
    types = None if encoded.token_types is None else [encoded.token_types[i] for i in indices]
    return run.collate([encoded.ids[i] for i in indices], token_types=types)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device; to a GPU through pinned memory, so the copy is truly
    asynchronous (non_blocking from pageable memory waits for the copy)."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def count_step(state: TrainState, step: dict, seconds: float) -> None:
    """Advance the position by one step; add its figures to the run's totals."""
    state.step_in_epoch += 1
    state.global_step += 1
    state.train_time += seconds
    state.train_loss_since_eval += step["loss"] if math.isfinite(step["loss"]) else 0.0
    for key in ("samples", "tokens", "positions", "flops"):
        setattr(state, f"train_{key}", getattr(state, f"train_{key}") + step[key])


def optimizer_step(run: Run, state: TrainState, loss: float, log_now: bool) -> float:
    """Unscale, clip, step; returns the gradient norm (nan when neither clipping nor logging
    needs the extra pass over all gradients). A non-finite loss (the same on every rank: it is
    all-reduced) skips the step with --on_nan skip, or raises Diverged."""
    if not math.isfinite(loss):
        if run.on_nan == "stop":
            run.log.error(
                f"error: loss is not finite at step {state.global_step + 1} (epoch {state.epoch}); "
                "stopped. The last good checkpoint is kept; lower --lr, try --clip 1.0 or "
                "--precision fp32, or --on_nan skip"
            )
            raise Diverged
        run.log.warning(f"warning: non-finite loss at step {state.global_step + 1}: step skipped")
        return skip_step(run)
    run.scaler.unscale_(run.optimizer)  # clip and report the norm of the true gradients
    grad_norm = math.nan
    if run.clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
    elif log_now:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def skip_step(run: Run) -> float:
    """Drop this step's gradients. The loss scale stays: a non-finite loss comes from the forward
    pass, not from the scale, and GradScaler.update() without an unscale_/step before it raises."""
    run.optimizer.zero_grad(set_to_none=True)
    return math.nan


def validation_due(run: Run, state: TrainState) -> bool:
    """Whether a validation comes before the next step: at an epoch's end, and every --eval_every
    steps unless this step's validation is done (a resume from its checkpoint does not repeat it)."""
    if state.step_in_epoch == run.steps_per_epoch:
        return True
    return bool(run.eval_every) and state.global_step % run.eval_every == 0 and state.last_eval_step < state.global_step


def validate(run: Run, state: TrainState, snapshot, stop) -> dict | None:
    """Validate, keep the best weights (returned when they improved), then checkpoint (at an
    epoch's end, having moved on to the next epoch): the history and the best weights are never
    ahead of the newest checkpoint, so a resume neither repeats nor skips a validation, and
    metrics.jsonl (truncated to the checkpoint's step) gets each once."""
    run.hooks.before_validation(run, state)
    outputs = predict(run, "val", stop)
    val = metrics.task_metrics(run.task, outputs, run.labels["val"])
    state.history.append({**val, **validation_context(run, state, outputs)})
    state.last_eval_step, state.train_loss_since_eval = state.global_step, 0.0
    best_weights = keep_if_best(run, state, val)
    place = {"step": state.global_step, "epoch": state.epoch}
    record(run, {"event": "eval", "split": "val", **place, **val, "best": best_weights is not None})
    if state.step_in_epoch < run.steps_per_epoch:
        run.checkpointer.validated(state.global_step, snapshot)
        return best_weights
    state.epoch += 1
    state.step_in_epoch = 0
    run.checkpointer.epoch_done(state.global_step, state.epoch - 1, snapshot)
    return best_weights


def validation_context(run: Run, state: TrainState, outputs: np.ndarray) -> dict:
    """A validation's entry in the history besides its metrics: its step and epoch, the mean
    training loss of the steps since the validation before it, and (classification) ranking_z."""
    steps_since = max(state.global_step - state.last_eval_step, 1)
    return {
        "step": state.global_step,
        "epoch": state.epoch,
        "train_loss": state.train_loss_since_eval / steps_since,
        "ranking_z": ranking_z(outputs, run.labels["val"]) if run.task == "classification" else math.nan,
    }


def ranking_z(probs: np.ndarray, labels: np.ndarray) -> float:
    """How far the scores separate the classes beyond chance, in standard errors: over the
    classes, the largest |AUC - 0.5| / SE, with AUC the one-vs-rest ranking of the class's
    probability (Mann-Whitney) and SE its spread when the scores carry no signal. A collapsed
    classifier (one output for every input) scores 0; a slow starter that still predicts one
    class for everything but already ranks the examples scores high."""
    z = 0.0
    for label in range(probs.shape[1]):
        positive = labels == label
        n1, n0 = int(positive.sum()), int((~positive).sum())
        if n1 and n0:
            ranks = metrics.average_ranks(probs[:, label])
            auc = (ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
            z = max(z, abs(float(auc) - 0.5) / math.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))
    return z  # a Python float: checkpoints load with weights_only, which refuses numpy scalars


def keep_if_best(run: Run, state: TrainState, val: dict) -> dict | None:
    """The model's weights when this validation improved on the best one (the file written for a
    resumed run), else None."""
    if not metrics.is_improvement(run.metric_for_best, val[run.metric_for_best], state.best_val_metric):
        return None
    state.best_val_metric, state.best_epoch, state.best_step = val[run.metric_for_best], state.epoch, state.global_step
    # every rank keeps a copy, so the test needs no shared file system across nodes;
    # the file (rank 0) serves a resumed run
    best_weights = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    state.best_file = run.checkpointer.new_best(state.global_step, best_weights)
    return best_weights


def early_end(run: Run, state: TrainState) -> tuple[str, str] | None:
    """Why training ends before its last epoch, read from the validations so far (so a resumed run
    stops where it stopped): ("collapsed", why) under --on_collapse stop (collapse_stop), or
    ("early_stop", why) after --early_stop validations in a row without improvement; else None,
    also once every epoch is trained (nothing was cut short)."""
    if state.epoch >= run.epochs:
        return None
    collapsed = collapse_stop(run, state)
    if collapsed:
        return "collapsed", collapsed
    since_best = sum(1 for entry in state.history if entry["step"] > state.best_step)
    if not run.early_stop or since_best < run.early_stop:
        return None
    best = f"best {state.best_val_metric:.4f} at step {state.best_step}" if state.best_step >= 0 else "none finite"
    return "early_stop", f"val {run.metric_for_best} did not improve in {since_best} validations ({best})"


def collapse_stop(run: Run, state: TrainState) -> str | None:
    """Why a classifier is stopped as collapsed (--on_collapse stop), or None. Its last validations,
    COLLAPSE_VALIDATIONS or more, each match metrics.is_collapsed (accuracy at the majority rate,
    loss near ln K or above) with scores that rank the classes no better than chance (ranking_z),
    and span at least one epoch of training, so every training example was seen while the model
    stayed at chance; and the training loss between them stayed at chance too (the same rule, with
    it in place of the validation loss). docs/design.md: why this rule."""
    if run.on_collapse != "stop" or run.task != "classification":
        return None
    majority, num_labels = majority_rate(run), len(run.label_names)
    streak = []
    for entry in reversed(state.history):
        if not (metrics.is_collapsed([entry], majority, num_labels) and entry["ranking_z"] <= COLLAPSE_RANKING_Z):
            break
        streak.insert(0, entry)
    if len(streak) < COLLAPSE_VALIDATIONS or streak[-1]["step"] - streak[0]["step"] < run.steps_per_epoch:
        return None
    if not metrics.is_collapsed([{**e, "loss": e["train_loss"]} for e in streak[1:]], majority, num_labels):
        return None
    first, last = streak[0]["step"], streak[-1]["step"]
    return (
        f"val accuracy at the majority rate {majority:.4f} and val and training loss near ln {num_labels} = "
        f"{math.log(num_labels):.4f} or above, and no ranking of the classes beyond chance, at {len(streak)} "
        f"validations in a row, steps {first} to {last} ({(last - first) / run.steps_per_epoch:.1f} epochs)"
    )


def majority_rate(run: Run) -> float:
    """The share of the validation split's most frequent class: a collapsed classifier's accuracy."""
    return metrics.majority_rate(run.labels["val"], len(run.label_names))


def test_and_write_results(run: Run, state: TrainState, snapshot, stop, best_weights) -> int:
    """Score the test split with the best validation's weights (without a best one, the last
    validation's, which the model holds); write results.json (last, only on success) and the
    predictions; finish W&B. The exit code: 0, or EXIT_COLLAPSED for a run stopped as collapsed."""
    ending = early_end(run, state)
    announce_early_end(run, state, ending)
    if best_weights is None and state.best_step >= 0:
        best_weights = run.checkpointer.load_best(state.global_step, run.model)
    if best_weights is not None:
        run.model.load_state_dict(best_weights)
    if run.task == "mlm":
        return write_pretraining_results(run, state, ending)
    eval_start = time.time()
    try:
        test_outputs = predict(run, "test", stop)
    except utils.Interrupted as e:  # training is checkpointed: a rerun only redoes the evaluation
        return stop_run(run, state, snapshot, e.signum)
    eval_samples_per_s = len(test_outputs) / max(time.time() - eval_start, 1e-9)
    test = metrics.task_metrics(run.task, test_outputs, run.labels["test"])
    classification = run.task == "classification"
    results = {
        **tested_val_metrics(state),
        **{f"test_{k}": v for k, v in test.items()},
        "task": run.task,
        "metric_for_best": run.metric_for_best,
        "test_split": run.config["test_split"],
        **collapse_flags(run, state, ending),
        "eval_samples_per_s": eval_samples_per_s,
        **run_figures(run, state, ending),
    }
    tested_epoch = tested_validation(state)["epoch"]
    record(run, {"event": "eval", "split": "test", "step": state.global_step, "epoch": tested_epoch, **test})
    if classification:
        run.wandb.final_plots(test_outputs, run.labels["test"], run.test_texts, run.label_names)

    def save_predictions():
        output = "probs" if classification else "predictions"  # what report.py reads
        np.savez_compressed(
            os.path.join(run.run_dir, "test_predictions.npz"),
            **{output: test_outputs.astype(np.float32)},
            labels=run.labels["test"],
            n_tokens=run.encoded["test"].n_tokens,
        )

    shown = ["val_acc", "test_acc", "test_loss"] if classification else ["val_pearson", "test_pearson", "test_mse"]
    if f"val_{run.metric_for_best}" not in shown:
        shown.insert(1, f"val_{run.metric_for_best}")
    write_results(run, results, shown, save_predictions)
    return EXIT_COLLAPSED if ending is not None and ending[0] == "collapsed" else 0


def write_results(run: Run, results: dict, shown: list[str], save_outputs: Callable[[], object], note="") -> int:
    """The end of every run: its outputs (the test predictions, or the model folder), then
    results.json (last: it marks the run finished), W&B's summary, one log line with `shown`."""
    if run.info.is_main:
        save_outputs()
        utils.write_json(os.path.join(run.run_dir, "results.json"), results)
    run.wandb.summary(results)
    run.wandb.finish()
    figures = "  ".join(f"{k} {results[k]:.4f}" for k in shown)
    run.log.info(f"results: {figures}  ({run.run_dir}/results.json){note}")
    return 0


def tested_validation(state: TrainState) -> dict:
    """The validation whose weights the run ends with: the best one, or the last when none improved."""
    return next((entry for entry in state.history if entry["step"] == state.best_step), state.history[-1])


def tested_val_metrics(state: TrainState) -> dict:
    """results.json's val_* figures: the tested validation's metrics."""
    return {f"val_{k}": v for k, v in tested_validation(state).items() if k not in HISTORY_EXTRAS}


def announce_early_end(run: Run, state: TrainState, ending: tuple[str, str] | None) -> None:
    """Where training ended before its last epoch and why, in the log (run_grid.sh reads this line)."""
    if ending is None:
        return
    kind, why = ending
    where = f"at step {state.global_step} of {run.steps_per_epoch * run.epochs}"
    if kind == "early_stop":
        run.log.info(f"early-stopped {where}: {why}; testing the best weights")
        return
    run.log.warning(
        f"stopped as collapsed {where}: {why}; testing the best weights "
        "(--on_collapse continue --fresh trains it to the end)"
    )
    utils.write_torchrun_error_file(f"stopped as collapsed {where} (results.json written)")


def early_end_figures(run: Run, state: TrainState, ending: tuple[str, str] | None) -> dict:
    """results.json's `stopped_early` ("early_stop", "collapsed", or None when every epoch was
    trained), with where (the step and epoch of the last validation) and why."""
    if ending is None:
        return {"stopped_early": None}
    return {
        "stopped_early": ending[0],
        "stop_reason": ending[1],
        "stopped_at_step": state.global_step,
        "stopped_at_epoch": state.history[-1]["epoch"],
        "total_steps": run.steps_per_epoch * run.epochs,
    }


def collapse_flags(run: Run, state: TrainState, ending: tuple[str, str] | None) -> dict:
    """results.json's `collapsed` (with `collapsed_reason`) where the run is not a result, said
    in a warning: no validation could be selected (the validation metric was NaN at every one),
    or a classifier stayed at the label prior: at every validation, or long enough to be stopped
    (collapse_stop). Other regression and mlm runs get neither field."""
    if state.best_step < 0:
        reason = f"val {run.metric_for_best} was NaN at every validation: {no_best_epoch_cause(run)}"
        run.log.warning(
            f"WARNING: NO BEST EPOCH — {reason}; tested the last validation's weights. This is not a result."
        )
        return {"collapsed": True, "collapsed_reason": reason}
    if run.task != "classification":
        return {}
    num_labels = len(run.label_names)
    majority = majority_rate(run)
    if ending is not None and ending[0] == "collapsed":
        reason = ending[1]
    elif metrics.is_collapsed(state.history, majority, num_labels):
        reason = (
            f"val accuracy stayed at the majority rate {majority:.4f} and loss near ln {num_labels} = "
            f"{math.log(num_labels):.4f}"
        )
    else:
        return {"collapsed": False}
    run.log.warning(
        f"WARNING: COLLAPSED RUN — {reason}; this is not a result. Lower --lr or change batch size / clipping."
    )
    return {"collapsed": True, "collapsed_reason": reason}


def no_best_epoch_cause(run: Run) -> str:
    """Why the validation metric was NaN: the targets, or the model's outputs."""
    if run.task == "regression" and np.ptp(run.labels["val"]) == 0:
        return (
            "the validation targets are all equal, so it is undefined; give varied validation targets "
            "or --metric_for_best loss"
        )
    if run.metric_for_best in ("pearson", "spearman"):
        return "the model's validation predictions were constant (a collapsed model: lower --lr)"
    return "the model's outputs were not finite (it diverged: lower --lr or try --clip 1.0)"


def run_figures(run: Run, state: TrainState, ending: tuple[str, str] | None) -> dict:
    """What results.json holds for every task: the best validation's epoch and step (None: none
    improved), steps, where training ended early (if it did), throughput, memory, time."""
    return {
        "best_epoch": state.best_epoch if state.best_step >= 0 else None,
        "best_step": state.best_step if state.best_step >= 0 else None,
        "epochs": run.epochs,
        "global_step": state.global_step,
        **early_end_figures(run, state, ending),
        "micro_batch": run.micro.train,
        "eval_batch": run.micro.eval,
        "back_offs": run.micro.back_offs,
        **{
            f"train_{k}": v
            for k, v in throughput(
                asdict(state), state.train_time, run.peak_flops, run.info.world_size, prefix="train_"
            ).items()
        },
        **utils.peak_memory(run.info.device),
        **(models.compile_report() if run.report_compile else {}),
        "wall_s": time.time() - run.started,
        "run_name": os.path.basename(run.run_dir),
    }


def write_pretraining_results(run: Run, state: TrainState, ending: tuple[str, str] | None) -> int:
    """An mlm run's end, with the best validation's weights loaded: the model folder for
    fine-tuning (RUN_DIR/model, the MLM head left out), then results.json."""
    results = {
        **tested_val_metrics(state),
        "task": run.task,
        "metric_for_best": run.metric_for_best,
        **collapse_flags(run, state, ending),
        **run_figures(run, state, ending),
    }
    folder = os.path.join(run.run_dir, "model")
    return write_results(
        run,
        results,
        ["val_loss", "val_acc", "val_perplexity"],
        lambda: mlm.save_for_fine_tuning(run.model, run.tokenizer, folder, run.config["model_default_lr"]),
        note=f"; fine-tune it with --model {folder}",
    )


def checkpoint_state(run: Run, state: TrainState) -> dict:
    """What a checkpoint holds. On every rank: it gathers the ranks' RNG states."""
    rng = utils.all_gather_objects(utils.get_rng_state(), run.info)
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": dict(asdict(state), log_window=dict(state.log_window, time=time.time() - state.log_window["time"])),
        "rng": rng,
        "micro_batches": run.micro.saved(),
        "fingerprint": run.fingerprint,
    }


def stop_run(run: Run, state: TrainState, snapshot, signum: int) -> int:
    """Checkpoint (unless nothing changed since the last one), say how to resume, record the stop
    for the launcher, exit 128+N."""
    path = run.checkpointer.stop(state.global_step, snapshot)
    run.log.info(
        f"checkpointed at step {state.global_step} — {run.rerun_hint} to resume" + (f" ({path})" if path else "")
    )
    if run.info.is_main:
        write_outcome(run.run_dir, outcome="stopped", step=state.global_step, checkpoint=path, signal=signum)
    run.wandb.finish(exit_code=EXIT_SIGNAL + signum)
    return EXIT_SIGNAL + signum


def write_outcome(run_dir: str, **outcome) -> None:
    """outcome.json in the run folder: how this start ended, for the grid runner (grid.outcome reads
    it with the exit code; under torchrun the exit code alone does not say). Its sentences in the
    log are for people and may change."""
    utils.write_json(os.path.join(run_dir, "outcome.json"), outcome)


def resolve_precision(name: str, device: torch.device, warn) -> str:
    if device.type == "cuda":
        # including_emulation=False: V100 / T4 "support" bf16 only through slow emulation
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if name == "auto":
            return "bf16" if native_bf16 else "fp16"
        if name == "bf16" and not native_bf16:
            warn(
                "warning: this GPU has no bf16 tensor cores (needs compute capability 8.0 or newer): "
                "bf16 is emulated and slow; --precision fp16 uses its tensor cores with loss scaling"
            )
        return name
    native_bf16 = utils.cpu_has_native_bf16()
    if name == "auto":
        return "bf16" if native_bf16 else "fp32"
    if name == "bf16" and not native_bf16:
        warn(
            "warning: this CPU has no fast bf16 kernels (needs AVX512 or newer): bf16 matrix "
            "products take a fallback path many times slower than --precision fp32"
        )
    return name


def make_optimizer(model, args):
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)  # biases and norm weights
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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


def predict(run: Run, split: str, stop=None) -> np.ndarray:
    """Class probabilities (regression: predicted values) for every example of a split, in split
    order, exact across ranks: each rank scores its own shard and the shards are gathered. For
    mlm: the split's [loss sum, correct, masked tokens] (masked_lm_sums). Raises utils.Interrupted
    on every rank when any rank got a stop signal."""
    if run.masker is not None:
        return masked_lm_sums(run, split, stop)
    outputs = []
    shard = evaluate(run, split, lambda logits: outputs.append(run.task_rules.per_example(logits).cpu().numpy()), stop)
    width = run.task_rules.outputs(len(run.label_names))
    local = (
        np.concatenate(outputs) if outputs else np.zeros((0, width) if run.task == "classification" else 0, np.float32)
    )
    gathered = utils.all_gather_objects((shard, local, stop.signum if stop else 0), run.info)
    if any(g[2] for g in gathered):
        raise utils.Interrupted(stop.signum or signal.SIGTERM)
    index = np.concatenate([g[0] for g in gathered])
    out = np.concatenate([g[1] for g in gathered])
    if len(index) != len(run.encoded[split].ids) or len(np.unique(index)) != len(index):
        raise RuntimeError("distributed evaluation did not score every example exactly once")
    return out[np.argsort(index)]


def masked_lm_sums(run: Run, split: str, stop=None) -> np.ndarray:
    """[loss sum, correct predictions, masked tokens] over a split, with the validation's fixed
    masks: each rank sums its shard, then one all-reduce (which also carries any rank's stop
    signal). Raises utils.Interrupted on every rank when any rank got a stop signal."""
    sums = torch.zeros(3, dtype=torch.float64, device=run.info.device)
    evaluate(run, split, lambda output: sums.add_(run.task_rules.per_example(output)), stop)
    signum = torch.full((1,), float(stop.signum if stop else 0), dtype=torch.float64, device=run.info.device)
    figures = torch.cat([sums, signum])
    if run.info.is_distributed:
        torch.distributed.all_reduce(figures)
    *totals, signal_sum = figures.tolist()  # the evaluation's one host sync
    if signal_sum > 0:
        raise utils.Interrupted(stop.signum or signal.SIGTERM)
    return np.array(totals)


@torch.inference_mode()
def evaluate(run: Run, split: str, keep: Callable, stop=None) -> np.ndarray:
    """The evaluation loop both tasks share: this rank's shard of a split (returned: its example
    indices) in batches of micro.eval (eval_batch), keep(output) for each batch; stops after the
    batch in which a stop signal came. A batch the device has no memory for is scored again at half
    the size (back_off; each rank for itself: no collective runs inside the loop, and an example's
    output does not depend on its batch)."""
    lengths = np.array([len(x) for x in run.encoded[split].ids])
    shard = data.eval_shard(lengths, run.info.rank, run.info.world_size)
    was_training = run.model.training
    run.model.eval()
    start = 0
    while start < len(shard):
        indices = shard[start : start + run.micro.eval]
        scored = utils.unless_out_of_memory(run.info.device, score, run, eval_batch(run, split, indices), keep)
        if scored is utils.OUT_OF_MEMORY:
            back_off(run, "eval", split, run.micro.steps_done)
            continue
        start += len(indices)
        run.hooks.after_eval_batch(run, split)
        if stop is not None and stop.poll():
            break
    run.model.train(was_training)
    return shard


def score(run: Run, batch: dict, keep: Callable) -> None:
    keep(eval_forward(run, batch))


def eval_forward(run: Run, batch: dict):
    with run.autocast:
        return run.model(**{k: to_device(v, run.info.device) for k, v in batch.items()})


def eval_batch(run: Run, split: str, indices) -> dict:
    """The model's inputs for a split's examples at `indices`: for mlm with the validation's fixed masks."""
    if run.val_masker is not None:
        return masked_batch(run, run.val_masker, split, indices, 0)
    return collate_split(run, split, indices)


# ----------------------------------------------------------------------------- micro-batches


class RankOutOfMemory(UserError):
    """The device ran out of memory where the run cannot back off; said by the rank it happened on."""


def halved(size: int) -> int:
    return (size + 1) // 2


def back_off(run: Run, batch: str, where: str, step: int) -> None:
    """Halve micro.train or micro.eval (`batch`) after the device ran out of memory in `where` (the
    probe, a step, an evaluated split), as an event in metrics.jsonl, W&B, the log and results.json;
    stop the run with one line where the size is fixed by hand or already 1."""
    size = getattr(run.micro, batch)
    if not run.micro.auto or size == 1:  # a step's back-off is every rank's; the others, this rank's
        raise (UserError if where == "step" else RankOutOfMemory)(out_of_memory_problem(batch, size))
    setattr(run.micro, batch, halved(size))
    change = {"step": step, "where": where, "batch": batch, "from": size, "to": halved(size)}
    run.micro.back_offs.append(change)
    record(run, {"event": "back_off", **change})


def out_of_memory_problem(batch: str, size: int) -> str:
    what = "training micro-batch" if batch == "train" else "evaluation batch"
    if size == 1:
        return (
            f"the device ran out of memory with a {what} of one example; lower --max_len, or use a device "
            "with more memory"
        )
    flag = "--micro_batch" if batch == "train" else "--eval_batch_size"
    return (
        f"the device ran out of memory with a {what} of {size} examples ({flag} {size}); rerun with "
        f"--micro_batch auto, or {flag} {halved(size)} (a rerun resumes from the last checkpoint)"
    )


def choose_micro_batches(run: Run, state: TrainState) -> None:
    """Before the first step of this process: with --micro_batch auto, probe the sizes (agreed by
    every rank: the smallest any rank found); then say them in the log."""
    micro = run.micro
    micro.steps_done = state.global_step
    if micro.auto:
        probe_micro_batches(run, state.global_step + 1)
        if run.info.device.type == "cuda":  # results.json's peak memory is the training's, not the probe's
            torch.cuda.reset_peak_memory_stats(run.info.device)
        if run.info.is_distributed:
            sizes = torch.tensor([micro.train, micro.eval], device=run.info.device)
            torch.distributed.all_reduce(sizes, op=torch.distributed.ReduceOp.MIN)
            micro.train, micro.eval = sizes.tolist()
    run.log.info(
        f"micro-batches: training {micro.train} of each process's {run.per_proc_batch} per step, evaluation "
        f"{micro.eval}" + (" (--micro_batch auto: probed, halved on out-of-memory)" if micro.auto else "")
    )


def probe_micro_batches(run: Run, step: int) -> None:
    """The largest micro.train and micro.eval (halving from where they are) at which the longest
    batches the run will meet fit, at the run's precision: training with the gradients and the
    optimizer's state allocated; evaluation of each split with the optimizer's state. Dropout's
    generators are rewound after, so a probe changes no number."""
    rng = utils.torch_rng_state(run.info.device)
    was_training = run.model.training
    held = optimizer_state_stand_ins(run.optimizer)
    try:
        for param in run.model.parameters():
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        run.model.train()
        while utils.unless_out_of_memory(run.info.device, probe_training, run) is utils.OUT_OF_MEMORY:
            back_off(run, "train", "probe", step)
        run.optimizer.zero_grad(set_to_none=True)
        run.model.eval()
        for split in [s for s in ("val", "test") if s in run.encoded]:
            while utils.unless_out_of_memory(run.info.device, probe_eval, run, split) is utils.OUT_OF_MEMORY:
                back_off(run, "eval", "probe", step)
    finally:
        run.optimizer.zero_grad(set_to_none=True)
        held.clear()
        run.model.train(was_training)
        utils.set_torch_rng_state(rng, run.info.device)


def optimizer_state_stand_ins(optimizer: torch.optim.Optimizer) -> list:
    """What Adam's state (two moments per parameter) will hold, allocated while a fresh run
    probes (a resumed one has it loaded)."""
    if optimizer.state:
        return []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return [torch.empty_like(p) for p in params for _ in range(2)]


def longest(lengths: np.ndarray, count: int) -> np.ndarray:
    return np.argsort(-lengths, kind="stable")[:count]


def probe_training(run: Run) -> None:
    """Forward and backward of the micro.train longest training examples (the widest micro-batch
    the plan can cut), outside DDP: no collective, and its gradient buckets are already allocated."""
    batch, target = training_batch(run, longest(run.train_lengths, run.micro.train), 0)
    with run.autocast:
        output = run.model(**{k: to_device(v, run.info.device) for k, v in batch.items()})
    target = None if target is None else to_device(target, run.info.device)
    run.task_rules.loss_sum(output, target).backward()


@torch.inference_mode()
def probe_eval(run: Run, split: str) -> None:
    lengths = np.array([len(x) for x in run.encoded[split].ids])
    run.task_rules.per_example(eval_forward(run, eval_batch(run, split, longest(lengths, run.micro.eval))))


def record(run: Run, event: dict) -> None:
    """An event to metrics.jsonl, W&B and the log (rank 0)."""
    if not run.info.is_main:
        return
    utils.append_jsonl(os.path.join(run.run_dir, "metrics.jsonl"), event)
    run.wandb.log(event)
    shown = " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in event.items()
        if k != "event" and v is not None
    )
    run.log.info(f"{event['event']}: {shown}")


def _new_window() -> dict:
    return {"loss": 0.0, "steps": 0, "samples": 0, "tokens": 0, "positions": 0, "flops": 0, "time": time.time()}


def throughput(counts: dict, seconds: float, peak_flops: float | None, world_size: int, prefix: str = "") -> dict:
    """samples/s, real tokens/s, the share of padding in the batches, useful (real-token)
    TFLOP/s and, where the device's peak at the run's precision is known, model FLOPs utilisation."""
    seconds = max(seconds, 1e-9)
    flops_per_s = counts[f"{prefix}flops"] / seconds
    return {
        "samples_per_s": counts[f"{prefix}samples"] / seconds,
        "tokens_per_s": counts[f"{prefix}tokens"] / seconds,
        "padding_share": 1 - counts[f"{prefix}tokens"] / max(counts[f"{prefix}positions"], 1),
        "tflops_per_s": flops_per_s / 1e12,
        **({"mfu": flops_per_s / (peak_flops * world_size)} if peak_flops else {}),
    }


def _progress_bar(info, total: int, done: int):
    if not info.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)


if __name__ == "__main__":
    sys.exit(main())
