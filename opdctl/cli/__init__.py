"""The `opdctl` command line: parses arguments, calls the library, renders the results.

The app is built here; the commands live in modules by concern, and what they share in
:mod:`opdctl.cli.common`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from opdctl.cli.backends import backends_app
from opdctl.cli.common import print_version
from opdctl.cli.evaluate import eval_command
from opdctl.cli.inspect import inspect_drift, report
from opdctl.cli.models import calibrate, sft, shrink
from opdctl.cli.train import show_config, train

app = typer.Typer(
    help="Drift-aware on-policy distillation (Prune-OPD) of reasoning language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(backends_app, name="backends")


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Drift-aware on-policy distillation (Prune-OPD) of reasoning language models."""


app.command()(train)
app.command("config")(show_config)
app.command("inspect-drift")(inspect_drift)
app.command()(report)
app.command("eval")(eval_command)
app.command()(sft)
app.command()(shrink)
app.command()(calibrate)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
