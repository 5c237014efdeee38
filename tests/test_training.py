import dataclasses
import json
import subprocess

import pytest
import torch

from altnn.config import ConfigError, RunConfig, TrainConfig, VariantConfig
from altnn.data import DataConfig
from altnn.experiment import RunPaths, train_run
from altnn.tracking import Tracker, git_dirty
from altnn.training import Trainer, augment, make_optimizer, make_scheduler, resolve_device

CPU = torch.device("cpu")


def make_run(epochs=2, **recipe) -> RunConfig:
    defaults = dict(optimizer="adamw", lr=2e-3, schedule="onecycle", augment=("flip", "crop", "erase"),
                    label_smoothing=0.1, head_activation="relu")
    defaults.update(recipe)
    return RunConfig("convnet", None, 0, VariantConfig(**defaults),
                     TrainConfig(epochs=epochs, batch_size=64, eval_batch_size=256),
                     DataConfig(train_subset=512, test_subset=200))


@pytest.fixture()
def tracker_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path / "store"


def run_paths(tmp_path, run):
    return RunPaths.for_run(run, tmp_path / "models", tmp_path / "history", tmp_path / "runs",
                            tmp_path / "resume")


def test_augment_keeps_shape_and_is_seeded():
    images = torch.randn(16, 1, 28, 28)
    first = augment(images, ("flip", "crop", "erase"), -1.0, torch.Generator().manual_seed(3))
    again = augment(images, ("flip", "crop", "erase"), -1.0, torch.Generator().manual_seed(3))
    assert first.shape == images.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, images)


def test_crop_shift_fills_with_background():
    images = torch.ones(64, 1, 28, 28)
    shifted = augment(images, ("crop",), -1.0, torch.Generator().manual_seed(0))
    assert set(shifted.unique().tolist()) == {-1.0, 1.0}
    assert (shifted == 1).sum(dim=(1, 2, 3)).min() >= 26 * 26


def test_resumed_training_equals_uninterrupted(tiny_data):
    straight = Trainer(make_run(), tiny_data, CPU)
    straight.train_epoch()
    straight.train_epoch()

    first_half = Trainer(make_run(), tiny_data, CPU)
    first_half.train_epoch()
    state = first_half.state_dict()
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer(make_run(), tiny_data, CPU)
    resumed.load_state_dict(state)
    resumed.train_epoch()

    assert [r.test_accuracy for r in resumed.history] == [r.test_accuracy for r in straight.history]
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_spike_adder_weights_stay_bounded(tiny_data):
    recipe = VariantConfig(optimizer="adam", lr=0.05, readout="membrane",
                           spike_adder_weights="unit_interval")
    run = RunConfig("snn_adder", 2, 0, recipe, TrainConfig(epochs=1, batch_size=64, eval_batch_size=256),
                    DataConfig(train_subset=512, test_subset=200))
    trainer = Trainer(run, tiny_data, CPU)
    weight = trainer.model.block2.layer.weight
    before = weight.detach().clone()
    trainer.train_epoch()
    assert not torch.equal(weight, before)
    assert weight.min() >= 0
    assert weight.max() <= 1
    # The large learning rate pushes some weights onto the ends of [0, 1].
    assert ((weight == 0) | (weight == 1)).any()


def test_finished_run_records_everything(tiny_data, tmp_path, tracker_root):
    run = make_run(epochs=2)
    paths = run_paths(tmp_path, run)
    tracker = Tracker("test-study", root=tracker_root)
    assert train_run(run, tiny_data, paths, tracker, CPU) == "finished"

    client = tracker.client
    record = client.get_run(tracker.run_id)
    assert record.info.status == "FINISHED"
    assert record.data.tags["variant"] == "convnet"
    assert record.data.params["lr"] == "0.002"
    assert record.data.tags["git_dirty"] in ("true", "false")
    history = client.get_metric_history(tracker.run_id, "test_accuracy")
    assert sorted(metric.step for metric in history) == [1, 2]
    assert "final_test_accuracy" in record.data.metrics
    summary = json.loads(paths.summary_json.read_text())
    assert summary["status"] == "finished"
    assert summary["epochs_done"] == 2
    assert paths.history_csv.read_text().count("\n") == 3
    assert not paths.resume.exists()
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tracker_root / "mlartifacts").as_uri()


def test_git_dirty_ignores_params_file(tmp_path):
    def git(*arguments):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *arguments],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    (tmp_path / "params.yaml").write_text("steps: 5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "keep").write_text("")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    assert git_dirty(tmp_path / "sub") is False
    (tmp_path / "params.yaml").write_text("steps: 20\n")
    (tmp_path / "notes.txt").write_text("untracked")
    assert git_dirty(tmp_path / "sub") is False
    (tmp_path / "model.py").write_text("a = 2\n")
    assert git_dirty(tmp_path / "sub") is True


@pytest.mark.parametrize("variant", ["convnet", "addernet", "snn", "snn_adder"])
def test_logged_model_takes_any_batch_size(variant, tmp_path, tracker_root):
    """MLflow exports the model from a two-image example; the export must keep the batch free."""
    import mlflow

    from altnn.config import ModelConfig
    from altnn.experiment import LogitsOnly
    from altnn.models import build_model

    steps = 2 if variant.startswith("snn") else None
    model = LogitsOnly(build_model(ModelConfig(variant=variant, steps=steps, readout="membrane"))).eval()
    tracker = Tracker("test-study", root=tracker_root)
    tracker.start(variant, {}, {})
    tracker.log_model(model, torch.randn(2, 1, 28, 28).numpy())
    mlflow.set_tracking_uri(tracker.uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{tracker.run_id}/model", dst_path=str(tmp_path / "load"))
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=1e-4, atol=1e-4)


def test_diverged_run_marked_failed(tiny_data, tmp_path, tracker_root, monkeypatch):
    calls = {"count": 0}
    real_cross_entropy = torch.nn.functional.cross_entropy

    def poisoned(*args, **kwargs):
        calls["count"] += 1
        loss = real_cross_entropy(*args, **kwargs)
        return loss * float("nan") if calls["count"] == 5 else loss

    monkeypatch.setattr("altnn.training.F.cross_entropy", poisoned)
    run = make_run(epochs=2)
    paths = run_paths(tmp_path, run)
    tracker = Tracker("test-study", root=tracker_root)
    assert train_run(run, tiny_data, paths, tracker, CPU) == "diverged"

    record = tracker.client.get_run(tracker.run_id)
    assert record.info.status == "FAILED"
    assert "non-finite training loss" in record.data.tags["altnn.end_reason"]
    summary = json.loads(paths.summary_json.read_text())
    assert summary["status"] == "diverged"
    assert "batch 5" in summary["reason"]


def test_interrupted_run_marked_killed_then_resumes(tiny_data, tmp_path, tracker_root, monkeypatch):
    run = make_run(epochs=2)
    paths = run_paths(tmp_path, run)
    real_epoch = Trainer.train_epoch

    def stop_in_second_epoch(self):
        if self.epochs_done == 1:
            raise KeyboardInterrupt
        return real_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_second_epoch)
    tracker = Tracker("test-study", root=tracker_root)
    with pytest.raises(KeyboardInterrupt):
        train_run(run, tiny_data, paths, tracker, CPU)
    first_id = tracker.run_id
    assert tracker.client.get_run(first_id).info.status == "KILLED"
    assert paths.resume.exists()
    assert not paths.checkpoint.exists()

    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    tracker = Tracker("test-study", root=tracker_root)
    assert train_run(run, tiny_data, paths, tracker, CPU) == "finished"
    assert tracker.run_id == first_id
    assert tracker.client.get_run(first_id).info.status == "FINISHED"
    steps = [m.step for m in tracker.client.get_metric_history(first_id, "test_accuracy")]
    assert sorted(steps) == [1, 2]


def test_resume_file_of_other_settings_ignored(tiny_data, tmp_path, tracker_root, monkeypatch):
    run = make_run(epochs=1)
    paths = run_paths(tmp_path, run)
    paths.resume.parent.mkdir(parents=True)
    torch.save({"fingerprint": "other", "mlflow_run_id": "x", "trainer": {}}, paths.resume)
    tracker = Tracker("test-study", root=tracker_root)
    assert train_run(dataclasses.replace(run), tiny_data, paths, tracker, CPU) == "finished"
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_abandoned_run_marked_killed(tiny_data, tmp_path, tracker_root):
    """A SIGKILLed run stays RUNNING; starting afresh under new settings closes it."""
    run = make_run(epochs=1)
    paths = run_paths(tmp_path, run)
    tracker = Tracker("test-study", root=tracker_root)
    left_running = tracker.start(run.name, {}, {})
    paths.resume.parent.mkdir(parents=True)
    torch.save({"fingerprint": "older settings", "mlflow_run_id": left_running, "trainer": {}},
               paths.resume)

    tracker = Tracker("test-study", root=tracker_root)
    assert train_run(run, tiny_data, paths, tracker, CPU) == "finished"
    assert tracker.run_id != left_running
    abandoned = tracker.client.get_run(left_running)
    assert abandoned.info.status == "KILLED"
    assert abandoned.data.tags["altnn.end_reason"].startswith("abandoned")


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8, 40])
@pytest.mark.parametrize("warmup_fraction", [0.0, 0.1, 0.25, 0.9])
def test_onecycle_handles_few_batches(total_steps, warmup_fraction):
    model = torch.nn.Linear(2, 1)
    recipe = VariantConfig(optimizer="adam", lr=1e-2, schedule="onecycle", warmup_fraction=warmup_fraction)
    optimizer = make_optimizer(recipe, model)
    scheduler = make_scheduler(recipe, optimizer, total_steps)
    for _ in range(total_steps):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    assert optimizer.param_groups[0]["lr"] <= 1e-2


def test_cuda_device_without_cuda_is_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device is 'cuda' but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU
