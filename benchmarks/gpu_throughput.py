"""GPU check: a few Prune-OPD steps with real-architecture models in bf16, and the throughput of each phase.

No hub access is assumed: the student and teacher are Qwen2-architecture models with
random weights at the shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (so every rollout runs to
the length limit, the worst case for generation). Prints one JSON line per setting with
tokens/s for generation, teacher scoring and training, the CUDA memory peak, and the
gap between the sampled tokens' log-probs at generation and in the training pass.

    python benchmarks/gpu_throughput.py --steps 3 --rollouts 64 --max-new-tokens 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from opdctl.config.files import validate
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.training.start import start_run

SHAPES = {
    "student (Qwen2.5-0.5B shape)": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2),
    "teacher (Qwen2.5-1.5B shape)": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                         num_attention_heads=12, num_key_value_heads=2),
}  # fmt: skip


def build(path: Path, shape: dict, seed: int) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)  # fmt: skip
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(root: Path, name: str, overrides: dict, args: argparse.Namespace) -> dict:
    config = validate(
        {
            "student": {"backend": "hf", "model": str(root / "student"), "dtype": "float32", "autocast": "bfloat16"},
            "teacher": {"backend": "hf", "model": str(root / "teacher"), "dtype": "bfloat16", "batch_size": 16},
            "data": {"source": "demo", "limit": 1000},
            "rollout": {"n": 4, "max_new_tokens": args.max_new_tokens, **overrides.get("rollout", {})},
            "loss": {"k": 16},
            "prune": {"enable": True},
            "budget": {"enable": False},
            "optim": {
                "lr": 1e-6,
                "steps": args.steps,
                "prompts_per_step": args.rollouts // 4,
                "grad_accum": args.accum,
            },
            "output": {"dir": str(root / name), "save_every": 10_000, "trace_every": 0},
        }
    )
    torch.cuda.reset_peak_memory_stats()
    trainer = start_run(config)
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    steps = [r for r in trainer.run.read_metrics() if "eval" not in r][1:]  # the first step warms up kernels
    keys = (
        "tokens_generated",
        "tokens_scored",
        "tokens_trained",
        "generate_seconds",
        "score_seconds",
        "update_seconds",
    )
    total = {key: sum(r[key] for r in steps) for key in keys}
    step_seconds = total["generate_seconds"] + total["score_seconds"] + total["update_seconds"]
    streamed = config.rollout.truncate_on_drift
    return {
        "setting": name,
        "device": torch.cuda.get_device_name(),
        "steps timed": len(steps),
        "rollouts per step": args.rollouts,
        "generation tokens/s" + (" (teacher scoring streamed in)" if streamed else ""): round(
            total["tokens_generated"] / total["generate_seconds"]
        ),
        **({} if streamed else {"teacher scoring tokens/s": round(total["tokens_scored"] / total["score_seconds"])}),
        "training tokens/s": round(total["tokens_trained"] / total["update_seconds"]),
        "seconds per step": round(step_seconds / len(steps), 2),
        "peak CUDA memory GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "logprob gap (generation vs training, bf16) max / mean": [
            round(max(r["logprob_gap_max"] for r in steps), 4),
            round(sum(r["logprob_gap_mean"] for r in steps) / len(steps), 5),
        ],
        "wall seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root / "student", SHAPES["student (Qwen2.5-0.5B shape)"], seed=0)
        build(root / "teacher", SHAPES["teacher (Qwen2.5-1.5B shape)"], seed=1)
        for name, overrides in (("prune-opd", {}), ("truncate-on-drift", {"rollout": {"truncate_on_drift": True}})):
            print(json.dumps(run(root, name, overrides, args)), flush=True)


if __name__ == "__main__":
    main()
