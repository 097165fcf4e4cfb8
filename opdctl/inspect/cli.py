"""What `opdctl inspect-drift` does with its options (kept out of opdctl/cli/ to keep that thin)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opdctl.console import console, stdout
from opdctl.errors import ConfigError
from opdctl.inspect import position_profile, rollout_view, summarize
from opdctl.inspect.reader import RunTraces
from opdctl.inspect.render import compare_view, profile_view, rollout_view_text, summary_view, token_table

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
        from opdctl.inspect.plots import draw, most_drifted_step

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
