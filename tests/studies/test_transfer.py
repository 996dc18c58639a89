"""The transfer study on tiny models and toy data: transfer beats the shuffled control, resumability,
the weights-file checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsec.config import load_config
from medsec.data.base import DatasetInfo, Split
from medsec.data.synthetic import GENERATORS, SyntheticSpec, register
from medsec.errors import ConfigError, MedsecError
from medsec.models.networks import build_model
from medsec.models.victims import development_data, get_victim, load_backbone_weights
from medsec.report.transfer import write_transfer_report
from medsec.studies.transfer import run_transfer_study, shuffle_perturbation, study_grid


def _bars(n: int, size: int, rng: np.random.Generator, difficulty: float) -> Split:
    """A second toy task (the 'pretraining source'): vertical (1) or horizontal (0) bright bar."""
    y = rng.integers(0, 2, n)
    x = rng.normal(0.4, 0.1, (n, 1, size, size))
    c = size // 2
    for i in range(n):
        if y[i]:
            x[i, 0, :, c - 2:c + 2] += 0.4
        else:
            x[i, 0, c - 2:c + 2, :] += 0.4
    return Split((np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64))


BARS = SyntheticSpec(DatasetInfo("toy-bars", "classification", ("horizontal", "vertical"), 1, "CR", True,
                                 "test-only toy"), _bars, 0.2)


@pytest.fixture(autouse=True)
def _bars_dataset():
    register(BARS)
    yield
    GENERATORS.pop(BARS.info.name, None)


def tiny(cache_dir, **transfer):
    t = {"dataset": "toy-blobs", "pretrain_source": "toy-bars", "archs": ["resnet20", "vgg16"],
         "width": 0.25, "depth": 0.34, "n_train": 240, "n_val": 60, "n_test": 60, "epochs": 4,
         "data_variants": ["d2"], "data_variant_inits": ["random"], "eps": [0.08],
         "main_eps": 0.08, "pgd_steps": 5, "pgd_alpha": 0.02, "n_eval": 60, **transfer}
    return load_config("quick", {"cache_dir": str(cache_dir), "data": {"image_size": 24},
                                 "train": {"batch_size": 32, "patience": 4, "lr": 0.003}, "transfer": t})


def test_transfer_beats_shuffled_control_and_resumes(cache_dir, tmp_path):
    cfg = tiny(cache_dir, inits=["random", "pretrained"])
    out = tmp_path / "out"
    res = run_transfer_study(cfg, out)
    write_transfer_report(res, cfg.transfer, cfg.profile, out)
    rows = res["rows"]
    targets, surrogates = study_grid(cfg.transfer)
    n_cells = (len(surrogates) * len(targets) + len(targets)) * 2  # 2 attacks, 1 eps
    n_models, n_attack_cells = len(targets) + len(surrogates), (len(surrogates) + len(targets)) * 2
    assert len(rows) == n_cells and len(list((out / "cells").glob("*.json"))) == n_models + n_attack_cells
    pgd = [r for r in rows if r["attack"] == "pgd" and r["eps"] == 0.08 and not r["whitebox"]]
    # a perturbation crafted on a surrogate lowers the target's accuracy more than the same one shuffled
    assert np.mean([r["ratio"] for r in pgd]) < np.mean([r["ratio_shuffled"] for r in pgd]) - 2
    assert all(0 <= r["adversarial"] <= 1 and r["clean"] > 0.6 for r in pgd)
    same = [r for r in pgd if r["s_arch"] == r["t_arch"] and r["s_init"] == r["t_init"] and r["s_data"] == "d1"]
    assert np.mean([r["ratio"] for r in same]) < 90
    wb = [r for r in rows if r["whitebox"] and r["attack"] == "pgd" and r["eps"] == 0.08]
    assert len(wb) == len(targets) and np.mean([r["ratio"] for r in wb]) <= np.mean([r["ratio"] for r in pgd])
    assert {f["finding"] for f in res["findings"]} >= {"pretraining raises transfer",
                                                        "different development data lowers transfer"}
    report = (out / "report.md").read_text()
    assert "Bortsova" in report and ("reproduces" in report) and "[0, 1] pixel units" in report
    assert (out / "figures" / "transfer_pgd_arch_init.png").stat().st_size > 1000
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == n_cells
    # a rerun skips every finished cell (no cell file is rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    victim = next(iter((cache_dir / "models").glob("*.pt")))
    victim_stamp = victim.stat().st_mtime_ns
    run_transfer_study(cfg, out)
    assert all(p.stat().st_mtime_ns == m for p, m in stamps.items())
    assert victim.stat().st_mtime_ns == victim_stamp
    # changed settings never reuse stale cells
    from medsec.studies.transfer import settings_digest

    assert settings_digest(tiny(cache_dir, epochs=5)) != settings_digest(cfg)
    assert settings_digest(tiny(cache_dir, eps=[0.08, 0.1])) == settings_digest(cfg)  # more cells, same settings


def test_shuffle_keeps_the_perturbation_values():
    x = torch.rand(3, 2, 8, 8) * 0.5
    x_adv = x + torch.rand(3, 2, 8, 8) * 0.1
    ctrl = shuffle_perturbation(x, x_adv, seed=1)
    d, dc = (x_adv - x).flatten(1).sort(1).values, (ctrl - x).flatten(1).sort(1).values
    assert torch.allclose(d, dc, atol=1e-6) and not torch.allclose(ctrl, x_adv)


def test_development_variants_are_disjoint_and_sized(cache_dir):
    cfg = tiny(cache_dir)
    from medsec.models.victims import experiment_dataset
    from medsec.studies.transfer import study_config

    data = experiment_dataset(study_config(cfg, "toy-blobs", "resnet20"), "toy-blobs")
    d = {v: development_data(data, v, 0) for v in ("d1", "d2", "d3", "d0")}
    rows = {v: {x.tobytes() for x in d[v].train.pixels} for v in d}
    assert not rows["d1"] & rows["d2"] and rows["d3"] <= rows["d2"] and rows["d0"] <= rows["d1"]
    assert len(d["d1"].train) == 120 and len(d["d3"].train) == 60 and len(d["d0"].train) == 12
    assert np.array_equal(d["d2"].test.pixels, data.test.pixels)


def test_weights_file_must_match_the_architecture(cache_dir, tmp_path):
    cfg = load_config("quick", {"cache_dir": str(cache_dir), "data": {"image_size": 24, "n_train": 60,
                                "n_val": 20, "n_test": 20}, "train": {"epochs": 1, "batch_size": 32},
                                "victims": {"toy-blobs": {"arch": "resnet20", "width": 0.25, "depth": 0.34}}})
    src = get_victim(cfg, "toy-blobs")
    wrong = build_model("vgg16", in_channels=1, num_outputs=2, task="classification", width=0.25, depth=0.34)
    with pytest.raises(MedsecError, match=r"does not match the architecture vgg16.*missing"):
        load_backbone_weights(wrong, src.checkpoint, "vgg16")
    wider = build_model("resnet20", in_channels=1, num_outputs=2, task="classification", width=0.5, depth=0.34)
    with pytest.raises(MedsecError, match="shape mismatches"):
        load_backbone_weights(wider, src.checkpoint, "resnet20")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    with pytest.raises(MedsecError, match="not a readable PyTorch state dict"):
        load_backbone_weights(wider, junk)
    # the right file initialises the backbone, and the victim built from it is a distinct cache entry
    same = build_model("resnet20", in_channels=1, num_outputs=2, task="classification", width=0.25, depth=0.34)
    load_backbone_weights(same, src.checkpoint)
    assert torch.equal(same.backbone.stem[0].weight, src.model.backbone.stem[0].weight)
    v = get_victim(cfg, "toy-blobs", init_from=src.checkpoint)
    assert v.checkpoint != src.checkpoint and v.meta["init_digest"]
    # through the study: a mismatching file is refused before anything is trained
    bad = tiny(cache_dir, weights={"vgg16": str(src.checkpoint)})
    with pytest.raises(MedsecError, match="does not match the architecture vgg16"):
        run_transfer_study(bad, tmp_path / "bad")
    with pytest.raises(ConfigError, match="does not exist"):
        run_transfer_study(tiny(cache_dir, weights={"vgg16": str(tmp_path / "nope.pt")}), tmp_path / "bad")
