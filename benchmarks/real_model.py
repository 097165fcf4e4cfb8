"""Prune-OPD on a real pretrained pair: plain OPD, the paper's defaults, a calibrated threshold, and truncation.

The pair of examples/smollm2-135m.yaml (SmolLM2-135M-Instruct teaching its 20-layer shrunk
copy, docs/real-models.md) on the built-in word problems. Every arm trains the same steps on
the same prompts with the same seeds; arms are interleaved seed by seed. Quality is measured
after training, outside the timed part, two ways: the exact (full-vocabulary) reverse KL of
the student to the teacher on the student's own answers to held-out word problems, and
greedy accuracy on held-out word problems.

    python benchmarks/real_model.py -c examples/smollm2-135m.yaml --seeds 0 1 2 --steps 5 --problems 16 \\
        --threshold 0.471 --set student.model=models/smollm2-student --out results.json

``--threshold`` is the calibrated value of ``--metric`` (``opdctl calibrate``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch
from methods import PLAIN_OPD

from opdctl.backends import Sampling
from opdctl.configfile import load_config
from opdctl.data import chat_prompt
from opdctl.evaluation.benchmarks import wordproblems
from opdctl.evaluation.grading import Grader
from opdctl.evaluation.runner import Settings, evaluate
from opdctl.progress import LogReporter, reporting_to
from opdctl.shrink import Texts, response_logprobs
from opdctl.start import start_run
from opdctl.trainer import Trainer


def arms(metric: str, threshold: float) -> dict[str, list[str]]:
    calibrated = ["prune.enable=true", f"prune.metric={metric}", f"prune.threshold={threshold}"]
    return {
        "plain OPD": PLAIN_OPD,
        "Prune-OPD (paper)": [
            "prune.enable=true",
            "prune.metric=overlap_ratio",
            "prune.k=16",
            "prune.threshold=0.7",
            "rollout.truncate_on_drift=false",
        ],
        "Prune-OPD calibrated": [*calibrated, "rollout.truncate_on_drift=false"],
        "calibrated + truncation": [*calibrated, "rollout.truncate_on_drift=true"],
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (math-verify graders run in children)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@torch.no_grad()
def held_out_reverse_kl(trainer: Trainer, problems: int, max_new_tokens: int, seed: int) -> float:
    """Exact KL(student || teacher) per token on the student's sampled answers to held-out word problems."""
    tokenizer = trainer.student.tokenizer
    bench = wordproblems(problems)
    prompts = [chat_prompt(tokenizer, bench.prompt(p), True) for p in bench.problems]
    rollouts = trainer.student.generate(prompts, Sampling(max_new_tokens, 1.0, seed=seed + 10_000))
    texts = Texts(rollouts.prompt_ids, rollouts.responses())
    total, count = 0.0, 0
    for batch in texts.batches(4):
        p = response_logprobs(trainer.student.model.eval(), batch)
        q = response_logprobs(trainer.teacher.model, batch)
        total += float((p.exp() * (p - q)).sum())
        count += p.shape[0]
    return total / max(count, 1)


def run(name: str, overrides: list[str], seed: int, args: argparse.Namespace) -> dict:
    directory = args.workdir / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}-seed{seed}"
    config = load_config(args.config, [*overrides, f"seed={seed}", f"optim.steps={args.steps}", "eval.bench=[]",
                                       f"output.dir={directory}", *args.set])  # fmt: skip
    with reporting_to(LogReporter()):
        trainer = start_run(config)
        wall, cpu = time.perf_counter(), cpu_seconds()
        trainer.fit()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        kl = held_out_reverse_kl(trainer, args.problems, config.rollout.max_new_tokens, seed)
        settings = Settings(1, 0.0, 1.0, config.rollout.max_new_tokens, seed, True)
        with Grader(workers=2) as grader:
            score = evaluate(trainer.student, trainer.student.tokenizer, wordproblems(args.problems), settings, grader,
                             batch_size=64)  # fmt: skip
    steps = [r for r in trainer.run.read_metrics() if "eval" not in r]
    return {
        "dir": str(directory),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "tokens_generated": sum(r["tokens_generated"] for r in steps),
        "tokens_scored": sum(r["tokens_scored"] for r in steps),
        "tokens_trained": sum(r["tokens_trained"] for r in steps),
        "bad_event_rate": statistics.mean(r["bad_event_rate"] for r in steps),
        "weight": statistics.mean(r["weight"] for r in steps),
        "rollouts_stopped": sum(r.get("finish_drift", 0) for r in steps),
        "train_reverse_kl_first": steps[0]["reverse_kl"],
        "train_reverse_kl_last": steps[-1]["reverse_kl"],
        "held_out_reverse_kl": kl,
        "accuracy": score.accuracy,
    }


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", type=Path, default=Path("examples/smollm2-135m.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--metric", default="weighted_overlap", help="The calibrated arms' prune.metric.")
    parser.add_argument("--threshold", type=float, required=True, help="Its calibrated threshold.")
    parser.add_argument("--problems", type=int, default=40, help="Held-out word problems for KL and accuracy.")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-real-model"))
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides for every run.")
    parser.add_argument("--out", type=Path, help="Write all results as JSON.")
    args = parser.parse_args()

    methods = arms(args.metric, args.threshold)
    results: dict[str, dict[int, dict]] = {name: {} for name in methods}
    for seed in args.seeds:
        for name, overrides in methods.items():
            r = results[name][seed] = run(name, overrides, seed, args)
            print(f"seed {seed} {name:26s} wall {r['wall_seconds']:6.1f} s cpu {r['cpu_seconds']:6.1f} s "
                  f"held-out KL {r['held_out_reverse_kl']:.3f} accuracy {r['accuracy']:.1%}", flush=True)  # fmt: skip
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    plain = results["plain OPD"]
    machine = f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    setting = f"{args.steps} steps, seeds {args.seeds}, {args.metric} at {args.threshold}"
    print(f"\n{machine}, {time.strftime('%Y-%m-%d')}: {setting}")
    header = ("method", "wall vs plain", "CPU vs plain", "CPU s", "tokens generated", "tokens scored", "tokens trained",
              "bad-event rate", "mean weight", "stopped on drift", "held-out reverse KL", "accuracy")  # fmt: skip
    print(" | ".join(header))
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        print(" | ".join((
            name,
            spread([r["wall_seconds"] / plain[s]["wall_seconds"] for s, r in by_seed.items()]),
            spread([r["cpu_seconds"] / plain[s]["cpu_seconds"] for s, r in by_seed.items()]),
            spread([r["cpu_seconds"] for r in runs]),
            spread([r["tokens_generated"] for r in runs]),
            spread([r["tokens_scored"] for r in runs]),
            spread([r["tokens_trained"] for r in runs]),
            spread([r["bad_event_rate"] for r in runs]),
            spread([r["weight"] for r in runs]),
            spread([r["rollouts_stopped"] for r in runs]),
            spread([r["held_out_reverse_kl"] for r in runs]),
            spread([r["accuracy"] for r in runs]),
        )))  # fmt: skip


if __name__ == "__main__":
    main()
