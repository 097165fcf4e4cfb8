"""Seconds a hub lookup takes to fail without a network, with and without opdctl's offline switch.

    python benchmarks/hub_offline.py [--repeats 3]

Each lookup runs in a fresh process (imports are timed apart): a tokenizer and a model
config through transformers, and a dataset through datasets, all for ids that do not
exist. "library default" is huggingface_hub's own behaviour (five retries with backoff
per request); "opdctl" installs ``opdctl.models.hub.fail_fast_offline`` first, as every opdctl
command does. Run it on a machine without hub access.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

LOOKUPS = {
    "tokenizer": "AutoTokenizer.from_pretrained('no-such-org/no-such-model')",
    "model config": "AutoConfig.from_pretrained('no-such-org/no-such-model')",
    "dataset": "import datasets; datasets.load_dataset('no-such-org/no-such-data', split='train')",
}
TIMED = """
import time
{setup}
{imports}
started = time.perf_counter()
try:
    {lookup}
except Exception as exc:
    print(round(time.perf_counter() - started, 2), type(exc).__name__)
else:
    print("found it: this machine reaches the hub")
"""
IMPORTS = "import datasets\nfrom transformers import AutoConfig, AutoTokenizer"  # loaded before the clock starts


def seconds(lookup: str, fast: bool) -> tuple[float, str]:
    setup = "from opdctl.models.hub import fail_fast_offline; fail_fast_offline()" if fast else ""
    code = TIMED.format(setup=setup, imports=IMPORTS, lookup=lookup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'lookup':<14} {'library default (s)':>20} {'opdctl (s)':>11}  error")
    for name, lookup in LOOKUPS.items():
        runs = {fast: [seconds(lookup, fast) for _ in range(args.repeats)] for fast in (False, True)}
        default, fast = (statistics.median(t for t, _ in runs[f]) for f in (False, True))
        print(f"{name:<14} {default:>20.1f} {fast:>11.1f}  {runs[True][0][1]}")


if __name__ == "__main__":
    main()
