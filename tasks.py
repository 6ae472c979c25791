"""What differs between tasks, in one table: the head's width, the loss, and what evaluation
keeps of each example (class probabilities, or the predicted value; for masked-LM pretraining
the batch's loss sum, correct predictions and masked tokens)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Task:
    outputs: Callable[[int], int]  # number of classes -> head width
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> fp32 sum
    per_example: Callable[[torch.Tensor], torch.Tensor]  # logits -> what evaluation keeps


TASKS = {
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
