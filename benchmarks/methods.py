"""The three methods the benchmarks compare, as config overrides (one place, so every script runs the same arms).

Scripts run as ``python benchmarks/NAME.py`` import it as ``methods`` (their own directory is on the path).
"""

PLAIN_OPD = ["prune.enable=false", "budget.enable=false", "rollout.truncate_on_drift=false"]
PRUNE_OPD = ["prune.enable=true", "budget.enable=true", "rollout.truncate_on_drift=false"]
PRUNE_OPD_TRUNCATION = ["prune.enable=true", "budget.enable=true", "rollout.truncate_on_drift=true"]
