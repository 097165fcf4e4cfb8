"""One ``opdctl eval``: resolve the model, load benchmarks and a generator, answer, grade, write results."""

from __future__ import annotations

import datetime as dt
import inspect
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from opdctl.backends.protocols import Generator
from opdctl.config.files import format_validation_error
from opdctl.data.benchmarks import Benchmark, Fields, load_benchmarks
from opdctl.data.grading import Grader
from opdctl.errors import BackendError, ConfigError, RunError, reason
from opdctl.evaluation import PAPER_MAX_NEW_TOKENS, PAPER_SAMPLES, TEMPERATURE, TOP_P
from opdctl.evaluation.metrics import BenchmarkScore, overall, score
from opdctl.evaluation.results import EvalDir
from opdctl.evaluation.runner import Settings, context_length, generate_rows
from opdctl.models.demo import DEMO_PREFIX
from opdctl.models.gguf import GGUF_SUFFIX, PACKAGE_PREFIX
from opdctl.models.skilled import PREFIX as SKILLED_PREFIX
from opdctl.models.sources import resolve_model
from opdctl.plugins import TEACHERS
from opdctl.progress import reporter
from opdctl.runs.checkpoint import checkpoint_problem
from opdctl.runs.files import write_failure
from opdctl.runs.ownership import check_output
from opdctl.runs.rundir import RunDir

UNANSWERED_WARNING = 0.5  # warn when at least this share of a benchmark's responses has no answer


@dataclass
class EvalRequest:
    """Everything ``opdctl eval`` is asked to do (the CLI's options)."""

    model: str | None
    bench: list[str] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    checkpoint: int | None = None
    base_url: str | None = None
    backend: str | None = None  # the teacher backend that generates; default hf, or vllm with base_url
    served_model: str | None = None
    tokenizer: str | None = None
    n: int = PAPER_SAMPLES
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    seed: int = 0
    pass_k: list[int] = field(default_factory=list)
    prompt_template: str | None = None
    chat_template: bool = True
    fields: Fields = field(default_factory=Fields)
    max_problems: int | None = None
    output: Path | None = None
    batch_size: int = 64
    concurrency: int = 32
    dtype: str = "auto"
    device: str = "auto"
    grade_timeout: float = 10.0
    grade_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))


@dataclass
class EvalResult:
    output: Path
    scores: list[BenchmarkScore]
    overall: BenchmarkScore
    n: int
    seconds: float


@dataclass(frozen=True)
class ModelRef:
    """What ``--model`` resolved to: where the weights are, and a short name for the output directory."""

    source: str | None
    label: str


def run_eval(request: EvalRequest) -> EvalResult:
    """Evaluate the model on the benchmarks; resumable through ``request.output``.

    The model, the data and a server are checked before the output directory is made.
    """
    _check(request)
    started = time.perf_counter()
    if request.output is not None:
        check_output(request.output, "evaluation", "--output")
    ref = resolve(request.model, request.checkpoint)
    benchmarks = load_benchmarks(
        request.bench, request.data, request.fields, request.prompt_template, request.max_problems
    )
    generator, tokenizer = load_generator(request, ref)
    try:
        context_length(generator)  # reaches a server now
        settings = Settings(
            request.n, request.temperature, request.top_p, request.max_new_tokens, request.seed, request.chat_template
        )
        out = EvalDir.open(request.output or default_output(ref.label), _settings(request, ref, settings, benchmarks))
        previous = out.rows()
        resuming = f"; {len(previous)} responses already there" if previous else ""
        reporter().message(f"results in {out.path} (rerun with --output {out.path} to resume){resuming}")
        try:
            with Grader(request.grade_workers, request.grade_timeout) as grader:
                scores = [
                    _run_benchmark(generator, tokenizer, benchmark, settings, grader, request, out, previous)
                    for benchmark in benchmarks
                ]
            total = overall(scores)
            _warn_unanswered(scores, benchmarks, out.responses_path)
            seconds = time.perf_counter() - started
            out.write_summary(_summary(request, ref, benchmarks, scores, total, seconds))
        except OSError as exc:
            message = write_failure(exc, out.path, f"the same command (it resumes from {out.path})")
            if message is None:
                raise
            raise RunError(message) from exc
        finally:
            out.close()
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    return EvalResult(out.path, scores, total, request.n, seconds)


def _run_benchmark(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    settings: Settings,
    grader: Grader,
    request: EvalRequest,
    out: EvalDir,
    previous: list[dict[str, Any]],
) -> BenchmarkScore:
    """Answer what ``previous`` lacks of one benchmark, then score all its rows."""
    earlier = [r for r in previous if r["benchmark"] == benchmark.name]
    done = {(r["problem_id"], r["sample"]) for r in earlier}
    rows = generate_rows(
        generator, tokenizer, benchmark, settings, grader, batch_size=request.batch_size, done=done, write=out.append
    )
    return score(benchmark.name, earlier + rows, request.pass_k)


def _warn_unanswered(scores: list[BenchmarkScore], benchmarks: list[Benchmark], responses: Path) -> None:
    """Say so when most responses have no answer to grade: 0% then means the format, not the maths."""
    lenient = {b.name for b in benchmarks if b.lenient}
    for s in scores:
        if s.samples and s.no_answer >= UNANSWERED_WARNING:
            wanted = "neither a \\boxed{} answer nor a number" if s.name in lenient else "no \\boxed{} answer"
            reporter().message(
                f"warning: {s.no_answer:.0%} of {s.name}'s responses have {wanted}, so they count as wrong: "
                f"the model may not follow the prompt's answer format (see the responses in {responses}; "
                "--prompt-template changes the instruction)"
            )


def _check(request: EvalRequest) -> None:
    """Combinations of options that cannot work, as one-line errors."""
    if request.top_p <= 0:
        raise ConfigError(f"--top-p {request.top_p:g}: must be above 0 (at 1 every token can be sampled)")
    too_big = [k for k in request.pass_k if k > request.n]
    if too_big:
        raise ConfigError(f"--pass-k {too_big[0]} is larger than -n {request.n}: pass@k needs at least k samples")
    if request.base_url and not request.served_model:
        raise ConfigError("--base-url needs --served-model NAME (the name vllm serves the model under)")
    if request.served_model and not request.base_url:
        raise ConfigError("--served-model needs --base-url URL (the vLLM server that serves it)")
    if request.base_url and not (request.tokenizer or request.model):
        raise ConfigError("--base-url needs the model's tokenizer: give --model (path, hub id) or --tokenizer")
    if not request.base_url and not request.model:
        raise ConfigError(
            "give --model (a model directory, hub id, run directory, demo:teacher / demo:student or "
            "smollm2:teacher / smollm2:student)"
        )
    if request.temperature == 0 and request.n > 1:
        reporter().message(f"warning: greedy decoding (temperature 0) gives {request.n} identical samples")


def resolve(model: str | None, checkpoint: int | None) -> ModelRef:
    """``--model``: a run directory (its latest checkpoint, or ``checkpoint``), a model directory, a hub id or a demo
    reference."""
    if model is None:
        return ModelRef(None, "served")
    path = Path(model).expanduser()
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        run = RunDir.open(path)
        found = dict(run.checkpoints())
        damaged = {step: where for step, where in run.all_checkpoints() if step not in found}
        if checkpoint in damaged:
            raise RunError(f"the checkpoint at step {checkpoint} ({damaged[checkpoint]}) is incomplete or damaged "
                           f"({checkpoint_problem(damaged[checkpoint])}): choose another --checkpoint")  # fmt: skip
        if not found:
            raise RunError(f"run {path} has no complete checkpoint yet: evaluate it after its first checkpoint")
        step = checkpoint if checkpoint is not None else max(found)
        if step not in found:
            steps = ", ".join(str(s) for s in sorted(found))
            raise RunError(f"run {path} has no checkpoint at step {step}: its checkpoints are at steps {steps}")
        newer = max((s for s in damaged if s > step), default=None)
        if checkpoint is None and newer is not None:
            problem = checkpoint_problem(damaged[newer])
            reporter().message(f"warning: the newest checkpoint of {path} (step {newer}) is incomplete or damaged "
                               f"({problem}): evaluating step {step}")  # fmt: skip
        return ModelRef(str(found[step]), f"{path.resolve().name}-step{step}")
    if checkpoint is not None:
        raise ConfigError(f"--checkpoint needs --model to be a run directory (with config.yaml), not {model!r}")
    if model.startswith((DEMO_PREFIX, SKILLED_PREFIX)):
        return ModelRef(model, model.replace(":", "-"))
    if model.startswith(PACKAGE_PREFIX):
        return ModelRef(model, Path(model).stem or model[len(PACKAGE_PREFIX) :])
    if path.suffix.lower() == GGUF_SUFFIX:
        return ModelRef(str(path), path.stem)
    looks_local = model.startswith((".", "/", "~")) or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise BackendError(
            f"--model {model}: no model at {path} (expected a Hugging Face model directory with config.json, "
            "a .gguf file, or a run directory with config.yaml and checkpoints/)"
        )
    return ModelRef(str(path) if looks_local else model, path.name if looks_local else model.replace("/", "-"))


def load_generator(request: EvalRequest, ref: ModelRef) -> tuple[Generator, PreTrainedTokenizerBase]:
    """The model or the server, through a teacher backend that can generate, and its tokenizer.

    The backend gets the options its config has: a served one the server's URL, model name and
    concurrency; a local one the model, dtype and device.
    """
    name = engine_name(request)
    cls = TEACHERS.get(name, setting="--backend")
    if request.base_url:
        options = {"model": request.served_model, "base_url": request.base_url, "max_concurrency": request.concurrency}
    else:
        options = {"model": ref.source, "dtype": request.dtype, "device": request.device}
    config = _backend_config(cls, {k: v for k, v in options.items() if k in cls.Config.model_fields})
    local = not request.base_url and "setting" in inspect.signature(cls).parameters
    generator = cls(config, setting="--model") if local else cls(config)  # errors then name --model
    if not isinstance(generator, Generator):
        raise ConfigError(f"--backend {name}: this teacher backend cannot generate answers; choose one that can")
    if request.base_url:
        return generator, _tokenizer(request.tokenizer or ref.source or "")
    return generator, generator.tokenizer


def engine_name(request: EvalRequest) -> str:
    """The teacher backend that answers: ``--backend``, else vllm for a server and hf for a local model."""
    return request.backend or ("vllm" if request.base_url else "hf")


OPTIONS = {"model": "--model", "dtype": "--dtype", "device": "--device", "base_url": "--base-url",
           "max_concurrency": "--concurrency"}  # fmt: skip


def _backend_config(cls: type, options: dict[str, Any]) -> Any:
    """The backend's config from eval's options; a value it refuses is named by its command-line option."""
    try:
        return cls.Config(**options)
    except ValidationError as exc:
        message = format_validation_error(exc, cls.Config)
        field = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        if field in OPTIONS:
            message = message.replace(f"config error: {field}=", f"{OPTIONS[field]} ", 1)
        raise ConfigError(message) from None


def _tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(resolve_model(source))
    except OSError as exc:
        raise BackendError(
            f"cannot load a tokenizer from {source!r} ({reason(exc, limit=200)}): give --tokenizer PATH"
        ) from exc


def default_output(label: str) -> Path:
    return Path("evals") / f"{label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _settings(request: EvalRequest, ref: ModelRef, settings: Settings, benchmarks: list[Benchmark]) -> dict:
    """What must match for a rerun to resume this evaluation."""
    return {
        "model": ref.source,
        "served_model": request.served_model,
        "engine": engine_name(request),
        **asdict(settings),
        "benchmarks": [b.name for b in benchmarks],
        **{
            f"benchmark {b.name}": {"digest": b.digest(), "problems": len(b.problems), "prompt": b.prompt_template}
            for b in benchmarks
        },
    }


def _summary(
    request: EvalRequest,
    ref: ModelRef,
    benchmarks: list[Benchmark],
    scores: list[BenchmarkScore],
    total: BenchmarkScore,
    seconds: float,
) -> dict[str, Any]:
    return {
        "model": ref.source or request.served_model,
        "served_model": request.served_model,
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_new_tokens": request.max_new_tokens,
        "seed": request.seed,
        "sources": {b.name: b.source for b in benchmarks},
        "benchmarks": {s.name: s.to_dict() for s in scores},
        "overall": total.to_dict(),
        "seconds": round(seconds, 1),
    }
