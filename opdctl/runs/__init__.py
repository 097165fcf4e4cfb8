"""What a run leaves on disk: the run directory, checkpoints, atomic files, JSON lines, the directory lock,
and the experiment trackers that mirror its metrics.
"""
