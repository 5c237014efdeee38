"""Predictions with an explicit tie rule, accuracy, per-class accuracy and confusion."""

from dataclasses import dataclass, field

import torch


def predict(logits: torch.Tensor,
            tie_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (predicted class, tied) for (B, C) logits.

    A prediction is tied when several classes share the top logit, which spike counts
    do often at few time steps. Among the tied classes the one with the highest
    `tie_scores` wins. Without tie scores, or if those tie too, the lowest class index
    wins, as `argmax` does.
    """
    top = logits.max(dim=1, keepdim=True).values
    at_top = logits == top
    tied = at_top.sum(dim=1) > 1
    if tie_scores is None:
        return logits.argmax(dim=1), tied
    masked = torch.where(at_top, tie_scores, torch.full_like(tie_scores, float("-inf")))
    return masked.argmax(dim=1), tied


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    totals = confusion.sum(dim=1).clamp(min=1)
    return (confusion.diag().double() / totals).tolist()


@dataclass
class EvaluationResult:
    """Metrics of one pass over a split in eval mode."""

    loss: float
    accuracy: float
    tie_rate: float
    confusion: torch.Tensor
    spike_rates: dict[str, float] = field(default_factory=dict)

    @property
    def per_class_accuracy(self) -> list[float]:
        return per_class_accuracy(self.confusion)
