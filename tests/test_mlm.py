import json
import os

import numpy as np
import pytest
import torch

import data
import mlm
import model as models
from config import UserError

MASK, VOCAB = 4, 1000
SPECIALS = np.array([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK], as the tiny tokenizer


def example(n_body=60, pad=10, seed=0):
    body = np.random.default_rng(seed).integers(5, VOCAB, n_body)
    return np.concatenate([[2], body, [3], np.zeros(pad, dtype=np.int64)])


def mask(ids, prob=0.15, seed=0, epoch=0, index=0, word_starts=None):
    return mlm.mask_tokens(
        ids,
        np.isin(ids, SPECIALS),
        mask_id=MASK,
        vocab_size=VOCAB,
        prob=prob,
        seed=seed,
        epoch=epoch,
        index=index,
        word_starts=word_starts,
    )


@pytest.fixture(scope="module")
def texts():
    return data.make_synthetic(n_train=200)["train"]["text"]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    return models.load_tokenizer(models.resolve_model("tiny-bert"), texts, str(tmp_path_factory.mktemp("tok")))


# ----------------------------------------------------------------------------- masks


def test_mask_rate_and_80_10_10_split_on_a_big_sample():
    ids = example(n_body=200)
    predicted = replaced_by_mask = replaced_randomly = unchanged = maskable = 0
    for index in range(500):
        inputs, labels = mask(ids, index=index)
        chosen = labels != mlm.IGNORE
        maskable += 200
        predicted += chosen.sum()
        replaced_by_mask += (inputs[chosen] == MASK).sum()
        unchanged += (inputs[chosen] == ids[chosen]).sum()
        replaced_randomly += ((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum()
        assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    assert predicted / maskable == pytest.approx(0.15, abs=0.005)  # 15000 tokens chosen: sd about 0.0018
    assert replaced_by_mask / predicted == pytest.approx(0.8, abs=0.015)
    # a random id equal to the original (1 in 1000) counts as unchanged
    assert replaced_randomly / predicted == pytest.approx(0.1, abs=0.01)
    assert unchanged / predicted == pytest.approx(0.1, abs=0.01)


def test_special_tokens_and_padding_are_never_masked():
    ids = example(n_body=20, pad=20)
    special = np.isin(ids, SPECIALS)
    for index in range(200):
        inputs, labels = mask(ids, prob=0.9, index=index)
        assert (labels[special] == mlm.IGNORE).all() and (inputs[special] == ids[special]).all()


def test_masks_are_a_pure_function_of_seed_epoch_and_index():
    ids = example()
    same = [mask(ids, seed=1, epoch=2, index=3) for _ in range(2)]
    np.testing.assert_array_equal(same[0][0], same[1][0])
    np.testing.assert_array_equal(same[0][1], same[1][1])
    for other in (dict(seed=2, epoch=2, index=3), dict(seed=1, epoch=3, index=3), dict(seed=1, epoch=2, index=4)):
        assert not np.array_equal(mask(ids, **other)[1], same[0][1])


def test_dynamic_masks_change_every_epoch_and_static_masks_never(tokenizer, texts):
    ids = [np.array(x) for x in tokenizer(texts[:8])["input_ids"]]
    dynamic = mlm.make_masker(tokenizer, 0.15, "dynamic", seed=0)
    static = mlm.make_masker(tokenizer, 0.15, "static", seed=0)
    for epoch_a, epoch_b in ((0, 1), (1, 5)):
        a, b = dynamic.batch(ids, range(8), epoch_a, 128), dynamic.batch(ids, range(8), epoch_b, 128)
        assert not torch.equal(dense_labels(a), dense_labels(b))
        a, b = static.batch(ids, range(8), epoch_a, 128), static.batch(ids, range(8), epoch_b, 128)
        assert torch.equal(dense_labels(a), dense_labels(b)) and torch.equal(a["input_ids"], b["input_ids"])
    # the masks follow the example's index, not its place in the batch (any order, any rank)
    order = [5, 2, 7]
    alone = dynamic.batch([ids[i] for i in order], order, 3, 128)
    together = dynamic.batch(ids, range(8), 3, 128)
    width = alone["input_ids"].shape[1]
    assert torch.equal(dense_labels(alone), dense_labels(together)[order, :width])


def test_every_example_with_a_maskable_token_gets_one():
    for n_body in (1, 2, 3):
        for index in range(100):
            assert (mask(example(n_body, pad=3), prob=0.01, index=index)[1] != mlm.IGNORE).sum() >= 1
    only_special = np.array([2, 3, 0, 0])
    inputs, labels = mask(only_special)
    assert (labels == mlm.IGNORE).all() and (inputs == only_special).all()


def test_whole_words_are_masked_together():
    # [CLS] w0 ##a ##b w1 w2 ##c ... [SEP]: words of 1 to 3 tokens
    rng = np.random.default_rng(0)
    starts = [True]
    for _ in range(300):
        starts += [True] + [False] * int(rng.integers(0, 3))
    starts = np.array(starts[:300])
    ids = np.concatenate([[2], rng.integers(5, VOCAB, 300), [3], [0, 0]])
    word_starts = np.concatenate([[True], starts, [True], [True, True]])
    word_of = np.cumsum(word_starts[1:301]) - 1
    words_chosen = words = 0
    for index in range(50):
        labels = mask(ids, index=index, word_starts=word_starts)[1]
        chosen = labels[1:301] != mlm.IGNORE
        for w in range(word_of[-1] + 1):  # all tokens of a word, or none
            assert len(set(chosen[word_of == w])) == 1
        words_chosen += chosen[starts].sum()
        words += starts.sum()
        assert (labels[[0, 301, 302, 303]] == mlm.IGNORE).all()
    assert words_chosen / words == pytest.approx(0.15, abs=0.02)


def test_whole_word_masking_with_the_wordpiece_tokenizer(tokenizer):
    masker = mlm.make_masker(tokenizer, 0.5, "dynamic", seed=0, whole_word=True)
    ids = np.array(tokenizer("qxzv great jwpk")["input_ids"])  # unknown words split into ## characters
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens[0] == "[CLS]" and tokens[2].startswith("##") and "great" in tokens
    word_of = np.cumsum(masker.word_starts[ids])
    for index in range(40):
        chosen = masker.example(ids, index, epoch=0)[1] != mlm.IGNORE
        for w in set(word_of[1:-1]):
            assert len(set(chosen[1:-1][word_of[1:-1] == w])) == 1


def dense_labels(batch) -> torch.Tensor:
    """A masked batch's labels as a (batch x length) grid, IGNORE where nothing is predicted."""
    labels = torch.full((batch["input_ids"].numel(),), mlm.IGNORE)
    labels[batch["masked_positions"]] = batch["masked_labels"]
    return labels.reshape(batch["input_ids"].shape)


def targets(labels: torch.Tensor) -> dict:
    """MaskedLM.forward's masked_positions and masked_labels for a grid of labels."""
    return mlm.masked_targets(labels.numpy())


def test_masker_batch_predicts_no_padding_and_gives_the_masked_positions(tokenizer, texts):
    masker = mlm.make_masker(tokenizer, 0.15, "dynamic", seed=0)
    ids = [np.array(x) for x in tokenizer(texts[:4])["input_ids"]]
    batch = masker.batch(ids, range(4), 0, 128)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (dense_labels(batch)[pad] == mlm.IGNORE).all()
    assert (batch["input_ids"][pad] == tokenizer.pad_token_id).all()
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    for row, x in enumerate(ids):  # the positions are those the example's own masks predict
        labels = masker.example(x, row, 0)[1]
        width = batch["input_ids"].shape[1]
        expected = row * width + np.flatnonzero(labels != mlm.IGNORE)
        real = batch["masked_positions"][batch["masked_labels"] != mlm.IGNORE]  # not the padding rows
        mine = real[(real // width) == row].numpy()
        np.testing.assert_array_equal(mine, expected)
    assert batch["masked_positions"].dtype == batch["masked_labels"].dtype == torch.int64


# ----------------------------------------------------------------------------- packing


def test_pack_cuts_full_blocks_with_cls_and_sep_and_drops_the_rest():
    texts = [np.arange(10, 17), np.arange(20, 23), np.arange(30, 40)]  # 7 + 3 + 10 tokens, + 3 separators = 23
    blocks = mlm.pack(texts, max_len=7, cls_id=2, sep_id=3)
    assert blocks.shape == (4, 7) and blocks.dtype == np.int64  # 23 // 5 = 4 blocks of 5, 3 tokens dropped
    assert (blocks[:, 0] == 2).all() and (blocks[:, -1] == 3).all()
    stream = np.concatenate([np.arange(10, 17), [3], np.arange(20, 23), [3], np.arange(30, 40), [3]])
    np.testing.assert_array_equal(blocks[:, 1:-1].ravel(), stream[:20])


def test_pack_refuses_texts_that_fill_no_block():
    with pytest.raises(UserError, match="less than one block"):
        mlm.pack([np.arange(5, 9)], max_len=16, cls_id=2, sep_id=3)
    with pytest.raises(UserError, match="--max_len of at least 3"):
        mlm.pack([np.arange(5, 90)], max_len=2, cls_id=2, sep_id=3)


# ----------------------------------------------------------------------------- model


def tiny_masked_lm(name, tokenizer):
    torch.manual_seed(0)
    model = mlm.build_masked_lm(models.resolve_model(name), tokenizer, init="random")
    return model.eval()


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
def test_logits_at_masked_positions_only_and_the_loss_equals_hf_full_logits_loss(name, tokenizer, texts):
    model = tiny_masked_lm(name, tokenizer)
    masker = mlm.make_masker(tokenizer, 0.15, "dynamic", seed=0)
    batch = masker.batch([np.array(x) for x in tokenizer(texts[:6])["input_ids"]], range(6), 0, 128)
    labels = dense_labels(batch)
    n_masked = int((labels != mlm.IGNORE).sum())
    with torch.no_grad():
        out = model(**batch)
        full = model.hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    # the masked rows, then padding rows (label IGNORE) up to a multiple of MASKED_ROWS_MULTIPLE
    real = out.labels != mlm.IGNORE
    assert out.logits.shape == (len(out.labels), len(tokenizer)) and len(out.labels) % mlm.MASKED_ROWS_MULTIPLE == 0
    assert real.sum() == n_masked and real[:n_masked].all()
    where = labels != mlm.IGNORE
    torch.testing.assert_close(out.logits[real], full.logits[where], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss_sum(), full.loss * n_masked, atol=1e-3, rtol=1e-5)
    loss_sum, correct, count = out.sums().tolist()
    assert count == n_masked and correct == (full.logits[where].argmax(-1) == labels[where]).sum()
    assert loss_sum == pytest.approx(float(full.loss) * n_masked, rel=1e-5)


def test_the_loss_trains_every_parameter_and_a_batch_without_masks_gives_zero(tokenizer):
    model = tiny_masked_lm("tiny-bert", tokenizer).train()
    ids = torch.tensor([tokenizer("great film")["input_ids"]])
    labels = torch.full_like(ids, mlm.IGNORE)
    labels[0, 1] = ids[0, 1]
    model(ids, attention_mask=torch.ones_like(ids), **targets(labels)).loss_sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP fails on parameters without gradients
    empty = model(ids, attention_mask=torch.ones_like(ids), **targets(torch.full_like(ids, mlm.IGNORE)))
    assert empty.logits.shape[0] == 0 and float(empty.loss_sum().detach()) == 0 and empty.sums().tolist() == [0, 0, 0]


def test_the_loss_is_fp32_under_a_16_bit_autocast(tokenizer):
    model = tiny_masked_lm("tiny-bert", tokenizer)
    ids = torch.tensor([tokenizer("great film dull plot")["input_ids"]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels = ids.masked_fill(torch.arange(ids.shape[1]) % 2 == 0, mlm.IGNORE)
        out = model(ids, attention_mask=torch.ones_like(ids), **targets(labels))
        assert out.logits.dtype == torch.bfloat16 and out.loss_sum().dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32


def test_continued_pretraining_loads_the_checkpoint_head_and_random_init_does_not(tokenizer, tmp_path):
    trained = tiny_masked_lm("tiny-bert", tokenizer)
    trained.hf_model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    entry = models.resolve_model(str(tmp_path / "ckpt"))
    torch.manual_seed(1)
    loaded = mlm.build_masked_lm(entry, tokenizer, init="pretrained")
    torch.manual_seed(1)
    fresh = mlm.build_masked_lm(entry, tokenizer, init="random")
    head = "cls.predictions.transform.dense.weight"
    torch.testing.assert_close(loaded.hf_model.state_dict()[head], trained.hf_model.state_dict()[head])
    assert not torch.equal(fresh.hf_model.state_dict()[head], trained.hf_model.state_dict()[head])


def test_the_decoder_is_tied_to_the_input_embeddings(tokenizer):
    model = tiny_masked_lm("tiny-bert", tokenizer)
    assert model.hf_model.cls.predictions.decoder.weight is model.encoder.embeddings.word_embeddings.weight


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
def test_saved_folder_fine_tunes_with_the_same_encoder_and_tokenizer(name, tokenizer, tmp_path):
    model = tiny_masked_lm(name, tokenizer)
    folder = str(tmp_path / "model")
    os.makedirs(folder)  # a folder already there is replaced whole
    mlm.save_for_fine_tuning(model, tokenizer, folder)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp folder left behind
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["architectures"][0].endswith("Model")  # the encoder, not *ForMaskedLM
    entry = models.resolve_model(folder)
    loaded_tokenizer = models.load_tokenizer(entry, [], str(tmp_path / "cache"))
    text = "great film qxzv"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    classifier = models.build_model(entry, loaded_tokenizer, 2, "cls", 0.1, None).eval()
    saved = set(classifier.encoder.state_dict())
    assert not any("predictions" in k or "decoder" in k or k.startswith("head.") for k in saved)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        expected = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        got = classifier.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_save_unwraps_a_wrapper_with_module(tokenizer, tmp_path):
    model = tiny_masked_lm("tiny-bert", tokenizer)

    class Wrapper(torch.nn.Module):  # the attribute DDP and torch.compile's wrapper hold the model in
        def __init__(self, module):
            super().__init__()
            self.module = module

    folder = mlm.save_for_fine_tuning(Wrapper(model), tokenizer, str(tmp_path / "m"))
    assert os.path.exists(os.path.join(folder, "model.safetensors"))


# ----------------------------------------------------------------------------- bad input


def test_bad_masking_settings_are_one_line_user_errors(tokenizer):
    for prob in (0, 1, -0.1, 1.5):
        with pytest.raises(UserError, match="--mlm_prob must be in"):
            mlm.make_masker(tokenizer, prob, "dynamic", seed=0)
    with pytest.raises(UserError, match="unknown --masking"):
        mlm.make_masker(tokenizer, 0.15, "sometimes", seed=0)


def test_a_tokenizer_without_a_mask_token_is_refused(tokenizer):
    from transformers import PreTrainedTokenizerFast

    no_mask = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    with pytest.raises(UserError, match="has no mask token"):
        mlm.make_masker(no_mask, 0.15, "dynamic", seed=0)


def test_whole_word_masking_needs_a_wordpiece_tokenizer(tokenizer):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "a": 3, "b": 4}
    bpe = Tokenizer(tokenizer_models.BPE(vocab, [], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe_tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]", mask_token="[MASK]")
    assert mlm.make_masker(bpe_tokenizer, 0.15, "dynamic", seed=0).word_starts is None
    with pytest.raises(UserError, match="needs a WordPiece tokenizer"):
        mlm.make_masker(bpe_tokenizer, 0.15, "dynamic", seed=0, whole_word=True)


def test_texts_with_nothing_to_mask_are_refused(tokenizer):
    masker = mlm.make_masker(tokenizer, 0.15, "dynamic", seed=0)
    assert mlm.unmaskable(masker, [np.array([2, 3]), np.array([2, 9, 3])], "train") == 1
    with pytest.raises(UserError, match="none of the 2 texts holds a token to mask"):
        mlm.unmaskable(masker, [np.array([2, 3]), np.array([2, 3, 0])], "train")


def test_a_model_without_a_masked_lm_form_is_refused(tmp_path, tokenizer):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(folder)
    with pytest.raises(UserError, match="model type 'gpt2' has no masked-LM form here: transformers has no"):
        mlm.build_masked_lm(models.resolve_model(str(folder)), tokenizer, init="random")
    with pytest.raises(UserError, match="unknown --init"):
        mlm.build_masked_lm(models.resolve_model("tiny-bert"), tokenizer, init="zeros")


def test_a_masked_lm_type_missing_from_the_registry_is_refused(tmp_path, tokenizer):
    from transformers import AlbertConfig

    folder = tmp_path / "albert"
    AlbertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=16,
        num_hidden_layers=1,
        embedding_size=8,
    ).save_pretrained(folder)
    with pytest.raises(UserError, match="add mlm_head to its entry in FAMILIES"):
        mlm.build_masked_lm(models.resolve_model(str(folder)), tokenizer, init="random")


SMALL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, pad_token_id=0)
SMALL_CONFIGS = {
    "bert": SMALL,
    "roberta": SMALL,
    "modernbert": dict(SMALL, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3),
    "distilbert": dict(dim=16, n_layers=1, n_heads=2, hidden_dim=16, pad_token_id=0),
}


def test_the_registry_covers_every_family():
    assert set(SMALL_CONFIGS) == {k for k, f in models.FAMILIES.items() if f.mlm_head}


@pytest.mark.parametrize("model_type", sorted(SMALL_CONFIGS))
def test_every_registered_head_gives_hf_logits(model_type):
    """Each family's mlm_head names, applied to the masked rows, give its *ForMaskedLM logits there."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=50, **SMALL_CONFIGS[model_type])
    model = mlm.MaskedLM(AutoModelForMaskedLM.from_config(config)).eval()
    ids = torch.randint(5, 50, (2, 12))
    labels = torch.where(torch.rand(2, 12) < 0.3, ids, mlm.IGNORE)
    labels[0, 3] = ids[0, 3]
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids), **targets(labels))
        full = model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    real = out.labels != mlm.IGNORE  # without the padding rows
    torch.testing.assert_close(out.logits[real], full[labels != mlm.IGNORE], atol=1e-5, rtol=1e-5)
