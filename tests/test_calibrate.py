"""Calibration: thresholds chosen from the teacher's own text, checked against hand-computed rates."""

import pytest
import torch
import yaml
from typer.testing import CliRunner

from opdctl.algorithm import drift
from opdctl.cli import app
from opdctl.errors import ConfigError
from opdctl.tools.calibrate import Signal, choose_threshold


def test_overlap_threshold_is_the_largest_whose_rate_stays_under_the_target():
    values = torch.tensor([0.25] * 2 + [0.5] * 3 + [0.75] * 45 + [1.0] * 50)  # 100 tokens
    signal = Signal("overlap_ratio", 4)
    # below 0.5: 2%, below 0.75: 5%, below 1.0: 50%
    assert choose_threshold(signal, values, 0.03) == 0.5
    assert choose_threshold(signal, values, 0.05) == 0.75
    assert signal.bad_rate(values, 0.75) == pytest.approx(0.05)


def test_weighted_overlap_threshold_is_a_quantile():
    values = torch.linspace(0.01, 1.0, 100)
    threshold = choose_threshold(Signal("weighted_overlap", 16), values, 0.03)
    assert threshold == pytest.approx(0.04) and Signal("weighted_overlap", 16).bad_rate(values, threshold) == 0.03


def test_top_p_threshold_accepts_all_but_the_target_share_of_teacher_tokens():
    mass = torch.tensor([i / 100 for i in range(97)] + [0.985, 0.99, float("inf")])  # 100 tokens, one outside top-k
    signal = Signal("teacher_top_p", 16)
    p = choose_threshold(signal, mass, 0.03)
    assert 0.96 < p <= 0.985 + 1e-5
    assert signal.bad_rate(mass, p) == pytest.approx(0.03)


def test_an_unreachable_target_names_the_fix():
    values = torch.tensor([0.0] * 10 + [1.0] * 90)  # top-1 overlap: 10% of tokens disagree whatever the threshold
    with pytest.raises(ConfigError, match=r"overlap_ratio@1 .*\(at best 10\.0%\).*prune\.k"):
        choose_threshold(Signal("overlap_ratio", 1), values, 0.03)


def test_nucleus_mass_agrees_with_top_p_acceptance():
    torch.manual_seed(0)
    teacher_lp = torch.log_softmax(torch.randn(3, 50, 8) * 2, dim=-1)
    teacher_ids = torch.stack([torch.randperm(20)[:8] for _ in range(150)]).view(3, 50, 8)
    sampled = torch.randint(0, 20, (3, 50))
    mass = drift.sampled_nucleus_mass(sampled, teacher_ids, teacher_lp)
    for p in (0.3, 0.7, 0.9, 1.0):
        assert torch.equal(mass < p, drift.top_p_acceptance(sampled, teacher_ids, teacher_lp, p))
    outside = ~(teacher_ids == sampled.unsqueeze(-1)).any(-1)
    assert torch.isinf(mass[outside]).all() and torch.isfinite(mass[~outside]).all()


@pytest.mark.slow
def test_calibrate_writes_a_config_whose_threshold_holds_on_the_teacher_text(tiny_models, tmp_path):
    out = tmp_path / "calibrated.yaml"
    args = ["calibrate", f"student.model={tiny_models['student']}", f"teacher.model={tiny_models['teacher']}",
            "loss.k=16", "prune.k=4", "prune.metric=weighted_overlap", "--samples", "6", "--max-new-tokens", "24",
            "--target", "0.05", "--out", str(out), "--plot", str(tmp_path / "signals.png")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "weighted_overlap@4: chosen threshold" in result.output
    written = yaml.safe_load(out.read_text())
    assert 0 < written["prune"]["threshold"] <= 1 and written["prune"]["metric"] == "weighted_overlap"
    assert (tmp_path / "signals.png").stat().st_size > 10_000


@pytest.mark.slow
def test_with_worked_solutions_every_signal_is_judged_against_the_first_wrong_number(tiny_models, tmp_path):
    args = ["calibrate", f"student.model={tiny_models['student']}", f"teacher.model={tiny_models['teacher']}",
            "data.source=wordproblems", "loss.k=16", "prune.k=4", "--samples", "6", "--max-new-tokens", "24",
            "--target", "0.2", "--error-plot", str(tmp_path / "errors.png")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("drift signals against the first wrong number") :]
    assert "of 6 student rollouts have one" in table.splitlines()[0]
    for signal in ("overlap_ratio@4", "weighted_overlap@16", "teacher_top_p@1", "teacher_prob@8"):
        assert signal in table
    assert (tmp_path / "errors.png").stat().st_size > 10_000
    refused = CliRunner().invoke(app, ["calibrate", "--error-plot", str(tmp_path / "e.png")])  # the demo task
    assert refused.exit_code == 1 and "--error-plot needs prompts with worked solutions" in refused.output
