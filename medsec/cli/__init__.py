"""The `medsec` command: a thin layer over the library (see docs/architecture.md for the one flow).

This package is the only one that imports typer; its options shared by several commands are defined once
(medsec.cli.options). Each command group is a module of this package with a `register(app)`. COMMANDS maps every command
name to the module that registers it, and the top-level group imports only that module when the command
runs: `medsec verify` loads the integrity commands and never torch or the imaging stack, so it starts
like a command-line tool. `medsec --help` lists every command (that alone imports every module).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from medsec.errors import MedsecError

# command name -> module that defines `register(app: typer.Typer) -> None` adding that command.
# A module registering a command not listed here is an error the tests catch (tests/test_cli_startup.py).
COMMANDS: dict[str, str] = {
    "datasets": "medsec.cli.victims",
    "train": "medsec.cli.victims",
    "evaluate": "medsec.cli.victims",
    "export-dicom": "medsec.cli.data",
    "defend": "medsec.cli.defences",
    "attack": "medsec.cli.attacks",
    "reproduce": "medsec.cli.studies",
    "transfer": "medsec.cli.studies",
    "survey": "medsec.cli.studies",
    "audit": "medsec.cli.studies",
    "keygen": "medsec.cli.integrity",
    "sign": "medsec.cli.integrity",
    "verify": "medsec.cli.integrity",
    "timestamp": "medsec.cli.timestamp",
    "infer": "medsec.cli.integrity",
    "serve": "medsec.cli.integrity",
}


def module_commands(module: str) -> dict[str, Any]:
    """The click commands that `module`'s register() adds, by name (imports the module)."""
    sub = typer.Typer(add_completion=False)
    sub.callback()(lambda: None)  # always a group, even for a module that registers one command
    importlib.import_module(module).register(sub)
    group = typer.main.get_group(sub)
    return dict(group.commands)


class LazyGroup(TyperGroup):
    """A click group whose commands are imported from their module (COMMANDS) only when needed."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands.update(module_commands(COMMANDS[cmd_name]))
        return self.commands.get(cmd_name)


app = typer.Typer(
    name="medsec",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Audit the security of medical-imaging AI: victims, defences, adaptive attacks and DICOM signatures."""


def main() -> None:
    """Entry point: usage errors and exit codes as click gives them; a MedsecError becomes a one-line
    message (no traceback) and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # standalone mode: sys.exit with the command's code
    except MedsecError as e:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        sys.exit(2)
