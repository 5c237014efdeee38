"""End to end: `dvc repro` and `dvc exp run` in a temporary copy of the repository.

These run real DVC, real MLflow and real stage scripts on a small class-stratified
subset of the real data, one epoch per run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

QUICK_PARAMS = {"data": {"train_subset": 300, "test_subset": 100}, "train": {"epochs": 1}}


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


def stage_environment(workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        env.pop(name, None)
    env.update({"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
                "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"})
    return env


def run(command: list[str], workspace: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=workspace, env=stage_environment(workspace),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def make_workspace(root: Path, overrides: dict) -> Path:
    """Copy the repository's files into `root`, apply `overrides` to params.yaml, commit."""
    for name in tracked_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "test workspace"], root)
    return root


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, system_dir) -> Path:
    workspace = make_workspace(tmp_path_factory.mktemp("repo"), QUICK_PARAMS)
    run(["dvc", "repro"], workspace)
    return workspace


def finished_runs(workspace: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("altnn-fashion-mnist")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, {run.info.run_name: run for run in runs}


def test_repro_writes_every_stage_output(reproduced):
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert (reproduced / "data" / "raw" / name).is_file()
    assert (reproduced / "data" / "prepared" / "train.pt").is_file()
    assert (reproduced / "models" / "convnet" / "convnet-s0.pt").is_file()
    assert (reproduced / "models" / "snn_adder" / "snn_adder-t20-s0.pt").is_file()
    assert (reproduced / "metrics" / "history" / "snn" / "snn-t5-s0.csv").is_file()
    assert (reproduced / "metrics" / "details" / "addernet" / "addernet-s0.json").is_file()
    for name in ("comparison.md", "comparison.csv", "index.html", "figures/gap.png"):
        assert (reproduced / "reports" / name).is_file(), name


def test_repro_logs_one_finished_mlflow_run_per_run(reproduced):
    client, runs = finished_runs(reproduced)
    expected = {"convnet-s0", "addernet-s0"} | {f"{variant}-t{steps}-s0" for variant in ("snn", "snn_adder")
                                                 for steps in (5, 10, 15, 20)}
    assert set(runs) == expected
    for name, record in runs.items():
        assert record.info.status == "FINISHED", name
        points = client.get_metric_history(record.info.run_id, "test_accuracy")
        assert [point.step for point in points] == [1], name
    assert runs["snn-t10-s0"].data.tags["steps"] == "10"
    assert runs["snn-t10-s0"].data.params["steps"] == "10"


def test_report_lists_the_runs(reproduced):
    table = (reproduced / "reports" / "comparison.csv").read_text()
    lines = table.splitlines()
    convnet = next(line for line in lines if line.startswith("convnet,"))
    assert "not trained" not in convnet
    assert "subset" in convnet
    assert sum(line.startswith("snn_adder,") for line in lines) == 4
    assert (reproduced / "reports" / "figures" / "curves-snn-t5-s0.png").is_file()


def test_metrics_and_params_commands(reproduced):
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced).stdout)
    assert "convnet-s0" in json.dumps(metrics)
    run(["dvc", "params", "diff"], reproduced)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], reproduced).stdout)
    assert "errors" not in plots
    assert "metrics/history/convnet/convnet-s0.csv" in plots["data"]
    assert "metrics/history/snn/snn-t5-s0.csv" in plots["data"]


def test_steps_scalar_retrains_only_spiking(reproduced):
    result = run(["dvc", "exp", "run", "-S", "steps=20"], reproduced)
    output = result.stdout + result.stderr
    assert "Stage 'train@convnet' didn't change, skipping" in output
    assert "Stage 'train@addernet' didn't change, skipping" in output
    assert "Running stage 'train-spiking@snn'" in output
    assert sorted(p.name for p in (reproduced / "models" / "snn").iterdir()) == ["snn-t20-s0.pt"]
    csv_rows = (reproduced / "reports" / "comparison.csv").read_text().splitlines()
    snn_rows = [row for row in csv_rows if row.startswith("snn,")]
    assert sum("not trained" in row for row in snn_rows) == 3


def test_queued_grid_logs_to_root(reproduced):
    run(["dvc", "exp", "run", "--queue", "-S", "steps=2,3"], reproduced)
    run(["dvc", "queue", "start", "-j", "2"], reproduced)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], reproduced).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status
    assert status.count("Success") >= 2, status

    client, runs = finished_runs(reproduced)
    for steps in (2, 3):
        for variant in ("snn", "snn_adder"):
            record = runs[f"{variant}-t{steps}-s0"]
            assert record.info.status == "FINISHED"
            assert record.data.tags.get("dvc_experiment"), record.data.tags
            points = client.get_metric_history(record.info.run_id, "test_accuracy")
            assert [point.step for point in points] == [1]
    assert not (reproduced / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()


def test_invalid_param_keeps_recorded_results(reproduced):
    params_file = reproduced / "params.yaml"
    original = params_file.read_text()
    history = reproduced / "metrics" / "history" / "convnet" / "convnet-s0.csv"
    recorded = history.read_text()
    params = yaml.safe_load(original)
    params["train"]["epochs"] = 0
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run(["dvc", "repro"], cwd=reproduced, env=stage_environment(reproduced),
                                capture_output=True, text=True, timeout=300)
    finally:
        params_file.write_text(original)
    assert result.returncode != 0
    assert "train.epochs: invalid value 0" in result.stdout + result.stderr
    assert history.read_text() == recorded
    assert (reproduced / "models" / "convnet" / "convnet-s0.pt").is_file()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, system_dir) -> tuple[Path, Path]:
    """Two workspaces: one trains straight through, the other is killed after an epoch."""
    params = {"data": {"train_subset": 1000, "test_subset": 200}, "train": {"epochs": 4}}
    straight = make_workspace(tmp_path_factory.mktemp("straight"), params)
    killed = make_workspace(tmp_path_factory.mktemp("killed"), params)
    run(["dvc", "repro", "evaluate@convnet"], straight)

    resume_file = killed / "models" / ".resume" / "convnet" / "convnet-s0.pt"
    process = subprocess.Popen(["dvc", "repro", "evaluate@convnet"], cwd=killed,
                               env=stage_environment(killed), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not resume_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert resume_file.exists(), "the stage ended before it saved an epoch"
    return straight, killed


def test_killed_stage_resumes_to_same_metrics(interrupted):
    straight, killed = interrupted
    result = run(["dvc", "repro", "evaluate@convnet"], killed)
    assert "resuming after epoch" in result.stdout + result.stderr

    expected = json.loads((straight / "metrics" / "eval" / "convnet.json").read_text())
    actual = json.loads((killed / "metrics" / "eval" / "convnet.json").read_text())
    assert actual == expected

    client, runs = finished_runs(killed)
    assert list(runs) == ["convnet-s0"]  # the same MLflow run, not a second one
    record = runs["convnet-s0"]
    assert record.info.status == "FINISHED"
    steps = [point.step for point in client.get_metric_history(record.info.run_id, "test_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4]
