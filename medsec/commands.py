"""Foundation commands: list datasets, train victims, evaluate clean performance, export DICOM."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def datasets() -> None:
    """List the embedded synthetic datasets."""
    from medsec.data import available_datasets
    from medsec.data.synthetic import GENERATORS

    t = Table("name", "task", "classes", "channels", "modality")
    for name in available_datasets():
        info = GENERATORS[name].info
        t.add_row(info.label, info.task, str(info.num_outputs), str(info.channels), info.modality)
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add the foundation commands to `app`."""
    app.command("datasets")(datasets)
