"""`medsec export-dicom`: write synthetic images as DICOM files for the signature and gate work."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def export_dicom(
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (see `medsec datasets`)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (created if missing)"),
    split: str = typer.Option("test", "--split", help="train, val or test"),
    n: int = typer.Option(10, "--n", help="number of images to export (the first n of the split)"),
    size: int = typer.Option(64, "--size", help="image size in pixels"),
    seed: int = typer.Option(0, "--seed", help="dataset seed"),
    difficulty: float | None = typer.Option(None, "--difficulty", help="override the default difficulty"),
    split_size: int | None = typer.Option(
        None, "--split-size",
        help="images in the generated split (default: n). Every image depends on the split size, so pass the "
             "evaluation's size (e.g. 300, the quick profile's test split) to export exactly its first n images"),
    fresh_uids: bool = typer.Option(False, "--fresh-uids", help="new random UIDs instead of deterministic ones"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="dataset cache folder"),
) -> None:
    """Export images of a (synthetic) dataset as DICOM Part 10 files with fitting modality tags."""
    from medsec.data import load_dataset
    from medsec.data.dicom_export import SOP_CLASSES, export_split
    from medsec.errors import MedsecError
    from medsec.paths import ensure_writable_dir

    if n < 1:
        raise MedsecError(f"--n must be at least 1, got {n}")
    total = n if split_size is None else split_size
    if total < n:
        raise MedsecError(f"--split-size ({total}) must be at least --n ({n})")
    ensure_writable_dir(out)
    # Generate only the requested split at its size (the other splits stay tiny).
    sizes = {s: (total if s == split else 1) for s in ("train", "val", "test")}
    if split not in sizes:
        raise MedsecError(f"unknown split {split!r}; expected train, val or test")
    ds = load_dataset(dataset, size=size, n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"],
                      seed=seed, difficulty=difficulty, cache_dir=cache_dir)
    paths = export_split(ds.split(split), ds.info, out, n=n, split_name=split, seed=seed, fresh_uids=fresh_uids)
    sop = SOP_CLASSES[ds.info.modality.upper()][1]
    console.print(f"wrote {len(paths)} DICOM files of {ds.info.label} ({ds.info.modality}, {sop}) to {out}")


def register(app: typer.Typer) -> None:
    """Add `export-dicom` to the app."""
    app.command("export-dicom")(export_dicom)
