"""Fault injection, driven through the CLI as a user would: two processes on one directory, damaged files,
bad data, evaluation into a run directory and the reverse, signals, a full disk, damaged checkpoints.

Each case either completes or stops with one line naming the cause and the fix, and no valid record of a
run or an evaluation is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opdctl.data.demo_task import held_out
from opdctl.runs import files
from opdctl.runs.rundir import RunDir

from .conftest import assert_one_line_error, read_metrics, run_cli, tiny_config, write_config


def spawn(*args, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``opdctl ARGS`` in its own process, as a user would start it in another shell (``env``: more variables)."""
    return subprocess.Popen(
        [sys.executable, "-m", "opdctl", *map(str, args)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended first: {process.stdout.read()}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "eval" not in r]


def demo_file(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "problem": p.prompt, "answer": p.answer} for i, p in enumerate(held_out(count))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def new_config(tiny_models, tmp_path: Path, name: str = "run", **sections) -> tuple[Path, Path]:
    config = tiny_config(tiny_models, tmp_path / name, **sections)
    return write_config(tmp_path / f"{name}.yaml", config), tmp_path / name


EVAL = {"bench": ["synthetic"], "max_problems": 2}


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4 and evaluations before and after (copy it to change it)."""
    root = tmp_path_factory.mktemp("finished")
    path, run_dir = new_config(tiny_models, root, eval=EVAL)
    result = run_cli("train", "-c", path)
    assert result.exit_code == 0, result.output
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of a run, its config.yaml naming the copy's place (as a resume of the copy would write it)."""
    copy = Path(shutil.copytree(run_dir, tmp_path / name))
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config.replace(f"dir: {run_dir}\n", f"dir: {copy}\n"))
    return copy


def flat(text: str) -> str:
    """Console output as one line (rich wraps long messages at the terminal width)."""
    return " ".join(text.split())


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file aside), to show that a failed command changed nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".opdctl.lock"
    }


def evals_of(run_dir: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["when"]) for r in read_metrics(run_dir) if "eval" in r]


# data loss: two processes on one directory --------------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_a_live_run_is_refused_and_the_run_loses_nothing(tiny_models, tmp_path):
    path, run_dir = new_config(tiny_models, tmp_path, optim={"steps": 1000}, output={"save_every": 10})
    first = spawn("train", "-c", path)
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), first)

    resume = subprocess.run(
        [sys.executable, "-m", "opdctl", "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=900
    )
    assert resume.returncode == 1, resume.stdout + resume.stderr
    assert f"in use by process {first.pid}" in flat(resume.stderr), resume.stderr
    again = run_cli("train", "-c", path)
    assert_one_line_error(again, str(run_dir), f"process {first.pid}")
    into = run_cli("eval", "--bench", "synthetic", "--model", tiny_models["student"], "-o", run_dir)
    assert_one_line_error(into, str(run_dir))
    assert first.poll() is None, "the first run ended before the others tried"

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=900) == 128 + signal.SIGTERM, first.stdout.read()
    done = steps_of(run_dir)
    assert done == list(range(1, len(done) + 1))
    resumed = run_cli("train", "--resume", run_dir, f"optim.steps={done[-1] + 1}")  # the lock went with the process
    assert resumed.exit_code == 0, resumed.output
    assert steps_of(run_dir) == list(range(1, done[-1] + 2))


@pytest.mark.slow
def test_two_evaluations_sharing_an_output_directory(tiny_models, tmp_path):
    data, out = demo_file(tmp_path / "mini.jsonl", 6), tmp_path / "out"
    args = ("eval", "--data", data, "--model", tiny_models["teacher"], "-n", 2, "--max-new-tokens", 24, "-o", out)
    args = (*args, "--batch-size", 1)
    first = spawn(*args)
    wait_for(lambda: (out / "settings.json").is_file(), first)
    second = run_cli(*args)
    assert_one_line_error(second, str(out), f"process {first.pid}")
    assert first.wait(timeout=900) == 0, first.stdout.read()
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert sorted((r["problem_id"], r["sample"]) for r in rows) == sorted(
        (f"p{i}", s) for i in range(6) for s in range(2)
    )


# data loss: a damaged metrics line -----------------------------------------------------------


def _damage_line(path: Path, index: int, text: str = '{"step": 2, "loss": 0.1') -> list[str]:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = text + "\n"
    path.write_text("".join(lines))
    return lines


@pytest.mark.slow
def test_one_damaged_metrics_line_costs_no_other_record(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    before = read_metrics(run_dir)
    line = next(i for i, r in enumerate(before) if r["step"] == 2 and "eval" not in r)
    _damage_line(run_dir / "metrics.jsonl", line)
    view = run_cli("inspect-drift", run_dir, "--json")
    assert view.exit_code == 0, view.output
    assert f"metrics.jsonl line {line + 1}: not a JSON record, skipped" in flat(view.output)

    result = run_cli("train", "--resume", run_dir, "optim.steps=6")
    assert result.exit_code == 0, result.output
    assert "no record of step 2 in metrics.jsonl" in flat(result.output)
    after = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after if "eval" not in r] == [1, 3, 4, 5, 6]
    steps_before = [r for r in before if "eval" not in r]
    assert [r for r in after if "eval" not in r][:3] == [steps_before[0], steps_before[2], steps_before[3]]
    assert [r for r in before if "eval" in r] == [r for r in after if "eval" in r][:2]  # before and after step 4
    assert (run_dir / "metrics.jsonl.damaged").read_text().startswith('{"step": 2, "loss": 0.1')


# data loss: rows without a prompt ------------------------------------------------------------


def test_a_data_row_without_its_prompt_is_an_error_naming_the_row(tiny_models, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "1+1="}, {"prompt": "2+2="}, {"question": "3+3="}, {"prompt": None}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, run_dir = new_config(tiny_models, tmp_path, data={"source": str(data), "limit": None})
    assert_one_line_error(run_cli("train", "-c", path), "row 3", "'prompt'", "data.skip_bad_rows")  # line 3
    assert not run_dir.exists()

    skipping = run_cli("train", "-c", path, "data.skip_bad_rows=true", "optim.steps=1", "optim.prompts_per_step=2")
    assert skipping.exit_code == 0, skipping.output
    assert "skipped 2 of 4 rows" in flat(skipping.output)


# data loss: evaluation into a run directory, and the reverse ----------------------------------


@pytest.mark.slow
def test_evaluation_into_a_run_directory_is_refused(finished_run, tiny_models, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    summary = (run_dir / "summary.json").read_text()
    data = demo_file(tmp_path / "mini.jsonl", 2)
    for output, why in ((run_dir, "is a run directory (written by opdctl train), not a place for a new evaluation"),
                        (run_dir / "evals", "is inside the run directory")):  # fmt: skip
        result = run_cli("eval", "--data", data, "--model", tiny_models["student"], "--max-new-tokens", 4, "-o", output)
        assert_one_line_error(result, str(run_dir), why, "--output")
    assert (run_dir / "summary.json").read_text() == summary
    assert not (run_dir / "settings.json").exists() and not (run_dir / "evals").exists()

    out = tmp_path / "eval"
    result = run_cli(
        "eval", "--data", data, "--model", tiny_models["student"], "-n", 1, "--max-new-tokens", 4, "-o", out
    )
    assert result.exit_code == 0, result.output
    eval_files = {p.name: p.read_bytes() for p in out.iterdir()}
    path, _ = new_config(tiny_models, tmp_path, "into-eval")
    for target, why in ((out, "is an evaluation's output (opdctl eval), not a place for a new run"),
                        (out / "run", "is inside the evaluation directory")):  # fmt: skip
        assert_one_line_error(run_cli("train", "-c", path, f"output.dir={target}"), str(out), why)
        assert_one_line_error(run_cli("train", "--resume", target), str(target))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == eval_files


# checkpoints and resume rules ------------------------------------------------------------------


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scramble(path: Path) -> None:
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))


SKIPPED_DAMAGE = {
    "optimizer cut short": (lambda c: _cut(c / "optimizer.pt"), "optimizer.pt has"),
    "weights missing": (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    "tokenizer missing": (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "older opdctl's checkpoint, no trainer state": (
        lambda c: (c / "manifest.json").unlink() or (c / "trainer_state.json").unlink(),
        "trainer_state.json is missing",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", SKIPPED_DAMAGE)
def test_a_damaged_newest_checkpoint_is_skipped_and_named(finished_run, tmp_path, damage):
    run_dir = copy_run(finished_run, tmp_path)
    newest = run_dir / "checkpoints" / "step_000004"
    (run_dir / "summary.json").unlink()  # as if the run had been killed after writing its last checkpoint
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(metrics[:-1]) + "\n")  # no "after" evaluation yet
    corrupt, fragment = SKIPPED_DAMAGE[damage]
    corrupt(newest)
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert f"skipping checkpoint {newest}: incomplete or damaged ({fragment}" in flat(result.output)
    assert "from step 2" in flat(result.output)
    assert steps_of(run_dir) == [1, 2, 3, 4]
    assert evals_of(run_dir) == [(0, "before"), (4, "after")]


@pytest.mark.slow
def test_evaluating_a_run_names_its_damaged_newest_checkpoint(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    newest = run_dir / "checkpoints" / "step_000004"
    _cut(newest / "optimizer.pt")
    args = ["eval", "--model", run_dir, "--bench", "synthetic", "-n", 1, "--max-problems", 1, "--max-new-tokens", 4]
    result = run_cli(*args, "-o", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "the newest checkpoint" in flat(result.output) and "(step 4) is incomplete or damaged" in flat(result.output)
    assert "evaluating step 2" in flat(result.output)
    chosen = run_cli(*args, "--checkpoint", 4, "-o", tmp_path / "f")
    assert_one_line_error(chosen, "checkpoint at step 4", "is incomplete or damaged (optimizer.pt has",
                          "choose another --checkpoint")  # fmt: skip


UNLOADABLE = {
    "weights scrambled": lambda c: _scramble(c / "model.safetensors"),
    "trainer state scrambled": lambda c: _scramble(c / "trainer_state.json"),
    "optimizer scrambled": lambda c: _scramble(c / "optimizer.pt"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", UNLOADABLE)
def test_a_checkpoint_that_fails_to_load_stops_the_resume_and_changes_nothing(finished_run, tmp_path, damage):
    run_dir = copy_run(finished_run, tmp_path)
    newest = run_dir / "checkpoints" / "step_000004"
    UNLOADABLE[damage](newest)
    before = snapshot(run_dir)
    result = run_cli("train", "--resume", run_dir, "optim.steps=6")
    assert_one_line_error(result, f"checkpoint {newest}", f"mv {newest} ")
    assert snapshot(run_dir) == before
    aside = assert_one_line_error(result).split("set it aside with ")[1].split(" and ")[0]
    subprocess.run(aside.split(), check=True)
    resumed = run_cli("train", "--resume", run_dir, "optim.steps=6")
    assert resumed.exit_code == 0, resumed.output
    assert steps_of(run_dir) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_rules(finished_run, tmp_path):
    """A finished run gains nothing, optim.steps may not go back, no checkpoint restarts from step 0 once."""
    run_dir = copy_run(finished_run, tmp_path)
    before = snapshot(run_dir)
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "already finished at step 4" in flat(result.output)
    after = snapshot(run_dir)
    assert after.pop("summary.json") and before.pop("summary.json")
    assert after == before

    assert_one_line_error(run_cli("train", "--resume", run_dir, "optim.steps=3"), "optim.steps=3", "step 4")
    assert snapshot(run_dir)["config.yaml"] == after["config.yaml"]

    shutil.rmtree(run_dir / "checkpoints")  # killed before its first checkpoint
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "restarting from step 0" in flat(result.output)
    assert steps_of(run_dir) == [1, 2, 3, 4]
    assert evals_of(run_dir) == [(0, "before"), (4, "after")]


def resumable_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run as if it had been killed after step 2's checkpoint."""
    run_dir = copy_run(finished_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "step_000004")
    return run_dir


def changes_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "changes.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_an_override_on_resume_applies_from_the_next_step_and_is_recorded(finished_run, tmp_path):
    run_dir = resumable_copy(finished_run, tmp_path)
    result = run_cli("train", "--resume", run_dir, "optim.lr=0.5")
    assert result.exit_code == 0, result.output
    assert "from step 3 on: optim.lr 0.001 -> 0.5" in flat(result.output)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir) if "eval" not in r}
    assert lrs[2] == 0.001 and lrs[3] == lrs[4] == 0.5  # the optimizer's rate, not only the config's
    assert changes_of(run_dir) == [{"from_step": 3, "changes": {"optim.lr": {"before": 0.001, "after": 0.5}}}]
    assert "lr: 0.5" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_an_edited_config_yaml_applies_from_the_next_step_and_is_recorded(finished_run, tmp_path):
    run_dir = resumable_copy(finished_run, tmp_path)
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("  n: 2\n", "  n: 3\n", 1))
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "from step 3 on: rollout.n 2 -> 3" in flat(result.output)
    assert changes_of(run_dir)[0]["changes"] == {"rollout.n": {"before": 2, "after": 3}}
    rollouts = {r["step"]: sum(r[f"finish_{k}"] for k in ("eos", "length", "drift")) for r in read_metrics(run_dir)
                if "eval" not in r}  # fmt: skip
    assert rollouts[2] == 3 * 2 and rollouts[3] == 3 * 3


@pytest.mark.slow
def test_an_edited_student_in_config_yaml_is_refused(finished_run, tmp_path):
    run_dir = resumable_copy(finished_run, tmp_path)
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("model: ", "model: /elsewhere", 1))
    before = snapshot(run_dir)
    result = run_cli("train", "--resume", run_dir)
    assert_one_line_error(result, "student.model=/elsewhere", "cannot change on --resume", "config.yaml was edited")
    assert snapshot(run_dir) == before


def test_an_unknown_key_in_a_run_config_names_the_run_file(finished_run, tmp_path):
    run_dir = resumable_copy(finished_run, tmp_path)
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text() + "extra_section: {a: 1}\n")
    result = run_cli("train", "--resume", run_dir)
    assert_one_line_error(result, f"{run_dir / 'config.yaml'}:", "unknown config key 'extra_section'")


# signals ---------------------------------------------------------------------------------------


def _start_and_wait_for_steps(config: Path, run_dir: Path, steps: int) -> subprocess.Popen:
    process = spawn("train", "-c", config)
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(steps_of(run_dir)) >= steps, process)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resume_command(tiny_models, tmp_path, signum):
    path, run_dir = new_config(tiny_models, tmp_path, optim={"steps": 60}, output={"save_every": 100})
    process = _start_and_wait_for_steps(path, run_dir, 2)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 128 + signum, output
    last = output.strip().splitlines()[-1]
    assert f"opdctl train --resume {run_dir}" in last and "checkpoint saved" in last, output
    done = steps_of(run_dir)
    assert done == list(range(1, len(done) + 1)) and len(done) < 60
    assert [step for step, _ in RunDir(run_dir).checkpoints()] == [done[-1]]
    resumed = run_cli("train", "--resume", run_dir, f"optim.steps={done[-1] + 2}")
    assert resumed.exit_code == 0, resumed.output
    assert steps_of(run_dir) == list(range(1, done[-1] + 3))


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_the_run_stays_resumable(tiny_models, tmp_path):
    path, run_dir = new_config(tiny_models, tmp_path, optim={"steps": 60}, output={"save_every": 3})
    process = _start_and_wait_for_steps(path, run_dir, 4)
    process.send_signal(signal.SIGTERM)
    seen = ""
    while "send it again to stop at once" not in flat(seen):  # the first one was handled: a step is running
        seen += process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    output = seen + output
    assert process.returncode == 130, output
    assert "stopped at once" in output and f"opdctl train --resume {run_dir}" in flat(output)
    result = run_cli("train", "--resume", run_dir, "optim.steps=8")
    assert result.exit_code == 0, result.output
    assert steps_of(run_dir) == list(range(1, 9))


@pytest.mark.slow
@pytest.mark.parametrize("when", ["first step", "writing a checkpoint", "between checkpoints"])
def test_sigkill_at_any_point_leaves_a_resumable_run(tiny_models, tmp_path, when):
    path, run_dir = new_config(tiny_models, tmp_path, optim={"steps": 20}, output={"save_every": 2}, eval=EVAL)
    process = spawn("train", "-c", path)
    conditions = {
        "first step": lambda: any(e[1] == "before" for e in _safe_evals(run_dir)),
        "writing a checkpoint": lambda: any((run_dir / "checkpoints").glob(".step_*.partial")),
        "between checkpoints": lambda: len(_safe_steps(run_dir)) >= 5,
    }
    wait_for(conditions[when], process)
    process.kill()
    process.wait()
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert steps_of(run_dir) == list(range(1, 21))
    assert evals_of(run_dir) == [(0, "before"), (20, "after")]


def _safe_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in RunDir(run_dir).read_metrics() if "eval" not in r]


def _safe_evals(run_dir: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["when"]) for r in RunDir(run_dir).read_metrics() if "eval" in r]


# disk full, unwritable and odd output places ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip() or made.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_with_the_path_and_resumes_once_there_is_room(tiny_models, tmp_path, small_disk):
    run_dir = small_disk / "run"
    config = tiny_config(tiny_models, run_dir, optim={"steps": 60}, output={"save_every": 1})
    result = run_cli("train", "-c", write_config(tmp_path / "c.yaml", config))
    text = assert_one_line_error(result, "No space left on device", f"opdctl train --resume {run_dir}")
    assert str(small_disk) in text
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no partial record
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_cli("train", "--resume", run_dir, "optim.steps=" + str(len(lines) + 2), "output.keep_checkpoints=1")
    assert resumed.exit_code == 0, resumed.output
    assert steps_of(run_dir) == list(range(1, len(lines) + 3))


def test_odd_output_places_are_refused_before_anything_loads(tiny_models, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / "config.yaml").write_text("seed: 0\n")
    (other_run / "metrics.jsonl").write_text("")
    path, _ = new_config(tiny_models, tmp_path)
    cases = {
        a_file: "is a file",
        a_file / "run": "is a file",
        other_run / "checkpoints" / "mine": "inside the run directory",
    }
    for target, fragment in cases.items():
        assert_one_line_error(run_cli("train", "-c", path, f"output.dir={target}"), fragment, "output.dir")
    result = run_cli("eval", "--bench", "synthetic", "--model", tiny_models["student"], "-o", a_file)
    assert_one_line_error(result, "is a file", "--output")


def test_odd_output_files_are_refused_before_any_work(finished_run, tmp_path, monkeypatch):
    def no_calibration(*args):
        raise AssertionError("calibrated before checking where its output goes")

    monkeypatch.setattr("opdctl.tools.calibrate.calibrate", no_calibration)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["report", finished_run, "-o", tmp_path], "--output", "is a directory: give a file name"),
        (["report", finished_run, "-o", a_file / "r.html"], "--output", "is a file, not a directory"),
        (["calibrate", "--out", tmp_path], "--out", "is a directory: give a file name"),
        (["calibrate", "--plot", tmp_path / "c.txt"], "--plot", "use a file name ending in .png"),
        (["calibrate", "--plot", tmp_path], "--plot", "use a file name ending in .png"),
        (["shrink", "demo:teacher", "--keep-layers", "1", "--out", a_file], "--out", "is a file: give a new directory"),
    ]
    for args, *fragments in cases:
        assert_one_line_error(run_cli(*args), *fragments)
    assert a_file.read_text() == "x" and {p.name for p in tmp_path.iterdir()} == {"a-file"}


def test_files_in_a_run_directory_are_readable_as_a_plain_open_makes_them(finished_run):
    expected = 0o666 & ~files.UMASK  # 0644 under the usual umask: others can read a shared run
    checkpoint = finished_run / "checkpoints" / "step_000004"
    written = [finished_run / "config.yaml", finished_run / "summary.json", *checkpoint.iterdir(),
               *(finished_run / "traces").rglob("*.parquet")]  # fmt: skip
    assert {str(path): stat.S_IMODE(path.stat().st_mode) for path in written} == {str(p): expected for p in written}


def test_timestamped_run_names_never_collide(tmp_path):
    first = RunDir.claim(tmp_path / "runs" / "20260101-000000", unique=True)
    second = RunDir.claim(tmp_path / "runs" / "20260101-000000", unique=True)
    assert first.path != second.path and second.path.name == "20260101-000000-2"
    first.abandon()
    second.abandon()
    assert not (tmp_path / "runs" / "20260101-000000").exists()


# damaged files met by readers ------------------------------------------------------------------


@pytest.mark.slow
def test_inspect_shows_the_rest_of_a_run_with_a_damaged_trace_file(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    damaged = run_dir / "traces" / "tokens" / "step_000003.parquet"
    _cut(damaged)
    result = run_cli("inspect-drift", run_dir, "--json")
    assert result.exit_code == 0, result.output
    assert f"{damaged} is damaged" in flat(result.output) and "step 3 left out" in flat(result.output)
    report = json.loads(result.output[result.output.index("{") :])
    assert [row["first_step"] for row in report["summary"]["steps"]] == [1, 2, 4]


def test_report_names_the_damaged_files_it_leaves_out(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    damaged = run_dir / "traces" / "tokens" / "step_000003.parquet"
    _cut(damaged)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    result = run_cli("report", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{damaged} is damaged" in flat(result.output) and "line 2: not a JSON record" in flat(result.output)
    page = (run_dir / "report.html").read_text()
    assert "Left out" in page and "step 3 left out" in page


def test_a_run_whose_traces_are_gone_says_so(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    shutil.rmtree(run_dir / "traces")
    for command in ("report", "inspect-drift"):
        assert_one_line_error(run_cli(command, run_dir), "traces/ files are missing", "output.trace_every=1")


@pytest.mark.slow
def test_inspect_of_a_live_run_survives_a_checkpoint_rotated_away(finished_run, monkeypatch):
    checkpoints = RunDir(finished_run).checkpoints()
    gone = finished_run / "checkpoints" / "step_000006"  # listed, then removed before it was read
    monkeypatch.setattr(RunDir, "checkpoints", lambda self: [*checkpoints, (6, gone)])
    result = run_cli("inspect-drift", finished_run, "--step", 1, "--rollout", 0)
    assert result.exit_code == 0, result.output


# config, data and message edges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("optim.betas=[1.5,2]", ("optim.betas.0=1.5", "less than 1")),
        ("optim.betas=[0.9]", ("optim.betas=[0.9]", "needs two values, e.g. [0.9, 0.999]")),
        ("output.trace_rollouts=-3", ("output.trace_rollouts=-3", ">= 1, or 'all'")),
        ("budget.min_len=30", ("budget.min_len=30", "<= budget.max_len (24)")),
        ("optim.warmup_steps=9", ("optim.warmup_steps=9", "<= optim.steps (4)")),
        ("optim.steps=true", ("optim.steps=true", "input should be a number, not true or false")),
        ("output.trace_rollouts=false", ("output.trace_rollouts=false", "a number, not true or false")),
        ("teacher.batch_size=true", ("teacher.batch_size=true", "a number, not true or false")),
    ],
)
def test_out_of_bound_values_are_refused_at_config_time(tiny_models, tmp_path, override, fragments):
    path, run_dir = new_config(tiny_models, tmp_path)
    assert_one_line_error(run_cli("train", "-c", path, override), *fragments)
    assert not run_dir.exists()


def _data(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("d.jsonl", b'{"prompt": "1+1="}\n{"prompt": "2+2=",\n{"prompt": "3+3="}\n', ("line 2 is not JSON",)),
        ("d.jsonl", b"\n\n  \n", ("holds only blank lines",)),
        ("d.jsonl", b'{"prompt": "1+1="}\n\xff\xfe\n', ("line 2 is not UTF-8",)),
        ("d.csv", b"prompt\n1+1=\n", ("unsupported data file", "d.csv")),
        ("missing.csv", None, ("data file not found",)),
    ],
)
def test_bad_data_files_name_the_file_and_line(tiny_models, tmp_path, name, content, fragments):
    path = _data(tmp_path, name, content) if content is not None else tmp_path / name
    config, run_dir = new_config(tiny_models, tmp_path, data={"source": str(path), "limit": None})
    assert_one_line_error(run_cli("train", "-c", config), str(path), *fragments)
    assert not run_dir.exists()


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    path = _data(tmp_path, "c.yaml", b"seed: 0\n# caf\xe9\n")
    assert_one_line_error(run_cli("config", "-c", path), str(path), "not UTF-8")


def test_version():
    from opdctl import __version__

    result = run_cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"opdctl {__version__}"


@pytest.mark.slow
def test_an_unknown_hub_model_for_eval_names_the_option(tmp_path):
    result = run_cli("eval", "--bench", "synthetic", "--model", "no-such-org/no-such-model", "-o", tmp_path / "e")
    assert_one_line_error(result, "--model='no-such-org/no-such-model'")
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_repeated_metrics_line_is_counted_once_and_named(finished_run, tmp_path):
    run_dir = resumable_copy(finished_run, tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    second = next(i for i, line in enumerate(lines) if json.loads(line).get("step") == 2 and "eval" not in line)
    (run_dir / "metrics.jsonl").write_text("\n".join([*lines, lines[second]]) + "\n")  # one step's line twice
    shown = run_cli("inspect-drift", run_dir)
    assert shown.exit_code == 0, shown.output
    assert f"line {second + 1}: repeated by a later record of the same step, skipped" in flat(shown.output)
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "repeated by a later record of the same step: dropped" in flat(result.output)
    assert steps_of(run_dir) == [1, 2, 3, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["rollouts"] == 4 * 6


# messages that name the problem and the fix ------------------------------------------------------


def test_a_number_too_long_to_read_names_its_key(tmp_path):
    result = run_cli("config", f"optim.steps={'9' * 5000}")
    assert_one_line_error(result, "override optim.steps", "5000 characters", "give a shorter value")
    config = tmp_path / "c.yaml"
    config.write_text(f"optim:\n  lr: {'9' * 5000}\n")
    assert_one_line_error(run_cli("config", "-c", config), str(config), "number longer than Python reads")


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: 0.1\n  steps: 3\n  lr: 0.5\n")
    assert_one_line_error(run_cli("config", "-c", config), f"{config} line 4", "key 'lr' appears twice",
                          "first on line 2")  # fmt: skip


def test_an_evaluation_output_that_cannot_be_created_names_the_option(tiny_models):
    result = run_cli("eval", "--model", tiny_models["teacher"], "--bench", "synthetic", "-o", "/proc/opdctl-eval")
    assert_one_line_error(result, "cannot create /proc/opdctl-eval", "choose another --output")


def test_a_model_cache_that_cannot_be_created_names_opdctl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDCTL_CACHE", "/proc/opdctl-cache")
    result = run_cli("eval", "--model", "demo:teacher", "--bench", "synthetic", "-o", tmp_path / "e")
    assert_one_line_error(result, "cannot create the model cache /proc", "set OPDCTL_CACHE to a writable directory")


@pytest.mark.slow
def test_a_resume_removes_what_killed_writes_left(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    temporary = run_dir / "traces" / "tokens" / f".step_000005.parquet.a2lih5zt{files.TEMPORARY}"
    temporary.write_bytes(b"PAR1 cut short")  # as a SIGKILL during a trace write leaves it
    staging = run_dir / "checkpoints" / f".step_000006{files.STAGING}"
    staging.mkdir()
    (staging / "optimizer.pt").write_bytes(b"half")
    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert not temporary.exists() and not staging.exists()
    assert not [p for p in run_dir.rglob(".*") if p.name != ".opdctl.lock"]


# logs -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_logged_to_a_file_prints_progress_lines(tiny_models, tmp_path):
    path, run_dir = new_config(tiny_models, tmp_path, optim={"steps": 20}, output={"save_every": 100}, eval=EVAL)
    process = spawn("train", "-c", path)  # stdout and stderr are a pipe, as with nohup or | tee
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    lines = [line for line in output.splitlines() if line.startswith("Training ")]
    assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(1, 21)]  # every 5%
    assert "eta" in lines[0] and "kl " in lines[0]
    assert any(line.startswith("synthetic 2/2 (100%)") for line in output.splitlines())
    every = spawn("train", "--resume", run_dir, "optim.steps=30", env={"OPDCTL_PROGRESS_EVERY": "5"})
    output, _ = every.communicate(timeout=600)
    assert [line.split()[1] for line in output.splitlines() if line.startswith("Training ")] == [
        "20/30", "25/30", "30/30"]  # fmt: skip
