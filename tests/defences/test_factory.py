"""Defences from an experiment config (fit once, then cached), the CLI, and the Li & Zhu report."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from medsec.cli import app
from medsec.config import load_config
from medsec.defences.factory import get_defence
from medsec.errors import MedsecError
from medsec.report.li_zhu import li_zhu_report
from medsec.studies.li_zhu import ATTACKS, METHODS, PAPER, SETTINGS

runner = CliRunner()
TINY = """
profile: tiny
data: {image_size: 16, n_train: 64, n_val: 24, n_test: 24}
train: {epochs: 1, batch_size: 32, augment: false}
victims: {toy-blobs: {arch: resnet20, width: 0.25, depth: 0.34}}
defences: {gmm: {ssat_epochs: 1}}
"""


@pytest.fixture
def tiny_cfg(cache_dir, tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_get_defence_fits_once_then_reads_the_cache(tiny_cfg):
    cfg = load_config(tiny_cfg)
    first = get_defence(cfg, "mgm", "toy-blobs")
    second = get_defence(cfg, "mgm", "toy-blobs")
    assert not first.from_cache and second.from_cache
    assert float(first.defence.threshold) == float(second.defence.threshold)
    x = first.victim.data.test.images()
    assert torch.equal(first.defence.detect(x), second.defence.detect(x))
    gmm = get_defence(cfg, "gmm", "toy-blobs").defence
    assert gmm.classifier is not first.victim.model  # SSAT trains a copy, never the victim itself
    with pytest.raises(MedsecError, match="unknown defence"):
        get_defence(cfg, "magic", "toy-blobs")


def test_defend_command_and_bad_paper(tiny_cfg, tmp_path):
    out = tmp_path / "mgm.pt"
    r = runner.invoke(app, ["defend", "--defence", "mgm", "--dataset", "toy-blobs", "--profile", str(tiny_cfg),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "accepted-and-correct" in r.output
    r = runner.invoke(app, ["reproduce", "--paper", "nope-1999", "--profile", str(tiny_cfg)])
    assert r.exit_code != 0 and "unknown paper" in str(r.exception)


def test_li_zhu_report_sets_our_numbers_beside_the_papers():
    rows = []
    for s in SETTINGS:
        for a in ATTACKS:
            methods = {m: {"f1": 0.9, "auroc": 0.8, "auroc_std": 0.05, "detection_auroc": 0.95,
                           "adv_rejected": 0.9} for m in METHODS}
            methods["none"] = {"f1": 0.0, "auroc": 0.6, "auroc_std": 0.05}
            rows.append({"setting": s, "attack": a, "top_finding_flipped": 0.7, "methods": methods})
    result = {"dataset": "chest14 (synthetic)", "victim": "densenet121", "surrogate": "resnet50", "n_clean": 10,
              "n_adv": 10, "steps": 10, "clean_weighted_auroc": 0.8, "clean_auroc_std": 0.1, "rows": rows,
              "paper_table": PAPER}
    md = li_zhu_report(result).markdown()
    assert "0.975 / 0.820" in md  # MGM white-box BIM in the paper
    assert "0.900 / 0.800 ± 0.050" in md
    assert "White-box attack (eps 0.02)" in md and "Black-box attack (eps 0.05)" in md


def test_defend_and_reproduce_share_the_defence_training_budget(tiny_cfg):
    from medsec.defences.factory import defence_config

    cfg = load_config(tiny_cfg, {"train": {"epochs": 2}, "reproduce": {"defence_epochs": 1}})
    assert defence_config(cfg).train.epochs == 1 and defence_config(defence_config(cfg)) == defence_config(cfg)
    assert load_config(tiny_cfg).reproduce.defence_epochs is None
    assert defence_config(load_config(tiny_cfg)).train.epochs == 1  # None: the victims' train.epochs
    ens = get_defence(cfg, "ensemble", "toy-blobs")
    assert [r.epochs for r in ens.defence.train_results] == [1, 1, 1]
    assert ens.victim.meta["epochs"] == 2  # the victim keeps train.epochs
    # the cache entry is the same whether the caller applied the budget already (medsec reproduce) or not
    assert get_defence(defence_config(cfg), "ensemble", "toy-blobs", victim=ens.victim).from_cache
