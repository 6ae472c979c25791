"""The run's settings, in one place: every train.py flag with its default, help and range check,
the run name and the settings fingerprint derived from them. Importing this module loads no torch,
so grid.py, report.py and `tmux_launch.sh --status` stay fast.

Each flag says where it is declared whether it is part of the run name (`name=` its short label;
the run name lists the named settings that differ from the defaults, in declaration order) and
whether it is operational (`operational=True`: it does not change what a run computes, so it is
left out of the name and of the fingerprint that guards resume). Adding a flag is one edit here.
"""

import argparse
import functools
import glob
import hashlib
import json
import math
import os
import subprocess

import glue
import metrics

ROOT = os.path.dirname(os.path.abspath(__file__))
NAME_LABELS: dict[str, str] = {}  # setting -> short label in the run name, in declaration order
OPERATIONAL: set[str] = set()  # settings left out of the fingerprint
POOLS = ("cls", "mean")  # --pool: how model.Classifier pools the encoder's tokens
MASKING_MODES = ("dynamic", "static")  # --masking; mlm.py holds the same (it imports torch)
RUN_MODEL = "run:"  # --model run:NAME: the model folder of the --task mlm run NAME in --out_dir
MLM_SETTINGS = ("mlm_prob", "masking", "whole_word_mask", "pack", "init", "unlabeled_split")


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, wrong column): one line, no traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags end in one line, not the whole usage text; or raise `raise_as` (grid checks)."""

    raise_as = None

    def error(self, message):
        if self.raise_as is not None:
            raise self.raise_as(message)
        self.exit(2, f"error: {message} (see --help)\n")


def micro_batch_value(text: str) -> str | int:
    """--micro_batch: auto, or a whole number of examples >= 1."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be auto or a whole number of examples >= 1 (got {text!r})")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )  # a prefix like --drop would silently mean --dropout

    def a(*flags, name=None, operational=False, **kwargs):
        """name: the setting's label in run names when it differs from its default ("" = the value
        alone, e.g. `mrpc`; None = not listed: model, pool and seed have places of their own, and
        the rest change no number). operational: how the run is run, not what it computes."""
        dest = p.add_argument(*flags, **kwargs).dest
        if name is not None:
            NAME_LABELS[dest] = name
        if operational:
            OPERATIONAL.add(dest)

    d = " (default: %(default)s)"
    add_model_data_and_optimizer_flags(a, d)
    add_masked_lm_flags(a, d)
    add_batching_and_operational_flags(a, d)
    return p


def add_model_data_and_optimizer_flags(a, d: str) -> None:
    """What a run computes: model, pooling, data, task and the optimizer's settings."""
    a(
        "--model",
        default="bert",
        help="bert | modernbert | tiny-bert | tiny-modernbert, any hub id or "
        "name, a local model folder, or run:NAME = the model a finished --task mlm run NAME in --out_dir "
        "wrote (a grid's pretraining stage)" + d,
    )
    a("--pool", default="cls", choices=POOLS, help="cls = first token; mean = average of non-padding tokens" + d)
    # named settings, in the order the run name lists them
    a(
        "--max_len",
        "--max_seq_length",
        name="L",
        type=int,
        default=128,
        help="tokens per example incl. special tokens" + d,
    )
    a(
        "--batch_size",
        name="bs",
        type=int,
        default=16,
        help="GLOBAL examples per optimizer step; per-process batch = batch_size / world size" + d,
    )
    # how the per-process batch is cut for the device: the gradient is the same (the loss divides by
    # the global batch), so both are operational and a run may resume with another cut
    a(
        "--micro_batch",
        operational=True,
        type=micro_batch_value,
        default=None,
        help="examples per forward/backward pass: N (must divide the per-process batch; the step "
        "accumulates the gradients), or auto = the largest that fits, probed before the first step and "
        "halved whenever the device runs out of memory (same global batch, same examples per step) "
        "(default: auto on a GPU, else the whole per-process batch)",
    )
    a(
        "--grad_accum",
        operational=True,
        type=int,
        default=None,
        help="micro-batches per optimizer step: --micro_batch = per-process batch / N (default: 1)",
    )
    a(
        "--lr",
        "--learning_rate",
        name="lr",
        type=float,
        default=None,
        help="peak learning rate (default: 5e-5; 1e-3 for tiny-* models)",
    )
    a(
        "--optimizer",
        name="",
        default="adam",
        choices=["adam", "adamw"],
        help="adam: L2 weight decay added to the gradient; adamw: decoupled weight decay" + d,
    )
    a(
        "--scheduler",
        name="",
        default="constant",
        choices=["constant", "linear", "cosine"],
        help="learning-rate schedule after warmup" + d,
    )
    a("--warmup_ratio", name="wu", type=float, default=0.0, help="share of steps with linear warmup" + d)
    a("--dropout", name="d", type=float, default=0.1, help="dropout before the classification head" + d)
    a(
        "--encoder_dropout",
        name="ed",
        type=float,
        default=None,
        help="the encoder's internal dropouts, "
        "mapped to each family's config names (default: the checkpoint's own values)",
    )
    a("--weight_decay", name="wd", type=float, default=0.0, help="weight decay, not applied to biases and norms" + d)
    a("--clip", name="clip", type=float, default=0.0, help="max gradient norm; 0 = no clipping" + d)
    a("--epochs", "--num_train_epochs", name="ep", type=int, default=3, help="passes over the training set" + d)
    a(
        "--truncation",
        name="",
        default="head",
        choices=["head", "tail", "head_tail"],
        help="which tokens a long text keeps: first, last, or first 128 + the rest from the end" + d,
    )
    a(
        "--precision",
        name="",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="autocast "
        "dtype; auto = bf16 on GPUs that support it, else fp16 with loss scaling; on CPU bf16 where "
        "oneDNN has fast bf16 kernels (AVX512 and newer), else fp32" + d,
    )
    a(
        "--val_ratio",
        name="val",
        type=float,
        default=0.1,
        help="share of train carved out (stratified, "
        "fixed seed) as validation when the data has no validation split" + d,
    )
    a("--max_train_samples", name="ntr", type=int, default=None, help="balanced seeded subset of train (default: all)")
    a(
        "--max_eval_samples",
        name="nev",
        type=int,
        default=None,
        help="balanced seeded subset of val and test (default: all)",
    )
    a(
        "--data",
        name="",
        default="imdb",
        help="hub dataset name (imdb = stanfordnlp/imdb), a local "
        "folder with train/test(/validation) .parquet/.csv/.jsonl, one such file, or 'synthetic' "
        "(a generated task, no network)" + d,
    )
    a(
        "--text_col",
        name="",
        nargs="+",
        default=["text"],
        help="text column(s). Two or more are encoded "
        "as a sentence pair with the tokenizer's pair template (BERT: [CLS] A [SEP] B [SEP], segment ids "
        "0/1), as HF's run_glue does: the first column is segment A, the others joined with a space are "
        "segment B; see --no-text_pairs (default: text)",
    )
    a(
        "--label_col",
        name="",
        default="label",
        help="label column: integers or strings; numbers with --task regression" + d,
    )
    a(
        "--task",
        name="",
        default="classification",
        choices=list(metrics.TASK_METRICS),
        help="classification: "
        "one output per class, cross-entropy; regression: one output, MSE against float labels (not "
        "rescaled); mlm: masked-LM (continued) pretraining on the training texts (labels not needed), "
        "writing RUN_DIR/model for fine-tuning with --model RUN_DIR/model" + d,
    )
    a(
        "--text_pairs",
        name="pair",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with two or "
        "more --text_col, encode them as a pair; --no-text_pairs joins them with a space into one text "
        "(the toolkit's encoding before pairs, for comparison)" + d,
    )
    a(
        "--metric_for_best",
        name="best",
        default=None,
        help="validation metric that picks the best validation (epoch end, or --eval_every), "
        "whose weights score the test split. classification: acc (or accuracy), f1 (macro), f1_positive "
        "(F1 of label id 1; two classes), mcc (or matthews_correlation), loss; regression: pearson, "
        "spearman (or spearmanr), mse, loss. loss and mse: lower is better (default: acc; pearson with "
        "--task regression)",
    )
    # when validation happens, and when training ends before its last epoch
    a(
        "--eval_every",
        name="eval",
        type=int,
        default=0,
        metavar="N",
        help="also validate every N optimizer steps (counted over the whole run); the epoch end still "
        "validates, and the best weights are picked among all validations; 0 = at epoch ends only" + d,
    )
    a(
        "--early_stop",
        name="patience",
        type=int,
        default=0,
        metavar="PATIENCE",
        help="stop training after PATIENCE validations in a row without improvement of "
        "--metric_for_best, then test the best weights; 0 = train every epoch" + d,
    )
    a(
        "--on_collapse",
        operational=True,
        default="stop",
        choices=["stop", "continue"],
        help="classification: stop a run whose validations stay at chance (accuracy at the majority "
        "rate, loss near ln K, scores that do not rank the classes) over at least one epoch, testing its "
        "best weights and exiting with code 4; continue trains it to the end (results.json marks it "
        "collapsed either way)" + d,
    )


def add_masked_lm_flags(a, d: str) -> None:
    """--task mlm only: masking, packing, initialization, extra text."""
    # masked-LM settings (--task mlm); left out of names and fingerprints for the other tasks
    a(
        "--mlm_prob",
        name="mp",
        type=float,
        default=0.15,
        help="--task mlm: share of tokens predicted, "
        "in (0, 1); of those 80%% become [MASK], 10%% a random token, 10%% stay" + d,
    )
    a(
        "--masking",
        name="mask",
        default="dynamic",
        choices=list(MASKING_MODES),
        help="--task mlm: dynamic = new masks every epoch; static = the same masks every epoch (original BERT)" + d,
    )
    a(
        "--whole_word_mask",
        name="wwm",
        action="store_true",
        help="--task mlm: mask whole words (WordPiece tokenizers only)",
    )
    a(
        "--pack",
        name="pack",
        action="store_true",
        help="--task mlm: concatenate the texts into full "
        "--max_len blocks (HF run_mlm's group_texts) instead of one truncated example per text",
    )
    a(
        "--init",
        name="init",
        default="pretrained",
        choices=["pretrained", "random"],
        help="--task mlm: "
        "start from the checkpoint's weights (continued pretraining) or from its config with random "
        "weights (from scratch)" + d,
    )
    a(
        "--unlabeled_split",
        name="unl",
        default=None,
        help="--task mlm: an extra split file of the --data "
        "folder (e.g. unsupervised for IMDb's unsupervised.parquet) whose texts are added to the training "
        "texts; never test (default: none)",
    )


def add_batching_and_operational_flags(a, d: str) -> None:
    """How batches are formed and compiled, the seed; then how the run is run (operational)."""
    a(
        "--group_by_length",
        name="group",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch examples of similar length together (shuffled within groups of 50 batches, "
        "batches in random order) so little compute goes to padding" + d,
    )
    # dropout masks are drawn over the padded width, and compiled dropout draws them differently:
    # both change the numbers, so both are named settings
    a(
        "--padding",
        name="pad",
        default="longest",
        choices=["longest", "max_len"],
        help="pad each batch to its longest example (rounded up to a multiple of 8), or always to --max_len" + d,
    )
    a(
        "--compile",
        name="compile",
        action="store_true",
        help="torch.compile the model for training; falls back to eager with a message where it cannot compile",
    )
    a("--seed", type=int, default=42, help="seed for init, data order and dropout" + d)
    a(
        "--smoke",
        action="store_true",
        help="check the whole path in seconds: 64 train / 64 val / "
        "64 test examples, 1 epoch, run name suffixed -smoke, no W&B",
    )
    # operational settings
    a("--eval_batch_size", operational=True, type=int, default=64, help="per-process batch for evaluation" + d)
    a("--out_dir", "--output_dir", operational=True, default="runs", help="runs are written to OUT_DIR/RUN_NAME" + d)
    a(
        "--run_name",
        operational=True,
        default=None,
        help="default: model, pooling, the settings that differ from the defaults, and the seed",
    )
    a(
        "--cache_dir",
        operational=True,
        default=os.environ.get("FTKIT_CACHE", os.path.expanduser("~/.cache/ftkit")),
        help="tokenized data and locally trained tokenizers (default: $FTKIT_CACHE or %(default)s)",
    )
    a(
        "--wandb",
        operational=True,
        default="auto",
        choices=["auto", "online", "offline", "disabled"],
        help="W&B logging; auto = $WANDB_MODE if set, else online when logged in (W&B cloud or the "
        "server in $WANDB_BASE_URL), else offline" + d,
    )
    a(
        "--wandb_project",
        operational=True,
        default=os.environ.get("WANDB_PROJECT", "encoder-finetune"),
        help="W&B project (default: $WANDB_PROJECT or %(default)s)",
    )
    a("--wandb_group", operational=True, default=None, help="W&B group, e.g. the grid name (default: none)")
    a("--log_every", operational=True, type=int, default=50, help="optimizer steps between train log lines" + d)
    a(
        "--save_every",
        operational=True,
        type=int,
        default=500,
        help="optimizer steps between checkpoints; one is also written at each epoch end" + d,
    )
    a("--keep_checkpoints", operational=True, type=int, default=2, help="newest checkpoints kept" + d)
    a(
        "--resume",
        operational=True,
        default="auto",
        choices=["auto", "never"],
        help="auto: continue from the newest valid checkpoint in the run folder" + d,
    )
    a("--fresh", operational=True, action="store_true", help="delete this run's old checkpoints and results first")
    a(
        "--dist_timeout",
        operational=True,
        type=float,
        default=60,
        help="minutes a collective waits "
        "for the other ranks (e.g. while rank 0 alone downloads, tokenizes or writes a checkpoint) before "
        "the run fails; NCCL's own default is 10" + d,
    )
    a(
        "--on_nan",
        operational=True,
        default="stop",
        choices=["stop", "skip"],
        help="on a non-finite loss: stop (keeping the last good checkpoint) or skip that step" + d,
    )


DEFAULTS = vars(build_parser().parse_args([]))


def parse_args(argv=None, on_error=None, description=None) -> argparse.Namespace:
    """Parse, apply --smoke, check ranges, derive the run name. `--lr` stays None when not given:
    the model's default is filled in by train.py, which knows the model registry."""
    parser = build_parser(description)
    parser.raise_as = on_error
    args = parser.parse_args(argv)
    if args.smoke:  # keeps a user's smaller (or invalid) subset, so the smoke run fails like the real one
        args.max_train_samples = 64 if args.max_train_samples is None else min(args.max_train_samples, 64)
        args.max_eval_samples = 64 if args.max_eval_samples is None else min(args.max_eval_samples, 64)
        args.epochs = 1
        args.wandb = "disabled"
    glue.apply_defaults(args, DEFAULTS["text_col"], DEFAULTS["task"])
    if args.metric_for_best is None:
        args.metric_for_best = metrics.TASK_METRICS[args.task].default
    args.metric_for_best = metrics.metric_name(args.metric_for_best)
    check_args(args)
    if args.run_name is None:
        args.run_name = derive_run_name(args)
    elif args.smoke:  # a smoke run's name always says so; --model run:NAME finds NAME's smoke run by it
        args.run_name += "-smoke"
    check_run_name(args.run_name)
    return args


def check_args(args) -> None:
    """Range checks that need neither the model nor the world size; a UserError names the flag."""

    def bad(flag, rule):
        raise UserError(f"--{flag} must be {rule} (got {getattr(args, flag)})")

    for key in (
        "max_len",
        "batch_size",
        "epochs",
        "eval_batch_size",
        "log_every",
        "save_every",
        "keep_checkpoints",
    ):
        if getattr(args, key) < 1:
            bad(key, "at least 1")
    for key in ("eval_every", "early_stop"):
        if getattr(args, key) < 0:
            bad(key, "0 (off) or a positive number" + (" of steps" if key == "eval_every" else " of validations"))
    if args.grad_accum is not None and args.grad_accum < 1:
        bad("grad_accum", "at least 1")
    if args.grad_accum is not None and args.micro_batch is not None:
        raise UserError("--grad_accum and --micro_batch both say how to cut the per-process batch; give one")
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
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        bad("dist_timeout", "a positive number of minutes")
    if not 0 <= args.seed < 2**31:
        bad("seed", "in [0, 2^31)")
    repeated = sorted({c for c in args.text_col if args.text_col.count(c) > 1})
    if repeated:
        raise UserError(
            f"--text_col {' '.join(args.text_col)} names {', '.join(repeated)} more than once: each column is read once"
        )
    if args.label_col in args.text_col:
        raise UserError(f"--label_col {args.label_col} is also a --text_col: the label would be part of the input")
    if args.metric_for_best is not None and metrics.metric_problem(args.task, args.metric_for_best):
        raise UserError(metrics.metric_problem(args.task, args.metric_for_best))
    if len(args.text_col) < 2 and not args.text_pairs:
        raise UserError("--no-text_pairs joins two or more --text_col columns; there is one")
    if len(args.text_col) >= 2 and args.text_pairs and args.truncation != "head":
        raise UserError(
            f"--truncation {args.truncation} applies to single texts; a pair is truncated longest-first "
            "(HF's default, --truncation head), or join the columns with --no-text_pairs"
        )
    if not 0 < args.mlm_prob < 1:  # also false for nan
        bad("mlm_prob", "in (0, 1)")
    if args.task != "mlm":
        given = [f"--{k}" for k in MLM_SETTINGS if getattr(args, k) != DEFAULTS[k]]
        if given:
            raise UserError(f"{', '.join(given)} applies to --task mlm only (the task is {args.task})")
    if args.unlabeled_split is not None and os.path.normpath(args.unlabeled_split) == "test":  # also ./test
        raise UserError(
            f"--unlabeled_split {args.unlabeled_split} is refused: pretraining on the test texts leaks the evaluation "
            "of the fine-tuning runs that start from this model"
        )
    if (start := model_run(args.model)) is not None:
        try:
            check_run_name(start)
        except UserError:
            raise UserError(
                f"--model {args.model}: {RUN_MODEL}NAME takes one run name (a folder in --out_dir)"
            ) from None
    elif os.path.isdir(args.model) and not os.path.isfile(os.path.join(args.model, "config.json")):
        raise UserError(f"model folder {args.model} has no config.json")


def check_run_name(name: str) -> None:
    """A run name is one plain folder name inside --out_dir: --fresh deletes inside it."""
    if name in ("", ".", "..") or os.sep in name or "/" in name or name != name.strip():
        raise UserError(f"--run_name {name!r} must be one plain folder name (no '/', not '.' or '..')")


def setting_labels(values: dict, defaults: dict = DEFAULTS) -> dict:
    """{setting: short label} for the named settings that differ from `defaults`, e.g.
    {"batch_size": "bs32", "clip": "clip1"}: the run name's middle, and report.py's setup column."""
    labels = {}
    for key, short in NAME_LABELS.items():
        value = values.get(key, defaults[key])  # a key missing from an older run's config.json: its default
        default = defaults[key]
        if key == "metric_for_best":  # the default depends on the task
            default = metrics.TASK_METRICS[values.get("task", defaults["task"])].default
            value = default if value is None else value
        if value == default or key in _no_effect(values):
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


def model_run(model: str) -> str | None:
    """NAME of a --model run:NAME (the run whose model this one starts from), else None."""
    return model[len(RUN_MODEL) :] if model.startswith(RUN_MODEL) else None


def model_run_dir(args) -> str | None:
    """The folder of the run --model run:NAME names: NAME in --out_dir; a smoke run starts from
    NAME's smoke run (NAME-smoke), so a grid's smoke phase chains its stages too."""
    name = model_run(args.model)
    return None if name is None else _stage_dir(args.out_dir, name, args.smoke)


def _stage_dir(out_dir: str, name: str, smoke: bool) -> str:
    return os.path.join(out_dir, name + ("-smoke" if smoke else ""))


def model_source(args) -> str:
    """What --model loads: the name or folder as given, or for run:NAME that run's model folder."""
    run_dir = model_run_dir(args)
    return args.model if run_dir is None else os.path.join(run_dir, "model")


def model_run_unfinished(args) -> str | None:
    """Why --model run:NAME cannot be loaded yet (its run has not finished, is not a masked-LM
    run, or its model folder is gone), else None. Checked when a run starts, not when a grid is
    read: then it has not run yet."""
    run_dir = model_run_dir(args)
    if run_dir is None:
        return None
    name, folder = os.path.basename(run_dir), os.path.join(run_dir, "model")
    if not has_results(run_dir):
        return f"--model {args.model}: " + (
            _smoke_start_unfinished(model_run(args.model), run_dir)
            if args.smoke
            else f"run {name} has not finished (no results.json in {run_dir}), so there is no pretrained "
            "model to start from; finish it first (rerun its grid or its train.py command)"
        )
    if os.path.isfile(os.path.join(folder, "config.json")):
        return None
    task = _results_task(run_dir)
    if task != "mlm":
        return (
            f"--model {args.model}: run {name} is a {task} run, which writes no model folder; only --task mlm runs do"
        )
    if os.path.isdir(folder):
        return f"--model {args.model}: {folder} has no config.json; restore the folder, or rerun {name} with --fresh"
    return (
        f"--model {args.model}: the model folder of run {name}, {folder}, is missing (deleted or moved); "
        f"put it back, or rerun {name} with --fresh"
    )


def _smoke_start_unfinished(start: str, smoke_dir: str) -> str:
    return (
        f"--smoke starts from the smoke run of {start}, {os.path.basename(smoke_dir)} (so a grid's smoke phase "
        f"chains its stages), which has not finished (no results.json in {smoke_dir}); run {start}'s command "
        "with --smoke first"
    )


def _results_task(run_dir: str) -> str:
    """The task of a finished run (results.json; one written before tasks existed: classification)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        results = {}
    return results.get("task", "classification") if isinstance(results, dict) else "classification"


START_MODEL = "start_model_sha256"  # config.json: the hash of the model a run:NAME run started from


class StartModelChanged(UserError):
    """A run folder holds a run:NAME run trained from a model that run NAME no longer holds (NAME
    was redone, or moved away): its results and checkpoints do not describe NAME's model now."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


def start_model_hash(args) -> str | None:
    """For --model run:NAME, the hash of NAME's model folder, which this run starts from (train.py
    records it in config.json as START_MODEL); None for other models."""
    run_dir = model_run_dir(args)
    return None if run_dir is None else model_folder_hash(os.path.join(run_dir, "model"))


def start_model_changed(run_dir: str, saved: dict) -> str | None:
    """Why the run:NAME run in run_dir (saved: its config.json) no longer matches the model of run
    NAME beside it, or None. Runs that recorded no START_MODEL (older ones) are not compared."""
    start, recorded = model_run(str(saved.get("model", ""))), saved.get(START_MODEL)
    if start is None or recorded is None:
        return None
    stage = _stage_dir(os.path.dirname(os.path.normpath(run_dir)), start, bool(saved.get("smoke")))
    now = model_folder_hash(os.path.join(stage, "model"))
    if now == recorded:
        return None
    return f"run {start} has no model now" if now is None else f"run {start}'s model has changed since (it was redone)"


def model_folder_hash(folder: str) -> str | None:
    """A hash of a model folder's files, names and bytes; None if it holds none. Cached by each
    file's size, time and inode: a grid asks it for every run that starts from the same model."""
    try:
        entries = [(e.name, e.stat()) for e in os.scandir(folder) if e.is_file()]
        files = tuple(sorted((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in entries))
        return _hash_files(folder, files) if files else None
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def _hash_files(folder: str, files: tuple) -> str:
    digest = hashlib.sha256()
    for name, *_ in files:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def derive_run_name(args) -> str:
    model_name = model_run(args.model) or os.path.basename(os.path.normpath(args.model)).replace("/", "_")
    labels = setting_labels(vars(args))
    if args.smoke:  # --smoke sets these itself; the -smoke suffix says so
        for key in ("max_train_samples", "max_eval_samples", "epochs"):
            labels.pop(key, None)
    return "-".join([model_name, args.pool, *labels.values(), f"s{args.seed}"]) + ("-smoke" if args.smoke else "")


def run_fingerprint(config: dict) -> dict:
    """The settings that decide what a run computes: a resume must match them. Settings added
    later are left out where they mean what their absence from an older run's config.json means,
    so such runs still resume and count as finished in grids."""
    omitted = OPERATIONAL | _as_if_absent(config) | _no_effect(config)
    return {k: v for k, v in config.items() if k not in omitted}


def _as_if_absent(config: dict) -> set[str]:
    """The later-added settings of `config` that hold what every run before them did: a
    classification task whose best epoch is picked by accuracy, text columns joined, validation at
    epoch ends only, every epoch trained (no --eval_every, no --early_stop)."""
    task = config.get("task", "classification")
    classification_by_acc = task == "classification" and config.get("metric_for_best") in (
        None,
        metrics.TASK_METRICS["classification"].default,
    )
    return (
        ({"task"} if task == "classification" else set())
        | ({"metric_for_best"} if classification_by_acc else set())
        | ({"text_pairs"} if config.get("text_pairs") is False else set())
        | {key for key in ("eval_every", "early_stop") if config.get(key) == 0}
    )


def _no_effect(config: dict) -> set[str]:
    """Settings that change nothing in this configuration: pairs need two text columns; the
    masked-LM settings need --task mlm, which has no classifier head (--dropout), reads no labels
    and joins its text columns."""
    task = config.get("task", "classification")
    pairs = {"text_pairs"} if len(config.get("text_col") or []) < 2 or task == "mlm" else set()
    return pairs | ({"dropout", "label_col"} if task == "mlm" else set(MLM_SETTINGS))


def differing_settings(saved: dict, config: dict) -> list[str]:
    """The settings of `config` that a run's config.json (`saved`) holds otherwise. Only the keys
    of `config` are compared: train.py's start and a grid's line know different amounts (see
    `finished`). An lr of None (not given) means the model's default, which config.json records."""
    old, new = run_fingerprint(saved), run_fingerprint(config)
    if new.get("lr", 0) is None:
        new["lr"] = saved.get("model_default_lr")
    return sorted(k for k in new if old.get(k) != new[k])


def has_results(run_dir: str) -> bool:
    """Whether run_dir's run wrote its results (train.py writes results.json last, atomically).
    finished() adds the check that they are this run's settings; report.py and slurm.py --status,
    which have no settings to compare, ask this alone."""
    return os.path.exists(os.path.join(run_dir, "results.json"))


def finished(run_dir: str, config: dict, remedy: str = "use another --run_name, or --fresh to discard it") -> bool:
    """Whether run_dir holds this run finished (results.json) with the settings of `config`. A folder
    holding a run with other settings is refused (UserError naming them and `remedy`), and so is a
    run:NAME run trained from a model NAME no longer holds (StartModelChanged): neither is counted
    as finished, nor continued. train.py (checkpoint.prepare_run_dir) and the grids
    (grid.finished_runs) decide with this."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        return False
    try:
        with open(config_path) as f:
            saved = json.load(f)
    except OSError as e:
        raise UserError(
            f"{config_path} is unreadable ({e.strerror}); move it away, or use --fresh to discard the run"
        ) from None
    except ValueError as e:
        raise UserError(
            f"{config_path} is not valid JSON ({e}); restore it, or delete it to resume (each "
            "checkpoint holds the settings), or use --fresh to discard the run"
        ) from None
    if not isinstance(saved, dict):
        raise UserError(
            f"{config_path} holds no settings (a JSON {type(saved).__name__}); delete it to resume, "
            "or use --fresh to discard the run"
        )
    differing = differing_settings(saved, config)
    if differing:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); {remedy}")
    why = start_model_changed(run_dir, saved)
    if why:
        raise StartModelChanged(f"{run_dir} holds a run trained from an earlier model: {why}; {remedy}", why)
    return has_results(run_dir)


def code_version() -> dict:
    """What code a run ran, cheaply: `sources_sha256`, a hash of the toolkit's Python sources (a
    smoke run passed with other sources is not trusted; report.py flags rows of different sources),
    and the checkout's git state (git_state), so a run from edited code does not pass for its commit."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return {"sources_sha256": digest.hexdigest()[:16], **git_state(ROOT)}


def code_sources(version) -> str | None:
    """The sources hash of a config.json's code_version (runs before the git state held it alone)."""
    return version.get("sources_sha256") if isinstance(version, dict) else version


def git_state(folder: str) -> dict:
    """git_commit; git_dirty: whether tracked files differ from it (git status); git_diff_sha256:
    a hash of that difference (git diff HEAD), so two edited checkouts of one commit tell apart.
    None where folder is not in a git checkout, or git is missing. --no-optional-locks: runs ask
    while the user may commit, and git status would otherwise take the index's lock to refresh it."""
    state = dict.fromkeys(("git_commit", "git_dirty", "git_diff_sha256"))
    git = ["git", "--no-optional-locks"]
    try:
        status = subprocess.run(
            [*git, "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if status.returncode != 0:
            return state
        lines = status.stdout.splitlines()
        commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
        state["git_commit"] = None if commit == "(initial)" else commit
        state["git_dirty"] = any(not line.startswith("#") for line in lines)
        if state["git_dirty"] and state["git_commit"]:
            diff = subprocess.run([*git, "diff", "HEAD", "--binary"], cwd=folder, capture_output=True, timeout=10)
            if diff.returncode == 0:
                state["git_diff_sha256"] = hashlib.sha256(diff.stdout).hexdigest()[:16]
    except (OSError, subprocess.SubprocessError):
        pass
    return state


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
