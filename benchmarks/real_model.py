"""Prune-OPD's claim on real text: the skilled SmolLM2 pair on long word problems, against plain OPD.

The pair of examples/smollm2-wordproblems.yaml (``smollm2:teacher`` teaching ``smollm2:student``,
docs/real-models.md) on five-to-eight-operation word problems, where one slip early on spoils
the rest of a rollout. Four arms train the same steps on the same prompts with the same seeds,
interleaved seed by seed: plain OPD, Prune-OPD with the paper's signal and defaults, Prune-OPD
with a chosen signal, and the same with truncation while generating. Every ``--eval-every``
steps the student's greedy accuracy on held-out long problems is measured (outside the timed
part); each step's CPU time comes from the run's metrics (``cpu_seconds``, training only).

Reported per arm: final accuracy; the training CPU time until the student first reached plain
OPD's final accuracy (same seed), as a share of plain OPD's whole run; total training CPU; and
tokens generated, scored and trained.

    python benchmarks/real_model.py --seeds 0 1 2 --steps 40 --eval-every 10 --problems 50 \\
        --metric teacher_prob --k 16 --threshold 0.1 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch
from methods import PLAIN_OPD

from opdctl.config.files import load_config
from opdctl.data.wordproblems import LONG
from opdctl.progress import LogReporter, reporting_to
from opdctl.training.start import start_run

COMMON = [
    f"data.source={LONG}",
    f"eval.bench=[{LONG}]",
    "eval.teacher=false",
    "eval.reverse_kl=false",
    "rollout.max_new_tokens=384",
    "budget.init_len=384",
    "budget.max_len=384",
    "budget.min_len=256",
    "eval.max_new_tokens=400",
]  # fmt: skip  (worked solutions of long problems: 130-300 tokens)


def arms(metric: str, k: int, threshold: float) -> dict[str, list[str]]:
    chosen = ["prune.enable=true", "budget.enable=true", f"prune.metric={metric}", f"prune.k={k}",
              f"prune.threshold={threshold}"]  # fmt: skip
    return {
        "plain OPD": PLAIN_OPD,
        "Prune-OPD (paper)": [
            "prune.enable=true",
            "budget.enable=true",
            "prune.metric=overlap_ratio",
            "prune.k=16",
            "prune.threshold=0.7",
            "rollout.truncate_on_drift=false",
        ],
        "Prune-OPD (chosen)": [*chosen, "rollout.truncate_on_drift=false"],
        "chosen + truncation": [*chosen, "rollout.truncate_on_drift=true"],
    }


def run(name: str, overrides: list[str], seed: int, args: argparse.Namespace) -> dict:
    directory = args.workdir / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}-seed{seed}"
    config = load_config(args.config, [*COMMON, *overrides, f"seed={seed}", f"optim.steps={args.steps}",
                                       f"eval.every={args.eval_every}", f"eval.max_problems={args.problems}",
                                       f"output.dir={directory}", "output.save_every=1000000", *args.set])  # fmt: skip
    with reporting_to(LogReporter()):
        started = time.perf_counter()
        start_run(config).fit()
        wall = time.perf_counter() - started
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    cpu = {0: 0.0} | {r["step"]: r["cpu_seconds"] for r in steps}
    curve = [(r["step"], cpu[r["step"]], r["accuracy"]) for r in records if "eval" in r and r["when"] != "teacher"]
    return {
        "dir": str(directory),
        "wall_seconds_with_evaluation": wall,
        "cpu_seconds": steps[-1]["cpu_seconds"],
        "curve": curve,  # (step, training CPU seconds so far, accuracy)
        "tokens_generated": sum(r["tokens_generated"] for r in steps),
        "tokens_scored": sum(r["tokens_scored"] for r in steps),
        "tokens_trained": sum(r["tokens_trained"] for r in steps),
        "rollouts_stopped": sum(r.get("finish_drift", 0) for r in steps),
        "rollouts": sum(r.get(f"finish_{k}", 0) for r in steps for k in ("eos", "length", "drift")),
        "bad_event_rate": statistics.mean(r["bad_event_rate"] for r in steps),
        "accuracy": curve[-1][2],
    }


def cpu_to_reach(result: dict, target: float) -> float | None:
    """Training CPU seconds until the first evaluation at or above ``target`` (None: never reached)."""
    return next((cpu for _, cpu, accuracy in result["curve"] if accuracy >= target), None)


def spread(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.2g}"


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> None:
    plain = results["plain OPD"]
    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    setting = f"{args.steps} steps, eval every {args.eval_every} on {args.problems} problems, seeds {args.seeds}"
    print(f"\n{machine}, {time.strftime('%Y-%m-%d')}: {setting}; chosen: {args.metric}@{args.k} at {args.threshold}")
    header = ("method", "final accuracy", "CPU to reach plain's final accuracy (share of plain's run)", "reached",
              "training CPU vs plain", "training CPU s", "tokens generated", "tokens scored", "tokens trained",
              "stopped on drift", "bad-event rate")  # fmt: skip
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        reach = {s: cpu_to_reach(r, plain[s]["accuracy"]) for s, r in by_seed.items() if s in plain}
        shares = [cpu / plain[s]["cpu_seconds"] for s, cpu in reach.items() if cpu is not None]
        print(" | ".join((
            name,
            spread([100 * r["accuracy"] for r in runs]) + "%",
            spread(shares, 2),
            f"{len(shares)} of {len(reach)} seeds",
            spread([r["cpu_seconds"] / plain[s]["cpu_seconds"] for s, r in by_seed.items() if s in plain], 2),
            spread([r["cpu_seconds"] for r in runs]),
            spread([r["tokens_generated"] for r in runs]),
            spread([r["tokens_scored"] for r in runs]),
            spread([r["tokens_trained"] for r in runs]),
            spread([r["rollouts_stopped"] / r["rollouts"] for r in runs], 2),
            spread([r["bad_event_rate"] for r in runs], 2),
        )))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", type=Path, default=Path("examples/smollm2-wordproblems.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--problems", type=int, default=50, help="Held-out long word problems per evaluation.")
    parser.add_argument("--metric", default="teacher_prob", help="The chosen arms' prune.metric.")
    parser.add_argument("--k", type=int, default=16, help="The chosen arms' prune.k.")
    parser.add_argument("--threshold", type=float, default=0.1, help="The chosen arms' prune.threshold.")
    parser.add_argument("--only", nargs="*", help="Run only these arms (by name).")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-real-model"))
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides for every run.")
    parser.add_argument("--out", type=Path, help="Write all results as JSON (and read it first: finished runs stay).")
    args = parser.parse_args()

    methods = {n: o for n, o in arms(args.metric, args.k, args.threshold).items() if not args.only or n in args.only}
    results: dict[str, dict[int, dict]] = {name: {} for name in methods}
    if args.out and args.out.is_file():
        for name, by_seed in json.loads(args.out.read_text()).items():
            results.setdefault(name, {}).update({int(s): r for s, r in by_seed.items()})
    for seed in args.seeds:
        for name, overrides in methods.items():
            if seed in results[name]:
                continue
            r = results[name][seed] = run(name, overrides, seed, args)
            print(f"seed {seed} {name:22s} training CPU {r['cpu_seconds']:7.1f} s accuracy {r['accuracy']:.1%} "
                  f"curve {[(s, round(c), a) for s, c, a in r['curve']]}", flush=True)  # fmt: skip
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    report(results, args)


if __name__ == "__main__":
    main()
