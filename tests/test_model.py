import dataclasses

import pytest
import torch

import model as models
from config import UserError


def build(name, pool, encoder_dropout=None, cache_dir=None, texts=None):
    entry = models.resolve_model(name)
    texts = texts or ["good film great acting", "bad film awful plot", "ka lo mi nu"] * 20
    tokenizer = models.load_tokenizer(entry, texts, cache_dir)
    return models.build_model(entry, tokenizer, 2, pool, 0.1, encoder_dropout), tokenizer


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
def test_mean_pooling_is_unchanged_by_extra_padding(name, tmp_path):
    model, tok = build(name, "mean", cache_dir=str(tmp_path))
    model.eval()
    ids = torch.tensor([tok("good film great acting")["input_ids"]])
    n = ids.shape[1]
    padded = torch.cat([ids, torch.full((1, 24), tok.pad_token_id)], 1)
    mask = torch.ones_like(ids)
    padded_mask = torch.cat([mask, torch.zeros(1, 24, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(ids, mask)
        b = model(padded, padded_mask)
    assert n > 3
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mean_pooling_differs_from_cls_and_ignores_pad_positions(tmp_path):
    model, tok = build("tiny-bert", "mean", cache_dir=str(tmp_path))
    model.eval()
    hidden = torch.randn(1, 4, model.encoder.config.hidden_size)

    class FakeEncoder(torch.nn.Module):
        config = model.encoder.config

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"last_hidden_state": hidden})()

    model.encoder = FakeEncoder()
    model.dropout = torch.nn.Identity()
    mask = torch.tensor([[1, 1, 0, 0]])
    out = model(torch.zeros(1, 4, dtype=torch.long), mask)
    torch.testing.assert_close(out, model.head(hidden[:, :2].mean(1)))
    model.pool = "cls"
    torch.testing.assert_close(model(torch.zeros(1, 4, dtype=torch.long), mask), model.head(hidden[:, 0]))


@pytest.mark.parametrize(
    "name, keys",
    [
        ("tiny-bert", ["hidden_dropout_prob", "attention_probs_dropout_prob"]),
        ("tiny-modernbert", ["embedding_dropout", "mlp_dropout", "attention_dropout"]),
    ],
)
def test_encoder_dropout_maps_to_each_family_names(name, keys, tmp_path):
    model, _ = build(name, "cls", encoder_dropout=0.37, cache_dir=str(tmp_path))
    assert models.encoder_dropout_values(model) == {k: 0.37 for k in keys}


def test_bert_family_drops_the_unused_pooler(tmp_path):
    model, _ = build("tiny-bert", "cls", cache_dir=str(tmp_path))
    assert model.encoder.pooler is None  # else DDP fails on parameters without gradients


def test_tiny_tokenizer_is_trained_once_and_cached(tmp_path):
    texts = ["alpha beta gamma"] * 30
    entry = models.resolve_model("tiny-bert")
    first = models.load_tokenizer(entry, texts, str(tmp_path))
    files = list(tmp_path.iterdir())
    second = models.load_tokenizer(entry, texts, str(tmp_path))
    assert len(files) == 1 and list(tmp_path.iterdir()) == files
    assert first("alpha beta")["input_ids"] == second("alpha beta")["input_ids"]
    assert first("alpha")["input_ids"][0] == first.cls_token_id


def test_any_hub_name_is_accepted_and_a_missing_one_is_a_user_error():
    """Any name the hub resolves is a model (albert has no '/' or '-'); one that does not
    resolve fails with one line when it is loaded (offline here: HF_HUB_OFFLINE=1)."""
    assert models.resolve_model("albert").source == "albert"
    with pytest.raises(UserError, match="cannot load model 'nosuchmodel'"):
        models.model_max_positions(models.resolve_model("nosuchmodel"))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
def test_training_flop_formula_matches_a_counted_forward_and_backward(name, tmp_path):
    """The MFU numerator (6N per token + 12 x layers x hidden per token pair) against the
    matrix-product FLOPs torch counts for one training step."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = build(name, "mean", cache_dir=str(tmp_path))
    model.encoder.set_attn_implementation("eager")  # the counter does not see CPU SDPA kernels
    flops = models.training_flops(model)
    # the eager kernels compute every query-key pair, a sliding window's outside too
    computed = dataclasses.replace(flops, full_layers=flops.full_layers + flops.window_layers, window_layers=0)
    for n in (32, 128):
        ids = torch.randint(5, len(tok), (4, n))
        with FlopCounterMode(display=False) as counter:
            model(ids, torch.ones_like(ids)).logsumexp(-1).sum().backward()
        assert counter.get_total_flops() == pytest.approx(computed([n] * 4), rel=0.05)


def test_compile_falls_back_with_a_message_when_it_cannot_compile(monkeypatch):
    module, said = torch.nn.Linear(2, 2), []
    monkeypatch.setattr(models.shutil, "which", lambda name: None)
    assert models.compile_or_explain(module, torch.device("cpu"), said.append) is module
    assert said and "cannot compile" in said[0] and "C++ compiler" in said[0]


def test_sdpa_attention_unless_flash_attention_can_run():
    modernbert = models.FAMILIES["modernbert"]
    assert models.attention_for(modernbert, torch.device("cpu"), "bf16") == "sdpa"
    assert models.attention_for(models.FAMILIES["bert"], torch.device("cuda"), "bf16") == "sdpa"
