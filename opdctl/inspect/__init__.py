"""inspect-drift: what a run's traces say about where and when rollouts drifted."""

from opdctl.inspect.profile import PositionProfile, position_profile
from opdctl.inspect.reader import RunTraces
from opdctl.inspect.rollout import RolloutView, rollout_view
from opdctl.inspect.summary import RunSummary, summarize

__all__ = [
    "PositionProfile",
    "RolloutView",
    "RunSummary",
    "RunTraces",
    "position_profile",
    "rollout_view",
    "summarize",
]
