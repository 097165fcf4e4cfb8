"""When truncation pays with a teacher that re-scores the prefix at every check: a cost simulation.

Rollouts get bad events at random rates (uniform in ``--rates``) and EOS at random lengths;
each check of a running rollout costs its whole prefix (prompt + response so far) in teacher
positions, as with a vLLM teacher (docs/benchmarks.md, "Does truncation pay with a served teacher?").
For each ratio of a teacher position's cost to a student token's, it prints the cost of one
step (in student-token units) for: no truncation (score once), exact chunks, and predicted
chunks (the monitor's own schedule, ``opdctl.training.monitor.next_chunk``). The defaults are the
measured real-pair setting.

    python benchmarks/truncation_costs.py --ratios 0.32 0.05 0.03 0.01
"""

from __future__ import annotations

import argparse
import random
import statistics

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch

from opdctl.training.monitor import next_chunk


def rollouts(rng: random.Random, args: argparse.Namespace) -> list[tuple[list[bool], int]]:
    """Per rollout: its bad events and where it ends (EOS or the limit) if nothing stops it."""
    out = []
    for _ in range(args.rows):
        rate = rng.uniform(*args.rates)
        out.append(([rng.random() < rate for _ in range(args.limit)], min(rng.randint(100, 400), args.limit)))
    return out


def stop_at(bad: list[bool], end: int, to_stop: int) -> int | None:
    """The length a rollout keeps when it stops on drift (its to_stop-th bad event), or None."""
    count = 0
    for i, b in enumerate(bad[:end]):
        count += b
        if count >= to_stop:
            return i + 1
    return None


def step_cost(batch: list[tuple[list[bool], int]], schedule: str, args: argparse.Namespace) -> tuple[int, int]:
    """Tokens generated and teacher positions computed for one step under ``schedule``."""
    if schedule == "none":
        return sum(end for _, end in batch), sum(args.prompt + end for _, end in batch)
    predicting = schedule == "predicted"
    chunk = next_chunk(torch.zeros(1, dtype=torch.long), 0, args.to_stop, args.first, predicting, args.max_overshoot)
    running, generated, positions, length = set(range(len(batch))), [0] * len(batch), 0, 0
    while running:
        length = min(length + chunk, args.limit)
        for row in list(running):
            bad, end = batch[row]
            stop = stop_at(bad, end, args.to_stop)
            generated[row] = min(length, end)
            positions += args.prompt + generated[row]
            if (stop is not None and generated[row] >= stop) or generated[row] >= end:
                running.discard(row)
        if not running:
            break
        counts = torch.tensor([sum(batch[row][0][:length]) for row in running])
        chunk = next_chunk(counts, length, args.to_stop, args.first, predicting, args.max_overshoot)
    return sum(generated), positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.32, 0.1, 0.05, 0.03, 0.01],
                        help="Cost of a teacher position / cost of a student token (measured here: 0.32).")  # fmt: skip
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=90, help="Prompt tokens per rollout.")
    parser.add_argument("--limit", type=int, default=256, help="rollout.max_new_tokens.")
    parser.add_argument("--to-stop", type=int, default=100, help="Bad events to a stop (1 / prune.w_drop).")
    parser.add_argument("--first", type=int, default=16, help="rollout.chunk_tokens.")
    parser.add_argument("--max-overshoot", type=int, default=0,
                        help="rollout.max_overshoot (opdctl's default: 2; 0 as benchmarks.md measured).")  # fmt: skip
    parser.add_argument("--rates", type=float, nargs=2, default=[0.5, 0.75], help="Bad-event rates, min and max.")
    parser.add_argument("--steps", type=int, default=20, help="Simulated steps (seeds) to average.")
    args = parser.parse_args()

    batches = [rollouts(random.Random(seed), args) for seed in range(args.steps)]
    print("teacher/student cost | no truncation | exact chunks | predicted chunks   (one step, in student tokens)")
    for ratio in args.ratios:
        costs = {}
        for schedule in ("none", "exact", "predicted"):
            runs = [step_cost(batch, schedule, args) for batch in batches]
            costs[schedule] = statistics.mean(tokens + ratio * positions for tokens, positions in runs)
        print(f"{ratio:.3g} | " + " | ".join(f"{cost:,.0f}" for cost in costs.values()))


if __name__ == "__main__":
    main()
