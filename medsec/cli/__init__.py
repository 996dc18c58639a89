"""The `medsec` command: a thin layer over the library (see docs/architecture.md for the one flow).

This package is the only one that imports typer. Each command group is a module here with a
``register(app)``; heavy imports (torch, the studies) happen inside the commands, so ``medsec --help`` and the
integrity commands start fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from medsec.errors import MedsecError

app = typer.Typer(
    name="medsec",
    help="Audit the security of medical-imaging AI: victims, defences, adaptive attacks and DICOM signatures.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

# Modules that define `register(app: typer.Typer) -> None`, in the order of the flow.
COMMAND_MODULES: list[str] = [
    "medsec.cli.victims",
    "medsec.cli.data",
    "medsec.cli.defences",
    "medsec.cli.attacks",
    "medsec.cli.studies",
    "medsec.integrity.cli",
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    """Entry point: usage errors and exit codes as click gives them; a MedsecError becomes a one-line
    message (no traceback) and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # standalone mode: sys.exit with the command's code
    except MedsecError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
