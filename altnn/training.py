"""The training loop: in-memory batches, optional augmentation, per-epoch evaluation.

Everything random (initial weights, shuffling, augmentation, dropout) draws from seeded
generators whose states are part of `Trainer.state_dict`, so a run resumed from the end
of an epoch continues exactly as an uninterrupted run would on the same device.
"""

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from altnn.config import ConfigError, RunConfig, VariantConfig
from altnn.data import PreparedData, normalize
from altnn.metrics import EvaluationResult, confusion_matrix, predict
from altnn.models import build_model

log = logging.getLogger(__name__)

CROP_PADDING = 2  # pixels of shift for the "crop" augmentation, as in common CIFAR recipes
ERASE_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.33)  # fraction of the image, as torchvision's RandomErasing
MIN_ONECYCLE_STEPS = 4


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochRecord:
    """One row of a run's history; accuracies are fractions in [0, 1]."""

    epoch: int
    train_accuracy: float
    test_accuracy: float
    train_loss: float
    test_loss: float
    gap: float
    lr: float
    epoch_seconds: float
    running_loss: float
    spike_rates: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def as_row(self) -> dict[str, float]:
        """Return the record flattened for a CSV row or MLflow: one column per spike rate."""
        row = {key: value for key, value in asdict(self).items() if key != "spike_rates"}
        row.update({f"spike_rate_{name}": rate for name, rate in self.spike_rates.items()})
        return row


def resolve_device(name: str) -> torch.device:
    """Map `auto` to CUDA when available, else the CPU; reject CUDA when absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available; "
                          "set it to 'auto' or 'cpu'")
    return device


def augment(images: torch.Tensor, kinds: tuple[str, ...], background: float,
            generator: torch.Generator) -> torch.Tensor:
    """Apply the recipe's augmentations to a normalized batch (B, 1, H, W)."""
    if "flip" in kinds:
        flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if "crop" in kinds:
        images = _random_shift(images, CROP_PADDING, background, generator)
    if "erase" in kinds:
        images = _random_erase(images, generator)
    return images


def _random_shift(images: torch.Tensor, padding: int, background: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Pad by `padding` with the background value and crop a random window of the old size."""
    B, _, H, W = images.shape
    padded = F.pad(images, (padding,) * 4, value=background)
    shifts = torch.randint(0, 2 * padding + 1, (2, B), generator=generator, device=images.device)
    rows = shifts[0, :, None] + torch.arange(H, device=images.device)  # (B, H)
    cols = shifts[1, :, None] + torch.arange(W, device=images.device)  # (B, W)
    batch = torch.arange(B, device=images.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def _random_erase(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero a random rectangle in half of the images (random erasing, Zhong et al. 2020)."""
    B, _, H, W = images.shape
    device = images.device
    area = torch.empty(B, device=device).uniform_(*ERASE_AREA, generator=generator) * H * W
    log_ratio = torch.empty(B, device=device).uniform_(math.log(0.3), math.log(3.3), generator=generator)
    height = (area * log_ratio.exp()).sqrt().round().clamp(1, H).long()
    width = (area / log_ratio.exp()).sqrt().round().clamp(1, W).long()
    top = (torch.rand(B, generator=generator, device=device) * (H - height + 1)).long()
    left = (torch.rand(B, generator=generator, device=device) * (W - width + 1)).long()
    rows = torch.arange(H, device=device)[None, :]
    cols = torch.arange(W, device=device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    chosen = torch.rand(B, generator=generator, device=device) < ERASE_PROBABILITY
    mask = inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]
    return images.masked_fill(mask.unsqueeze(1), 0.0)


def make_optimizer(recipe: VariantConfig, model: nn.Module) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)


def make_scheduler(recipe: VariantConfig, optimizer: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Return a per-batch schedule: none, one-cycle (peak = lr), or warm-up then cosine."""
    if recipe.schedule == "onecycle":
        if total_steps < MIN_ONECYCLE_STEPS:
            log.warning("one-cycle schedule needs at least %d batches, the run has %d; "
                        "keeping the learning rate constant", MIN_ONECYCLE_STEPS, total_steps)
            return None
        # OneCycleLR divides by the length of each phase, so both must span over one step.
        margin = 1.5 / total_steps
        warmup = min(max(recipe.warmup_fraction, margin), 1.0 - margin)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=total_steps, pct_start=warmup)
    if recipe.schedule == "cosine":
        warmup = int(recipe.warmup_fraction * total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int, num_classes: int = 10) -> EvaluationResult:
    """Loss, accuracy, tie rate, confusion and spike rates over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, ties = 0.0, 0
    predictions = []
    rate_sums: dict[str, float] = {}
    for start in range(0, len(labels), batch_size):
        batch, targets = images[start:start + batch_size], labels[start:start + batch_size]
        output = model(batch)
        total_loss += F.cross_entropy(output.logits, targets, reduction="sum").item()
        predicted, tied = predict(output.logits, output.tie_scores)
        predictions.append(predicted)
        ties += int(tied.sum())
        for name, rate in output.spike_rates.items():
            rate_sums[name] = rate_sums.get(name, 0.0) + float(rate) * len(targets)
    model.train(was_training)
    predicted = torch.cat(predictions)
    count = len(labels)
    return EvaluationResult(
        loss=total_loss / count,
        accuracy=(predicted == labels).double().mean().item(),
        tie_rate=ties / count,
        confusion=confusion_matrix(labels.cpu(), predicted.cpu(), num_classes),
        spike_rates={name: total / count for name, total in rate_sums.items()},
    )


class Trainer:
    """Trains one run epoch by epoch; `state_dict` captures everything needed to resume."""

    def __init__(self, run: RunConfig, data: PreparedData, device: torch.device) -> None:
        self.run = run
        self.device = device
        torch.manual_seed(run.seed)
        self.model = build_model(run.model).to(device)
        self.train_images = normalize(data.train.images, data.mean, data.std).to(device)
        self.train_labels = data.train.labels.to(device)
        self.test_images = normalize(data.test.images, data.mean, data.std).to(device)
        self.test_labels = data.test.labels.to(device)
        self.background = (0.0 - data.mean) / data.std  # a black pixel after normalization
        self.batches_per_epoch = math.ceil(len(self.train_labels) / run.train.batch_size)
        self.optimizer = make_optimizer(run.recipe, self.model)
        # Layers whose weights must stay in a set, projected back after every step.
        self.constrained_modules = [module for module in self.model.modules()
                                    if hasattr(module, "apply_constraint_")]
        self.scheduler = make_scheduler(run.recipe, self.optimizer,
                                        self.batches_per_epoch * run.train.epochs)
        self.shuffle_generator = torch.Generator().manual_seed(run.seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(run.seed + 1)
        self.history: list[EpochRecord] = []

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def train_epoch(self) -> tuple[EpochRecord, EvaluationResult]:
        """Train one epoch, then evaluate on the whole train and test sets."""
        started = time.perf_counter()
        running_loss = self._fit_epoch()
        train_result = evaluate(self.model, self.train_images, self.train_labels,
                                self.run.train.eval_batch_size)
        test_result = evaluate(self.model, self.test_images, self.test_labels,
                               self.run.train.eval_batch_size)
        record = EpochRecord(
            epoch=self.epochs_done + 1,
            train_accuracy=train_result.accuracy,
            test_accuracy=test_result.accuracy,
            train_loss=train_result.loss,
            test_loss=test_result.loss,
            gap=train_result.accuracy - test_result.accuracy,
            lr=self.optimizer.param_groups[0]["lr"],
            epoch_seconds=time.perf_counter() - started,
            running_loss=running_loss,
            spike_rates=test_result.spike_rates,
        )
        self.history.append(record)
        return record, test_result

    def _fit_epoch(self) -> float:
        """One pass over the shuffled train set; return the mean batch loss."""
        self.model.train()
        recipe, batch_size = self.run.recipe, self.run.train.batch_size
        order = torch.randperm(len(self.train_labels), generator=self.shuffle_generator).to(self.device)
        total = 0.0
        progress = tqdm(range(self.batches_per_epoch), desc=f"{self.run.name} epoch {self.epochs_done + 1}",
                        leave=False, disable=not sys.stderr.isatty(), unit="batch")
        for index in progress:
            batch_indices = order[index * batch_size:(index + 1) * batch_size]
            images = augment(self.train_images[batch_indices], recipe.augment, self.background,
                             self.augment_generator)
            output = self.model(images)
            loss = F.cross_entropy(output.logits, self.train_labels[batch_indices],
                                   label_smoothing=recipe.label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"non-finite training loss ({value}) at epoch "
                                    f"{self.epochs_done + 1}, batch {index + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for module in self.constrained_modules:
                module.apply_constraint_()
            if self.scheduler is not None:
                self.scheduler.step()
            total += value
            progress.set_postfix(loss=f"{value:.3f}", refresh=False)
        return total / self.batches_per_epoch

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "shuffle_generator": self.shuffle_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [record.as_dict() for record in self.history],
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = [EpochRecord(**record) for record in state["history"]]
