"""Tests of the report stage on small fake metrics folders."""

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from altnn.report import ReportInputError, build_comparison, load_runs
from altnn.report.table import describe_recipe
from altnn.study import PUBLISHED_RESULTS, PUBLISHED_TEST_CURVES, find_published_result
from pipeline import report as stage

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECIPE = {"optimizer": "adam", "lr": 0.001, "schedule": "onecycle", "augment": "flip,crop",
          "label_smoothing": 0.1, "weight_decay": 0.0, "head_activation": "relu"}
STUDY_KEYS = [(result.variant, result.steps) for result in PUBLISHED_RESULTS]
EXPECTED_FIGURES = {"gap.png", "curves-convnet-s0.png", "curves-convnet-s1.png",
                    "curves-snn-t5-s0.png", "curves-snn-t10-s0.png",
                    "curves-snn_adder-t25-s0.png"}


def write_history(metrics: Path, run: str, train: list[float], test: list[float]) -> None:
    variant = run.split("-")[0]
    folder = metrics / "history" / variant
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({
        "epoch": range(1, len(train) + 1),
        "train_accuracy": train,
        "test_accuracy": test,
        "train_loss": [0.5] * len(train),
        "test_loss": [0.6] * len(train),
        "gap": [a - b for a, b in zip(train, test, strict=True)],
        "lr": [0.001] * len(train),
        "epoch_seconds": [1.0] * len(train),
    })
    frame.to_csv(folder / f"{run}.csv", index=False)


def write_summary(metrics: Path, run: str, status: str = "finished", steps: int | None = None,
                  seed: int = 0, epochs_done: int = 3, train_subset: int | None = None,
                  test_subset: int | None = None, readout: str | None = None) -> None:
    variant = run.split("-")[0]
    folder = metrics / "runs" / variant
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"run": run, "variant": variant, "steps": steps, "seed": seed, "status": status,
               "reason": None if status == "finished" else "loss became NaN", "epochs": 3,
               "epochs_done": epochs_done, "recipe": RECIPE, "readout": readout,
               "train_subset": train_subset, "test_subset": test_subset}
    (folder / f"{run}.json").write_text(json.dumps(summary), encoding="utf-8")


def write_eval(metrics: Path, variant: str, entries: dict) -> None:
    folder = metrics / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{variant}.json").write_text(json.dumps(entries), encoding="utf-8")


def finished_eval(train: float, test: float, **extra) -> dict:
    return {"status": "finished", "train_accuracy": train, "test_accuracy": test,
            "gap": train - test, **extra}


def build_metrics(metrics: Path) -> None:
    """Write two convnet seeds, a diverged snn T=5 run, a finished snn T=10 run and an
    snn_adder T=25 run on a data subset; addernet is left untrained."""
    write_history(metrics, "convnet-s0", [0.90, 0.93, 0.95], [0.88, 0.89, 0.90])
    write_history(metrics, "convnet-s1", [0.91, 0.95, 0.97], [0.89, 0.93, 0.92])
    write_summary(metrics, "convnet-s0", seed=0)
    write_summary(metrics, "convnet-s1", seed=1)
    write_eval(metrics, "convnet", {
        "convnet-s0": finished_eval(0.95, 0.90, macs_per_image=12_000_000,
                                    energy_pj_per_image=5.5e7),
        "convnet-s1": finished_eval(0.97, 0.92, macs_per_image=12_000_000,
                                    energy_pj_per_image=5.5e7),
    })

    write_history(metrics, "snn-t5-s0", [0.50, 0.20], [0.48, 0.10])
    write_summary(metrics, "snn-t5-s0", status="diverged", steps=5, epochs_done=2,
                  readout="spike_count")
    write_history(metrics, "snn-t10-s0", [0.80, 0.85, 0.88], [0.79, 0.86, 0.87])
    write_summary(metrics, "snn-t10-s0", steps=10, readout="spike_count")
    write_eval(metrics, "snn", {
        "snn-t5-s0": {"status": "diverged", "train_accuracy": None, "test_accuracy": None,
                      "gap": None, "macs_per_image": None, "energy_pj_per_image": None},
        "snn-t10-s0": finished_eval(0.88, 0.87, test_tie_rate=0.015, macs_per_image=3_000_000,
                                    energy_pj_per_image=2.0e6),
    })

    write_history(metrics, "snn_adder-t25-s0", [0.60, 0.70, 0.75], [0.58, 0.69, 0.74])
    write_summary(metrics, "snn_adder-t25-s0", steps=25, train_subset=1000, test_subset=500,
                  readout="membrane")
    write_eval(metrics, "snn_adder", {"snn_adder-t25-s0": finished_eval(0.75, 0.74)})


def run_stage_main(metrics: Path, out: Path) -> None:
    stage.main(["--metrics", str(metrics), "--out", str(out)])


def read_outputs(out: Path) -> dict[str, bytes]:
    """Return the bytes of every file under `out`, keyed by relative path."""
    return {str(path.relative_to(out)): path.read_bytes()
            for path in sorted(out.rglob("*")) if path.is_file()}


def find_row(rows: list[dict], variant: str, steps: int | None) -> dict:
    matches = [row for row in rows if (row["variant"], row["steps"]) == (variant, steps)]
    assert len(matches) == 1, f"expected one row for {variant} T={steps}, got {len(matches)}"
    return matches[0]


def markdown_cells(markdown: str, variant: str, steps: str) -> list[str]:
    """Return the cells of the Markdown table row for (variant, steps as displayed)."""
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) > 2 and cells[0] == variant and cells[1] == steps:
            return cells
    raise AssertionError(f"no Markdown row for {variant} T={steps}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the fake metrics once, with a stale figure in place, and render the reports."""
    root = tmp_path_factory.mktemp("report")
    metrics, out = root / "metrics", root / "reports"
    build_metrics(metrics)
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "curves-convnet-s9.png").write_bytes(b"stale")
    run_stage_main(metrics, out)
    rows = build_comparison(load_runs(metrics))
    return {"metrics": metrics, "out": out, "rows": rows}


def test_table_rows_cover_study_and_extra(built):
    keys = [(row["variant"], row["steps"]) for row in built["rows"]]
    expected = STUDY_KEYS + [("snn_adder", 25)]
    assert sorted(keys, key=str) == sorted(expected, key=str)
    assert keys.index(("snn_adder", 25)) == len(keys) - 1
    assert keys[0] == ("convnet", None)


def test_table_status_strings(built):
    rows = built["rows"]
    assert find_row(rows, "convnet", None)["status"] == "finished"
    assert find_row(rows, "addernet", None)["status"] == "not trained"
    assert find_row(rows, "snn", 5)["status"] == "diverged"
    assert find_row(rows, "snn", 15)["status"] == "not trained"
    assert find_row(rows, "snn_adder", 25)["status"] == "finished"


def test_diverged_row_shows_no_number(built):
    row = find_row(built["rows"], "snn", 5)
    assert row["train_pct"] is None
    assert row["test_pct"] is None
    assert row["test_diff_pp"] is None
    assert row["final_gap_pp"] is None
    markdown = (built["out"] / "comparison.md").read_text(encoding="utf-8")
    cells = markdown_cells(markdown, "snn", "5")
    assert cells[3] == "diverged"
    assert cells[4] == "diverged"
    assert cells[-1] == "diverged"


def test_untrained_row_reads_not_trained(built):
    markdown = (built["out"] / "comparison.md").read_text(encoding="utf-8")
    cells = markdown_cells(markdown, "addernet", "—")
    assert cells[3] == "not trained"
    assert cells[4] == "not trained"
    assert cells[5] == "92.77"
    assert cells[6] == "89.21"


def test_mean_and_std_over_seeds(built):
    row = find_row(built["rows"], "convnet", None)
    assert row["seeds"] == 2
    assert row["train_pct"] == pytest.approx(96.0)
    assert row["test_pct"] == pytest.approx(91.0)
    assert row["test_pct_std"] == pytest.approx(math.sqrt(2), abs=0.01)
    assert row["train_pct_std"] == pytest.approx(math.sqrt(2), abs=0.01)
    markdown = (built["out"] / "comparison.md").read_text(encoding="utf-8")
    assert markdown_cells(markdown, "convnet", "—")[4] == "91.00 ± 1.41"


def test_single_seed_has_no_std(built):
    row = find_row(built["rows"], "snn", 10)
    assert row["seeds"] == 1
    assert row["test_pct"] == pytest.approx(87.0)
    assert row["test_pct_std"] is None


def test_difference_gap_and_best_epoch(built):
    row = find_row(built["rows"], "convnet", None)
    assert row["test_diff_pp"] == pytest.approx(91.0 - 90.72)
    assert row["final_gap_pp"] == pytest.approx(5.0)
    assert row["published_gap_pp"] == pytest.approx(96.06 - 90.72)
    # Gaps per seed: s0 goes 2 -> 5 pp, s1 goes 2 -> 5 pp.
    assert row["gap_change_pp"] == pytest.approx(3.0)
    # Seed-mean test accuracy per epoch: 88.5, 91.0, 91.0, so the first maximum wins.
    assert row["best_test_epoch"] == 2
    assert row["best_test_pct"] == pytest.approx(91.0)


def test_eval_extras_and_recipe(built):
    convnet = find_row(built["rows"], "convnet", None)
    snn = find_row(built["rows"], "snn", 10)
    assert snn["tie_rate_pct"] == pytest.approx(1.5)
    assert convnet["tie_rate_pct"] is None
    assert convnet["macs_per_image"] == pytest.approx(12_000_000)
    assert snn["energy_pj_per_image"] == pytest.approx(2.0e6)
    assert snn["readout"] == "spike_count"
    assert "optimizer=adam" in convnet["recipe"]
    assert "augment=flip,crop" in convnet["recipe"]
    assert convnet["epochs"] == "3/3"


def test_csv_columns_and_values(built):
    frame = pd.read_csv(built["out"] / "comparison.csv")
    required = {"variant", "steps", "seeds", "status", "train_pct", "train_pct_std", "test_pct",
                "test_pct_std", "published_train_pct", "published_test_pct", "test_diff_pp",
                "final_gap_pp", "best_test_epoch", "tie_rate_pct", "macs_per_image",
                "energy_pj_per_image", "recipe", "readout", "data"}
    assert required <= set(frame.columns)
    assert len(frame) == len(STUDY_KEYS) + 1
    addernet = frame[frame["variant"] == "addernet"].iloc[0]
    assert addernet["status"] == "not trained"
    assert pd.isna(addernet["test_pct"])
    diverged = frame[(frame["variant"] == "snn") & (frame["steps"] == 5)].iloc[0]
    assert pd.isna(diverged["test_pct"])
    convnet = frame[frame["variant"] == "convnet"].iloc[0]
    assert convnet["test_pct"] == pytest.approx(91.0)
    assert pd.isna(convnet["steps"])


def test_subset_run_is_flagged(built):
    row = find_row(built["rows"], "snn_adder", 25)
    assert row["data"] == "subset: train 1000, test 500"
    assert find_row(built["rows"], "convnet", None)["data"] == "full"
    markdown = (built["out"] / "comparison.md").read_text(encoding="utf-8")
    assert "**Warning: Some rows used a data subset" in markdown
    page = (built["out"] / "index.html").read_text(encoding="utf-8")
    assert 'class="warning"' in page


def test_subset_row_omits_difference(tmp_path):
    metrics = tmp_path / "metrics"
    write_history(metrics, "convnet-s0", [0.80, 0.85], [0.78, 0.84])
    write_summary(metrics, "convnet-s0", epochs_done=2, train_subset=1000, test_subset=500)
    write_eval(metrics, "convnet", {"convnet-s0": finished_eval(0.85, 0.84)})
    row = find_row(build_comparison(load_runs(metrics)), "convnet", None)
    assert row["test_pct"] == pytest.approx(84.0)
    assert row["published_test_pct"] == pytest.approx(90.72)
    assert row["test_diff_pp"] is None


def test_recipe_omits_inactive_settings():
    adam = {"optimizer": "adam", "lr": 0.001, "momentum": 0.9, "schedule": "none",
            "warmup_fraction": 0.25, "augment": []}
    assert describe_recipe(adam) == "optimizer=adam; lr=0.001; schedule=none; augment=none"
    sgd = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "cosine",
           "warmup_fraction": 0.1}
    assert describe_recipe(sgd) == ("optimizer=sgd; lr=0.1; momentum=0.9; schedule=cosine; "
                                    "warmup_fraction=0.1")


def test_markdown_has_header_and_notes(built):
    markdown = (built["out"] / "comparison.md").read_text(encoding="utf-8")
    assert markdown.startswith("# ")
    assert "ignores data movement" in markdown
    assert "Final epoch:" in markdown


def test_figures_are_valid_pngs(built):
    figures = built["out"] / "figures"
    names = {path.name for path in figures.iterdir()}
    assert names == EXPECTED_FIGURES
    for name in sorted(names):
        data = (figures / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{name} lacks the PNG signature"
        assert b"http" not in data, f"{name} metadata contains a URL"
        image = plt.imread(io.BytesIO(data), format="png")
        assert image.shape[0] > 100, f"{name} decodes to a tiny image {image.shape}"


def test_stale_figure_is_removed(built):
    assert not (built["out"] / "figures" / "curves-convnet-s9.png").exists()


def test_no_temporary_files_left(built):
    hidden = [path.name for path in built["out"].rglob(".*")]
    assert hidden == []


def test_html_is_offline(built):
    page = (built["out"] / "index.html").read_text(encoding="utf-8")
    text_only = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in text_only.lower()
    assert "<script" not in text_only.lower()
    assert "<link" not in text_only.lower()
    assert "@import" not in text_only.lower()
    assert "<table>" in page


def test_html_embeds_every_figure(built):
    page = (built["out"] / "index.html").read_text(encoding="utf-8")
    encoded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(encoded) == len(EXPECTED_FIGURES)
    for name in EXPECTED_FIGURES:
        assert f"<figcaption>{name}</figcaption>" in page
    assert base64.b64decode(encoded[0]).startswith(PNG_SIGNATURE)


def test_rerun_output_is_identical(built, tmp_path):
    out = tmp_path / "again"
    run_stage_main(built["metrics"], out)
    assert read_outputs(out) == read_outputs(built["out"])


def test_empty_metrics_reads_not_trained(tmp_path):
    rows = build_comparison(load_runs(tmp_path / "missing"))
    assert len(rows) == len(STUDY_KEYS)
    assert {row["status"] for row in rows} == {"not trained"}


def test_mixed_seeds_use_finished_only(tmp_path):
    write_history(tmp_path, "addernet-s0", [0.9], [0.8])
    write_summary(tmp_path, "addernet-s0", epochs_done=1)
    write_summary(tmp_path, "addernet-s1", status="diverged", seed=1, epochs_done=1)
    row = find_row(build_comparison(load_runs(tmp_path)), "addernet", None)
    assert row["seeds"] == 2
    assert row["status"] == "mixed: 1 finished, 1 diverged"
    assert row["test_pct"] == pytest.approx(80.0)
    assert row["test_pct_std"] is None


def test_history_only_run_is_incomplete(tmp_path):
    write_history(tmp_path, "snn-t15-s0", [0.7, 0.8], [0.6, 0.7])
    row = find_row(build_comparison(load_runs(tmp_path)), "snn", 15)
    assert row["status"] == "incomplete"
    assert row["test_pct"] is None


MALFORMED_CASES = {
    "truncated eval JSON": ("eval/convnet.json", '{"convnet-s0": {"status": "fini'),
    "history missing column": ("history/convnet/convnet-s0.csv", "epoch,train_accuracy\n1,0.9\n"),
    "accuracy in percent": ("history/convnet/convnet-s0.csv",
                            "epoch,train_accuracy,test_accuracy\n1,90.0,88.0\n"),
    "non-numeric accuracy": ("history/convnet/convnet-s0.csv",
                             "epoch,train_accuracy,test_accuracy\n1,0.9,high\n"),
    "repeated epoch": ("history/convnet/convnet-s0.csv",
                       "epoch,train_accuracy,test_accuracy\n1,0.9,0.8\n1,0.9,0.8\n"),
    "unknown status": ("runs/convnet/convnet-s0.json", '{"run": "convnet-s0", "status": "ok"}'),
    "eval without accuracy": ("eval/convnet.json", '{"convnet-s0": {"status": "finished"}}'),
    "run in wrong folder": ("runs/convnet/snn-t5-s0.json", '{"status": "finished"}'),
    "invalid run name": ("runs/convnet/convnet.json", '{"status": "finished"}'),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CASES))
def test_malformed_file_keeps_reports(built, tmp_path, case):
    relative, content = MALFORMED_CASES[case]
    metrics, out = tmp_path / "metrics", tmp_path / "reports"
    shutil.copytree(built["metrics"], metrics)
    shutil.copytree(built["out"], out)
    before = read_outputs(out)
    (metrics / relative).write_text(content, encoding="utf-8")

    with pytest.raises(ReportInputError) as raised:
        run_stage_main(metrics, out)

    message = str(raised.value)
    assert Path(relative).name in message
    assert "dvc repro" in message
    assert read_outputs(out) == before


def test_stage_exits_nonzero_on_malformed(tmp_path):
    metrics = tmp_path / "metrics"
    write_eval(metrics, "convnet", {})
    (metrics / "eval" / "convnet.json").write_text("[1, 2", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "--metrics", str(metrics),
         "--out", str(tmp_path / "reports")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "convnet.json: invalid JSON" in result.stderr
    assert not (tmp_path / "reports").exists()


def test_stage_help_lists_options(capsys):
    with pytest.raises(SystemExit) as raised:
        stage.main(["--help"])
    assert raised.value.code == 0
    help_text = capsys.readouterr().out
    assert "--metrics" in help_text
    assert "--out" in help_text


def test_plotting_uses_agg_whatever_environment():
    # A backend that cannot be imported makes plt.figure() fail unless the report
    # module selected Agg before pyplot was imported.
    environment = {**os.environ, "DISPLAY": ":0", "MPLBACKEND": "module://no_such_backend"}
    code = ("import altnn.report, matplotlib, matplotlib.pyplot as plt; plt.figure(); "
            "print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lower() == "agg"


@pytest.mark.parametrize("key", sorted(PUBLISHED_TEST_CURVES, key=str))
def test_published_curve_matches_table(key):
    curve = PUBLISHED_TEST_CURVES[key]
    result = find_published_result(*key)
    assert len(curve) == 12
    assert result is not None
    assert curve[-1] == pytest.approx(result.test_accuracy)
