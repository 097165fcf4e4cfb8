"""Evaluation throughput: answers per second through the HF backend and a vLLM server, and grades per second.

Serve MODEL with vLLM first (docs/vllm.md), then:

    python benchmarks/eval_generation.py --model-path MODEL --base-url http://127.0.0.1:8000/v1

It answers the demo task's held-out problems (``--problems`` of them, ``--samples``
each, temperature 1) with (1) opdctl's hf backend on MODEL in this process, in
batches of ``--batch-size``, and (2) opdctl's vllm backend at several request
concurrencies; then grades the answers with math-verify in 1 and 2 worker processes.
It prints medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch

from opdctl.backends.types import Sampling
from opdctl.data.demo_task import held_out
from opdctl.data.grading import Grader
from opdctl.data.prompts import chat_prompt
from opdctl_hf import HFTeacher
from opdctl_vllm import VLLMTeacher


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="The served model's weights, for the HF side.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--served-name", default="teacher")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    local = HFTeacher(HFTeacher.Config(model=args.model_path))
    tokenizer = local.tokenizer
    problems = held_out(args.problems)
    prompts = [chat_prompt(tokenizer, p.prompt, True) for p in problems for _ in range(args.samples)]
    sampling = Sampling(args.max_new_tokens, temperature=1.0, seed=0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(prompts)} answers of at most {args.max_new_tokens} tokens, median of {args.repeats}\n")
    print(f"{'path':<34} {'seconds':>8} {'answers/s':>10} {'tokens/s':>9}")

    def batched():
        size = args.batch_size
        parts = [local.generate(prompts[i : i + size], sampling) for i in range(0, len(prompts), size)]
        return [t for part in parts for t in part.responses()]

    seconds, responses = timed(batched, args.repeats)
    tokens = sum(map(len, responses))
    label = f"hf, batches of {args.batch_size}"
    print(f"{label:<34} {seconds:8.2f} {len(prompts) / seconds:10.1f} {tokens / seconds:9.0f}")
    for concurrency in (1, 8, 32):
        served = VLLMTeacher(
            VLLMTeacher.Config(model=args.served_name, base_url=args.base_url, max_concurrency=concurrency)
        )
        seconds, rollouts = timed(lambda served=served: served.generate(prompts, sampling), args.repeats)
        tokens = int(rollouts.lengths.sum())
        label = f"vllm server, {concurrency} in flight"
        print(f"{label:<34} {seconds:8.2f} {len(prompts) / seconds:10.1f} {tokens / seconds:9.0f}")
        served.close()

    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    items = [
        (p.answer, text) for p, text in zip([p for p in problems for _ in range(args.samples)], texts, strict=True)
    ]
    print(f"\n{'grading (math-verify)':<34} {'seconds':>8} {'grades/s':>10}")
    for workers in (1, 2):
        with Grader(workers=workers) as grader:
            seconds, _ = timed(lambda grader=grader: grader.grade(items), args.repeats)
        print(f"{str(workers) + ' worker process(es)':<34} {seconds:8.2f} {len(items) / seconds:10.0f}")


if __name__ == "__main__":
    main()
