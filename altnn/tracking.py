"""MLflow tracking: where the store lives, one experiment for the study, one run per run.

The store is `MLFLOW_TRACKING_URI` when set, otherwise a SQLite database at the
repository root with artifacts beside it. The root is `DVC_ROOT` when DVC sets it,
because `dvc exp run --temp` and queued experiments run in a copy under `.dvc/tmp/exps`
that is deleted afterwards. Otherwise the root is the git top level, else the working
folder.
"""

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402  (the telemetry switch must be set before the import)
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402

log = logging.getLogger(__name__)

DATABASE_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"
MAX_PARAM_LENGTH = 6000
LOCK_ATTEMPTS = 5
# Opens the MLflow 3 UI on its model-training pages rather than its GenAI pages.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def repository_root() -> Path:
    """Return DVC_ROOT, else the git top level of the working folder, else the working folder."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        return Path(top).resolve()
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd().resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DATABASE_NAME}"


def artifact_location(root: Path) -> str:
    return (root / ARTIFACTS_NAME).as_uri()


def git_commit(root: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# DVC writes these, and MLflow records the parameters anyway.
DIRTY_CHECK_IGNORES = ("params.yaml", "dvc.lock")


def git_dirty(folder: Path) -> bool | None:
    """Return whether tracked files in `folder`'s git work tree differ from HEAD.

    params.yaml and dvc.lock are left out: `dvc exp run -S` edits the first and every stage
    rewrites the second. Returns None outside a git work tree or without git.
    """
    excludes = [f":(top,exclude){name}" for name in DIRTY_CHECK_IGNORES]
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                 *excludes], cwd=folder, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(result.stdout.strip())


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Serialise store creation between processes: two first runs would both migrate it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{DATABASE_NAME}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _retry(call, *args, **kwargs):
    """Call an MLflow function, retrying while SQLite reports a locked database."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MLflow wraps SQLAlchemy errors in its own types
            if "database is locked" not in str(error) or attempt == LOCK_ATTEMPTS - 1:
                raise
            log.warning("tracking store is locked; retrying in %d s", 2**attempt)
            time.sleep(2**attempt)
    return None


class Tracker:
    """One MLflow run of the study: created or resumed, logged per epoch, then ended."""

    def __init__(self, experiment: str, root: Path | None = None) -> None:
        self.root = root or repository_root()
        self.uri = tracking_uri(self.root)
        with store_lock(self.root):
            self.client = MlflowClient(tracking_uri=self.uri)
            found = _retry(self.client.get_experiment_by_name, experiment)
            if found is None:
                # An explicit location: one created inside a temporary DVC workspace
                # would otherwise point there forever.
                self.experiment_id = _retry(self.client.create_experiment, experiment,
                                            artifact_location=artifact_location(self.root),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                self.experiment_id = found.experiment_id
        self.run_id: str | None = None

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
              resume_run_id: str | None = None) -> str:
        """Resume `resume_run_id` if the store has it, else create a run; return its id."""
        if resume_run_id and self._exists(resume_run_id):
            self.run_id = resume_run_id
            _retry(self.client.update_run, resume_run_id, status="RUNNING")
            log.info("resuming MLflow run %s (%s)", run_name, resume_run_id)
        else:
            run = _retry(self.client.create_run, self.experiment_id, run_name=run_name,
                         tags=self._default_tags(tags))
            self.run_id = run.info.run_id
            log.info("MLflow run %s (%s) in %s", run_name, self.run_id, self.uri)
        param_list = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        _retry(self.client.log_batch, self.run_id, params=param_list)
        return self.run_id

    def _exists(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return run.info.experiment_id == self.experiment_id

    def _default_tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        merged = {key: str(value) for key, value in tags.items() if value is not None}
        commit = git_commit(self.root)
        if commit:
            merged["git_commit"] = commit
            merged["mlflow.source.git.commit"] = commit
        # The code that runs is in the working folder, which differs from the root in DVC's
        # queued runs.
        dirty = git_dirty(Path.cwd())
        if dirty is not None:
            merged["git_dirty"] = str(dirty).lower()
        if os.environ.get("DVC_EXP_NAME"):
            merged["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        return merged

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        _retry(self.client.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        _retry(self.client.log_batch, self.run_id, tags=batch)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        _retry(self.client.log_dict, self.run_id, data, artifact_file)

    def log_model(self, model, input_example) -> None:
        """Log `model` as an MLflow PyTorch model with an input example (NumPy array)."""
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                     pip_requirements=_pip_requirements(),
                                     code_paths=[str(Path(__file__).parent)])

    def end_abandoned(self, run_id: str | None, reason: str) -> None:
        """Mark another run of this experiment KILLED with `reason` if it is still RUNNING."""
        if not run_id or not self._exists(run_id):
            return
        if self.client.get_run(run_id).info.status != "RUNNING":
            return
        _retry(self.client.set_tag, run_id, "altnn.end_reason", reason[:MAX_PARAM_LENGTH])
        _retry(self.client.set_terminated, run_id, status="KILLED")
        log.info("MLflow run %s was left RUNNING; marked KILLED (%s)", run_id, reason)

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED, with the reason as a tag."""
        if self.run_id is None:
            return
        if reason:
            self.set_tags({"altnn.end_reason": reason[:MAX_PARAM_LENGTH]})
        RunStatus.from_string(status)  # rejects unknown names
        _retry(self.client.set_terminated, self.run_id, status=status)
        log.info("MLflow run %s ended %s", self.run_id, status)


def _pip_requirements() -> list[str]:
    """Pin the packages the logged model needs, without MLflow's slow inference."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("torch", "snntorch", "numpy"):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return requirements
