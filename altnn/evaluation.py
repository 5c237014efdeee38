"""Final evaluation of a saved checkpoint: accuracy, per class, confusion, ties, cost."""

import logging
import pickle
from pathlib import Path

import torch

from altnn.config import ModelConfig
from altnn.data import CLASS_NAMES, PreparedData, normalize
from altnn.experiment import CHECKPOINT_FORMAT
from altnn.models import build_model
from altnn.opcount import count_operations
from altnn.training import evaluate

log = logging.getLogger(__name__)

OPCOUNT_IMAGES = 1000


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or of another format."""


def load_checkpoint(path: Path, variant: str | None = None) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; run the train stage first (dvc repro)") from None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({error}); delete it and run "
                              "`dvc repro` to train again") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an altnn checkpoint of format {CHECKPOINT_FORMAT}; "
                              "delete it and run `dvc repro` to train again")
    found = checkpoint.get("model_config", {}).get("variant")
    if variant is not None and found != variant:
        raise CheckpointError(f"{path}: a checkpoint of variant {found!r} in the folder of {variant!r}; "
                              "delete it and run `dvc repro` to train again")
    return checkpoint


def evaluate_checkpoint(checkpoint: dict, data: PreparedData, device: torch.device,
                        batch_size: int) -> tuple[dict, dict]:
    """Return (summary metrics, details) for one run; diverged runs get no numbers."""
    if checkpoint["status"] != "finished":
        summary = {"status": checkpoint["status"], "reason": checkpoint.get("reason"),
                   "train_accuracy": None, "test_accuracy": None, "gap": None}
        return summary, {"status": checkpoint["status"], "reason": checkpoint.get("reason")}

    model = build_model(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    splits = {}
    for name, split in (("train", data.train), ("test", data.test)):
        images = normalize(split.images, data.mean, data.std).to(device)
        splits[name] = (images, evaluate(model, images, split.labels.to(device), batch_size))
    train_result, test_result = splits["train"][1], splits["test"][1]
    operations = count_operations(model, splits["test"][0][:OPCOUNT_IMAGES])

    summary = {
        "status": "finished",
        "train_accuracy": train_result.accuracy,
        "test_accuracy": test_result.accuracy,
        "gap": train_result.accuracy - test_result.accuracy,
        "test_loss": test_result.loss,
        "test_tie_rate": test_result.tie_rate,
        "macs_per_image": operations.per_image("macs"),
        "synaptic_ops_per_image": operations.per_image("synaptic_ops"),
        "adder_additions_per_image": operations.per_image("additions"),
        "energy_pj_per_image": operations.energy_pj,
    }
    for name, rate in test_result.spike_rates.items():
        summary[f"spike_rate_{name}"] = rate
    details = {
        "status": "finished",
        "class_names": list(CLASS_NAMES),
        "per_class_accuracy": test_result.per_class_accuracy,
        "confusion_matrix": test_result.confusion.tolist(),
        "train_per_class_accuracy": train_result.per_class_accuracy,
        "test_tie_rate": test_result.tie_rate,
        "train_tie_rate": train_result.tie_rate,
        "spike_rates": test_result.spike_rates,
        "operations": operations.as_dict(),
        "test_images": len(data.test),
        "train_images": len(data.train),
    }
    return summary, details
