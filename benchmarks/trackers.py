"""What experiment trackers cost: seconds to start each one, and milliseconds to send one step's record.

Replays an existing run's metrics.jsonl (and its traces, for the drift histograms) into
each tracker in its local or offline mode, in a scratch directory, and prints per tracker
the start time, the mean and worst time per record, and the time to close.

    python benchmarks/trackers.py RUN_DIR [--trackers tensorboard wandb trackio mlflow]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from opdctl.runs.rundir import RunDir
from opdctl.runs.trackers import Trackers


def measure(name: str, source: RunDir, scratch: Path) -> dict[str, float]:
    """Copy the run's traces into a fresh run directory, then send it every record through one tracker."""
    run = RunDir.create(scratch / name, source.config_path.read_text())
    shutil.copytree(source.traces_path, run.traces_path)
    records = source.read_metrics()
    started = time.perf_counter()
    trackers = Trackers.open([name], run, "opdctl-benchmark", {"seed": 0}, [])
    opened = time.perf_counter()
    seconds = []
    for record in records:
        t0 = time.perf_counter()
        trackers.log(record)
        seconds.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    trackers.close()
    closed = time.perf_counter()
    return {"start_s": opened - started, "mean_ms": 1e3 * statistics.mean(seconds),
            "max_ms": 1e3 * max(seconds), "close_s": closed - t1, "records": len(records)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--trackers", nargs="+", default=["tensorboard", "wandb", "trackio", "mlflow"])
    args = parser.parse_args()
    source = RunDir.open(args.run_dir)
    scratch = Path(tempfile.mkdtemp(prefix="opdctl-trackers-"))
    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(scratch / "trackio"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"})  # fmt: skip
    print(f"{'tracker':<12} {'records':>7} {'start s':>8} {'ms/record':>10} {'max ms':>8} {'close s':>8}")
    try:
        for name in args.trackers:
            m = measure(name, source, scratch)
            print(f"{name:<12} {m['records']:>7} {m['start_s']:>8.2f} {m['mean_ms']:>10.1f} {m['max_ms']:>8.1f} "
                  f"{m['close_s']:>8.2f}")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
