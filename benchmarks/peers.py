"""opdctl against TRL's on-policy distillation trainer: same models, prompts, steps and optimizer.

Arms, interleaved and repeated (one round per seed) so that a shared machine's noise
shows as spread:

* TRL's ``DistillationTrainer`` (on-policy, ``beta=1``: reverse KL, exact over the whole
  vocabulary), in its own virtual environment that this script creates (``--trl-venv``;
  ``pip install torch==<this torch> trl==<--trl-version>``, checked not to bring another
  torch); TRL is never an opdctl dependency;
* opdctl plain OPD (``prune.enable=false budget.enable=false``);
* opdctl Prune-OPD (the paper: weights and budget);
* opdctl Prune-OPD + truncation on drift (the demo's default);
* opdctl plain OPD and Prune-OPD + truncation with three updates per generation, the
  demo's setting (``optim.updates_per_step=3``: a third as many generation rounds of three
  times the prompts, the same prompts in the same order, the same number of updates over
  the same rollouts; the later updates' rollouts were sampled one and two updates earlier). TRL's
  ``DistillationTrainer`` generates once per update (its ``steps_per_generation`` is not
  implemented), so these arms show what several updates per generation buy, not a matched setting.

Every arm trains in its own process on the demo config (or ``--config``) with
evaluations off; the script records the child's wall and CPU time (user + system, all
its threads), the training loop's own wall and process CPU time, tokens generated, and
then grades the final student with opdctl's evaluator (same problems, greedy) in a
separate process that is not timed. TRL gets each step's prompts in opdctl's order
(``rollout.n`` copies of ``optim.prompts_per_step`` prompts per step) and checks that it
tokenizes every one to opdctl's ids.

What cannot be matched: TRL samples with transformers' ``generate`` (rows that finished
keep decoding until the longest is done) and has no response budget or truncation;
its loss is the exact full-vocabulary reverse KL (opdctl's top-k estimator with
``loss.k`` = the vocabulary size is the same gradient); TRL computes the teacher's
log-probs in the training step, opdctl while generating or right after.

    python benchmarks/peers.py --seeds 0 1 2 --steps 150 --out peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from methods import PLAIN_OPD, PRUNE_OPD, PRUNE_OPD_TRUNCATION

from opdctl.config.files import load_config
from opdctl.config.schema import Config  # first: opdctl sets thread defaults before torch loads
from opdctl.models.sources import resolve_model

ROOT = Path(__file__).resolve().parent.parent
UPDATES_PER_GENERATION = load_config().optim.updates_per_step  # the demo's, for the several-updates arms
SEVERAL_UPDATES = f", {UPDATES_PER_GENERATION} updates per generation"
OPDCTL_ARMS = {
    "opdctl plain OPD": PLAIN_OPD,
    "opdctl Prune-OPD": PRUNE_OPD,
    "opdctl Prune-OPD + truncation": PRUNE_OPD_TRUNCATION,
    "opdctl plain OPD" + SEVERAL_UPDATES: PLAIN_OPD,
    "opdctl Prune-OPD + truncation" + SEVERAL_UPDATES: PRUNE_OPD_TRUNCATION,
}
TRL = "TRL DistillationTrainer"
PROMPTS_PER_UPDATE = 8


def schedule(name: str, steps: int) -> list[str]:
    """Overrides for ``steps`` optimizer updates of ``PROMPTS_PER_UPDATE`` prompts' rollouts in every arm."""
    per_generation = UPDATES_PER_GENERATION if name.endswith(SEVERAL_UPDATES) else 1
    if steps % per_generation:
        raise SystemExit(f"--steps {steps}: arm {name!r} needs a multiple of {per_generation}")
    return [
        f"optim.steps={steps // per_generation}",
        f"optim.prompts_per_step={PROMPTS_PER_UPDATE * per_generation}",
        f"optim.updates_per_step={per_generation}",
    ]


def ensure_trl_venv(venv: Path, trl_version: str) -> Path:
    """The TRL virtual environment's python, created on first use with this process's torch version."""
    import torch

    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin, f"trl=={trl_version}"], check=True)
    theirs = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if theirs.split("+")[0] != torch.__version__.split("+")[0]:
        raise SystemExit(f"{venv} has torch {theirs}, this process {torch.__version__}: remove {venv} and rerun")
    return python


def timed_child(command: list[str], env: dict[str, str] | None = None) -> tuple[dict, float, float]:
    """Run ``command``; its last stdout line (JSON), wall seconds, and CPU seconds of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(f"{command[:3]} failed:\n{run.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(run.stdout.strip().splitlines()[-1]), wall, cpu


def opdctl_child(job_path: str) -> None:
    """In a child process: train one opdctl arm and print what it cost."""
    import torch

    from opdctl.progress import LogReporter, reporting_to
    from opdctl.training.start import start_run

    job = json.loads(Path(job_path).read_text())
    config = load_config(Path(job["config"]) if job["config"] else None, job["overrides"])
    with reporting_to(LogReporter()):
        trainer = start_run(config)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = trainer.fit()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latest = trainer.run.latest_checkpoint()
    print(
        json.dumps(
            {
                "train_wall": wall,
                "train_cpu": cpu,
                "tokens_generated": summary["tokens_generated"],
                "tokens_not_generated": summary["tokens_not_generated"],
                "model_dir": str(latest[1]),
                "threads": torch.get_num_threads(),
            }
        )
    )


def step_prompts(config: Config) -> tuple[list[str], list[list[int]]]:
    """Every step's prompts in opdctl's order (texts and token ids), as the trainer draws them."""
    from opdctl.data.prompts import PromptSampler, load_prompts
    from opdctl_hf import HFStudent

    tokenizer = HFStudent.load_tokenizer(config.student)
    prompts = load_prompts(config.data, tokenizer, config.seed)
    sampler = PromptSampler(len(prompts), config.seed)
    order = [i for step in range(config.optim.steps) for i in sampler.indices(step, config.optim.prompts_per_step)]
    order = [i for i in order for _ in range(config.rollout.n)]
    return [prompts.texts[i] for i in order], [prompts.ids[i] for i in order]


def run_arm(name: str, seed: int, args: argparse.Namespace, trl_python: Path | None) -> dict:
    import torch

    common = [f"seed={seed}", "eval.bench=[]", *schedule(name, args.steps), *args.set]
    directory = args.workdir / f"{name.replace(' ', '-').replace('+', 'plus')}-seed{seed}"
    job_path = args.workdir / f"{directory.name}.json"
    if name == TRL:
        config = load_config(args.config, [*common, *OPDCTL_ARMS["opdctl plain OPD"]])
        texts, ids = step_prompts(config)
        o = config.optim
        job = {
            "student": resolve_model(config.student.model),
            "teacher": resolve_model(config.teacher.model),
            "prompt_texts": texts,
            "prompt_ids": ids,
            "steps": o.steps,
            "batch": o.prompts_per_step * config.rollout.n,
            "lr": o.lr,
            "lr_schedule": o.lr_schedule if o.lr_schedule != "constant" else "constant_with_warmup",
            "weight_decay": o.weight_decay,
            "grad_clip": o.grad_clip,
            "max_new_tokens": config.rollout.max_new_tokens,
            "temperature": config.rollout.temperature,
            "seed": seed,
            "output_dir": str(directory),
            "threads": torch.get_num_threads(),
        }
        job_path.write_text(json.dumps(job))
        command = [str(trl_python), str(ROOT / "benchmarks" / "peers_trl.py"), str(job_path)]
    else:
        overrides = [*common, *OPDCTL_ARMS[name], f"output.dir={directory}", f"output.save_every={args.steps}"]
        job_path.write_text(json.dumps({"config": str(args.config) if args.config else None, "overrides": overrides}))
        command = [sys.executable, __file__, "--child", str(job_path)]
    result, wall, cpu = timed_child(command)
    return {**result, "process_wall": wall, "process_cpu": cpu, "accuracy": evaluate(result["model_dir"], args)}


def evaluate(model_dir: str, args: argparse.Namespace) -> float:
    """Held-out accuracy by opdctl's evaluator (the demo config's evaluation settings), not timed."""
    output = args.workdir / "evals" / "-".join(Path(model_dir).parts[-3:])  # outside any run directory
    command = [
        str(Path(sys.executable).parent / "opdctl"),
        "eval",
        "--bench",
        "synthetic",
        "--model",
        model_dir,
        "--samples",
        "1",
        "--temperature",
        "0",
        "--max-new-tokens",
        str(args.eval_tokens),
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"evaluating {model_dir} failed: {done.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((output / "summary.json").read_text())
    return next(iter(summary["benchmarks"].values()))["accuracy"] if "benchmarks" in summary else summary["accuracy"]


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> None:
    import torch

    trl = results.get(TRL, {})
    load = os.getloadavg()[0]
    print(
        f"\n{platform.node()}: {os.cpu_count()} cores, load average {load:.1f} at the end, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.steps} steps, seeds {args.seeds}"
    )
    print(
        "arm | training CPU s | vs TRL (CPU) | training wall s | vs TRL (wall) | process CPU s | tokens generated | "
        "final accuracy"
    )
    for name, by_seed in results.items():
        runs = list(by_seed.items())
        cpu_ratio = [r["train_cpu"] / trl[s]["train_cpu"] for s, r in runs if s in trl]
        wall_ratio = [r["train_wall"] / trl[s]["train_wall"] for s, r in runs if s in trl]
        cells = [
            spread([r["train_cpu"] for _, r in runs]),
            spread(cpu_ratio, "{:.2f}") if cpu_ratio else "-",
            spread([r["train_wall"] for _, r in runs]),
            spread(wall_ratio, "{:.2f}") if wall_ratio else "-",
            spread([r["process_cpu"] for _, r in runs]),
            spread([r["tokens_generated"] for _, r in runs]),
            spread([100 * r["accuracy"] for _, r in runs], "{:.1f}%"),
        ]
        print(f"{name} | " + " | ".join(cells))
    if trl:
        positions = [r["decode_positions"] for r in trl.values()]
        print(f"TRL decode positions (rows x longest completion per batch): {spread(positions)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="Base config (default: the embedded demo).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=[TRL, *OPDCTL_ARMS], help="Subset of the arms, by name.")
    parser.add_argument(
        "--steps",
        type=int,
        default=150,
        help=f"Updates per arm (a multiple of {UPDATES_PER_GENERATION}: see --arms).",
    )
    parser.add_argument("--set", nargs="*", default=[], help="Extra overrides for every arm (TRL reads optim.*).")
    parser.add_argument("--eval-tokens", type=int, default=160, help="Evaluation length limit (the demo's).")
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".venv-trl")
    parser.add_argument("--trl-version", default="1.16.0")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-peers"))
    parser.add_argument("--out", type=Path, help="Write all results as JSON.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        opdctl_child(args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl_venv(args.trl_venv, args.trl_version) if TRL in args.arms else None
    results: dict[str, dict[int, dict]] = {name: {} for name in args.arms}
    for seed in args.seeds:
        for name in args.arms:
            r = results[name][seed] = run_arm(name, seed, args, trl_python)
            print(
                f"seed {seed} {name:52s} CPU {r['train_cpu']:7.1f} s  wall {r['train_wall']:7.1f} s  "
                f"tokens {r['tokens_generated']:,}  accuracy {r['accuracy']:.1%}",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    report(results, args)


if __name__ == "__main__":
    main()
