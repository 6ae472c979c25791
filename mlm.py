"""Masked-LM pretraining: masks, packing, the masked-LM model and its saved form.

The training loop treats a masked-LM run like a classification run: a batch is {input_ids,
masked_positions, masked_labels, attention_mask (left out when nothing is padded)}, and
model(**batch) returns what the loss and the evaluation sums are computed from (MaskedLMOutput).
Masks are a pure function of (seed, epoch, example index), so a resume, any world size and any
batch order mask alike.
"""

import json
import os
import shutil
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import MASKING_MODES, UserError, first_line
from data import Encoded, collate
from model import FAMILIES, FINE_TUNING_FILE, ModelEntry, attention_for, load_config

IGNORE = -100  # label of a position that is not predicted (PyTorch's and HF's ignore_index)
MASKED_ROWS_MULTIPLE = 64  # the masked-LM head's rows are padded to a multiple of this (masked_targets)


# ----------------------------------------------------------------------------- masks


def mask_tokens(
    ids: np.ndarray,
    special_mask: np.ndarray,
    *,
    mask_id: int,
    vocab_size: int,
    prob: float,
    seed: int,
    epoch: int,
    index: int,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of one example: (input_ids, labels), labels IGNORE where not predicted.

    Which positions are predicted: each token not in special_mask (special tokens, padding) is
    chosen with probability `prob`, as in HF's DataCollatorForLanguageModeling. With word_starts
    (whole-word masking; True where a token begins a word, e.g. WordPiece tokens without "##"),
    each word is chosen with probability `prob` and all its tokens are predicted; a token right
    after a special token begins a word whatever its spelling. If the draw chooses nothing and the
    example has a maskable token, exactly one token (one word) chosen uniformly is predicted, so
    no example contributes nothing; this raises the rate of short examples a little (length 10,
    prob 0.15: about 0.17).

    Each predicted token is replaced by mask_id (80%), by a uniform random id in [0, vocab_size)
    (10%; any id, special ones included, as HF does), or left unchanged (10%); under whole-word
    masking each token of a word draws on its own, as in Google's BERT.

    All draws come from np.random.default_rng((seed, epoch, index)): the same arguments give the
    same masks in any process. Static masking passes epoch 0 every epoch (see masking_epoch).
    """
    ids = np.asarray(ids)
    maskable = ~np.asarray(special_mask, dtype=bool)
    rng = np.random.default_rng((seed, epoch, index))
    chosen_draw, kind_draw = rng.random(len(ids)), rng.random(len(ids))
    random_ids = rng.integers(0, vocab_size, len(ids))

    if word_starts is None:
        units = maskable  # a unit (token or word) is chosen as a whole
    else:
        after_special = np.concatenate([[True], ~maskable[:-1]])
        units = maskable & (np.asarray(word_starts, dtype=bool) | after_special)  # marked at the word start
    chosen = units & (chosen_draw < prob)
    fallback = rng.integers(max(1, units.sum()))
    if units.any() and not chosen.any():
        chosen[np.flatnonzero(units)[fallback]] = True
    if word_starts is not None and units.any():
        word_of = np.maximum(np.cumsum(units) - 1, 0)  # every maskable token follows its word's start
        chosen = maskable & chosen[units][word_of]

    labels = np.where(chosen, ids, IGNORE).astype(np.int64)
    inputs = ids.astype(np.int64, copy=True)
    inputs[chosen & (kind_draw < 0.8)] = mask_id
    replace = chosen & (kind_draw >= 0.8) & (kind_draw < 0.9)
    inputs[replace] = random_ids[replace]
    return inputs, labels


def masking_epoch(masking: str, epoch: int) -> int:
    """The epoch whose masks an epoch uses: its own (dynamic) or always the first (static, BERT's
    masked-once data). Evaluation passes epoch 0 directly: fixed masks, so epochs compare."""
    if masking not in MASKING_MODES:
        raise UserError(f"unknown --masking {masking!r}: use {' or '.join(MASKING_MODES)}")
    return epoch if masking == "dynamic" else 0


@dataclass(frozen=True)
class Masker:
    """What masking needs from the tokenizer and the flags, checked once; batch() masks and pads."""

    mask_id: int
    pad_id: int
    vocab_size: int
    is_special: np.ndarray  # by token id: True for special tokens and padding, never masked
    prob: float
    masking: str
    seed: int
    word_starts: np.ndarray | None = None  # by token id: True where it begins a word (whole-word masking)

    def example(self, ids: np.ndarray, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids)
        return mask_tokens(
            ids,
            self.is_special[ids],
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            prob=self.prob,
            seed=self.seed,
            epoch=masking_epoch(self.masking, epoch),
            index=index,
            word_starts=None if self.word_starts is None else self.word_starts[ids],
        )

    def batch(self, ids: list[np.ndarray], indices, epoch: int, max_len: int, pad_to_max: bool = False) -> dict:
        """data.collate's batch of the examples `ids` (dataset positions `indices`), masked for
        `epoch`, plus where the masked tokens are, computed here on the host (see masked_targets);
        without attention_mask when nothing is padded."""
        masked = [self.example(x, int(i), epoch) for x, i in zip(ids, indices, strict=True)]
        batch = collate([inputs for inputs, _ in masked], self.pad_id, max_len, pad_to_max)
        labels = np.full(tuple(batch["input_ids"].shape), IGNORE, dtype=np.int64)
        for row, (_, example_labels) in enumerate(masked):
            labels[row, : len(example_labels)] = example_labels
        if all(len(x) == labels.shape[1] for x in ids):
            # no padding (every --pack batch): without a mask, transformers' SDPA mask code skips
            # the padding check it makes on the device (a host sync per forward); same numbers
            del batch["attention_mask"]
        return {**batch, **masked_targets(labels)}


def masked_targets(labels: np.ndarray) -> dict:
    """A batch's labels (IGNORE where not predicted) as what MaskedLM.forward takes: the masked
    positions in the flattened (batch x length) tokens and their original tokens. Found on the
    host, where the labels are made: on a GPU, boolean indexing waits for the device (a nonzero)
    and breaks a compiled graph; a gather at known positions does neither."""
    flat = np.asarray(labels).reshape(-1)
    positions = np.flatnonzero(flat != IGNORE)
    # padded to a multiple of MASKED_ROWS_MULTIPLE with position 0 at label IGNORE (the loss skips
    # them): the head then sees a few row counts, not a new one at most steps, for each of which
    # oneDNN caches kernels on the CPU among freed activations, so glibc's heap grew step after
    # step (docs/speed.md, "Peak memory: the cause")
    rows = -(-len(positions) // MASKED_ROWS_MULTIPLE) * MASKED_ROWS_MULTIPLE
    padded = np.zeros(rows, dtype=np.int64)
    padded[: len(positions)] = positions
    masked = np.full(rows, IGNORE, dtype=np.int64)
    masked[: len(positions)] = flat[positions]
    return {"masked_positions": torch.from_numpy(padded), "masked_labels": torch.from_numpy(masked)}


def unmaskable(masker: Masker, ids_list, where: str) -> int:
    """How many examples hold no maskable token (they train nothing); a UserError when none holds one."""
    empty = sum(masker.is_special[np.asarray(ids)].all() for ids in ids_list)
    if empty == len(ids_list):
        raise UserError(
            f"{where}: none of the {len(ids_list)} texts holds a token to mask (only special tokens); "
            f"masked-LM training needs text"
        )
    return empty


def make_masker(tokenizer, prob: float, masking: str, seed: int, whole_word: bool = False) -> Masker:
    """The Masker for this tokenizer, or a UserError: no mask token, a probability outside (0, 1),
    whole-word masking with a tokenizer that does not mark word pieces with "##"."""
    if not 0 < prob < 1:
        raise UserError(f"--mlm_prob must be in (0, 1) (got {prob})")
    masking_epoch(masking, 0)
    if tokenizer.mask_token_id is None:
        raise UserError(
            f"the tokenizer of {tokenizer.name_or_path or 'this model'!r} has no mask token, which "
            f"masked-LM training needs; use a model whose tokenizer has one"
        )
    vocab_size = len(tokenizer)
    word_starts = None
    if whole_word:
        prefix = wordpiece_prefix(tokenizer)
        if prefix is None:
            raise UserError(
                '--whole_word_mask needs a WordPiece tokenizer (word pieces marked "##"); the tokenizer '
                f"of {tokenizer.name_or_path or 'this model'!r} is not one"
            )
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        word_starts = np.array([not (t or "").startswith(prefix) for t in tokens], dtype=bool)
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[tokenizer.all_special_ids] = True
    return Masker(
        tokenizer.mask_token_id, tokenizer.pad_token_id, vocab_size, is_special, prob, masking, seed, word_starts
    )


def wordpiece_prefix(tokenizer) -> str | None:
    """The continuation prefix of a WordPiece tokenizer ("##"), None for any other kind."""
    from tokenizers.models import WordPiece

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, WordPiece):
        return None
    return backend.model.continuing_subword_prefix


# ----------------------------------------------------------------------------- packing


def pack(ids_list: list, max_len: int, cls_id: int, sep_id: int) -> np.ndarray:
    """run_mlm's group_texts: the texts' token ids (WITHOUT special tokens) joined into one stream
    with [SEP] after each text, cut into full blocks, the last partial block dropped.

    Unlike run_mlm, which cuts the stream of [CLS] text [SEP] sequences anywhere, each block is
    [CLS] + max_len - 2 stream tokens + [SEP]: every block then starts and ends as the fine-tuning
    inputs do, and the position-0 token a cls-pooled classifier reads is always [CLS].
    Returns an int64 array (n_blocks, max_len); a UserError when the texts fill no block.
    """
    body = max_len - 2
    if body < 1:
        raise UserError(f"--pack needs --max_len of at least 3 (got {max_len})")
    pieces = [piece for ids in ids_list for piece in (np.asarray(ids, dtype=np.int64), [sep_id])]
    stream = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)
    n_blocks = len(stream) // body
    if n_blocks == 0:
        raise UserError(
            f"--pack: the {len(ids_list)} texts hold {len(stream)} tokens with their separators, "
            f"less than one block of {body} (--max_len {max_len} minus [CLS] and [SEP]); "
            f"add text or lower --max_len"
        )
    blocks = stream[: n_blocks * body].reshape(n_blocks, body)
    return np.concatenate([np.full((n_blocks, 1), cls_id), blocks, np.full((n_blocks, 1), sep_id)], axis=1)


def encode_packed(texts: list[str], tokenizer, max_len: int) -> Encoded:
    """The texts tokenized without special tokens or truncation, then packed into blocks of
    max_len (pack); n_tokens is max_len for every block."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            f"--pack needs a tokenizer with [CLS] and [SEP] tokens to frame its blocks; the tokenizer "
            f"of {tokenizer.name_or_path or 'this model'!r} lacks one"
        )
    bodies = []
    for start in range(0, len(texts), 1000):
        bodies += tokenizer(texts[start : start + 1000], add_special_tokens=False, verbose=False)["input_ids"]
    blocks = pack(bodies, max_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    return Encoded(list(blocks), np.full(len(blocks), max_len, dtype=np.int64))


# ----------------------------------------------------------------------------- model


class MaskedLMOutput(NamedTuple):
    logits: torch.Tensor  # (n_masked, vocab): logits at the masked positions only, in the compute dtype
    labels: torch.Tensor  # (n_masked,): the original tokens there

    def loss_sum(self) -> torch.Tensor:
        """Cross-entropy summed over the masked tokens, in fp32 (0 when none is masked)."""
        return F.cross_entropy(self.logits.float(), self.labels, reduction="sum")

    def sums(self) -> torch.Tensor:
        """Detached float64 [loss sum, correct predictions, masked tokens]: evaluation adds these over
        batches and all-reduces with SUM; loss = [0] / [2], accuracy = [1] / [2], perplexity = exp(loss).
        The loss is summed in float64 from each token's fp32 loss, so how the tokens are cut into
        batches changes it only at float64 rounding (an fp32 sum per batch moved it in the 8th digit)."""
        with torch.no_grad():
            token_losses = F.cross_entropy(self.logits.float(), self.labels, reduction="none")  # 0 at IGNORE
            real = self.labels != IGNORE  # the padding rows of masked_targets are not masked tokens
            correct = ((self.logits.argmax(-1) == self.labels) & real).sum()
            masked = real.sum().double()
            return torch.stack([token_losses.double().sum(), correct.double(), masked])


class MaskedLM(nn.Module):
    """An HF *ForMaskedLM model whose forward applies the vocabulary head to the masked positions
    only: (batch x length) rows of hidden states become n_masked rows of logits, about 15%."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        family = FAMILIES.get(hf_model.config.model_type)
        if family is None or not family.mlm_head:
            raise UserError(
                f"model type {hf_model.config.model_type!r} has no masked-LM head in the registry "
                f"(known: {', '.join(k for k, f in FAMILIES.items() if f.mlm_head)}); add its mlm_head "
                f"to FAMILIES in model.py"
            )
        self.hf_model = hf_model
        self.head_names = family.mlm_head

    @property
    def encoder(self) -> nn.Module:
        return self.hf_model.base_model

    @property
    def config(self):
        return self.hf_model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        masked_positions: torch.Tensor,
        masked_labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        """The logits at masked_positions (indices into the flattened batch x length tokens, as
        masked_targets gives them), with masked_labels, the original tokens there. No
        attention_mask: nothing is padded."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
        for name in self.head_names:
            rows = getattr(self.hf_model, name)(rows)
        return MaskedLMOutput(rows, masked_labels)


def build_masked_lm(
    entry: ModelEntry,
    tokenizer,
    init: str = "pretrained",
    encoder_dropout: float | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> MaskedLM:
    """The masked-LM model with fp32 master weights: the checkpoint's weights (init="pretrained";
    a checkpoint without a masked-LM head gets a new one) or its config with random weights
    (init="random"; seed torch first). tiny-* models have no weights: random either way."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoModelForMaskedLM

    if init not in ("pretrained", "random"):
        raise UserError(f"unknown --init {init!r}: use pretrained or random")
    if entry.tiny_config is not None:
        config = entry.tiny_config(vocab_size=len(tokenizer), **entry.tiny_kwargs)
    else:
        config = load_config(entry.source)
    family = FAMILIES.get(config.model_type)
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING or family is None or not family.mlm_head:
        where = (
            "transformers has no masked-LM model for it"
            if type(config) not in MODEL_FOR_MASKED_LM_MAPPING
            else "its masked-LM head is not in the registry (add mlm_head to its entry in FAMILIES in model.py)"
        )
        raise UserError(f"--task mlm: model type {config.model_type!r} has no masked-LM form here: {where}")
    if encoder_dropout is not None:
        for key in family.dropout_keys:
            setattr(config, key, encoder_dropout)
    kwargs = dict(attn_implementation=attention_for(family, device, precision), dtype=torch.float32)
    if entry.tiny_config is not None or init == "random":
        hf_model = AutoModelForMaskedLM.from_config(config, **kwargs)
    else:
        try:
            hf_model = AutoModelForMaskedLM.from_pretrained(entry.source, config=config, **kwargs)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the weights of {entry.source!r}: {first_line(e)}") from None
    return MaskedLM(hf_model)


# ----------------------------------------------------------------------------- saved form


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_for_fine_tuning(model: nn.Module, tokenizer, folder: str, default_lr: float | None = None) -> str:
    """An HF model folder (config.json, model.safetensors, tokenizer files) of the encoder alone,
    the masked-LM head left out, that `train.py --model <folder>` fine-tunes; default_lr: the lr
    its fine-tuning defaults to (model.FINE_TUNING_FILE). Written to a
    temporary sibling, fsynced, then renamed: a kill leaves either no folder or a whole one (and a
    folder already there stays whole until the new one replaces it)."""
    encoder = unwrap(model).encoder
    folder = os.path.abspath(folder)
    tmp, old = f"{folder}.tmp{os.getpid()}", f"{folder}.old{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if default_lr is not None:
            with open(os.path.join(tmp, FINE_TUNING_FILE), "w") as f:
                json.dump({"default_lr": default_lr}, f)
        # safetensors writes its file through a private (0600) temp file; every file gets the mode
        # the umask gives config.json, as the run's other outputs, so a shared file system reads them
        mode = os.stat(os.path.join(tmp, "config.json")).st_mode & 0o777
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), mode)
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
