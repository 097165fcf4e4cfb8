"""Experiment trackers: what reaches TensorBoard, W&B, Trackio and MLflow, read back with each one's own reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from opdctl.cli import app
from opdctl.config.files import load_config
from opdctl.errors import ConfigError
from opdctl.runs.rundir import RunDir
from opdctl.runs.trackers import Trackers, require_trackers, scalars
from opdctl.runs.trackers.mlflow import mlflow_name
from opdctl.runs.trackers.tensorboard import TensorBoardTracker

from .conftest import read_metrics, tiny_config, write_config

ALL = ["tensorboard", "wandb", "trackio", "mlflow"]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    series = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    series.update({tag: [(e.step, None) for e in events.Histograms(tag)] for tag in events.Tags()["histograms"]})
    return series


# configuration and start-up -------------------------------------------------------


def test_an_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match=r"output.report_to.*unknown tracker 'comet'.*mlflow, tensorboard"):
        load_config(None, ["output.report_to=[tensorboard,comet]"])


def test_a_missing_library_stops_the_run_before_models_load(monkeypatch, tmp_path):
    monkeypatch.setattr(TensorBoardTracker, "libraries", ("no_such_tracker_library",))
    with pytest.raises(ConfigError, match=r"pip install 'opdctl\[tensorboard\]'"):
        require_trackers(["tensorboard"])
    overrides = ["student.model=/nonexistent/model", f"output.dir={tmp_path / 'run'}", "output.report_to=[tensorboard]"]
    result = CliRunner().invoke(app, ["train", *overrides])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0, result.output
    assert "no_such_tracker_library is not installed: pip install 'opdctl[tensorboard]'" in result.output
    assert not (tmp_path / "run").exists()


def test_records_become_series_with_their_own_names():
    step = {"step": 3, "loss": 0.5, "skipped": False, "hit_ratio": None, "finish_eos": 2, "note": "text"}
    assert scalars(step) == {"loss": 0.5, "skipped": 0.0, "finish_eos": 2.0}
    evaluation = {"step": 4, "eval": "synthetic", "when": "after", "accuracy": 0.25, "pass@4": 0.5}
    assert scalars(evaluation) == {"eval/synthetic/accuracy": 0.25, "eval/synthetic/pass@4": 0.5}
    teacher = {"step": 0, "eval": "aime24", "when": "teacher", "accuracy": 0.75}
    assert scalars(teacher) == {"teacher/aime24/accuracy": 0.75}
    assert mlflow_name("eval/aime24/pass@16") == "eval/aime24/pass_at_16"


# resume, with TensorBoard's event files -------------------------------------------


HISTOGRAMS = {
    "drift/weight": np.array([1.0, 0.9, 0.8]),
    "drift/overlap": np.array([1.0, 0.5, 0.5]),
    "drift/bad_event_position": np.array([1, 2]),
}


def record(run: RunDir, trackers: Trackers, values: dict, histograms: dict | None = None) -> None:
    """What the trainer does with a record: metrics.jsonl first, then the trackers."""
    run.append_metrics(values)
    trackers.log(values, histograms)


def fake_step(step: int) -> dict:
    return {"step": step, "loss": float(step), "weight": 0.9}


def test_a_resumed_run_continues_its_tracker_run_without_duplicated_steps(tmp_path):
    run = RunDir.create(tmp_path / "run", "seed: 0\n")
    config = {"seed": 0, "prune": {"threshold": 0.7}}
    evaluation = {"step": 3, "eval": "synthetic", "when": "during", "accuracy": 0.5}
    with Trackers.open(["tensorboard"], run, "opdctl", config, []) as trackers:
        for step in (1, 2, 3):
            record(run, trackers, fake_step(step), HISTOGRAMS)
        record(run, trackers, evaluation)
    # a crash after step 3, the newest checkpoint at step 2: resume rewinds, then redoes steps 3 and 4
    sent = run.read_metrics()
    run.rewind(2)
    with Trackers.open(["tensorboard"], run, "opdctl", config, sent) as trackers:
        for step in (3, 4):
            record(run, trackers, fake_step(step), HISTOGRAMS)
        record(run, trackers, evaluation)
    assert json.loads((run.path / "trackers.json").read_text()) == {"tensorboard": {}}
    series = tensorboard_scalars(run.path)
    assert series["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert series["eval/synthetic/accuracy"] == [(3, 0.5)]
    assert [step for step, _ in series["drift/weight"]] == [1, 2, 3, 4]
    assert [step for step, _ in series["drift/bad_event_position"]] == [1, 2, 3, 4]


def test_a_tracker_added_on_resume_gets_the_run_so_far(tmp_path):
    run = RunDir.create(tmp_path / "run", "seed: 0\n")
    for step in (1, 2):
        run.append_metrics(fake_step(step))
    with Trackers.open(["tensorboard"], run, "opdctl", {"seed": 0}, run.read_metrics()) as trackers:
        record(run, trackers, fake_step(3), HISTOGRAMS)
    series = tensorboard_scalars(run.path)
    assert series["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [step for step, _ in series["drift/weight"]] == [3]  # earlier steps' histograms were in memory only


# a real run to all four trackers, offline, then resumed ------------------------------


def tracker_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(root / "trackio"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }


def opdctl(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "opdctl", "train", *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def resumed_run(tiny_models, tmp_path_factory):
    """4 steps reported to all four trackers; then, as if it had crashed before its last checkpoint, resumed to 6."""
    root = tmp_path_factory.mktemp("tracked")
    env = tracker_env(root)
    config = tiny_config(
        tiny_models,
        root / "run",
        eval={"bench": ["synthetic"], "max_problems": 2},
        output={"report_to": ALL, "project": "opdctl-test"},
    )
    opdctl(env, "-c", str(write_config(root / "c.yaml", config)))
    first = read_metrics(root / "run")
    shutil.rmtree(root / "run" / "checkpoints" / "step_000004")
    opdctl(env, "--resume", str(root / "run"), "optim.steps=6")
    return root, first, read_metrics(root / "run")


STEPS = [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_tensorboard_gets_every_step_once(resumed_run):
    root, first, _ = resumed_run
    series = tensorboard_scalars(root / "run")
    step_keys = {k for r in first if "eval" not in r for k, v in r.items() if isinstance(v, int | float)} - {"step"}
    assert step_keys <= set(series)
    assert [s for s, _ in series["loss"]] == STEPS
    assert [v for _, v in series["loss"]][:4] == pytest.approx([r["loss"] for r in first if "eval" not in r])
    assert [s for s, _ in series["eval/synthetic/accuracy"]] == [0, 4, 6]
    assert [s for s, _ in series["drift/weight"]] == STEPS


def wandb_history(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Every offline run segment's history and run records, through `wandb leet inspect` (W&B's own reader)."""
    history, runs = [], []
    for segment in sorted((run_dir / "wandb").glob("offline-run-*")):
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(segment)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        records = [json.loads(line) for line in out.splitlines()]
        history += [r["history"]["item"] for r in records if r["type"] == "history"]
        runs += [r["run"] for r in records if r["type"] == "run"]
    return history, runs


@pytest.mark.slow
def test_wandb_offline_run_continues_under_the_same_id(resumed_run):
    root, first, _ = resumed_run
    history, runs = wandb_history(root / "run")
    stored = json.loads((root / "run" / "trackers.json").read_text())["wandb"]["id"]
    assert [r["run_id"] for r in runs] == [stored, stored]
    assert runs[0]["config"]["update"]["prune"]["threshold"] == 0.7
    assert runs[0]["config"]["update"]["optim"]["steps"] == 4
    losses = [(h["_step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in losses] == STEPS
    assert [v for _, v in losses][:4] == pytest.approx([r["loss"] for r in first if "eval" not in r])
    assert [h["_step"] for h in history if "eval/synthetic/accuracy" in h] == [0, 4, 6]
    assert all(h["drift/weight._type"] == "histogram" for h in history if "loss" in h)


@pytest.mark.slow
def test_trackio_local_store_has_one_run_with_every_step_once(resumed_run):
    root, first, _ = resumed_run
    code = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
        "print(json.dumps({'runs': S.get_runs('opdctl-test'), 'logs': S.get_logs('opdctl-test', 'run'), "
        "'config': S.get_run_config('opdctl-test', 'run')}, default=str))"
    )
    env = tracker_env(root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    stored = json.loads(out.splitlines()[-1])
    assert stored["runs"] == ["run"]
    losses = [(log["step"], log["loss"]) for log in stored["logs"] if "loss" in log]
    assert [s for s, _ in losses] == STEPS
    assert [v for _, v in losses][:4] == pytest.approx([r["loss"] for r in first if "eval" not in r])
    assert [log["step"] for log in stored["logs"] if "eval/synthetic/accuracy" in log] == [0, 4, 6]
    assert all("drift/overlap" in log for log in stored["logs"] if "loss" in log)
    assert stored["config"]["loss"]["k"] == 4


@pytest.mark.slow
def test_mlflow_run_has_the_config_as_params_and_every_step_once(resumed_run):
    from mlflow import MlflowClient

    root, first, _ = resumed_run
    state = json.loads((root / "run" / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "opdctl-test"
    assert run.data.params["prune.threshold"] == "0.7"
    assert run.data.params["eval.bench"] == '["synthetic"]'
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == STEPS
    assert [m.value for m in history][:4] == pytest.approx([r["loss"] for r in first if "eval" not in r])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/synthetic/accuracy")] == [0, 4, 6]
    assert "eval/synthetic/maj_at_1" in run.data.metrics
