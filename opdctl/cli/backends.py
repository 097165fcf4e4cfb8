"""`opdctl backends` and `opdctl backends check`: what is installed, and whether the configured teacher works."""

from __future__ import annotations

import typer

from opdctl.cli.common import ConfigOption, DebugOption, Overrides, quiet_libraries, run_command

backends_app = typer.Typer(help="List the installed teacher and student backends.", invoke_without_command=True)


@backends_app.callback()
def backends(ctx: typer.Context) -> None:
    """List the installed teacher and student backends and where they come from."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from opdctl.cli.console import stdout
    from opdctl.plugins import BACKENDS

    table = Table(title="installed backends", header_style="bold")
    for column in ("role", "name", "provided by", "object"):
        table.add_column(column)
    for kind in ("teacher", "student", "rollout"):
        for name, ep in sorted(BACKENDS[kind].entry_points().items()):
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

    from opdctl.cli.console import stdout
    from opdctl.config.files import load_config
    from opdctl.training.start import check_teacher

    def action() -> None:
        quiet_libraries()
        cfg = load_config(config, overrides or [])
        facts = check_teacher(cfg)
        table = Table(title=f"teacher backend {cfg.teacher.backend!r}: ready", header_style="bold")
        table.add_column("check")
        table.add_column("result")
        for name, value in facts.items():
            table.add_row(name, value)
        stdout.print(table)

    run_command(debug, action)
