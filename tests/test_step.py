"""The training step: the masked-LM evaluation sums."""

import torch

import mlm

# ----------------------------------------------------------------------------- masked-LM evaluation sums


def test_masked_lm_eval_sums_do_not_depend_on_how_the_tokens_are_cut_into_batches():
    """The per-token losses, summed in float64: cutting the same tokens into other eval batches
    moves the sums only at float64 rounding (an fp32 sum per batch moved them from the 8th digit)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 500, generator=gen) * 3
    labels = torch.randint(0, 500, (6000,), generator=gen)
    whole = mlm.MaskedLMOutput(logits, labels).sums()
    for parts in (2, 7, 64):
        cut = sum(
            mlm.MaskedLMOutput(x, y).sums()
            for x, y in zip(logits.tensor_split(parts), labels.tensor_split(parts), strict=True)
        )
        assert cut[1:].tolist() == whole[1:].tolist()  # correct and masked: counts
        assert abs(float(cut[0] - whole[0])) <= 1e-12 * float(whole[0]), parts
