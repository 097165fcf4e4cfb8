"""Teacher scoring throughput: opdctl's vLLM teacher vs its HF teacher vs the server's raw rate.

Serve MODEL with vLLM first (docs/vllm.md), then:

    python benchmarks/teacher_scoring.py --model-path MODEL --base-url http://127.0.0.1:8000/v1

It samples rollouts from MODEL (as a student) and prints scored tokens per second
for (1) the raw server: concurrent prompt_logprobs requests timed at the HTTP level,
no parsing; (2) opdctl's vLLM teacher (requests, parsing, tensors); (3) opdctl's HF
teacher on the same weights in this process; and (4) one generation+scoring step
with scoring after generation vs overlapped with it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import openai
import torch

from opdctl.backends.types import Sampling, TeacherScores
from opdctl.data.demo_task import held_out
from opdctl.data.prompts import chat_prompt
from opdctl_hf import HFStudent, HFTeacher
from opdctl_vllm import VLLMTeacher


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="The served model's weights, for the HF side.")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--served-name", default="teacher")
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--k", type=int, default=20, help="prompt_logprobs per position")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    student = HFStudent(HFStudent.Config(model=args.model_path))
    prompts = [chat_prompt(student.tokenizer, p.prompt, True) for p in held_out(args.rollouts)]
    sampling = Sampling(args.max_new_tokens, temperature=1.0, record_topk=16, seed=0)
    rollouts = student.generate(prompts, sampling)
    query = rollouts.query_ids()
    tokens = int(rollouts.mask.sum())
    sequences = [p + r for p, r in zip(rollouts.prompt_ids, rollouts.responses(), strict=True)]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"batch: {len(sequences)} rollouts, {tokens} response tokens, K={args.k}, "
          f"{args.concurrency} requests in flight, {args.per_request} rollouts per request")  # fmt: skip

    client = openai.OpenAI(base_url=args.base_url, api_key="EMPTY", max_retries=0)
    groups = [sequences[i : i + args.per_request] for i in range(0, len(sequences), args.per_request)]

    def raw() -> None:
        def one(group):
            return client.completions.create(
                model=args.served_name, prompt=group, max_tokens=1, extra_body={"prompt_logprobs": args.k}
            )

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, groups))

    served = VLLMTeacher(
        VLLMTeacher.Config(
            model=args.served_name,
            base_url=args.base_url,
            logprobs=args.k,
            max_concurrency=args.concurrency,
            sequences_per_request=args.per_request,
        )
    )
    served.check(student.tokenizer, drift_k=min(16, args.k), loss_k=16)
    local = HFTeacher(HFTeacher.Config(model=args.model_path, batch_size=args.rollouts))
    results = {
        "raw server (HTTP, no parsing)": timed(raw, args.repeats),
        "opdctl vLLM teacher": timed(lambda: served.score(rollouts, query, 16), args.repeats),
        "opdctl HF teacher (same weights, in process)": timed(lambda: local.score(rollouts, query, 16), args.repeats),
    }
    for name, seconds in results.items():
        print(f"{name:48s} {seconds * 1000:8.1f} ms  {tokens / seconds:10.0f} scored tokens/s")

    def sequential() -> None:
        out = student.generate(prompts, sampling)
        served.score(out, out.query_ids(), 16)

    def overlapped() -> None:
        pending = []
        out = student.generate(
            prompts,
            sampling,
            on_finished=lambda rows, part: pending.append((rows, served.submit(part, part.query_ids(), 16))),
        )
        TeacherScores.assemble([(rows, p.result()) for rows, p in pending], len(out), out.response_ids.shape[1])

    for name, fn in (("generate, then score", sequential), ("generate with scoring overlapped", overlapped)):
        seconds = timed(fn, args.repeats)
        print(f"{name:48s} {seconds * 1000:8.1f} ms per step")
    served.close()


if __name__ == "__main__":
    main()
