"""The drift figure: per-step curves, the position profile, and a rollout-by-position weight map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from opdctl.analysis.profile import PositionProfile
from opdctl.analysis.reader import RunTraces
from opdctl.analysis.summary import RunSummary
from opdctl.errors import ConfigError
from opdctl.runs.files import output_file

if TYPE_CHECKING:
    from opdctl.tools.calibrate import Calibration

FORMATS = (".png", ".svg", ".pdf")


def most_drifted_step(summary: RunSummary) -> int:
    """The traced step with the lowest mean weight: where drift is easiest to see."""
    return min(summary.rows, key=lambda r: (r.weight, r.first_step)).first_step


def weight_map(traces: RunTraces, step: int) -> tuple[np.ndarray, list[int], list[str]]:
    """Rollouts x positions of weights (NaN past each rollout's end), their first bad events and finish reasons."""
    table = traces.tokens(step, ["rollout", "position", "weight"]).to_pydict()
    rollouts = traces.rollouts(["step", "rollout", "length", "first_bad", "finish_reason"]).to_pydict()
    rows = [i for i, s in enumerate(rollouts["step"]) if s == step]
    order = {rollouts["rollout"][i]: n for n, i in enumerate(rows)}
    grid = np.full((len(rows), max(rollouts["length"][i] for i in rows)), np.nan)
    for r, p, w in zip(table["rollout"], table["position"], table["weight"], strict=True):
        grid[order[r], p] = w
    return grid, [rollouts["first_bad"][i] for i in rows], [rollouts["finish_reason"][i] for i in rows]


def figure_path(path: Path) -> Path:
    """``path`` if a figure can be written there (by its extension: PNG, SVG or PDF), else a one-line error."""
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--plot {path}: use a file name ending in {', '.join(FORMATS)}")
    return output_file(path, "--plot")


def draw(
    path: Path,
    traces: RunTraces,
    summary: RunSummary,
    profile: PositionProfile,
    step: int,
    other: tuple[RunTraces, RunSummary] | None = None,
) -> Path:
    """Write the figure to ``path`` (PNG, SVG or PDF by extension)."""
    figure_path(path)
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5), constrained_layout=True)
    _steps_panel(axes[0][0], summary, other[1] if other else None)
    _length_panel(axes[0][1], summary, other[1] if other else None)
    _profile_panel(axes[1][0], profile)
    _heatmap_panel(fig, axes[1][1], traces, step)
    fig.suptitle(f"opdctl inspect-drift: {traces.path.name}" + (f" vs {other[0].path.name}" if other else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: list[float]) -> np.ndarray:
    """A centred moving average over about 2% of the steps (none for short runs)."""
    window = max(1, len(values) // 50)
    if window == 1:
        return np.asarray(values)
    padded = np.pad(np.asarray(values, dtype=float), (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


STEP_CURVES = (
    ("overlap", "tab:blue", "mean overlap"),
    ("bad_event_rate", "tab:red", "bad-event rate"),
    ("weight", "tab:green", "mean weight w_t"),
    ("full_weight_share", "tab:olive", "tokens at full weight"),
)


def _runs(summary: RunSummary, other: RunSummary | None) -> list[tuple[RunSummary, str]]:
    return [(summary, "-"), *([(other, "--")] if other else [])]


def _style_legend(ax, summary: RunSummary, other: RunSummary | None) -> None:
    """Metric colours in one legend; with a comparison, which line style is which run."""
    handles, labels = ax.get_legend_handles_labels()
    if other is not None:
        for run, style in _runs(summary, other):
            handles.append(ax.plot([], [], style, color="black")[0])
            labels.append(Path(run.run).name)
    ax.legend(handles, labels, fontsize=7, loc="lower right")


def _steps_panel(ax, summary: RunSummary, other: RunSummary | None) -> None:
    for n, (run, style) in enumerate(_runs(summary, other)):
        steps = [r.last_step for r in run.rows]
        for key, colour, name in STEP_CURVES:
            values = _smooth([getattr(r, key) for r in run.rows])
            ax.plot(steps, values, style, color=colour, label=name if n == 0 else None)
        _accuracy(ax, run, marker="o" if n == 0 else "s", first=n == 0)
    window = max(1, len(summary.rows) // 50)
    smoothing = f" (moving average over {window} steps)" if window > 1 else ""
    ax.set(xlabel="step", ylabel="rate / weight", ylim=(-0.02, 1.02), title="Drift per step" + smoothing)
    _style_legend(ax, summary, other)


def _accuracy(ax, summary: RunSummary, marker: str, first: bool) -> None:
    points = [(r.last_step, acc) for r in summary.rows for acc in r.accuracy.values()]
    for bench, values in summary.totals["accuracy"].items():
        if "before" in values:
            points.insert(0, (0, values["before"]))
        if "teacher" in values and first:
            ax.axhline(values["teacher"], color="gray", lw=0.8, ls=":", label=f"teacher accuracy ({bench})")
    if points:
        xs, ys = zip(*sorted(points), strict=True)
        label = "student held-out accuracy" if first else None
        ax.plot(xs, ys, marker + ":", color="black", ms=5, lw=0.8, label=label)


def _length_panel(ax, summary: RunSummary, other: RunSummary | None) -> None:
    for n, (run, style) in enumerate(_runs(summary, other)):
        steps = [r.last_step for r in run.rows]
        ax.step(steps, [r.max_len[1] for r in run.rows], style, where="post", color="tab:purple",
                label="max response length (budget)" if n == 0 else None)  # fmt: skip
        ax.plot(steps, _smooth([r.tokens / max(1, r.rollouts) for r in run.rows]), style, color="tab:gray",
                label="mean response length" if n == 0 else None)  # fmt: skip
        ax.plot(steps, _smooth([r.effective_length for r in run.rows]), style, color="tab:orange",
                label="mean effective length L_eff" if n == 0 else None)  # fmt: skip
    ax.set(xlabel="step", ylabel="tokens", title="Lengths and the response budget")
    _style_legend(ax, summary, other)


def _profile_panel(ax, profile: PositionProfile) -> None:
    x = np.array(profile.start) + profile.bin_size / 2
    ax.plot(x, profile.overlap, color="tab:blue", label="mean overlap")
    ax.plot(x, profile.weight, color="tab:green", label="mean weight")
    ax.plot(x, profile.full_weight, color="tab:olive", label="rollouts still at full weight")
    ax.set(xlabel=f"token position (bins of {profile.bin_size})", ylabel="rate / weight", ylim=(-0.02, 1.02))
    ax.set_title("By position (all traced steps)")
    twin = ax.twinx()
    twin.bar(x, profile.first_bad, width=profile.bin_size * 0.8, alpha=0.25, color="tab:red", label="first bad event")
    twin.set_ylabel("rollouts with their first bad event here")
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = twin.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, fontsize=7, loc="center right")


def _heatmap_panel(fig, ax, traces: RunTraces, step: int) -> None:
    grid, first_bad, reasons = weight_map(traces, step)
    image = ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    marks = [(p, r) for r, p in enumerate(first_bad) if p >= 0]
    if marks:
        ax.scatter(*zip(*marks, strict=True), marker="|", color="black", s=30, label="first bad event")
    ends = [(np.count_nonzero(~np.isnan(grid[r])) - 1, r) for r, reason in enumerate(reasons) if reason != "eos"]
    if ends:
        ax.scatter(*zip(*ends, strict=True), marker=">", color="blue", s=14, label="cut (budget or drift)")
    ax.set(xlabel="token position", ylabel="rollout", title=f"Weight w_t of each rollout, step {step}")
    ax.legend(fontsize=7, loc="lower right")
    fig.colorbar(image, ax=ax, label="w_t")


def figure_uri(draw_panel, size: tuple[float, float] = (7.5, 4.2)) -> str:
    """One panel drawn by ``draw_panel(fig, ax)`` as an SVG ``data:`` URI (for a self-contained page)."""
    import base64
    import io

    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    draw_panel(fig, ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def steps_figure(summary: RunSummary, other: RunSummary | None) -> str:
    return figure_uri(lambda fig, ax: _steps_panel(ax, summary, other))


def lengths_figure(summary: RunSummary, other: RunSummary | None) -> str:
    return figure_uri(lambda fig, ax: _length_panel(ax, summary, other))


def profile_figure(profile: PositionProfile) -> str:
    return figure_uri(lambda fig, ax: _profile_panel(ax, profile))


def weight_map_figure(traces: RunTraces, step: int) -> str:
    return figure_uri(lambda fig, ax: _heatmap_panel(fig, ax, traces, step))


def loss_figure(runs: list[tuple[str, list[dict]]]) -> str:
    """Loss and the reverse-KL estimate per step, from metrics.jsonl (a second run dashed)."""

    def draw(fig, ax) -> None:
        for (name, records), style in zip(runs, ("-", "--"), strict=False):
            steps = [r["step"] for r in records]
            ax.plot(steps, _smooth([r["loss"] for r in records]), style, color="tab:blue", label=f"loss ({name})")
            ax.plot(steps, _smooth([r["reverse_kl"] for r in records]), style, color="tab:red",
                    label=f"reverse KL estimate ({name})")  # fmt: skip
        ax.set(xlabel="step", ylabel="nats per token", title="Loss and reverse KL")
        ax.legend(fontsize=7)

    return figure_uri(draw)


TIME_SPLIT = (("generate_seconds", "tab:blue", "generate"), ("score_seconds", "tab:orange", "score"),
              ("update_seconds", "tab:green", "update"))  # fmt: skip


def time_figure(name: str, records: list[dict]) -> str:
    """Seconds per step spent generating, scoring and updating, stacked."""

    def draw(fig, ax) -> None:
        steps = [r["step"] for r in records]
        parts = [[r.get(key, 0.0) for r in records] for key, _, _ in TIME_SPLIT]
        ax.stackplot(steps, *parts, colors=[c for _, c, _ in TIME_SPLIT], labels=[n for _, _, n in TIME_SPLIT])
        ax.set(xlabel="step", ylabel="seconds", title=f"Time per step ({name})")
        ax.legend(fontsize=7, loc="upper left")

    return figure_uri(draw)


def calibration_figure(result: Calibration, path: Path) -> None:
    """One histogram per drift signal: its values on the teacher's own text and on the student's rollouts."""
    figure_path(path)
    signals = result.signals()
    columns = 4
    rows = -(-len(signals) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, signal in zip(axes.flat, signals, strict=False):
        for text, label, color in ((result.teacher_text, "teacher's text", "tab:blue"),
                                   (result.student_text, "student's rollouts", "tab:red")):  # fmt: skip
            values = text.values(signal).numpy()
            values = np.where(np.isfinite(values), values, 1.0)  # not in the teacher's top-k: drawn at 1
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / max(len(values), 1)), alpha=0.55,
                    color=color, label=label)  # fmt: skip
        ax.set_title(signal.name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(signals) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Drift signals on text the teacher wrote (nothing drifted) and on the student's rollouts", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def error_alignment_figure(result: Calibration, path: Path, span: int = 40) -> None:
    """Each metric's bad-event rate at top-16 (or the widest k measured), by token position relative to the first
    wrong number of the student's rollouts, at the threshold calibrated on teacher text (else the paper's)."""
    from opdctl.errors import OpdctlError
    from opdctl.tools.calibrate import DEFAULT_THRESHOLDS, Signal, choose_threshold

    figure_path(path)
    text, errors = result.student_text, result.first_errors or []
    width = max(signal.k for signal in result.signals())
    offsets = np.arange(-span, span + 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for metric in DEFAULT_THRESHOLDS:
        signal = Signal(metric, width)
        try:
            threshold = choose_threshold(signal, result.teacher_text.values(signal), result.target)
        except OpdctlError:
            threshold = DEFAULT_THRESHOLDS[metric]
        bad, mask = signal.bad(text.grid(signal), threshold).numpy(), text.rollouts.mask.numpy()
        hits, seen = np.zeros(len(offsets)), np.zeros(len(offsets))
        for row, error in enumerate(errors):
            if error is None:
                continue
            positions = error + offsets
            inside = (positions >= 0) & (positions < mask.shape[1])
            valid = np.zeros(len(offsets), dtype=bool)
            valid[inside] = mask[row, positions[inside]]
            seen += valid
            hits[valid] += bad[row, positions[valid]]
        ax.plot(offsets, hits / np.maximum(seen, 1), label=f"{signal.name} at {threshold:.3g}")
    ax.axvline(0, color="grey", linestyle=":")
    ax.set_xlabel("tokens from the first wrong number")
    ax.set_ylabel("share of tokens that are bad events")
    ax.legend(fontsize=7)
    ax.set_title("Where drift signals fire around the student's first error", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
