"""One run from start (or resume) to its recorded outputs: checkpoint, history, MLflow run.

A resume file is written atomically after every epoch, outside the stage's declared
outputs (DVC deletes those before a stage runs). It is used only if its fingerprint,
a hash of the run's configuration and of this package's source, matches the run.
"""

import csv
import hashlib
import io
import json
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import altnn
from altnn.config import RunConfig
from altnn.data import CLASS_NAMES, PreparedData
from altnn.io import save_torch, write_json, write_text
from altnn.metrics import EvaluationResult
from altnn.tracking import Tracker
from altnn.training import DivergedError, EpochRecord, Trainer, evaluate

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class RunPaths:
    """File locations of one run."""

    checkpoint: Path  # final weights and history, read by the evaluate stage
    history_csv: Path  # per-epoch metrics; `dvc plots` draws every file in this folder
    summary_json: Path  # status, recipe and readout, read by the report
    resume: Path  # state after the last finished epoch; not a DVC output

    @classmethod
    def for_run(cls, run: RunConfig, models_dir: Path, history_dir: Path, summary_dir: Path,
                resume_dir: Path) -> "RunPaths":
        return cls(
            checkpoint=models_dir / f"{run.name}.pt",
            history_csv=history_dir / f"{run.name}.csv",
            summary_json=summary_dir / f"{run.name}.json",
            resume=resume_dir / f"{run.name}.pt",
        )


def source_digest() -> str:
    """Hash this package's Python source, so a code change invalidates resume files."""
    digest = hashlib.sha256()
    package = Path(altnn.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(run: RunConfig) -> str:
    settings = json.dumps(run.to_flat_dict(), sort_keys=True, default=str)
    return hashlib.sha256((settings + source_digest()).encode()).hexdigest()


def read_resume_file(path: Path) -> dict | None:
    """Return the saved state in `path`, or None when there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        log.warning("%s: unreadable resume file (%s); starting the run afresh", path, error)
        return None


class LogitsOnly(nn.Module):
    """Wrap a model so it returns plain logits, the form MLflow's model flavour expects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def history_csv(history: list[EpochRecord]) -> str:
    rows = [record.as_row() for record in history]
    columns = list(rows[0]) if rows else list(EpochRecord.__dataclass_fields__)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    row = record.as_row()
    row.pop("epoch")
    return row


class RunRecorder:
    """Writes a run's files and mirrors its progress to MLflow."""

    def __init__(self, run: RunConfig, paths: RunPaths, tracker: Tracker, trainer: Trainer) -> None:
        self.run, self.paths, self.tracker, self.trainer = run, paths, tracker, trainer
        self.fingerprint = fingerprint(run)

    def save_resume(self, mlflow_run_id: str) -> None:
        save_torch({"fingerprint": self.fingerprint, "mlflow_run_id": mlflow_run_id,
                    "trainer": self.trainer.state_dict()}, self.paths.resume)

    def backfill_metrics(self) -> None:
        """Log epochs the resume file has but MLflow lacks (killed between the two writes)."""
        logged = {metric.step for metric in
                  self.tracker.client.get_metric_history(self.tracker.run_id, "test_accuracy")}
        for record in self.trainer.history:
            if record.epoch not in logged:
                self.tracker.log_metrics(epoch_metrics(record), step=record.epoch)

    def write_outputs(self, status: str, reason: str | None) -> None:
        """Write the final checkpoint, the history CSV and the run summary."""
        history = self.trainer.history
        run = self.run
        save_torch({
            "format": CHECKPOINT_FORMAT,
            "run": run.name,
            "status": status,
            "reason": reason,
            "model_config": run.model.__dict__,
            "settings": run.to_flat_dict(),
            "state_dict": self.trainer.model.state_dict(),
            "history": [record.as_dict() for record in history],
            "mlflow_run_id": self.tracker.run_id,
        }, self.paths.checkpoint)
        write_text(self.paths.history_csv, history_csv(history))
        recipe = {key: value for key, value in run.to_flat_dict().items()
                  if "." not in key and key not in ("variant", "steps", "seed")}
        write_json(self.paths.summary_json, {
            "run": run.name, "variant": run.variant, "steps": run.steps, "seed": run.seed,
            "status": status, "reason": reason,
            "epochs": run.train.epochs, "epochs_done": len(history),
            "recipe": recipe,
            "readout": run.recipe.readout if run.steps is not None else None,
            "train_subset": run.data.train_subset, "test_subset": run.data.test_subset,
            "mlflow_run_id": self.tracker.run_id,
        })

    def log_final(self, test_result: EvaluationResult) -> None:
        last = self.trainer.history[-1]
        self.tracker.log_metrics({
            "final_train_accuracy": last.train_accuracy,
            "final_test_accuracy": last.test_accuracy,
            "final_gap": last.gap,
            "best_test_accuracy": max(record.test_accuracy for record in self.trainer.history),
            "final_test_tie_rate": test_result.tie_rate,
        }, step=last.epoch)
        self.tracker.log_dict({
            "class_names": list(CLASS_NAMES),
            "confusion_matrix": test_result.confusion.tolist(),
            "per_class_accuracy": test_result.per_class_accuracy,
        }, "confusion_matrix.json")


def _run_tags(run: RunConfig) -> dict:
    return {"variant": run.variant, "steps": run.steps if run.steps is not None else "none",
            "seed": run.seed, "readout": run.recipe.readout if run.steps is not None else "logits"}


def train_run(run: RunConfig, data: PreparedData, paths: RunPaths, tracker: Tracker,
              device: torch.device) -> str:
    """Train (or resume) one run and record it; return its status: finished or diverged."""
    trainer = Trainer(run, data, device)
    recorder = RunRecorder(run, paths, tracker, trainer)
    saved = read_resume_file(paths.resume)
    state = saved if saved is not None and saved.get("fingerprint") == recorder.fingerprint else None
    if saved is not None and state is None:
        log.info("%s: made by other settings or code; starting the run afresh", paths.resume)
        # A run killed without a chance to end stays RUNNING in MLflow; it will never resume.
        tracker.end_abandoned(saved.get("mlflow_run_id"),
                              "abandoned: the settings or the code changed before it resumed")
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        log.info("%s: resuming after epoch %d of %d", run.name, trainer.epochs_done, run.train.epochs)
    run_id = tracker.start(run.name, run.to_flat_dict(), _run_tags(run),
                           resume_run_id=state["mlflow_run_id"] if state else None)
    if state is not None:
        recorder.backfill_metrics()

    try:
        test_result = None
        epochs = tqdm(total=run.train.epochs, initial=trainer.epochs_done, desc=run.name, unit="epoch",
                      disable=not sys.stderr.isatty())
        while trainer.epochs_done < run.train.epochs:
            record, test_result = trainer.train_epoch()
            recorder.save_resume(run_id)
            tracker.log_metrics(epoch_metrics(record), step=record.epoch)
            epochs.update()
            epochs.set_postfix(test=f"{100 * record.test_accuracy:.2f}%", refresh=False)
            log.info("%s epoch %d/%d: train %.2f%%, test %.2f%%, gap %.2f pp, %.1f s",
                     run.name, record.epoch, run.train.epochs, 100 * record.train_accuracy,
                     100 * record.test_accuracy, 100 * record.gap, record.epoch_seconds)
        epochs.close()
        if test_result is None:  # every epoch was done before the interruption
            test_result = evaluate(trainer.model, trainer.test_images, trainer.test_labels,
                                   run.train.eval_batch_size)
        recorder.write_outputs("finished", None)
        recorder.log_final(test_result)
        # Two images, so the exported graph keeps a dynamic batch size instead of 1.
        example = trainer.test_images[:2].cpu().numpy()
        tracker.log_model(LogitsOnly(trainer.model).cpu().eval(), example)
        tracker.end("FINISHED")
    except DivergedError as error:
        log.error("%s diverged: %s", run.name, error)
        recorder.write_outputs("diverged", str(error))
        tracker.end("FAILED", f"diverged: {error}")
        paths.resume.unlink(missing_ok=True)
        return "diverged"
    except KeyboardInterrupt:
        tracker.end("KILLED", "interrupted; `dvc repro` resumes from the last finished epoch")
        raise
    except BaseException as error:
        tracker.end("FAILED", f"{type(error).__name__}: {error}")
        raise
    trainer.model.to(device)
    paths.resume.unlink(missing_ok=True)
    return "finished"
