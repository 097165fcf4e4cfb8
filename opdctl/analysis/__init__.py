"""inspect-drift: what a run's traces say about where and when rollouts drifted."""

from opdctl.analysis.profile import PositionProfile, position_profile
from opdctl.analysis.reader import RunTraces
from opdctl.analysis.rollout import RolloutView, rollout_view
from opdctl.analysis.summary import RunSummary, summarize

__all__ = [
    "PositionProfile",
    "RolloutView",
    "RunSummary",
    "RunTraces",
    "position_profile",
    "rollout_view",
    "summarize",
]
