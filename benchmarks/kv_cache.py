"""Decode time with transformers' DynamicCache against opdctl's cache that grows in place.

DynamicCache appends each step with torch.cat, copying every cached position, so decoding L
tokens copies O(L^2) positions; opdctl_hf.cache writes new positions into a buffer with room
to spare. The gap grows with the response length, so this decodes long responses with a small
random Llama (no download), the same tokens both ways (checked), alternating the two.

    python benchmarks/kv_cache.py --lengths 512 2048 4096 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import opdctl  # noqa: F401  (first: thread defaults before torch loads)

# isort: split
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import opdctl_hf.sampling
from opdctl.backends.types import Sampling
from opdctl_hf.cache import decoding_cache

CACHES = {"DynamicCache": lambda config: DynamicCache(config=config), "opdctl (grows in place)": decoding_cache}


def model(layers: int, hidden: int, heads: int, max_positions: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def decode(net: LlamaForCausalLM, cache: str, rows: int, length: int) -> tuple[float, float, torch.Tensor]:
    """Wall and process CPU seconds of one batch of ``rows`` responses of ``length`` tokens, and the tokens."""
    opdctl_hf.sampling.decoding_cache = CACHES[cache]
    prompts = [[1 + (row * 7 + i) % 200 for i in range(32)] for row in range(rows)]
    wall, cpu = time.perf_counter(), time.process_time()
    rollouts = opdctl_hf.sampling.sample(net, prompts, Sampling(length, 1.0, seed=0), eos_ids=[], pad_id=0)
    return time.perf_counter() - wall, time.process_time() - cpu, rollouts.response_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    net = model(args.layers, args.hidden, args.heads, max(args.lengths) + 64)
    print(f"Llama {args.layers} layers, hidden {args.hidden}, {args.rows} rows, torch {torch.__version__}")
    print("| tokens | cache | wall s (median, range) | CPU s (median) | wall vs DynamicCache |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CACHES}
        outputs = {}
        for _ in range(args.repeats):
            for name in CACHES:
                wall, cpu, tokens = decode(net, name, args.rows, length)
                runs[name].append((wall, cpu))
                outputs[name] = tokens
        first, second = outputs.values()
        assert torch.equal(first, second), "the two caches decoded different tokens"
        base = statistics.median(wall for wall, _ in runs["DynamicCache"])
        for name, times in runs.items():
            walls = [wall for wall, _ in times]
            wall = statistics.median(walls)
            cpu = statistics.median(c for _, c in times)
            spread = f"{min(walls):.2f}-{max(walls):.2f}"
            print(f"| {length} | {name} | {wall:.2f} ({spread}) | {cpu:.2f} | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
