"""The three methods the benchmarks compare, as config overrides (one place, so every script runs the same arms),
and how a benchmark trains one.

Scripts run as ``python benchmarks/NAME.py`` import it as ``methods`` (their own directory is on the path).
"""

from __future__ import annotations

from typing import Any

from opdctl.config.schema import Config
from opdctl.progress import LogReporter, reporting_to
from opdctl.training.start import start_run

PLAIN_OPD = ["prune.enable=false", "budget.enable=false", "rollout.truncate_on_drift=false"]
PRUNE_OPD = ["prune.enable=true", "budget.enable=true", "rollout.truncate_on_drift=false"]
PRUNE_OPD_TRUNCATION = ["prune.enable=true", "budget.enable=true", "rollout.truncate_on_drift=true"]


def train(config: Config) -> list[dict[str, Any]]:
    """Train ``config`` to its end with plain progress lines; the run's metrics records."""
    with reporting_to(LogReporter()):
        trainer = start_run(config)
        trainer.fit()
    return trainer.run.read_metrics()
