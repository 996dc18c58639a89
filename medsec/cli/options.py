"""The options several commands share, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="quick, full, full-smoke, or a YAML config file")]
DataRootOpt = Annotated[str | None, typer.Option("--data-root", help="real data in its publisher's layout")]
CacheOpt = Annotated[str | None, typer.Option("--cache-dir", help="cache folder (default $MEDSEC_CACHE or ~/.cache/medsec)")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="experiment seed (default: the profile's)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda")]
EpsOpt = Annotated[float, typer.Option("--eps", help="L_inf budget in [0, 1] pixel units")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder: results.json, report.md/.html, figures/, "
                                                          "cells/")]
DatasetsOpt = Annotated[list[str] | None, typer.Option("--dataset", "-d", help="only these datasets")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where the grid's cells run: local (this process, "
                                                         "one after another) or ray (Ray tasks; docs/scale.md)")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="the Ray cluster of --executor ray: HOST:PORT, "
                                                                 "ray://HOST:PORT or auto (default: a local Ray)")]
RequireTimestampOpt = Annotated[bool, typer.Option("--require-timestamp", help="Refuse (exit 17) a file whose accepted "
                                                 "signature carries no valid certified timestamp (RFC 3161).")]
TsaTrustOpt = Annotated[Path | None, typer.Option("--tsa-trust", help="Trusted timestamp authorities (certificate file "
                                                 "or folder) for certified timestamps; default: --trust.")]
