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

import numpy as np
import pyarrow.parquet as pq

from opdctl.runs.rundir import RunDir, step_name
from opdctl.runs.trackers import Trackers


def traced_histograms(run: RunDir, step: int) -> dict[str, np.ndarray]:
    path = run.traces_path / "tokens" / f"{step_name(step)}.parquet"
    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["position", "weight", "overlap", "bad"])
    bad = table["bad"].to_numpy(zero_copy_only=False)
    return {
        "drift/weight": table["weight"].to_numpy(),
        "drift/overlap": table["overlap"].to_numpy(),
        "drift/bad_event_position": table["position"].to_numpy()[bad],
    }


def measure(name: str, source: RunDir, scratch: Path) -> dict[str, float]:
    """Send every record of ``source`` through one tracker, in a fresh run directory, with the traced steps'
    drift histograms (the trainer sends the whole step's, from memory)."""
    run = RunDir.create(scratch / name, source.config_path.read_text())
    records = source.read_metrics()
    histograms = {r["step"]: traced_histograms(source, r["step"]) for r in records if "eval" not in r}
    started = time.perf_counter()
    trackers = Trackers.open([name], run, "opdctl-benchmark", {"seed": 0}, [])
    opened = time.perf_counter()
    seconds = []
    for record in records:
        t0 = time.perf_counter()
        trackers.log(record, histograms.get(record["step"]) if "eval" not in record else None)
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
