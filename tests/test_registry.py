"""Drift metrics and loss estimators by name: built-ins, third-party entry points, config validation, the reference."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import torch

from opdctl import plugins
from opdctl.algorithm.drift import DriftView
from opdctl.config.files import validate
from opdctl.config.reference import reference_markdown
from opdctl.errors import BackendError, ConfigError
from opdctl.plugins import DRIFT_METRICS, LOSS_ESTIMATORS


def always_drifting(view: DriftView, threshold: float) -> torch.Tensor:
    """Every position is a bad event (a third-party metric for this test)."""
    return torch.zeros(view.sampled.shape)


def install(monkeypatch, *entries: EntryPoint) -> None:
    """As if a package declared ``entries`` in the entry-point group opdctl.drift_metrics."""
    real = plugins.entry_points
    monkeypatch.setattr(
        plugins, "entry_points", lambda group: list(entries) if group == DRIFT_METRICS.group else real(group=group)
    )
    monkeypatch.setattr(DRIFT_METRICS, "_loaded", {})


def test_built_ins_are_registered_first_in_order():
    assert list(DRIFT_METRICS.all())[:4] == ["overlap_ratio", "teacher_top_p", "teacher_prob", "weighted_overlap"]
    assert list(LOSS_ESTIMATORS.all())[:2] == ["topk", "sampled"]


def test_config_names_must_be_registered():
    with pytest.raises(
        ConfigError,
        match=r"loss.estimator='full': input should be 'topk'.* \(or install a plugin that provides 'full' in the",
    ):
        validate({"loss": {"estimator": "full"}})


def test_a_plugin_metric_is_usable_and_listed_in_the_reference(monkeypatch):
    install(monkeypatch, EntryPoint("always_drifting", f"{__name__}:always_drifting", DRIFT_METRICS.group))
    assert validate({"prune": {"metric": "always_drifting"}}).prune.metric == "always_drifting"
    assert DRIFT_METRICS.get("always_drifting") is always_drifting
    assert "| `always_drifting` | tests.test_registry:always_drifting | Every position is a bad event" in (
        reference_markdown()
    )


def test_a_broken_plugin_is_one_clear_error_and_only_when_it_is_used(monkeypatch):
    install(monkeypatch, EntryPoint("broken", "no_such_module:metric", DRIFT_METRICS.group))
    assert validate({"prune": {"metric": "overlap_ratio"}}).prune.metric == "overlap_ratio"  # never loaded
    with pytest.raises(
        BackendError, match=r"drift metric 'broken' failed to load \(no_such_module:metric\): No module"
    ):
        DRIFT_METRICS.get("broken")
