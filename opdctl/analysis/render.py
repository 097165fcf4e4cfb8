"""Terminal views of a run's drift: rich tables and a coloured rollout."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from opdctl.analysis.profile import PositionProfile
from opdctl.analysis.rollout import RolloutView
from opdctl.analysis.summary import RunSummary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_view(summary: RunSummary) -> Group:
    table = Table(title=f"Drift per step: {summary.run}", header_style="bold", show_lines=False)
    columns = ("steps", "rollouts", "overlap", "bad events", "weight", "L_eff", "max len", "hit ratio", "tokens gen.",
               "full weight", f"w < {summary.level:g}", "eos/len/drift", "s/step", "accuracy")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "steps" else "right")
    for r in summary.rows:
        steps = str(r.first_step) if r.first_step == r.last_step else f"{r.first_step}-{r.last_step}"
        max_len = str(r.max_len[0]) if r.max_len[0] == r.max_len[1] else f"{r.max_len[0]}-{r.max_len[1]}"
        accuracy = ", ".join(f"{v:.1%}" for v in r.accuracy.values()) or "-"
        table.add_row(
            steps, str(r.rollouts), _num(r.overlap), _pct(r.bad_event_rate), _num(r.weight),
            _num(r.effective_length, 1), max_len, _num(r.hit_ratio), _count(r.tokens_generated),
            _pct(r.full_weight_share), _pct(r.below_share), _finish(r.finish), _num(r.step_seconds), accuracy,
        )  # fmt: skip
    return Group(table, totals_view(summary))


def totals_view(summary: RunSummary) -> Table:
    table = Table(title="Run totals", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for name, value in totals_rows(summary):
        table.add_row(name, value)
    return table


def totals_rows(summary: RunSummary) -> list[tuple[str, str]]:
    """The run's totals as (label, formatted value) rows (the terminal and the HTML report show the same)."""
    t = summary.totals
    level = f"{summary.level:g}"
    rows = [
        ("steps (traced)", f"{t['steps']} ({t['traced_steps']})"),
        ("rollouts traced", f"{t['traced_rollouts']:,}"),
        ("tokens generated", f"{t['tokens_generated']:,}"),
        ("mean response length / effective length", f"{t['response_length']:.1f} / {t['effective_length']:.1f}"),
        (
            "mean overlap / bad-event rate / weight",
            f"{t['overlap']:.3f} / {t['bad_event_rate']:.1%} / {t['weight']:.3f}",
        ),
        ("traced tokens at full weight", _pct(t["full_weight_share"])),
        (
            f"compute on tokens with weight < {level}",
            f"{t[f'tokens_below_{level}']:,} tokens ({_pct(t[f'share_below_{level}'])})",
        ),
        ("rollouts ending at EOS / length limit / drift stop", _finish(t["finish"])),
        ("tokens not generated thanks to drift stops", f"{t['tokens_not_generated']:,}"),
        ("tokens generated past a stop and discarded", f"{t['tokens_discarded']:,}"),
        ("drift checks (the teacher scored a chunk)", f"{t['drift_checks']:,}"),
        (
            "training time",
            "-" if t["seconds"] is None else f"{t['seconds']:.0f} s ({t['seconds_per_step']:.2f} s/step)",
        ),
    ]
    for bench, values in t["accuracy"].items():
        rows.append((f"accuracy on {bench}", ", ".join(f"{k} {v:.1%}" for k, v in values.items())))
    return rows


def profile_view(profile: PositionProfile) -> Table:
    table = Table(title=f"By position (bins of {profile.bin_size} tokens)", header_style="bold")
    for column in ("positions", "tokens", "overlap", "weight", "at full weight", "first bad event here"):
        table.add_column(column, justify="right")
    for i, start in enumerate(profile.start):
        if not profile.tokens[i]:
            continue
        table.add_row(
            f"{start}-{start + profile.bin_size - 1}", f"{profile.tokens[i]:,}", _num(profile.overlap[i]),
            _num(profile.weight[i]), _pct(profile.full_weight[i]), str(profile.first_bad[i]),
        )  # fmt: skip
    table.caption = f"{profile.never_bad} of {profile.rollouts} rollouts had no bad event"
    return table


def rollout_view_text(view: RolloutView, color_by: str) -> Group:
    """The response, each token coloured red (0) to green (1) by overlap, weight or signal."""
    header = Text.assemble(
        (f"step {view.step}, rollout {view.rollout}", "bold"),
        f": {view.length} tokens, effective length {view.effective_length}, {view.bad_events} bad events, "
        f"first at {view.first_bad if view.first_bad >= 0 else '-'}, finish: {view.finish_reason} "
        f"(max length {view.max_len}); colour: {color_by}\n",
    )
    body = Text()
    body.append(view.prompt, style="dim")
    for token in view.tokens:
        value = getattr(token, color_by)
        style = f"{colour(value)}" + (" bold reverse" if token.position == view.first_bad else "")
        if token.position == view.first_bad:
            body.append("⟨drift⟩", style="bold magenta")
        body.append(token.text, style=style)
    cut = {"length": f" ✂ cut at the length limit ({view.max_len})", "drift": " ✂ stopped: drift"}.get(
        view.finish_reason
    )
    if cut:
        body.append(cut, style="bold blue")
    return Group(header, body)


def token_table(view: RolloutView, start: int, end: int) -> Table:
    table = Table(title=f"Tokens {start}-{end - 1}: teacher vs student", header_style="bold")
    for column in (
        "pos",
        "token",
        "overlap",
        "bad",
        "w_t",
        "m_t",
        "teacher lp",
        "student lp",
        "teacher top-1",
        "student top-1",
    ):
        table.add_column(column, justify="right")
    for t in view.tokens[start:end]:
        table.add_row(
            str(t.position), repr(t.text), _num(t.overlap), "x" if t.bad else "", _num(t.weight), _num(t.loss_weight),
            _num(t.teacher_logprob, 3), _num(t.student_logprob, 3), repr(t.teacher_top1), repr(t.student_top1),
        )  # fmt: skip
    return table


def compare_view(a: RunSummary, b: RunSummary) -> Table:
    table = Table(title="Comparison", header_style="bold")
    table.add_column("")
    table.add_column(Path(a.run).name, justify="right")
    table.add_column(Path(b.run).name, justify="right")
    table.add_column("B / A", justify="right")
    for row in compare_rows(a, b):
        table.add_row(*row)
    return table


def compare_rows(a: RunSummary, b: RunSummary) -> list[tuple[str, str, str, str]]:
    """Two runs' totals side by side: (label, run A, run B, B / A)."""
    ta, tb = a.totals, b.totals
    rows = []
    for label, key, fmt in (
        ("steps", "steps", "{:,}"),
        ("tokens generated", "tokens_generated", "{:,}"),
        ("tokens not generated (drift stops)", "tokens_not_generated", "{:,}"),
        ("tokens generated past a stop and discarded", "tokens_discarded", "{:,}"),
        ("drift checks", "drift_checks", "{:,}"),
        ("mean response length", "response_length", "{:.1f}"),
        ("mean effective length", "effective_length", "{:.1f}"),
        ("mean overlap", "overlap", "{:.3f}"),
        ("bad-event rate", "bad_event_rate", "{:.1%}"),
        ("mean weight", "weight", "{:.3f}"),
        ("seconds per step", "seconds_per_step", "{:.3f}"),
        ("training time (s)", "seconds", "{:.0f}"),
    ):
        va, vb = ta.get(key), tb.get(key)
        rows.append((label, _fmt(fmt, va), _fmt(fmt, vb), f"{vb / va:.2f}" if va and vb is not None else "-"))
    for bench in sorted(set(ta["accuracy"]) | set(tb["accuracy"])):
        for when in ("before", "after", "teacher"):
            va, vb = ta["accuracy"].get(bench, {}).get(when), tb["accuracy"].get(bench, {}).get(when)
            if va is not None or vb is not None:
                rows.append((f"accuracy {bench} ({when})", _pct(va), _pct(vb), ""))
    return rows


def _fmt(fmt: str, value) -> str:
    return "-" if value is None else fmt.format(value)


def _finish(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(reason, 0)) for reason in ("eos", "length", "drift")) if counts else "-"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def colour(value: float) -> str:
    """Red at 0, yellow at 0.5, green at 1."""
    value = min(1.0, max(0.0, value))
    red = 255 if value < 0.5 else int(255 * (1 - value) * 2)
    green = int(255 * value * 2) if value < 0.5 else 200
    return f"rgb({red},{green},60)"
