"""What every command shares: the common options, one-line errors and exit codes, quiet libraries."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from opdctl import __version__
from opdctl.errors import OpdctlError
from opdctl.training.stopping import Stopped

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config; without it the embedded demo config is used.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides, e.g. prune.threshold=0.8 optim.steps=50.", show_default=False),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]


def print_version(value: bool) -> None:
    if value:
        typer.echo(f"opdctl {__version__}")
        raise typer.Exit()


def run_command(debug: bool, action: Callable[[], Any]) -> Any:
    """Run ``action``, turning errors into one red line and a non-zero exit (tracebacks with --debug)."""
    from rich.markup import escape

    from opdctl.cli.console import console

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


def quiet_libraries() -> None:
    """Keep transformers/datasets progress bars and advisory warnings out of our output; no minute-long hub
    retries without a network."""
    from opdctl.models.hub import fail_fast_offline

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


def split_values(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated option values, in order."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
