"""Stage scripts given bad input: one clear message, exit status 2, nothing recorded changes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT

STAGES = ("download", "preprocess", "train", "evaluate", "report")


def run_stage(workspace: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", *arguments], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def workspace(tmp_path) -> Path:
    shutil.copyfile(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help(stage, workspace):
    result = run_stage(workspace, f"pipeline.{stage}", "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_bad_params_stop_train_before_any_change(workspace):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["convnet"]["lr"] = "fast"
    params["train"]["epochs"] = 0
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    recorded = workspace / "models" / "convnet" / "convnet-s0.pt"
    recorded.parent.mkdir(parents=True)
    recorded.write_bytes(b"earlier checkpoint")

    result = run_stage(workspace, "pipeline.train", "convnet")
    assert result.returncode == 2
    assert "convnet.lr: invalid value 'fast'" in result.stderr
    assert "train.epochs: invalid value 0" in result.stderr
    assert recorded.read_bytes() == b"earlier checkpoint"
    assert not (workspace / "mlflow.db").exists()


def test_malformed_yaml_named(workspace):
    (workspace / "params.yaml").write_text("steps: [5, 10\n")
    result = run_stage(workspace, "pipeline.preprocess")
    assert result.returncode == 2
    assert "params.yaml: not valid YAML" in result.stderr


def test_duplicate_key_rejected(workspace):
    text = (workspace / "params.yaml").read_text()
    (workspace / "params.yaml").write_text(text.replace("snn:\n", "snn:\n  lr: 0.5\n", 1))
    result = run_stage(workspace, "pipeline.validate")
    assert result.returncode == 2
    assert "the key 'lr' appears twice" in result.stderr
    assert not (workspace / "data" / "params-valid.txt").exists()


def test_missing_prepared_data_names_stage(workspace):
    result = run_stage(workspace, "pipeline.train", "convnet")
    assert result.returncode == 2
    assert "run the preprocess stage first" in result.stderr


def test_evaluate_without_checkpoints(workspace):
    result = run_stage(workspace, "pipeline.evaluate", "snn")
    assert result.returncode == 2
    assert "models/snn: no checkpoints" in result.stderr


def convnet_checkpoint(workspace: Path, run_name: str = "convnet-s0") -> Path:
    """Return a checkpoint path in the ConvNet's model folder, creating the folder."""
    folder = workspace / "models" / "convnet"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_name}.pt"


def test_corrupt_checkpoint_keeps_recorded_metrics(workspace):
    checkpoint = convnet_checkpoint(workspace)
    checkpoint.write_bytes(b"not a checkpoint")
    details = workspace / "metrics" / "details" / "convnet" / "convnet-s0.json"
    details.parent.mkdir(parents=True)
    details.write_text("{}")

    result = run_stage(workspace, "pipeline.evaluate", "convnet")
    assert result.returncode == 2
    assert "convnet-s0.pt: unreadable checkpoint" in result.stderr
    assert details.read_text() == "{}"


def test_checkpoint_of_other_format_rejected(workspace):
    checkpoint = convnet_checkpoint(workspace)
    torch.save({"state_dict": {}}, checkpoint)
    result = run_stage(workspace, "pipeline.evaluate", "convnet")
    assert result.returncode == 2
    assert "not an altnn checkpoint" in result.stderr


def test_checkpoint_of_other_variant_rejected(workspace):
    checkpoint = convnet_checkpoint(workspace, "snn-t5-s0")
    torch.save({"format": 1, "run": "snn-t5-s0", "model_config": {"variant": "snn"}}, checkpoint)
    result = run_stage(workspace, "pipeline.evaluate", "convnet")
    assert result.returncode == 2
    assert "a checkpoint of variant 'snn' in the folder of 'convnet'" in result.stderr


def test_validate_stage_writes_marker(workspace):
    result = run_stage(workspace, "pipeline.validate")
    assert result.returncode == 0
    assert (workspace / "data" / "params-valid.txt").read_text() == "params.yaml is valid\n"
