"""`opdctl inspect-drift` and `opdctl report`: look at what a run wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from opdctl.cli.common import DebugOption, run_command
from opdctl.errors import ConfigError


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
    from opdctl.analysis.report import write_report
    from opdctl.cli.console import console
    from opdctl.runs.files import output_file

    def action() -> None:
        if output is not None:
            output_file(output, "--output")
        path, warnings = write_report(run_dir, output, compare, rollouts, level)
        for warning in warnings:
            console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
        console.print(f"[dim]·[/dim] wrote {path}", highlight=False)

    run_command(debug, action)


COLORS = ("weight", "overlap", "signal")


def parse_range(text: str, option: str) -> tuple[int, int]:
    """'N' or 'A:B' (inclusive) as a pair of integers."""
    first, colon, last = text.partition(":")
    try:
        bounds = (int(first), int(last if colon else first))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give N or A:B, e.g. {option} 1:50") from None
    if bounds[0] > bounds[1]:
        raise ConfigError(f"{option} {text!r}: the first number must not exceed the second")
    return bounds


def run_inspect(
    run_dir: Path,
    steps: str | None,
    rows: int,
    level: float,
    profile: bool,
    bin_size: int | None,
    step: int | None,
    rollout: int | None,
    color: str,
    tokens: str | None,
    plot: Path | None,
    plot_step: int | None,
    compare: Path | None,
    as_json: bool,
) -> None:
    """What `opdctl inspect-drift` does with its options."""
    from opdctl.analysis import position_profile, rollout_view, summarize
    from opdctl.analysis.reader import RunTraces
    from opdctl.analysis.render import compare_view, profile_view, rollout_view_text, summary_view, token_table
    from opdctl.cli.console import console, stdout

    if (step is None) != (rollout is None):
        raise ConfigError("--step and --rollout go together: give both to show one rollout")
    if tokens and step is None:
        raise ConfigError("--tokens lists positions of one rollout: add --step N --rollout I")
    if plot_step is not None and plot is None:
        raise ConfigError("--plot-step chooses the step of the figure: add --plot FILE")
    if color not in COLORS:
        raise ConfigError(f"--color {color!r}: use one of {', '.join(COLORS)}")
    window = parse_range(steps, "--steps") if steps else None
    positions = parse_range(tokens, "--tokens") if tokens else None
    traces = RunTraces(run_dir, window)
    other = RunTraces(compare, window) if compare else None
    for warning in [*traces.warnings, *(other.warnings if other else [])]:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
    summary = summarize(traces, level, rows)
    other_summary = summarize(other, level, rows) if other else None
    prof = position_profile(traces, bin_size) if profile or plot else None
    view = rollout_view(traces, step, rollout) if step is not None else None
    if view and positions and positions[0] >= len(view.tokens):
        last = f"positions 0-{len(view.tokens) - 1}" if view.tokens else "no tokens"
        raise ConfigError(f"--tokens {tokens}: rollout {rollout} of step {step} has {len(view.tokens)} tokens ({last})")
    report = {"summary": summary.to_dict()}
    if prof and profile:
        report["profile"] = prof.to_dict()
    if view:
        report["rollout"] = view.to_dict()
    if other_summary:
        report["compare"] = other_summary.to_dict()
    if plot:
        from opdctl.analysis.plots import draw, most_drifted_step

        per_step = summarize(traces, level, len(traces.steps))
        other_steps = (other, summarize(other, level, len(other.steps))) if other else None
        chosen = plot_step if plot_step is not None else most_drifted_step(per_step)
        if chosen not in traces.files:
            raise ConfigError(f"--plot-step {chosen}: that step was not traced")
        draw(plot, traces, per_step, prof, chosen, other_steps)
        report["plot"] = str(plot)
        console.print(f"[dim]·[/dim] wrote {plot} (weight map of step {chosen})")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    stdout.print(summary_view(summary))
    if other_summary:
        stdout.print(compare_view(summary, other_summary))
    if prof and profile:
        stdout.print(profile_view(prof))
    if view:
        stdout.print(rollout_view_text(view, color))
        if positions:
            stdout.print(token_table(view, positions[0], positions[1] + 1))
