"""`medsec attack` end to end on a tiny test-only synthetic dataset and victim."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medsec.cli import app
from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import GENERATORS, SyntheticSpec, register

NAME = "attack-cli-toy"


def _generate(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    y = rng.integers(0, 3, n)
    px = rng.uniform(40, 120, (n, 1, size, size))
    for c in range(3):
        px[y == c, :, c * size // 3:(c + 1) * size // 3, :] += 90
    return Split(pixels=px.clip(0, 255).astype(np.uint8), targets=y.astype(np.int64))


@pytest.fixture()
def toy_config(tmp_path):
    if NAME not in GENERATORS:
        register(SyntheticSpec(DatasetInfo(NAME, "classification", ("a", "b", "c"), 1, "OT", True), _generate))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("profile: tiny\nseed: 0\ndevice: cpu\n"
                   "data: {image_size: 16, n_train: 96, n_val: 24, n_test: 24}\n"
                   "train: {epochs: 2, batch_size: 32, lr: 0.01, patience: 3, augment: false}\n"
                   "model: {width: 0.25, depth: 0.34}\n")
    yield cfg
    GENERATORS.pop(NAME, None)


def test_attack_cli_json(toy_config, tmp_path):
    args = ["attack", "--dataset", NAME, "--arch", "resnet20", "--profile", str(toy_config), "--cache-dir",
            str(tmp_path / "cache"), "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--n", "12", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["n"] == 12 and out["metric"] == "accuracy"
    assert out["after"]["accuracy"] <= out["before"]["accuracy"]
    assert out["perturbation"]["linf"] <= 0.1 + 1e-6
    # second run reads the cached victim; the cascade reports which attack succeeded
    r2 = CliRunner().invoke(app, args[:-7] + ["--attack", "cascade", "--eps", "0.1", "--steps", "5", "--n", "12"])
    assert r2.exit_code == 0, r2.output
    assert "succeeded by" in r2.output and "accuracy" in r2.output


def test_attack_cli_bad_attack_name(toy_config, tmp_path):
    from medsec.errors import MedsecError

    args = ["attack", "--dataset", NAME, "--arch", "resnet20", "--profile", str(toy_config), "--cache-dir",
            str(tmp_path / "cache"), "--attack", "nope", "--n", "4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0
    assert isinstance(r.exception, MedsecError) and "unknown attack" in str(r.exception)
