"""`medsec audit`: the example defence and built-in ones are broken, a gradient-masked toy is flagged, bad
input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsec.config import config_from_dict
from medsec.errors import ConfigError, MedsecError
from medsec.report.audit import write_audit_report
from medsec.studies.audit import load_defence_class, run_audit

ROOT = Path(__file__).resolve().parents[2]
MASKED = Path(__file__).with_name("masked_defence.py")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return config_from_dict({
        "profile": "test", "cache_dir": str(tmp_path_factory.mktemp("audit-cache")),
        "data": {"image_size": 16, "n_train": 256, "n_val": 48, "n_test": 48},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.003, "patience": 6, "augment": False},
        "model": {"width": 0.25, "depth": 0.34},
        "victims": {"toy-blobs": {"arch": "resnet20", "difficulty": 0.8}},
        "defences": {"gmm": {"ssat_epochs": 0}},
    })


def test_example_defence_is_broken_by_the_expanded_loss(cfg, tmp_path):
    res = run_audit(f"{ROOT / 'examples' / 'my_defence.py'}:FeatureZScoreDetector", cfg, "toy-blobs", 0.1, 32, 10,
                    out=tmp_path)
    write_audit_report(res, tmp_path)
    assert res.verdict == "broken", res.to_dict()
    assert res.attacks[res.best_attack] < 0.5 * res.clean
    assert any(k.startswith("expanded loss") for k in res.attacks)
    assert (tmp_path / "results.json").exists() and len(list((tmp_path / "cells").glob("audit-*.json"))) == 1 and "Verdict: broken" in (tmp_path / "report.md").read_text()


def test_gradient_masked_toy_is_flagged_and_bpda_breaks_it(cfg, tmp_path):
    res = run_audit(f"{MASKED}:QuantisedInput", cfg, "toy-blobs", 0.1, 32, 10, tmp_path)
    assert any("zero input gradients" in m or "no gradient" in m for m in res.masking), res.masking
    bpda = next(v for k, v in res.attacks.items() if k.startswith("BPDA"))
    assert bpda < res.attacks["original: PGD"] and bpda < 0.5 * res.clean
    assert res.verdict == "broken"


@pytest.mark.parametrize("name", ["mgm", "gmm"])
def test_builtin_detectors_are_broken(cfg, name, tmp_path):
    # 30 steps: with 10, GMM on this 32-image toy sat exactly at the verdict's boundary (46.9 % vs 46.9 %).
    res = run_audit(name, cfg, "toy-blobs", 0.1, 32, 30, tmp_path)
    assert res.verdict == "broken", res.to_dict()


def test_bad_input_is_a_clear_error(cfg, tmp_path):
    with pytest.raises(MedsecError, match="does not follow the defence protocol.*predict"):
        load_defence_class(f"{MASKED}:NoPredict")
    with pytest.raises(MedsecError, match="has no class 'Nope'.*QuantisedInput"):
        load_defence_class(f"{MASKED}:Nope")
    with pytest.raises(MedsecError, match="does not exist"):
        load_defence_class(f"{tmp_path / 'missing.py'}:X")
    with pytest.raises(MedsecError, match="path/to/defence.py:ClassName"):
        load_defence_class("no-colon")
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(MedsecError, match="failed to import.*boom"):
        load_defence_class(f"{bad}:X")
    with pytest.raises(MedsecError, match="eps must lie in"):
        run_audit(f"{MASKED}:QuantisedInput", cfg, "toy-blobs", 1.5, 8, 2, tmp_path)
    from medsec.config import load_config

    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("nope")
