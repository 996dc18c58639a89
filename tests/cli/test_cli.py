import json
import os

import pytest
from typer.testing import CliRunner

from medsec.cli import app

runner = CliRunner()


def test_evaluate_writes_report(cache_dir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
profile: tiny
data: {image_size: 24, n_train: 80, n_val: 30, n_test: 30}
train: {epochs: 2, batch_size: 32}
victims: {toy-blobs: {arch: resnet20, width: 0.5, depth: 0.34}}
""")
    out = tmp_path / "out"
    r = runner.invoke(app, ["evaluate", "--profile", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[0]["dataset"] == "toy-blobs" and rows[0]["synthetic"] is True
    md = (out / "report.md").read_text()
    assert "toy-blobs (synthetic)" in md and "synthetic" in (out / "report.html").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_non_writable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    from medsec.errors import MedsecError
    from medsec.paths import ensure_writable_dir

    with pytest.raises(MedsecError, match="not writable"):
        ensure_writable_dir(ro)


def test_output_under_a_file_is_a_clear_error(tmp_path):
    from medsec.errors import MedsecError
    from medsec.paths import ensure_writable_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(MedsecError, match="cannot create output folder"):
        ensure_writable_dir(f / "sub")


def test_unknown_dataset_cli(cache_dir):
    r = runner.invoke(app, ["train", "--dataset", "chest99"])
    assert r.exit_code != 0
    assert "chest99" in str(r.exception) or "chest99" in r.output


def test_train_accepts_data_root(cache_dir, tmp_path):
    from tests.data.fixtures_real import make_oct

    fx = make_oct(tmp_path / "real")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
profile: tiny
data: {image_size: 24, n_train: 80, n_val: 30, n_test: 30}
train: {epochs: 1, batch_size: 16}
victims: {oct: {arch: resnet20, width: 0.25, depth: 0.34}}
""")
    r = runner.invoke(app, ["train", "--dataset", "oct", "--profile", str(cfg), "--data-root", str(fx.root)])
    assert r.exit_code == 0, r.output
    assert "oct /" in r.output and "accuracy" in r.output
    ckpts = list((cache_dir / "models").glob("oct-resnet20-real-*.pt"))
    assert len(ckpts) == 1


def test_missing_data_root_is_a_clear_error(cache_dir, tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "oct", "--data-root", str(tmp_path / "nowhere")])
    assert r.exit_code != 0
    assert "nowhere" in str(r.exception)


def test_console_errors_have_no_traceback_and_exit_2(cache_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "medsec", "train", "--dataset", "chest99", "--arch", "resnet18"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "chest99" in r.stderr and "Traceback" not in r.stderr


def test_integrity_section_refuses_planted_adversarial_pixels(cache_dir, tmp_path):
    from medsec.config import config_from_dict
    from medsec.studies.clean import integrity_section

    cfg = config_from_dict({"data": {"image_size": 24, "n_train": 80, "n_val": 30, "n_test": 30},
                            "train": {"epochs": 2, "batch_size": 32},
                            "victims": {"toy-blobs": {"arch": "resnet20", "width": 0.5, "depth": 0.34}}})
    result, md = integrity_section(cfg, tmp_path, dataset="toy-blobs", n=6, eps=0.05)
    assert result["replaced_total"] >= 1
    assert result["all_untouched_pass"] and result["all_replaced_refused"]
    assert "eps 0.05" in md and "countermeasure holds" in md
    assert integrity_section(cfg, tmp_path, dataset="chest2") is None  # not in this profile


def test_reproduce_accepts_data_root(cache_dir, tmp_path):
    """--data-root reaches the datasets reproduce reads: a real-layout copy is read, a missing one is named."""
    from tests.data.fixtures_real import make_nih

    r = runner.invoke(app, ["reproduce", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "nowhere" in str(r.exception)
    fx = make_nih(tmp_path / "real")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
profile: tiny
data: {image_size: 16}
train: {epochs: 1, batch_size: 8}
model: {width: 0.125, depth: 0.25}
victims: {chest2: {arch: resnet18}}
reproduce: {rows: [rbf-chest2], n_test: 4, steps: 2, n_curve: 2, n_samples: 1, curve_multipliers: [], defence_epochs: 1}
""")
    r = runner.invoke(app, ["reproduce", "--profile", str(cfg), "--data-root", str(fx.root),
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, (r.output, r.exception)
    import json

    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = rows if isinstance(rows, list) else rows["rows"]
    assert rows[0]["dataset"] == "chest2" and rows[0]["n_test"] <= 4


def test_train_a_dataset_without_a_configured_victim(cache_dir, tmp_path):
    """A MedMNIST file the profile names no victim for gets the default architecture of its task."""
    from tests.data.fixtures_real import make_medmnist

    fx = make_medmnist(tmp_path / "real", names=("pneumoniamnist",), sizes=(28,))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
profile: tiny
data: {image_size: 28, n_train: 12, n_val: 4, n_test: 6}
model: {width: 0.125, depth: 0.25}
train: {epochs: 1, batch_size: 8}
victims: {}
""")
    r = runner.invoke(app, ["train", "--dataset", "pneumoniamnist", "--profile", str(cfg), "--data-root",
                            str(fx.root)])
    assert r.exit_code == 0, r.output
    assert "resnet18" in r.output and "accuracy" in r.output
    assert len(list((cache_dir / "models").glob("pneumoniamnist-resnet18-real-*.pt"))) == 1
