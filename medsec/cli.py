"""The `medsec` command: a thin layer over the library (see DESIGN.md for the one flow).

Each area registers its own commands from its module (`register(app)`), listed in COMMAND_MODULES,
so the areas stay independent and this file stays small.
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

# Modules that define `register(app: typer.Typer) -> None`.
COMMAND_MODULES: list[str] = [
    "medsec.commands",
    "medsec.defences.cli",
    "medsec.evaluation.audit_cli",
    "medsec.data.cli",
    "medsec.attacks.cli",
    "medsec.integrity.cli",
    "medsec.evaluation.study_cli",
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
