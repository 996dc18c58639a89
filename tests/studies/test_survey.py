"""`medsec survey` end to end on a tiny victim and two toy datasets; `medsec transfer` argument errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medsec.cli import app

runner = CliRunner()

TINY = """
profile: tiny
data: {image_size: 24, n_train: 200, n_val: 40, n_test: 60}
train: {epochs: 4, batch_size: 32, patience: 4, lr: 0.003}
victims:
  toy-blobs: {arch: resnet20, width: 0.5, depth: 0.34}
survey:
  datasets: [toy-blobs]
  n_eval: 40
  patch_sizes: [0.05, 0.2]
  patch_steps: 30
  onepixel_pixels: [1, 8]
  onepixel_popsize: 8
  onepixel_iterations: 2
  onepixel_n_eval: 16
  uap_eps: [0.1]
  uap_epochs: 2
  backdoor_rates: [0.1]
  backdoor_trigger: 0.25
  fc_targets: 2
  fc_poisons: 2
  fc_steps: 10
"""


def test_survey_cli_writes_every_attack_and_resumes(cache_dir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    r = runner.invoke(app, ["survey", "--profile", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["attack"] for r in rows} == {"patch", "onepixel", "uap", "backdoor", "feature_collision"}
    patch = sorted((r["patch_area"], r["fooling_rate"]) for r in rows if r["attack"] == "patch")
    assert patch[1][1] >= patch[0][1]  # a bigger patch fools at least as much
    assert all(r["max_pixels_changed"] <= r["pixels"] for r in rows if r["attack"] == "onepixel")
    assert all(r["linf"] <= r["eps"] + 1e-7 for r in rows if r["attack"] == "uap")
    bd = next(r for r in rows if r["attack"] == "backdoor")
    assert bd["n_poisons"] == 20 and bd["trigger_success"] > bd["trigger_success_unpoisoned"]
    md = (out / "report.md").read_text()
    assert "Survey attacks" in md and "BadNets" in md and (out / "figures" / "survey_patch.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(stamps) == len(rows) + 1  # and the victim's cell
    r = runner.invoke(app, ["survey", "--profile", str(cfg), "--out", str(out)])
    assert r.exit_code == 0 and all(p.stat().st_mtime_ns == m for p, m in stamps.items())


def test_transfer_cli_rejects_bad_weights_argument(tmp_path):
    r = runner.invoke(app, ["transfer", "--out", str(tmp_path / "o"), "--weights", "densenet121"])
    assert r.exit_code != 0 and "ARCH=PATH" in str(r.exception)
    r = runner.invoke(app, ["transfer", "--out", str(tmp_path / "o"), "--weights", f"vgg99={tmp_path}/x.pt"])
    assert r.exit_code != 0 and "'vgg99' is not among transfer.archs" in str(r.exception)
    r = runner.invoke(app, ["transfer", "--out", str(tmp_path / "o"), "--weights", f"vgg16={tmp_path}/x.pt"])
    assert r.exit_code != 0 and "does not exist" in str(r.exception)
