"""`opdctl eval`: score a model on math benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opdctl.cli.common import DebugOption, quiet_libraries, run_command, split_values
from opdctl.errors import ConfigError
from opdctl.evaluation import PAPER_MAX_NEW_TOKENS, PAPER_SAMPLES, TEMPERATURE, TOP_P


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
    from opdctl.cli.console import cli_reporter, console, eval_table, stdout
    from opdctl.data.benchmarks import Fields
    from opdctl.evaluation.session import EvalRequest, run_eval

    def action() -> None:
        quiet_libraries()
        try:
            ks = [int(k) for k in split_values(pass_k)] or sorted({1, samples})
        except ValueError as exc:
            raise ConfigError(f"--pass-k takes whole numbers, e.g. --pass-k 1,8 ({exc})") from None
        request = EvalRequest(
            model=model,
            bench=split_values(bench),
            data=[Path(d) for d in split_values(data)],
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

        with reporting_to(cli_reporter()):
            result = run_eval(request)
        title = f"opdctl eval {model or served_model}  (n={samples}, temperature {temperature:g}, top-p {top_p:g})"
        stdout.print(eval_table(title, result.scores, result.overall, result.n))
        console.print(f"[bold]responses and summary[/bold] {result.output} ({result.seconds:.0f} s)", highlight=False)

    run_command(debug, action)
