"""`opdctl train` and `opdctl config`: run a distillation, show the resolved config."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opdctl.cli.common import ConfigOption, DebugOption, Overrides, quiet_libraries, run_command
from opdctl.errors import OpdctlError

if TYPE_CHECKING:
    from opdctl.config.schema import Config


def train(
    overrides: Overrides = None,
    config: ConfigOption = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Distil the student from the teacher with Prune-OPD.

    Without a config this runs the embedded demo: tiny local models on a synthetic
    arithmetic task (the models are trained once and cached).

    Examples:

        opdctl train

        opdctl train -c examples/qwen3-4b.yaml optim.steps=50

        opdctl train --resume runs/20260101-120000
    """
    from opdctl.cli.console import console, stdout, summary_table
    from opdctl.config.files import load_config
    from opdctl.distributed import leave_world
    from opdctl.progress import reporting_to
    from opdctl.training.start import resumed_config

    def action() -> None:
        quiet_libraries()
        if resume is not None and config is not None:
            raise OpdctlError("--resume uses the run's own config.yaml: drop -c (overrides are still allowed)")
        cfg = resumed_config(resume, overrides or []) if resume else load_config(config, overrides or [])
        from opdctl.cli.console import cli_reporter
        from opdctl.progress import LogReporter

        main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, process 0 speaks for all
        with reporting_to(cli_reporter() if main else LogReporter()):
            summary, run = fit(cfg, resume, main)
        if main:
            stdout.print(summary_table(summary))
            console.print(next_commands(cfg, run), highlight=False, soft_wrap=True)
        leave_world()

    run_command(debug, action)


def fit(config: Config, resume: Path | None, main: bool) -> tuple[dict[str, Any], Path]:
    """Train; the summary and the run directory (the trainer, and with it the student, is let go)."""
    from opdctl.cli.console import console
    from opdctl.training.start import start_run
    from opdctl.training.stopping import sigterm_interrupts

    with sigterm_interrupts():  # a run still loading stops cleanly on SIGTERM too
        trainer = start_run(config, resume)
    if main:
        console.print(f"[bold]run directory[/bold] {trainer.run.path}")
    return trainer.fit(), trainer.run.path


def next_commands(config: Config, run: Path) -> str:
    """What to run next on a finished run, spelt as the user started opdctl (``.venv/bin/opdctl``, say)."""
    from opdctl.evaluation.in_training import token_limit

    program = sys.argv[0] if Path(sys.argv[0]).name == "opdctl" else "opdctl"
    lines = [f"look at the drift:  {program} inspect-drift {run}", f"as a web page:      {program} report {run}"]
    if config.eval.bench:
        bench = ",".join(config.eval.bench)
        lines.append(f"evaluate it:        {program} eval --model {run} --bench {bench} -n 1 --temperature 0 "
                     f"--max-new-tokens {token_limit(config)}")  # fmt: skip
    return "\n".join(lines)


def show_config(
    overrides: Overrides = None,
    config: ConfigOption = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print every key with its default, as Markdown.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Print the resolved config (file or demo, plus overrides) as YAML, or the key reference."""
    from opdctl.config.files import load_config
    from opdctl.config.reference import reference_markdown
    from opdctl.data.benchmarks import check_bench

    def action() -> None:
        if reference and (config or overrides):
            raise OpdctlError("--reference lists every key's default, whatever the config: drop -c and overrides")
        if reference:
            sys.stdout.write(reference_markdown())
            return
        resolved = load_config(config, overrides or [])
        check_bench(resolved.eval.bench)
        sys.stdout.write(resolved.to_yaml())

    run_command(debug, action)
