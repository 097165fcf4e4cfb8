"""What Prune-OPD saves: plain OPD vs Prune-OPD (paper) vs Prune-OPD with truncation while generating.

Runs the demo task (or any config) for a fixed number of steps with each method and
several seeds, evaluates held-out accuracy every --eval-every steps, and prints per
method: wall time per step and in total, tokens generated and scored, final accuracy
(mean and spread over seeds), time to reach plain OPD's final accuracy, and the drift
monitor's own share of step time.

    python benchmarks/truncation.py --seeds 0 1 2 --steps 150 --max-new-tokens 512 --out results.json

Each run writes an ordinary run directory under --workdir; inspect them with
`opdctl inspect-drift`.
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
from methods import PLAIN_OPD, PRUNE_OPD, PRUNE_OPD_TRUNCATION, train

from opdctl.config.files import load_config

METHODS = {"plain OPD": PLAIN_OPD, "Prune-OPD (paper)": PRUNE_OPD, "Prune-OPD + truncation": PRUNE_OPD_TRUNCATION}


def run(name: str, seed: int, args: argparse.Namespace) -> dict:
    """One training run; returns its step records and evaluation curve."""
    directory = args.workdir / f"{name.split()[0].lower()}{'-trunc' if 'trunc' in name else ''}-seed{seed}"
    overrides = [
        *METHODS[name],
        f"seed={seed}",
        f"optim.steps={args.steps}",
        "optim.prompts_per_step=8",  # one update per step, as measured in docs/benchmarks.md
        "optim.updates_per_step=1",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"budget.max_len={args.max_new_tokens}",
        f"eval.every={args.eval_every}",
        "eval.teacher=false",
        f"output.dir={directory}",
        *args.set,
    ]
    config = load_config(args.config, overrides)
    started = time.perf_counter()
    records = train(config)
    steps = [r for r in records if "eval" not in r]
    curve = [(r["step"], r["accuracy"]) for r in records if "eval" in r and r["when"] != "teacher"]
    elapsed = {r["step"]: r["elapsed_seconds"] for r in steps} | {0: 0.0}
    return {
        "dir": str(directory),
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": steps[-1]["elapsed_seconds"],
        "seconds_per_step": steps[-1]["elapsed_seconds"] / len(steps),
        "tokens_generated": sum(r["tokens_generated"] for r in steps),
        "tokens_scored": sum(r["tokens_scored"] for r in steps),
        "tokens_trained": sum(r["tokens_trained"] for r in steps),
        "tokens_not_generated": sum(r.get("tokens_not_generated", 0) for r in steps),
        "drift_share": sum(r["drift_seconds"] for r in steps)
        / sum(r["generate_seconds"] + r["score_seconds"] + r["update_seconds"] for r in steps),
        "final_accuracy": curve[-1][1],
        "curve": [(step, acc, elapsed[step]) for step, acc in curve],
    }


def time_to(curve: list[tuple[int, float, float]], target: float) -> float | None:
    """Training seconds at the first evaluation reaching ``target`` accuracy."""
    return next((seconds for _, acc, seconds in curve if acc >= target), None)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def summary_row(name: str, by_seed: dict[int, dict], plain: dict[int, dict]) -> tuple[str, ...]:
    """One method's figures over seeds (mean ± standard deviation), against plain OPD on the same seeds."""
    runs = list(by_seed.values())
    reach = [time_to(r["curve"], plain[s]["final_accuracy"]) for s, r in by_seed.items()]
    ratio = [t / plain[s]["train_seconds"] for t, s in zip(reach, by_seed, strict=True) if t is not None]
    reached = [t for t in reach if t is not None]
    return (
        name,
        spread([r["seconds_per_step"] for r in runs]),
        spread([r["train_seconds"] for r in runs]),
        spread([r["train_seconds"] / plain[s]["train_seconds"] for s, r in by_seed.items()]),
        spread([r["tokens_generated"] for r in runs]),
        spread([r["tokens_scored"] for r in runs]),
        spread([r["tokens_not_generated"] for r in runs]),
        spread([r["final_accuracy"] for r in runs]),
        f"{spread(reached)} ({len(reached)}/{len(reach)} seeds)" if reached else "never",
        spread(ratio) if ratio else "-",
        spread([r["drift_share"] for r in runs]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="Base config (default: the embedded demo).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="A generous length limit.")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-truncation"))
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides for every run, e.g. optim.lr=5e-4.")
    parser.add_argument("--out", type=Path, help="Write all results as JSON.")
    args = parser.parse_args()

    results: dict[str, dict[int, dict]] = {name: {} for name in METHODS}
    for seed in args.seeds:
        for name in METHODS:
            results[name][seed] = run(name, seed, args)
            r = results[name][seed]
            print(f"seed {seed} {name:24s} {r['train_seconds']:7.1f} s  accuracy {r['final_accuracy']:.1%}", flush=True)

    plain = results["plain OPD"]
    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    setting = f"{args.steps} steps, max {args.max_new_tokens} new tokens, seeds {args.seeds}"
    print(f"\n{machine}, {time.strftime('%Y-%m-%d')}: {setting}")
    header = ("method", "s/step", "total s", "total vs plain", "tokens gen.", "tokens scored", "not generated",
              "final acc.", "time to plain's final acc.", "vs plain's total", "drift monitor share")  # fmt: skip
    print(" | ".join(header))
    for name, by_seed in results.items():
        print(" | ".join(summary_row(name, by_seed, plain)))
    print("\nper seed: training s, final accuracy, time to plain's final accuracy / plain's total")
    for name, by_seed in results.items():
        cells = []
        for seed, r in by_seed.items():
            reach = time_to(r["curve"], plain[seed]["final_accuracy"])
            ratio = f"{reach / plain[seed]['train_seconds']:.2f}" if reach is not None else "never"
            cells.append(f"seed {seed}: {r['train_seconds']:.1f} s, {r['final_accuracy']:.1%}, {ratio}")
        print(f"{name}: " + "; ".join(cells))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
