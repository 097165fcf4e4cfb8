"""`opdctl report`: one self-contained HTML page of a run's drift (nothing is fetched when it is viewed).

The page holds the run's config and totals, per-step curves, the position profile, a
weight map, the comparison with another run, and a browsable sample of traced rollouts
with every token coloured by its weight. Figures are the inspect-drift panels as inline
SVG; CSS and the few lines of JavaScript are inline too, and a Content-Security-Policy
forbids the page from loading anything.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from opdctl.analysis import plots
from opdctl.analysis.profile import position_profile
from opdctl.analysis.reader import RunTraces
from opdctl.analysis.render import colour, compare_rows, totals_rows
from opdctl.analysis.rollout import RolloutView, rollout_view
from opdctl.analysis.summary import RunSummary, summarize
from opdctl.runs.files import atomic_write

PER_STEP = 4  # rollouts shown per sampled step when many steps are traced


@dataclass
class Sample:
    """Which traced rollouts the page shows, and how they were chosen."""

    rollouts: list[tuple[int, int]]  # (step, rollout)
    traced: int
    note: str


def sample_rollouts(traces: RunTraces, limit: int) -> Sample:
    """At most ``limit`` rollouts: the first few of evenly spaced traced steps (the first and last included).

    Traces keep the first rollouts of a step; the page does the same, up to PER_STEP of a step
    (more when few steps are traced).
    """
    table = traces.rollouts(["step", "rollout"]).to_pydict()
    by_step: dict[int, list[int]] = {}
    for step, rollout in zip(table["step"], table["rollout"], strict=True):
        by_step.setdefault(step, []).append(rollout)
    steps = sorted(by_step)
    traced = len(table["step"])
    if traced <= limit:
        chosen = [(s, r) for s in steps for r in sorted(by_step[s])]
        return Sample(chosen, traced, f"all {traced} traced rollouts")
    wanted = min(len(steps), max(2, limit // PER_STEP))
    per_step = max(1, limit // wanted)
    picked = sorted({steps[round(i * (len(steps) - 1) / max(1, wanted - 1))] for i in range(wanted)})
    chosen = [(s, r) for s in picked for r in sorted(by_step[s])[:per_step]][:limit]
    steps_note = (
        f"each of the {len(steps)} traced steps"
        if len(picked) == len(steps)
        else f"{len(picked)} evenly spaced traced steps of {len(steps)}, the first and last included"
    )
    note = (
        f"a sample of {len(chosen)} of the {traced:,} traced rollouts: the first {per_step} of {steps_note}; "
        "raise --rollouts to see more"
    )
    return Sample(chosen, traced, note)


def build_report(
    run_dir: Path, compare: Path | None = None, rollouts: int = 40, level: float = 0.5
) -> tuple[str, list[str]]:
    """The whole page as a string, and the warnings about damaged files it left out (also shown on the page)."""
    traces = RunTraces(run_dir)
    summary = summarize(traces, level, len(traces.steps))
    other = RunTraces(compare) if compare else None
    warnings = [*traces.warnings, *(other.warnings if other else [])]
    other_summary = summarize(other, level, len(other.steps)) if other else None
    profile = position_profile(traces)
    sample = sample_rollouts(traces, rollouts)
    views = [rollout_view(traces, step, rollout) for step, rollout in sample.rollouts]
    name = traces.path.name
    runs = [(name, traces.metrics)] + ([(other.path.name, other.metrics)] if other else [])
    figures = [
        ("Drift per step", plots.steps_figure(summary, other_summary)),
        ("Lengths and the response budget", plots.lengths_figure(summary, other_summary)),
        ("Loss and reverse KL", plots.loss_figure(runs)),
        ("Time per step", plots.time_figure(name, traces.metrics)),
        ("By token position (all traced steps)", plots.profile_figure(profile)),
    ]
    drifted = plots.most_drifted_step(summary)
    weight_map = plots.weight_map_figure(traces, drifted)
    figures.append((f"Weights of step {drifted}, the most drifted traced step", weight_map))
    sections = [
        _warnings(warnings),
        _section("Run totals", _table(["", name], totals_rows(summary))),
        _comparison(summary, other_summary) if other_summary else "",
        _section("Curves", f'<div class="figures">{"".join(_figure(t, uri) for t, uri in figures)}</div>', "curves"),
        _section("Rollouts", _rollouts(views, sample), "rollouts"),
        _section("Config", f"<pre>{html.escape(traces.run.config_path.read_text())}</pre>", "config"),
    ]
    title = f"opdctl report: {name}" + (f" vs {other.path.name}" if other else "")
    return PAGE.format(title=html.escape(title), css=CSS, script=SCRIPT, body="".join(sections)), warnings


def write_report(
    run_dir: Path, output: Path | None, compare: Path | None, rollouts: int, level: float
) -> tuple[Path, list[str]]:
    """Write the page (default RUN_DIR/report.html); its path, and the warnings about what it left out."""
    path = output or Path(run_dir) / "report.html"
    page, warnings = build_report(run_dir, compare, rollouts, level)
    atomic_write(path, page)
    path.chmod(0o644)  # a page to share, not a private file
    return path, warnings


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return _section("Left out", f'<ul class="warnings">{items}</ul>', "warnings")


# pieces of the page ---------------------------------------------------------------


def _section(title: str, body: str, anchor: str = "") -> str:
    ident = f' id="{anchor}"' if anchor else ""
    return f"<section{ident}><h2>{html.escape(title)}</h2>{body}</section>"


def _table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparison(a: RunSummary, b: RunSummary) -> str:
    header = ["", Path(a.run).name, Path(b.run).name, "B / A"]
    note = "<p>Curves below show this run solid and the other dashed.</p>"
    return _section("Comparison", _table(header, compare_rows(a, b)) + note, "comparison")


def _figure(title: str, uri: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(title)}"></figure>'


def _rollouts(views: list[RolloutView], sample: Sample) -> str:
    options = "".join(
        f'<option value="{i}">step {v.step}, rollout {v.rollout}: {v.length} tokens, '
        f"first bad event {v.first_bad if v.first_bad >= 0 else '-'}, {v.finish_reason}</option>"
        for i, v in enumerate(views)
    )
    controls = (
        '<div class="controls"><button id="prev" type="button">&larr;</button>'
        f'<select id="pick">{options}</select><button id="next" type="button">&rarr;</button>'
        '<label>colour by <select id="colour-by"><option value="w">weight w_t</option>'
        '<option value="o">overlap o_t</option></select></label></div>'
    )
    legend = (
        '<p class="legend">Each token is coloured from <span style="background:rgb(255,0,60)">0</span> to '
        '<span style="background:rgb(0,200,60)">1</span>; <span class="drift">drift</span> marks the first bad '
        'event; <span class="differs">underlined</span> tokens are not the teacher\'s top-1: hover over any token '
        "for its values and the teacher's choice.</p>"
    )
    note = f'<p class="note">Showing {html.escape(sample.note)}.</p>'
    return note + controls + legend + "".join(_rollout(i, view) for i, view in enumerate(views))


def _rollout(index: int, view: RolloutView) -> str:
    first = view.first_bad if view.first_bad >= 0 else "none"
    header = (
        f"<p><b>step {view.step}, rollout {view.rollout}</b>: {view.length} tokens, effective length "
        f"{view.effective_length}, {view.bad_events} bad events, first at {first}, finish: {view.finish_reason} "
        f"(max length {view.max_len})</p>"
    )
    tokens = []
    for t in view.tokens:
        differs = t.teacher_top1 != t.text
        tip = f"position {t.position} · w_t {t.weight:.3f} · overlap {t.overlap:.2f}"
        tip += " · bad event" if t.bad else ""
        if differs:
            tip += f" · teacher's top-1: {t.teacher_top1!r}"
        classes = "t" + (" differs" if differs else "")
        if t.position == view.first_bad:
            tokens.append('<span class="drift">drift</span>')
            classes += " first-bad"
        tokens.append(
            f'<span class="{classes}" data-w="{colour(t.weight)}" data-o="{colour(t.overlap)}" '
            f'style="background:{colour(t.weight)}" title="{html.escape(tip)}">{html.escape(t.text)}</span>'
        )
    cut = {"length": "cut at the length limit", "drift": "stopped: drift"}.get(view.finish_reason)
    end = f'<span class="cut">✂ {cut}</span>' if cut else ""
    hidden = "" if index == 0 else " hidden"
    return (
        f'<div class="rollout" data-index="{index}"{hidden}>{header}<div class="text">'
        f'<span class="prompt">{html.escape(view.prompt)}</span>{"".join(tokens)}{end}</div></div>'
    )


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1><nav><a href="#curves">curves</a> · <a href="#rollouts">rollouts</a> · \
<a href="#config">config</a></nav></header>
<main>{body}</main><script>{script}</script></body></html>
"""

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 12px 24px; background: #263238; color: #fff; }
header h1 { font-size: 18px; margin: 0; } header a { color: #b3e5fc; }
main { padding: 8px 24px 48px; max-width: 1500px; }
section { margin-top: 20px; } h2 { font-size: 16px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #e4e4e4; }
td + td, th + th { text-align: right; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; } figure img { width: 100%; display: block; }
.controls { display: flex; gap: 8px; align-items: center; margin: 8px 0; }
.text { white-space: pre-wrap; font: 13px/1.7 ui-monospace, monospace; background: #fff; padding: 10px;
        border: 1px solid #ddd; }
.prompt { color: #777; } .t.differs { text-decoration: underline dotted #000; }
.t.first-bad { outline: 2px solid #7b1fa2; }
.drift { background: #7b1fa2; color: #fff; font-size: 11px; padding: 0 3px; border-radius: 3px; margin: 0 2px; }
.cut { color: #1565c0; font-weight: bold; } .note { color: #555; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; overflow: auto; max-height: 500px; }
"""

SCRIPT = """
(function () {
  const pick = document.getElementById('pick');
  if (!pick) return;
  const views = Array.from(document.querySelectorAll('.rollout'));
  function show(i) {
    i = (i + views.length) % views.length;
    pick.value = String(i);
    views.forEach(function (el, n) { el.hidden = n !== i; });
  }
  pick.addEventListener('change', function () { show(Number(pick.value)); });
  document.getElementById('prev').addEventListener('click', function () { show(Number(pick.value) - 1); });
  document.getElementById('next').addEventListener('click', function () { show(Number(pick.value) + 1); });
  document.getElementById('colour-by').addEventListener('change', function (event) {
    const key = event.target.value;
    document.querySelectorAll('.t').forEach(function (el) {
      el.style.background = el.dataset[key];
    });
  });
})();
"""
