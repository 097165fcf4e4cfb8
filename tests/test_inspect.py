"""opdctl inspect-drift on traces from real tiny runs."""

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from opdctl.analysis import RunTraces, position_profile, rollout_view, summarize

from .conftest import run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow  # whole trainings, a vLLM server or subprocesses


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """A Prune-OPD run and a plain-OPD run of the same seed."""
    root = tmp_path_factory.mktemp("inspect")
    made = {}
    drift = {"k": 2, "threshold": 0.5}  # bad event: no shared top-2 id; leaves some rollouts a clean start
    plain = {"prune": {**drift, "enable": False}, "budget": {"enable": False}}
    for name, extra in (("prune", {"prune": drift}), ("plain", plain)):
        config = tiny_config(
            tiny_models, root / name, optim={"steps": 6}, eval={"bench": ["synthetic"], "max_problems": 2}, **extra
        )
        result = run_cli("train", "-c", write_config(root / f"{name}.yaml", config))
        assert result.exit_code == 0, result.output
        made[name] = root / name
    return made


def _tokens(run_dir):
    return pq.read_table(run_dir / "traces" / "tokens").to_pandas()


def _rollouts(run_dir):
    return pq.read_table(run_dir / "traces" / "rollouts").to_pandas()


def test_summary_numbers_equal_values_recomputed_from_the_traces(runs):
    summary = summarize(RunTraces(runs["prune"]), level=0.95, rows=100)
    tokens, rollouts = _tokens(runs["prune"]), _rollouts(runs["prune"])
    assert [r.first_step for r in summary.rows] == sorted(tokens.step.unique())
    for row in summary.rows:
        t = tokens[tokens.step == row.first_step]
        r = rollouts[rollouts.step == row.first_step]
        assert row.tokens == len(t) and row.rollouts == len(r)
        assert row.overlap == pytest.approx(t.overlap.mean())
        assert row.bad_event_rate == pytest.approx(t.bad.mean())
        assert row.weight == pytest.approx(t.weight.mean())
        assert row.effective_length == pytest.approx(r.effective_length.mean())
        assert row.full_weight_share == pytest.approx((t.weight >= 1 - 1e-6).mean())
        assert row.below_share == pytest.approx((t.weight < 0.95).mean())
        assert row.max_len == (r.max_len.min(), r.max_len.max())
    totals = summary.totals
    assert totals["traced_tokens"] == len(tokens)
    assert totals["tokens_below_0.95"] == int((tokens.weight < 0.95).sum())
    assert totals["accuracy"]["synthetic"].keys() == {"before", "after"}


def test_step_ranges_aggregate_by_token(runs):
    tokens = _tokens(runs["prune"])
    rows = summarize(RunTraces(runs["prune"]), rows=2).rows
    assert [(r.first_step, r.last_step) for r in rows] == [(1, 3), (4, 6)]
    first = tokens[tokens.step <= 3]
    assert rows[0].overlap == pytest.approx(first.overlap.mean())
    assert rows[0].tokens == len(first)


def test_position_profile_matches_the_traces(runs):
    profile = position_profile(RunTraces(runs["prune"]), bin_size=5)
    tokens, rollouts = _tokens(runs["prune"]), _rollouts(runs["prune"])
    in_bin = tokens[(tokens.position >= 5) & (tokens.position < 10)]
    assert profile.tokens[1] == len(in_bin)
    assert profile.weight[1] == pytest.approx(in_bin.weight.mean())
    at_five = tokens[tokens.position == 5]
    assert profile.full_weight[1] == pytest.approx((at_five.weight >= 1 - 1e-6).mean())
    first = rollouts.first_bad
    assert profile.first_bad[0] == int(((first >= 0) & (first < 5)).sum())
    assert profile.never_bad == int((first < 0).sum())


def test_rollout_view_marks_the_first_bad_event_at_the_right_token(runs):
    rollouts = _rollouts(runs["prune"])
    row = rollouts[rollouts.first_bad > 0].iloc[0]
    view = rollout_view(RunTraces(runs["prune"]), int(row.step), int(row.rollout))
    assert view.first_bad == row.first_bad
    assert [t.bad for t in view.tokens].index(True) == row.first_bad
    result = run_cli("inspect-drift", runs["prune"], "--step", row.step, "--rollout", row.rollout, "--tokens", "0:3")
    assert result.exit_code == 0, result.output
    text = result.output
    marked = text.index("⟨drift⟩")
    before = "".join(t.text for t in view.tokens[: row.first_bad])
    assert text[marked - len(before) : marked] == before  # the marker sits right before the first bad token
    assert "teacher lp" in text


def test_plot_is_a_valid_image(runs, tmp_path):
    for name in ("drift.png", "drift.svg"):
        result = run_cli("inspect-drift", runs["prune"], "--plot", tmp_path / name, "--compare", runs["plain"])
        assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "drift.png") as image:
        image.verify()
        assert image.size[0] > 1000
    assert (tmp_path / "drift.svg").read_text().lstrip().startswith("<?xml")


def test_comparison_of_two_runs(runs):
    result = run_cli("inspect-drift", runs["prune"], "--compare", runs["plain"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    a, b = report["summary"]["totals"], report["compare"]["totals"]
    assert a["tokens_generated"] == sum(_tokens(runs["prune"]).groupby("step").size())
    assert b["weight"] == pytest.approx(1.0)  # plain OPD: every weight is 1
    text = run_cli("inspect-drift", runs["prune"], "--compare", runs["plain"]).output
    assert "Comparison" in text and "tokens generated" in text and "accuracy synthetic (after)" in text


def test_json_summary_is_machine_readable(runs):
    result = run_cli("inspect-drift", runs["prune"], "--json", "--profile", "--steps", "2:3")
    report = json.loads(result.output)
    assert [s["first_step"] for s in report["summary"]["steps"]] == [2, 3]
    assert "profile" in report


def test_a_running_run_is_read_up_to_its_complete_steps(runs, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(runs["prune"], partial)
    (partial / "traces" / "tokens" / "step_000006.parquet").unlink()  # step 6 not written yet
    (partial / "traces" / "tokens" / ".step_000006.parquet.tmp").write_bytes(b"half a file")
    assert RunTraces(partial).steps == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "is not an opdctl run directory (it has no config.yaml): pass a run directory, one that opdctl"),
        (["{tmp}/nowhere"], "run directory not found"),
        (["{run}/config.yaml"], "config.yaml is a file: pass a run directory, one that opdctl train wrote"),
        (["{run}", "--steps", "50:60"], "has no traces in steps 50-60 (traced: steps 1-"),
        (["{run}", "--steps", "1:"], "--steps '1:': give N or A:B"),
        (["{run}", "--step", "1", "--rollout", "0", "--tokens", "abc"], "--tokens 'abc': give N or A:B"),
        (
            ["{run}", "--step", "1", "--rollout", "0", "--tokens", "9000:9001"],
            "--tokens 9000:9001: rollout 0 of step 1 has",
        ),
        (["{run}", "--step", "1"], "--step and --rollout go together"),
        (["{run}", "--step", "99", "--rollout", "0"], "step 99 was not traced"),
        (["{run}", "--step", "1", "--rollout", "99"], "rollout 99 of step 1 was not traced"),
        (["{run}", "--steps", "x"], "--steps 'x': give N or A:B"),
        (["{run}", "--plot", "{tmp}/fig.gif"], "use a file name ending in .png, .svg, .pdf"),
        (["{run}", "--plot-step", "1"], "--plot-step chooses the step of the figure: add --plot FILE"),
        (["{run}", "--color", "pink"], "--color 'pink'"),
    ],
)
def test_errors_are_one_line(runs, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, run=runs["prune"]) for a in args]
    result = run_cli("inspect-drift", *args)
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_run_without_traces(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 1}, output={"trace_every": 0})
    assert run_cli("train", "-c", write_config(tmp_path / "c.yaml", config)).exit_code == 0
    result = run_cli("inspect-drift", tmp_path / "run")
    assert result.exit_code == 1 and "has no traces" in result.output
