"""CPU thread settings on a shared machine: decode and train time of demo-sized models per setting.

Each setting runs in a fresh process (OpenMP reads its environment once), arms are
interleaved and repeated, and every run reports wall and process CPU time. With
``--busy N`` the script keeps N extra processes spinning during the measurement, so a
quiet machine can be compared with a shared one on the same day.

    python benchmarks/threads.py --repeats 3 --busy 0 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

CORES = str(os.cpu_count())
SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "all cores, spin-wait": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "ACTIVE"},
    "all cores, libgomp's default (spin 300k, then sleep)": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "300000"},
    "all cores, spin 30k, then sleep": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "30000"},
    "all cores, spin 10k, then sleep": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "10000"},
    "all cores, spin 1k, then sleep": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "1000"},
    "all cores, passive wait": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "opdctl's default": {},
}
OVERRIDDEN = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def workload(hidden: int, layers: int, rows: int, tokens: int) -> dict[str, float]:
    """Seconds (wall, CPU) to sample ``rows`` x ``tokens`` with opdctl's decode loop, then one forward/backward."""
    import opdctl  # noqa: F401, I001  (first: it sets the thread defaults before torch loads)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from opdctl.backends.types import Sampling
    from opdctl_hf.sampling import sample

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=38,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    model = LlamaForCausalLM(config)
    prompts = [[1, *range(5, 5 + 12)] for _ in range(rows)]
    eos = {10**6}  # never: every row runs to the limit
    out = {"threads": torch.get_num_threads()}
    wall, cpu = time.perf_counter(), time.process_time()
    rollouts = sample(model, prompts, Sampling(tokens, 1.0, record_topk=16, seed=0), eos, 0)
    out["decode_wall"], out["decode_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    ids = torch.cat([torch.tensor(prompts), rollouts.response_ids], dim=1)
    wall, cpu = time.perf_counter(), time.process_time()
    model(input_ids=ids, labels=ids).loss.backward()
    out["train_wall"], out["train_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    return out


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def spin(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="Extra spinning processes per condition.")
    parser.add_argument("--hidden", type=int, default=64, help="64 x 3 layers is the demo's size.")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(workload(args.hidden, args.layers, args.rows, args.tokens)))
        return
    base = {k: v for k, v in os.environ.items() if k not in OVERRIDDEN}
    child = [sys.executable, __file__, "--child", *sys.argv[1:]]
    results: dict[tuple[int, str], list[dict]] = {}
    for busy in args.busy:
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            for _ in range(args.repeats):
                for name, env in SETTINGS.items():
                    run = subprocess.run(child, env={**base, **env}, capture_output=True, text=True, check=True)
                    results.setdefault((busy, name), []).append(json.loads(run.stdout.splitlines()[-1]))
        finally:
            stop.set()
            for p in spinners:
                p.join()
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("extra busy processes | setting | threads | decode wall s | decode CPU s | train wall s | train CPU s")
    for (busy, name), runs in results.items():
        cells = [_spread([r[key] for r in runs]) for key in ("decode_wall", "decode_cpu", "train_wall", "train_cpu")]
        print(f"{busy} | {name} | {runs[0]['threads']} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
