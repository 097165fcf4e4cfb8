"""`opdctl inspect-drift` and `opdctl report`: look at what a run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opdctl.cli.common import DebugOption, run_command


def inspect_drift(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by opdctl train (finished or running).")],
    steps: Annotated[str | None, typer.Option(help="Only these steps: N or A:B.")] = None,
    rows: Annotated[
        int, typer.Option(min=1, help="At most this many rows; longer runs are shown as step ranges.")
    ] = 20,
    level: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Count the compute on tokens whose weight fell below this.")
    ] = 0.5,
    profile: Annotated[bool, typer.Option("--profile", help="Show overlap and weight by token position.")] = False,
    bin_size: Annotated[int | None, typer.Option(min=1, help="Position bin size for --profile and plots.")] = None,
    step: Annotated[int | None, typer.Option(help="Show one rollout of this step (with --rollout).")] = None,
    rollout: Annotated[int | None, typer.Option(help="The rollout to show (with --step).")] = None,
    color: Annotated[str, typer.Option(help="Colour tokens by overlap, weight or signal.")] = "weight",
    tokens: Annotated[
        str | None, typer.Option(help="With --step/--rollout: list positions A:B with both models' log-probs.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a figure (.png, .svg or .pdf).")] = None,
    plot_step: Annotated[
        int | None, typer.Option(help="Step of the weight heatmap (default: the most drifted step).")
    ] = None,
    compare: Annotated[Path | None, typer.Option(help="Another run to put side by side (e.g. plain OPD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show where and when a run's rollouts drifted: per step, by position, one rollout, plots, comparisons.

    Examples:

        opdctl inspect-drift runs/demo-20261128-101500

        opdctl inspect-drift RUN --step 1 --rollout 3 --tokens 20:40

        opdctl inspect-drift RUN --compare RUN_PLAIN --plot drift.png
    """
    from opdctl.inspect.cli import run_inspect

    run_command(debug, lambda: run_inspect(run_dir, steps, rows, level, profile, bin_size, step, rollout, color, tokens,
                                           plot, plot_step, compare, as_json))  # fmt: skip


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by opdctl train (finished or running).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The HTML file (default RUN_DIR/report.html).")
    ] = None,
    compare: Annotated[Path | None, typer.Option(help="Another run to put side by side (e.g. plain OPD).")] = None,
    rollouts: Annotated[int, typer.Option(min=1, help="At most this many traced rollouts in the page.")] = 40,
    level: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Count the compute on tokens whose weight fell below this.")
    ] = 0.5,
    debug: DebugOption = False,
) -> None:
    """Write one self-contained HTML page of a run: config, curves, position profile, coloured rollouts.

    Examples:

        opdctl report runs/demo-20261128-101500

        opdctl report RUN --compare RUN_PLAIN -o drift.html
    """
    from opdctl.console import console
    from opdctl.files import output_file
    from opdctl.inspect.report import write_report

    def action() -> None:
        if output is not None:
            output_file(output, "--output")
        path, warnings = write_report(run_dir, output, compare, rollouts, level)
        for warning in warnings:
            console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
        console.print(f"[dim]·[/dim] wrote {path}", highlight=False)

    run_command(debug, action)
