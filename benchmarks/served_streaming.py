"""Truncation with a served teacher: scoring after generation vs exact chunks vs predicted chunks.

A vLLM teacher cannot reuse its prefix cache when asked for prompt log-probs, so every
truncation check re-scores each running rollout from its start. This times one step's
generation and scoring (the trainer's own ``generate_and_score``) three ways on the same
prompts and seed, interleaved and repeated:

* no truncation: generate to the budget, then score (overlapped with generation when the
  teacher allows it); what ``rollout.chunking=auto`` does with such a teacher;
* truncation, exact chunks: checks come as often as a rollout could reach its stop, nothing
  is generated past a stop;
* truncation, predicted chunks: the next check where the first rollout is expected to stop.

Serve the teacher first (docs/vllm.md), then, e.g. on the real pair at the paper's threshold:

    python benchmarks/served_streaming.py -c examples/smollm2-135m.yaml --base-url http://127.0.0.1:8000/v1 \\
        --set student.model=models/smollm2-student prune.metric=overlap_ratio prune.threshold=0.7

Wall time is what a user waits; "machine CPU" is every process's CPU time on the machine
over the same interval (/proc/stat: the server's work included), meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import opdctl  # noqa: F401  (first: thread defaults before torch loads)
from opdctl.backends.types import Sampling
from opdctl.config.files import load_config
from opdctl.config.schema import Config
from opdctl.progress import LogReporter, reporting_to
from opdctl.training.generation import generate_and_score
from opdctl.training.start import start_run

ARMS = {
    "no truncation (score after)": ["rollout.truncate_on_drift=false"],
    "truncation, exact chunks": ["rollout.truncate_on_drift=true", "rollout.chunking=exact"],
    "truncation, predicted chunks": ["rollout.truncate_on_drift=true", "rollout.chunking=predicted"],
}


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used (user, nice, system, irq, softirq) since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / 100  # USER_HZ


def one_step(config: Config, trainer, prompts: list[list[int]], seed: int) -> dict:
    """Generate and score one step's rollouts; what it cost and produced."""
    streams = []
    stream = trainer.teacher.stream
    trainer.teacher.stream = lambda p: streams.append(stream(p)) or streams[-1]
    sampling = Sampling(config.rollout.max_new_tokens, config.rollout.temperature, config.loss.k, seed=seed)
    wall, cpu, machine = time.perf_counter(), time.process_time(), machine_cpu_seconds()
    try:
        gen = generate_and_score(config, trainer.student, trainer.teacher, prompts, sampling)
    finally:
        trainer.teacher.stream = stream
    wall, cpu, machine = time.perf_counter() - wall, time.process_time() - cpu, machine_cpu_seconds() - machine
    rollouts = gen.rollouts
    generated, kept = int(gen.token_counts.sum()), int(rollouts.lengths.sum())
    if streams:
        positions = getattr(streams[0], "positions_scored", generated + sum(len(p) for p in prompts))
    else:
        positions = kept + sum(len(p) for p in prompts)
    return {
        "wall": wall,
        "cpu": cpu,
        "machine_cpu": machine,
        "generated": generated,
        "kept": kept,
        "discarded": generated - kept,
        "stopped": rollouts.finish_reasons.count("drift"),
        "teacher_positions": positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", type=Path, default=Path("examples/smollm2-135m.yaml"))
    parser.add_argument("--base-url", required=True, help="The vLLM server's OpenAI-compatible URL.")
    parser.add_argument("--prompts", type=int, default=4, help="Prompts per step (each sampled rollout.n times).")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of all arms, each round a new seed.")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="Arms to run (the first "
                        "is the reference of the ratios).")  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides for every arm.")
    args = parser.parse_args()

    base = [f"teacher={{backend: vllm, model: teacher, base_url: '{args.base_url}'}}",
            f"rollout.max_new_tokens={args.max_new_tokens}", "budget.enable=false", "eval.bench=[]",
            "eval.reverse_kl=false"]  # fmt: skip
    arms = {name: ARMS[name] for name in args.arms}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp, reporting_to(LogReporter()):
        config = load_config(args.config, [*base, *args.set, f"output.dir={tmp}/run"])
        trainer = start_run(config)
        prompts = [trainer.prompts.ids[i] for i in range(args.prompts) for _ in range(config.rollout.n)]
        one_step(config, trainer, prompts[:2], seed=12345)  # warm-up: server and student caches
        for round_ in range(args.repeats):
            for name, overrides in arms.items():
                arm = load_config(args.config, [*base, *args.set, f"output.dir={tmp}/run", *overrides])
                r = one_step(arm, trainer, prompts, seed=round_)
                results[name].append(r)
                print(f"round {round_} {name:28s} wall {r['wall']:6.1f} s  cpu {r['cpu']:6.1f} s  machine cpu "
                      f"{r['machine_cpu']:6.1f} s  generated {r['generated']}  discarded {r['discarded']}  "
                      f"stopped {r['stopped']}  teacher positions {r['teacher_positions']}", flush=True)  # fmt: skip
        trainer.teacher.close()
        trainer.run.lock.release()

    first = results[args.arms[0]]
    print(f"\n{platform.node()} ({platform.machine()}), torch {version('torch')}, {time.strftime('%Y-%m-%d')}; "
          f"{len(prompts)} rollouts of at most {args.max_new_tokens} tokens, {args.repeats} rounds")  # fmt: skip
    print(f"arm | wall s | wall vs {args.arms[0]} | machine CPU vs {args.arms[0]} | tokens generated | "
          "discarded past a stop | stopped on drift | teacher positions computed")  # fmt: skip
    for name, runs in results.items():
        ratio = [r["wall"] / f["wall"] for r, f in zip(runs, first, strict=True)]
        machine = [r["machine_cpu"] / f["machine_cpu"] for r, f in zip(runs, first, strict=True)]
        print(" | ".join([
            name,
            f"{statistics.mean(r['wall'] for r in runs):.1f}",
            f"{statistics.mean(ratio):.2f} ± {statistics.pstdev(ratio):.2f}",
            f"{statistics.mean(machine):.2f} ± {statistics.pstdev(machine):.2f}",
            f"{statistics.mean(r['generated'] for r in runs):.0f}",
            f"{statistics.mean(r['discarded'] for r in runs):.0f}",
            f"{statistics.mean(r['stopped'] for r in runs):.1f}",
            f"{statistics.mean(r['teacher_positions'] for r in runs):.0f}",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
