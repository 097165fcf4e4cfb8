"""Where a training step's time goes: the demo (or any config) under cProfile, by part of the step.

Runs a few steps of each method (after one warm-up step that is not counted) and
prints, per method, the seconds per step spent in each part: the decode loop (model
forward, top-k recording, sampling, the Python around them), teacher scoring
(streamed chunks or one pass), the drift monitor, the update's forward and backward,
the optimizer, and metrics/trace writing. cProfile adds overhead to Python-heavy parts,
and the first line of each method gives the wall and CPU seconds per step it measured. The
parts are CPU seconds (process time, all threads), which other work on the machine
barely changes.

    python benchmarks/profile_step.py --steps 10
    python benchmarks/profile_step.py --steps 5 -c examples/smollm2.yaml   # a real model
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from methods import PLAIN_OPD, PRUNE_OPD_TRUNCATION

import opdctl  # noqa: F401  (first: thread defaults before torch loads)
from opdctl.config.files import load_config
from opdctl.progress import LogReporter, reporting_to
from opdctl.training.start import start_run

METHODS = {"plain OPD": PLAIN_OPD, "Prune-OPD + truncation": PRUNE_OPD_TRUNCATION}
# part of the step -> (file suffix, function name) whose cumulative time it is
PARTS = {
    "generate (whole decode loop)": ("opdctl_hf/sampling.py", "sample"),
    "  student forward while decoding": ("opdctl_hf/sampling.py", "sample", "_wrapped_call_impl"),
    "  top-k recording": ("opdctl_hf/sampling.py", "add"),
    "  sampling (Gumbel-max)": ("opdctl_hf/sampling.py", "_choose"),
    "  drift monitor: teacher scoring of chunks": ("opdctl_hf/streaming.py", "extend"),
    "teacher scoring (one pass)": ("opdctl_hf/teacher.py", "score"),
    "drift metric and weights": ("opdctl/algorithm/drift.py", "measure_drift"),
    "update (forward, backward, optimizer)": ("opdctl/training/trainer.py", "update"),
    "  student forward with gradient": ("opdctl_hf/student.py", "logprobs"),
    "  backward": ("torch/_tensor.py", "backward"),
    "  gradient clipping": ("torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    "  optimizer step": ("torch/optim/optimizer.py", "wrapper"),
    "metrics": ("opdctl/runs/rundir.py", "append_metrics"),
    "traces (tables and parquet)": ("opdctl/training/traces.py", "trace_tables"),
    "  parquet writing": ("opdctl/runs/rundir.py", "write_traces"),
}


def _cumulative(stats: pstats.Stats, suffix: str, name: str, callee: str | None = None) -> float:
    """Cumulative seconds of the functions named ``name`` in files ending with ``suffix`` (or of their
    callees named ``callee``)."""
    total = 0.0
    for (file, _, func), (_, _, _, cumulative, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if callee is None and func == name and file.endswith(suffix):
            total += cumulative
        if callee is not None and func == callee:
            total += sum(v[3] for (f, _, fn), v in callers.items() if fn == name and f.endswith(suffix))
    return total


def profile(name: str, args: argparse.Namespace, workdir: Path) -> None:
    overrides = [*METHODS[name], f"optim.steps={args.steps + 1}", "eval.bench=[]", f"seed={args.seed}"]
    overrides += ["optim.prompts_per_step=8", "optim.updates_per_step=1"]  # one update a step, as documented
    config = load_config(args.config, [*overrides, f"output.dir={workdir / name.split()[0]}", *args.set])
    with reporting_to(LogReporter()):
        trainer = start_run(config)
        trainer.train_step()  # warm-up, not counted
        wall, cpu = time.perf_counter(), time.process_time()
        profiler = cProfile.Profile(time.process_time)  # CPU seconds: robust to a shared machine
        for _ in range(args.steps):
            profiler.enable()
            trainer.record(*trainer.train_step())
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = pstats.Stats(profiler)
    print(f"\n{name}: {wall / args.steps:.3f} s/step wall, {cpu / args.steps:.3f} s/step CPU (profiled)")
    for part, where in PARTS.items():
        seconds = _cumulative(stats, *where) / args.steps
        if seconds:
            print(f"  {part:45s} {seconds:7.3f} CPU s/step  {seconds * args.steps / cpu:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", type=Path, help="Base config (default: the embedded demo).")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides, e.g. optim.grad_accum=4.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for name in METHODS:
            profile(name, args, Path(workdir))


if __name__ == "__main__":
    main()
