"""What OPD combined with other signals does on the demo: estimators, a task reward, a privileged-context teacher.

Runs the embedded demo config (Prune-OPD with truncation) with each arm's overrides for the same steps and
seeds, evaluates held-out accuracy every --eval-every steps, and prints per arm: accuracy along the way and at
the end (mean and spread over seeds), training CPU and wall seconds, and tokens generated.

    python benchmarks/combinations.py --arms topk forward_topk k3 --seeds 0 --steps 40
    python benchmarks/combinations.py --arms topk reward_only mixed --seeds 0 --steps 40
    python benchmarks/combinations.py --arms teacher self_distill self_distill_plain --seeds 0 --steps 40

Each run writes an ordinary run directory under --workdir.
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
from methods import PLAIN_OPD, train

from opdctl.config.files import load_config

SOLUTION = ["data.teacher_prompt_template={prompt}={answer}\n{solution}"]  # the demo row's worked solution
SELF = ["teacher.model=demo:student"]  # the student's own starting weights
ARMS = {
    "topk": [],  # the demo's: top-k reverse KL
    "forward_topk": ["loss.estimator=forward_topk"],
    "k3": ["loss.estimator=k3"],
    "sampled": ["loss.estimator=sampled"],
    "reward_only": ["loss.opd_coef=0", "reward.coef=1"],
    "mixed": ["reward.coef=1"],
    "teacher": [],  # the demo teacher, no context: the topk arm, named for the self-distillation comparison
    "self_distill": [*SELF, *SOLUTION],  # privileged self-distillation with Prune-OPD's weights
    "self_distill_plain": [*SELF, *SOLUTION, *PLAIN_OPD],  # the same without them (plain OPD)
}


def run(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """One training run; its final accuracy, evaluation curve, time and tokens."""
    overrides = [
        *ARMS[arm],
        f"seed={seed}",
        f"optim.steps={args.steps}",
        f"eval.every={args.eval_every}",
        f"eval.max_problems={args.problems}",
        "eval.teacher=false",
        f"output.dir={args.workdir / f'{arm}-seed{seed}'}",
        *args.set,
    ]
    config = load_config(None, overrides)
    started = time.perf_counter()
    records = train(config)
    steps = [r for r in records if "eval" not in r]
    curve = [(r["step"], r["accuracy"]) for r in records if "eval" in r and r["when"] in ("during", "after")]
    return {
        "arm": arm,
        "seed": seed,
        "accuracy": curve[-1][1],
        "curve": curve,
        "cpu_seconds": steps[-1]["cpu_seconds"],
        "wall_seconds": steps[-1]["elapsed_seconds"],
        "tokens_generated": sum(r["tokens_generated"] for r in steps),
        "reward": statistics.mean(r["reward"] for r in steps) if "reward" in steps[-1] else None,
        "run_seconds": round(time.perf_counter() - started, 1),
    }


def report(results: list[dict]) -> None:
    print(f"\n{'arm':<20} {'accuracy':>16} {'CPU s':>8} {'wall s':>8} {'tokens':>8}  curve (step: accuracy)")
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        accuracy = [r["accuracy"] for r in mine]
        spread = f" ± {statistics.stdev(accuracy):.1%}" if len(accuracy) > 1 else ""
        curve = " ".join(f"{step}:{acc:.0%}" for step, acc in mine[0]["curve"])
        print(
            f"{arm:<20} {statistics.mean(accuracy):>10.1%}{spread:>6} "
            f"{statistics.mean(r['cpu_seconds'] for r in mine):>8.0f} "
            f"{statistics.mean(r['wall_seconds'] for r in mine):>8.0f} "
            f"{statistics.mean(r['tokens_generated'] for r in mine):>8.0f}  {curve}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--problems", type=int, default=100, help="Held-out problems per evaluation.")
    parser.add_argument("--workdir", type=Path, default=Path("runs/combinations"))
    parser.add_argument("--set", nargs="*", default=[], help="More overrides for every arm.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON.")
    args = parser.parse_args()
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    results = [run(arm, seed, args) for seed in args.seeds for arm in args.arms]
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
