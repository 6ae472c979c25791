"""Model registry and the one classifier used for every encoder family.

Everything that differs between model families lives in the two tables below; the training
loop never asks which family it is running.
"""

import collections
import glob
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, ModernBertConfig

from config import POOLS, UserError, first_line
from utils import OFFLINE_DEMO, atomic_write_bytes, hash_texts, hub_unavailable, log_warning


@dataclass(frozen=True)
class Family:
    """How one encoder family (a config.model_type) names things."""

    dropout_keys: tuple[str, ...]  # config attributes set by --encoder_dropout
    model_kwargs: dict = field(default_factory=dict)  # extra AutoModel kwargs
    flash_attention: bool = False  # flash_attention_2 on CUDA in bf16/fp16 when flash-attn is installed
    mlm_head: tuple[str, ...] = ()  # attributes of its *ForMaskedLM model that map hidden states to
    # vocabulary logits, applied in order (mlm.py); () = no masked-LM form


FAMILIES = {
    # The pooler is unused by our head; left in, DDP would fail on parameters without gradients.
    "bert": Family(
        ("hidden_dropout_prob", "attention_probs_dropout_prob"), {"add_pooling_layer": False}, mlm_head=("cls",)
    ),
    "roberta": Family(
        ("hidden_dropout_prob", "attention_probs_dropout_prob"), {"add_pooling_layer": False}, mlm_head=("lm_head",)
    ),
    # Under flash_attention_2, transformers 5 unpads and repads around each attention call (a host
    # sync per layer; the rest of the layer still computes on padding), and flash-attn computes
    # only the 128-token window of the sliding-window layers, which SDPA computes in full.
    "modernbert": Family(
        ("embedding_dropout", "mlp_dropout", "attention_dropout"), flash_attention=True, mlm_head=("head", "decoder")
    ),
    "distilbert": Family(
        ("dropout", "attention_dropout"),
        mlm_head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    ),
}


@dataclass(frozen=True)
class ModelEntry:
    """A --model short name: a hub id / folder, or a small random-init config (tiny-*)."""

    source: str | None = None  # hub id or folder with pretrained weights
    tiny_config: type | None = None  # config class for a random-init model
    tiny_kwargs: dict = field(default_factory=dict)
    default_lr: float = 5e-5  # used when --lr is not given


_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
)  # ids fixed by _train_wordpiece's specials
_TINY_MODERNBERT = dict(_TINY, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
TINY_VOCAB_SIZE = 2000

MODELS = {
    "bert": ModelEntry(source="bert-base-uncased"),
    "modernbert": ModelEntry(source="answerdotai/ModernBERT-base"),
    # Random init learns nothing useful at 5e-5 in a few hundred steps, hence the larger lr.
    "tiny-bert": ModelEntry(tiny_config=BertConfig, tiny_kwargs=_TINY, default_lr=1e-3),
    "tiny-modernbert": ModelEntry(tiny_config=ModernBertConfig, tiny_kwargs=_TINY_MODERNBERT, default_lr=1e-3),
}


# Beside the weights of a model folder a --task mlm run writes: {"default_lr": ...}, the default
# lr of the model that run started from (a tiny random-init model's 1e-3), so fine-tuning the
# folder defaults to it however the folder is named (--model run:NAME, a path, a copy).
FINE_TUNING_FILE = "fine_tuning.json"


def resolve_model(name: str) -> ModelEntry:
    """A short name from MODELS, a local model folder, or any name the hub resolves (loading it
    tells if it does not exist)."""
    if name in MODELS:
        return MODELS[name]
    recorded = folder_default_lr(name) if os.path.isdir(name) else None
    return ModelEntry(source=name) if recorded is None else ModelEntry(source=name, default_lr=recorded)


def folder_default_lr(folder: str) -> float | None:
    """The default lr a model folder records (FINE_TUNING_FILE); for a folder RUN_DIR/model that a
    --task mlm run wrote before that file existed, the one its run's config.json records."""
    recorded = _json_object(os.path.join(folder, FINE_TUNING_FILE)).get("default_lr")
    if recorded is None and os.path.basename(os.path.normpath(folder)) == "model":
        run_config = _json_object(os.path.join(folder, os.pardir, "config.json"))
        recorded = run_config.get("model_default_lr") if run_config.get("task") == "mlm" else None
    return float(recorded) if isinstance(recorded, int | float) and not isinstance(recorded, bool) else None


def _json_object(path: str) -> dict:
    """The JSON object in a file; {} when it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def model_unavailable(entry: ModelEntry) -> str | None:
    """Why a hub model cannot be loaded here, found in seconds: neither cached nor reachable.
    None when it is local, cached, or the hub may answer (loading then tells if it exists)."""
    if entry.tiny_config is not None:
        return None
    if os.path.isdir(entry.source):
        try:
            load_config(entry.source)
        except UserError as e:
            return str(e)
        return damaged_weights(entry.source)
    try:
        AutoConfig.from_pretrained(entry.source, local_files_only=True)
        return None
    except (OSError, ValueError, KeyError):
        pass
    why = hub_unavailable()
    if why is None:
        return None
    return (
        f"cannot load model {entry.source!r}: not in the local cache and {why}; pass a local model folder "
        f"with --model, download it where the hub answers and rerun with HF_HUB_OFFLINE=1, or {OFFLINE_DEMO}"
    )


def damaged_weights(folder: str) -> str | None:
    """Why a model folder's safetensors weights cannot load, found from their headers alone: a
    file shorter (a copy or a write cut short) or longer than its header says. None: whole."""
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors"))):
        size, expected = os.path.getsize(path), safetensors_size(path)
        if expected is None:
            return f"cannot load model {folder!r}: {path} is not a readable safetensors file; copy it again"
        if size != expected:
            cut = f"is cut short ({size:,} of {expected:,} bytes)" if size < expected else "has bytes past its end"
            return f"cannot load model {folder!r}: {path} {cut}; copy it again, or rerun the run that wrote it"
    return None


def safetensors_size(path: str) -> int | None:
    """The size a safetensors file's header says it has: 8 bytes giving the header's length, the
    JSON header, then the tensors' bytes up to the largest end offset. None: no readable header."""
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if 8 + header_size > os.fstat(f.fileno()).st_size:  # cut inside the header, or not one
                return None
            header = json.loads(f.read(header_size))
        ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return 8 + header_size + max(ends, default=0)


def model_max_positions(entry: ModelEntry) -> int:
    if entry.tiny_config is not None:
        return entry.tiny_kwargs["max_position_embeddings"]
    return getattr(load_config(entry.source), "max_position_embeddings", 512)


def load_config(source: str):
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:  # missing, unknown model_type, config without one
        raise UserError(f"cannot load model {source!r}: {first_line(e)}") from None


# ----------------------------------------------------------------------------- tokenizer


def write_model_folder(folder: str, config_name: str, overrides: dict, texts: list[str]) -> str:
    """Random-init encoder of the given shape + a WordPiece tokenizer, saved like a hub checkpoint
    (for the GPU check and the tests: a local --model folder without a download)."""
    import transformers

    tokenizer = load_tokenizer(MODELS["tiny-bert"], texts, os.path.join(folder, "cache"))
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    config = getattr(transformers, config_name)(**{**overrides, **ids})
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_tokenizer(entry: ModelEntry, train_texts, cache_dir: str, warn=log_warning):
    """The checkpoint's tokenizer, or for tiny-* a WordPiece trained locally on the training texts.

    The trained tokenizer is cached under cache_dir, keyed by the texts, so every run of a grid
    (and every rank) reuses one file; an unreadable one (cut short by a full disk or a copy) is
    rebuilt with a warning.
    """
    if entry.tiny_config is None:
        try:
            return AutoTokenizer.from_pretrained(entry.source)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot load tokenizer for {entry.source!r}: {first_line(e)}") from None
    path = os.path.join(cache_dir, f"wordpiece-v3-{TINY_VOCAB_SIZE}-{hash_texts(train_texts)[:16]}.json")
    if os.path.exists(path):
        try:
            return _tiny_tokenizer(path, entry)
        except Exception as e:  # the tokenizers library raises a plain Exception on a bad file
            warn(f"warning: the tokenizer cache {path} is unreadable ({first_line(e)}); rebuilding it")
    _train_wordpiece(train_texts, path)
    return _tiny_tokenizer(path, entry)


def _tiny_tokenizer(path: str, entry: ModelEntry):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=path,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=entry.tiny_kwargs["max_position_embeddings"],
    )


def _train_wordpiece(texts, path: str) -> None:
    """A deterministic WordPiece vocabulary: the special tokens, every character (alone and as a
    ## continuation), then the most frequent words, ties broken alphabetically. (The `tokenizers`
    trainer breaks ties in hash order, which differs from process to process: a resume elsewhere
    would then look up the checkpoint's embeddings with other ids.)"""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = collections.Counter(
        word for t in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
    )
    chars = sorted({c for word in counts for c in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, TINY_VOCAB_SIZE - len(vocab))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, tok.to_str().encode())


# ----------------------------------------------------------------------------- classifier


class Classifier(nn.Module):
    """Encoder -> pooling (cls | mean over real tokens) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, num_labels: int, pool: str, dropout: float):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown --pool {pool!r}: use {' or '.join(POOLS)}")
        self.encoder = encoder
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        if self.pool == "cls":
            pooled = hidden[:, 0]
        else:
            # in fp32 whatever autocast gave: an fp16 sum over hundreds of positions can overflow,
            # and bf16 cannot even hold the count (301 rounds to 300)
            mask = attention_mask.unsqueeze(-1).float()
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))


def build_model(
    entry: ModelEntry,
    tokenizer,
    num_labels: int,
    pool: str,
    dropout: float,
    encoder_dropout: float | None,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> Classifier:
    """The classifier with fp32 master weights (autocast does the rest), whatever dtype the
    checkpoint was saved in."""
    if entry.tiny_config is not None:
        config = entry.tiny_config(vocab_size=len(tokenizer), **entry.tiny_kwargs)
    else:
        config = load_config(entry.source)
    family = FAMILIES.get(config.model_type)
    if encoder_dropout is not None:
        if family is None:
            raise UserError(
                f"--encoder_dropout: model type {config.model_type!r} is not in the "
                f"registry (known: {', '.join(FAMILIES)}); add it to FAMILIES in model.py"
            )
        for key in family.dropout_keys:
            setattr(config, key, encoder_dropout)
    kwargs = dict(
        family.model_kwargs if family else {},
        attn_implementation=attention_for(family, device, precision),
        dtype=torch.float32,
    )
    if entry.tiny_config is not None:
        encoder = AutoModel.from_config(config, **kwargs)
    else:
        try:
            encoder = AutoModel.from_pretrained(entry.source, config=config, **kwargs)
        except (OSError, ValueError) as e:  # no weights file, or weights that do not fit the config
            raise UserError(f"cannot load the weights of {entry.source!r}: {first_line(e)}") from None
    return Classifier(encoder, num_labels, pool, dropout)


def encoder_dropout_values(model: Classifier) -> dict:
    """The encoder's internal dropout settings, for the run log."""
    family = FAMILIES.get(model.encoder.config.model_type)
    return {k: getattr(model.encoder.config, k) for k in (family.dropout_keys if family else ())}


def attention_for(family: Family | None, device: torch.device | None, precision: str) -> str:
    """flash_attention_2 where the family benefits and flash-attn can run (CUDA, an installed
    flash-attn, and a 16-bit autocast: flash-attn has no fp32 kernels), else PyTorch SDPA."""
    if (
        family is not None
        and family.flash_attention
        and device is not None
        and device.type == "cuda"
        and precision in ("bf16", "fp16")
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


@dataclass(frozen=True)
class TrainingFlops:
    """Useful training FLOPs (forward and backward) of sequences of n real tokens: 6N per token for
    the N parameters outside embeddings, plus 12 x hidden per attended query-key pair per layer
    (Chowdhery et al. 2022, appendix B). A sliding-window layer (ModernBERT's local layers) attends
    only to keys within half_window positions, whatever its kernel computes."""

    per_token: int
    per_pair: int
    full_layers: int
    window_layers: int = 0
    half_window: int = 0

    def __call__(self, lengths) -> float:
        n = np.asarray(lengths, dtype=np.float64)
        pairs = self.full_layers * n**2 + self.window_layers * window_pairs(n, self.half_window)
        return float(self.per_token * n.sum() + self.per_pair * pairs.sum())


def window_pairs(n: np.ndarray, half_window: int) -> np.ndarray:
    """Query-key pairs (i, j) of a length-n sequence with |i - j| <= half_window."""
    m = np.minimum(half_window, n - 1)
    return n + 2 * (m * n - m * (m + 1) / 2)


def training_flops(model: nn.Module, encoder_only: bool = False) -> TrainingFlops:
    """The useful FLOPs of a model with an `.encoder`. encoder_only: count the encoder alone (a
    masked-LM model's vocabulary head runs on the masked tokens only, and is left out)."""
    counted = model.encoder if encoder_only else model
    embedding = sum(p.numel() for m in counted.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    n = sum(p.numel() for p in counted.parameters()) - embedding
    config = model.encoder.config
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    window_layers = sum(t == "sliding_attention" for t in types)
    return TrainingFlops(
        6 * n,
        12 * config.hidden_size,
        len(types) - window_layers,
        window_layers,
        config.sliding_window if window_layers else 0,
    )


def compile_or_explain(module: nn.Module, device: torch.device, say) -> nn.Module:
    """torch.compile(module), or the module itself with one line saying why not."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        missing = "a C++ compiler (g++ or clang++), which torch.compile needs on CPU"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        missing = "triton, which torch.compile needs on GPUs"
    else:
        # A graph that fails to compile stops the run (dynamo's default): falling back to eager
        # would label eager numbers as compiled. compile_report() says what did compile.
        say("--compile: compiling the model (the first steps are slow while it compiles)")
        return torch.compile(module)
    say(f"--compile: cannot compile here (no {missing}); training without compile")
    return module


def compile_report() -> dict:
    """What torch.compile did in this process: graphs compiled, frames it could not compile,
    graph breaks (dynamo's counters; an internal API, hence the guard)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "frames_not_compiled": counters["frames"]["total"] - counters["frames"]["ok"],
        "graph_breaks": sum(counters["graph_break"].values()),
    }


# ----------------------------------------------------------------------------- tasks
# What differs between tasks, in one table: the head's width, the loss, and what evaluation keeps
# of each example (class probabilities, or the predicted value; for masked-LM pretraining the
# batch's loss sum, correct predictions and masked tokens).


@dataclass(frozen=True)
class Task:
    outputs: Callable[[int], int]  # number of classes -> head width
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> fp32 sum
    per_example: Callable[[torch.Tensor], torch.Tensor]  # logits -> what evaluation keeps


TASK_HEADS = {  # keyed by the task types of metrics.TASK_METRICS (what each task's metrics say)
    "classification": Task(
        outputs=lambda num_labels: num_labels,
        loss_sum=lambda logits, target: F.cross_entropy(logits.float(), target, reduction="sum"),
        per_example=lambda logits: torch.softmax(logits.float(), -1),
    ),
    # one output; the MSE in fp32 whatever the autocast dtype, on the targets as given (no scaling)
    "regression": Task(
        outputs=lambda num_labels: 1,
        loss_sum=lambda logits, target: F.mse_loss(logits.float().squeeze(-1), target.float(), reduction="sum"),
        per_example=lambda logits: logits.float().squeeze(-1),
    ),
    # masked-LM pretraining: the model (mlm.MaskedLM) returns the logits and labels of the masked
    # tokens; no classifier head, and evaluation keeps sums, not per-example outputs (train.predict)
    "mlm": Task(
        outputs=lambda num_labels: 0,
        loss_sum=lambda output, _: output.loss_sum(),
        per_example=lambda output: output.sums(),
    ),
}
