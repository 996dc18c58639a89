"""The full profile's code paths on the CPU (profile ``full-smoke``): 224 px images, the published
architectures at full width and depth, every defence with its networks (the RBF layers, the U-Net), every
Table-1 row of ``medsec reproduce`` and the transfer study's DenseNet-121 / ResNet-50 / VGG-16, each on a
handful of images for one epoch and a few attack steps, through the same commands a user runs.

It exists so that a shape, memory or dtype error at 224 px shows up here, in minutes on a CPU, and not
on someone's GPU after hours. It checks that the run completes and writes well-formed results, not what
the numbers are (one epoch on 16 images learns nothing)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from medsec.cli import app
from medsec.config import load_config
from medsec.studies.levy import COLUMNS, ROW_IDS

pytestmark = pytest.mark.timeout(2400)  # minutes on CI's 2 cores; far more on a loaded machine

runner = CliRunner()
FULL = load_config("full")


@pytest.fixture(autouse=True)
def _all_cores():
    """The smoke run is the one long test: let torch use CI's two cores (the suite's default is one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


def _invoke(*args: str) -> None:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, f"medsec {' '.join(args)} failed:\n{r.output}\n{r.exception!r}"


def test_reproduce_full_smoke_every_row(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _invoke("reproduce", "--profile", "full-smoke", "--out", str(out), "--cache-dir", str(cache), "--device", "cpu")
    rows = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in rows] == list(ROW_IDS)
    smoke = load_config("full-smoke")
    for r in rows:
        assert r["n_test"] == smoke.reproduce.n_test
        for k in COLUMNS:
            assert 0 <= r[k] <= 100, (r["id"], k, r[k])
        # the published network (no "scaled" label): the full profile's architecture of the row's dataset
        assert r["victim"] == FULL.victims[r["dataset"]].arch, r
    clean = json.loads((out / "clean_metrics.json").read_text())
    assert {tuple(c["image_size"]) for c in clean["rows"]} == {(FULL.data.image_size,) * 2}
    integ = clean["integrity"]
    assert integ["replaced_refused"] == integ["replaced_total"] > 0
    assert (out / "report.html").stat().st_size > 0


def test_transfer_full_smoke_architectures(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _invoke("transfer", "--profile", "full-smoke", "--out", str(out), "--cache-dir", str(cache))
    res = json.loads((out / "results.json").read_text())
    archs = {r["s_arch"] for r in res["rows"]} | {r["t_arch"] for r in res["rows"]}
    assert archs == set(FULL.transfer.archs)
    for model in res["models"].values():  # published width and depth: no "scaled" in the label
        assert model["arch_label"] in FULL.transfer.archs
    assert {r["s_data"] for r in res["rows"]} == {"d1", *load_config("full-smoke").transfer.data_variants}
