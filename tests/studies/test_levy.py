"""`medsec reproduce` (Levy et al.): results.json has DESIGN.md's schema, a rerun resumes finished rows,
bad input is a clear error, the floor converges and several seeds give one row with its spread."""

from __future__ import annotations

import json

import pytest

import medsec.studies.levy as rp
from medsec.config import config_from_dict
from medsec.errors import ConfigError
from medsec.report.levy import write_levy_report

SCHEMA = {"defence": str, "dataset": str, "task": str, "metric": str, "clean": float,
          "original_attack_no_defence": float, "original_attack_with_defence": float,
          "adaptive_attack_with_defence": float, "eps": float, "n_test": int, "seconds": float}


def _cfg(tmp_path, rows):
    return config_from_dict({
        "profile": "tiny", "cache_dir": str(tmp_path / "cache"),
        "data": {"image_size": 16, "n_train": 64, "n_val": 16, "n_test": 16},
        "train": {"epochs": 1, "batch_size": 32, "patience": 1, "augment": False},
        "model": {"width": 0.125, "depth": 0.25},
        "victims": {"chest14": {"arch": "resnet20"}, "brain-mri": {"arch": "unet"}},
        "reproduce": {"n_test": 8, "steps": 3, "restarts": 1, "original_steps": 2, "curve_multipliers": [2.0],
                      "n_curve": 4, "n_samples": 2, "rows": rows},
    })


def test_results_schema_report_and_resume(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, ["mgm-chest14", "rbf-brain-mri"])
    out = tmp_path / "out"
    write_levy_report(rp.run_levy(cfg, out), cfg.profile, out)
    rows = json.loads((out / "results.json").read_text())
    assert isinstance(rows, list) and [r["dataset"] for r in rows] == ["chest14", "brain-mri"]
    for r in rows:
        for k, t in SCHEMA.items():
            assert isinstance(r[k], t if t is not float else (int, float)), (k, r[k])
        assert r["task"] in ("classification", "segmentation")
        assert r["metric"] == ("dice" if r["task"] == "segmentation" else "accuracy")
        for k in rp.COLUMNS:
            assert 0 <= r[k] <= 100
        assert r["n_test"] == 8 and r["paper"]["clean"] > 0
    mgm, seg = rows
    assert mgm["eps"] == 0.02 and mgm["threshold"] is not None and mgm["table2"]["metric"] == "AUROC"
    assert seg["eps"] == 0.02 and seg["metric"] == "dice"
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "(95.2)" in md and "synthetic" in md
    # the main job's report: the victims' clean baseline and the signed-DICOM countermeasure beside the tables
    assert "Clean performance of the victims" in md and "Signed DICOM against an attacker inside the PACS" in md
    summary = json.loads((out / "clean_metrics.json").read_text())
    assert [r["dataset"] for r in summary["rows"]] == ["chest14", "brain-mri"]
    integ = summary["integrity"]
    assert integ["replaced_refused"] == integ["replaced_total"] and integ["untouched_passed"] == integ["untouched_total"]
    for name in ("mgm-chest14-samples.png", "mgm-chest14-curves.png", "mgm-chest14-roc.png",
                 "rbf-brain-mri-samples.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "report.html").read_text().startswith("<!doctype html>")

    # an interrupted or repeated run keeps finished rows: nothing is recomputed
    def boom(*a, **k):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(rp, "compute_row", boom)
    import medsec.studies.common as common

    monkeypatch.setattr(common, "fit_victim", boom)
    monkeypatch.setattr(common, "fit_defence", boom)
    rp.run_levy(cfg, tmp_path / "out")
    assert {p.name.split("-")[0] for p in (out / "cells").glob("*.json")} == {"victim", "defence", "levy"}
    assert json.loads((out / "results.json").read_text()) == rows


def test_unknown_row_and_profile_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown row nope"):
        rp.selected_rows(_cfg(tmp_path, ["nope"]))
    from medsec.config import load_config

    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_config("fast")


def test_floor_pattern_and_verdict_in_every_row(tmp_path):
    cfg = _cfg(tmp_path, ["rbf-brain-mri"])
    row = rp.run_levy(cfg, tmp_path / "out")["cells"][0]
    f = row["floor"]
    assert f["rounds"][0]["attack"] == "the row's other attacks"
    values = [r["value"] for r in f["rounds"]]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False)) and f["value"] == values[-1]
    # the floor is never weaker than the row's original attack on the undefended victim
    assert f["value"] <= row["original_attack_no_defence"] + 1e-9
    assert set(row["pattern"]["parts"]) == {"victim_falls", "defence_holds", "adaptive_breaks"}
    assert row["verdict"].split(" (")[0] in ("broken", "victim resists this eps", "defence holds at this budget")


def test_several_seeds_give_mean_range_and_one_verdict(tmp_path):
    cfg = _cfg(tmp_path, ["rbf-brain-mri"])
    cfg = cfg.model_copy(update={"reproduce": cfg.reproduce.model_copy(update={"seeds": [0, 1]})})
    out = tmp_path / "out"
    study = rp.run_levy(cfg, out)
    write_levy_report(study, cfg.profile, out)
    row = json.loads((out / "results.json").read_text())[0]
    spread = row["seeds"]["columns"]["clean"]
    assert row["seeds"]["seeds"] == [0, 1] and set(map(int, spread["values"])) == {0, 1}
    assert spread["min"] <= row["clean"] == spread["mean"] <= spread["max"]
    assert len({p.name for p in (out / "cells").glob("victim-*.json")}) == 2  # a victim per seed
    md = (out / "report.md").read_text()
    assert "Over seeds 0, 1" in md and "per seed: seed 0:" in md


def test_every_table1_row_is_defined_once():
    assert len(rp.ROWS) == 8 and len(set(rp.ROW_IDS)) == 8
    assert {(r.defence, r.dataset) for r in rp.ROWS} == {
        ("mgm", "chest14"), ("ensemble", "ct-slices"), ("denoiser", "rsna"), ("rbf", "chest2"), ("gmm", "rsna"),
        ("gmm", "oct"), ("rbf", "brain-mri"), ("rbf", "isic")}
    assert all(0 < r.eps <= 1 for r in rp.ROWS)


def test_a_row_override_gives_that_row_its_own_victim_and_leaves_the_others(tmp_path):
    cfg = _cfg(tmp_path, ["rbf-chest2", "mgm-chest14"])
    plain_cells, plain_keys, _ = rp.levy_cells(cfg, rp.StudyOutput.at(tmp_path / "a"))
    over = cfg.with_overrides({"reproduce": {"row_overrides": {"rbf-chest2": {"data": {"image_size": 24}}}}})
    cells, keys, first = rp.levy_cells(over, rp.StudyOutput.at(tmp_path / "b"))
    assert keys["mgm-chest14"] == plain_keys["mgm-chest14"]  # untouched rows keep their cells
    assert keys["rbf-chest2"] != plain_keys["rbf-chest2"]
    by_key = {c.key: c for c in cells}
    assert by_key[keys["rbf-chest2"][0]].kwargs["cfg"].data.image_size == 24
    assert by_key[keys["mgm-chest14"][0]].kwargs["cfg"].data.image_size == 16
    assert set(first) == {"chest2", "chest14"}
    with pytest.raises(ConfigError, match="row_overrides: unknown row nope"):
        rp.selected_rows(cfg.with_overrides({"reproduce": {"row_overrides": {"nope": {}}}}))
    with pytest.raises(ConfigError, match="row_overrides.rbf-chest2"):
        rp.row_config(cfg.with_overrides({"reproduce": {"row_overrides": {"rbf-chest2": {"data": {"size": 1}}}}}),
                      rp.ROWS[3])


def test_report_names_a_rows_own_settings():
    from medsec.config import load_config
    from medsec.report.levy import row_settings

    settings = row_settings(load_config("quick").reproduce.row_overrides)
    assert settings["gmm-rsna"] == "victims.rsna.difficulty=1.0"
    assert settings["mgm-chest14"] == "data.n_train=2000, reproduce.n_test=128"
    assert "denoiser-rsna" not in settings and row_settings({}) == {}
