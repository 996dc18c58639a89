"""The Ray executor on a real local Ray (``ray.init(num_cpus=2)``, no mocks): the same cells as the local
executor, a worker killed mid-cell is retried, a rerun computes nothing, an application error is reported
with its cell's key, no cell runs twice at once, and bad input is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from medsec.errors import MedsecError
from medsec.studies.grid import Cell, CellStore, GridError, LocalExecutor, run_grid
from tests.studies import ray_cells

ray = pytest.importorskip("ray", reason="the Ray executor tests need Ray (pip install 'medsec[ray]')")

from medsec.studies.ray_executor import (  # noqa: E402
    CellLock,
    RayExecutor,
    check_address,
    make_executor,
    require_ray,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; its workers import this repository's medsec and tests."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _grid(folder: Path, calls: Path, n: int = 4, sleep: float = 0.0) -> list[Cell]:
    squares = [Cell(f"sq-{i}", ray_cells.square, {"key": f"sq-{i}", "calls": str(calls), "x": i, "sleep": sleep})
               for i in range(n)]
    need = [c.key for c in squares]
    return [*squares, Cell("total", ray_cells.total, {"key": "total", "calls": str(calls), "folder": str(folder),
                                                       "needs": need}, after=tuple(need))]


def _files(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_same_cells_as_local_executor_and_rerun_computes_nothing(local_ray, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_grid(_grid(local, tmp_path / "local.calls"), CellStore(local), LocalExecutor(), title="local")
    calls = tmp_path / "ray.calls"
    res = run_grid(_grid(remote, calls), CellStore(remote), RayExecutor(), title="ray")
    assert _files(remote) == _files(local) and len(_files(remote)) == 5
    assert res["total"] == {"total": 0 + 1 + 4 + 9}
    assert sorted(ray_cells.calls_of(calls)) == sorted(["sq-0", "sq-1", "sq-2", "sq-3", "total"])
    assert not list(remote.glob("*.lock"))
    # a rerun after completion computes nothing, and returns the same results
    again = run_grid(_grid(remote, calls), CellStore(remote), RayExecutor(), title="ray again")
    assert again == res and len(ray_cells.calls_of(calls)) == 5


def test_worker_killed_mid_cell_is_retried(local_ray, tmp_path):
    folder, calls, marker = tmp_path / "cells", tmp_path / "calls", tmp_path / "killed"
    cells = [*_grid(folder, calls, n=3),
             Cell("dies", ray_cells.die_once, {"key": "dies", "calls": str(calls), "marker": str(marker), "x": 7})]
    res = run_grid(cells, CellStore(folder), RayExecutor(max_retries=2), title="killed worker")
    assert marker.exists() and res["dies"] == {"x": 7, "square": 49}
    n = Counter(ray_cells.calls_of(calls))
    assert n["dies"] == 2 and all(n[k] == 1 for k in ("sq-0", "sq-1", "sq-2", "total"))
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(["sq-0", "sq-1", "sq-2", "total", "dies"])
    assert not list(folder.glob("*.lock"))


def test_application_error_is_named_and_the_others_finish(local_ray, tmp_path):
    folder, calls = tmp_path / "cells", tmp_path / "calls"
    cells = [*_grid(folder, calls, n=2),
             Cell("broken", ray_cells.fail, {"key": "broken", "calls": str(calls), "x": 3}),
             Cell("after-broken", ray_cells.square, {"key": "after-broken", "calls": str(calls), "x": 1},
                  after=("broken",))]
    with pytest.raises(GridError) as err:
        run_grid(cells, CellStore(folder), RayExecutor(max_retries=3), title="with an error")
    msg = str(err.value)
    assert "broken: ValueError: cannot handle x=3" in msg and "after-broken" in msg
    assert err.value.failed.keys() == {"broken"} and err.value.skipped == ["after-broken"]
    assert sorted(p.stem for p in folder.glob("*.json")) == ["sq-0", "sq-1", "total"]
    assert Counter(ray_cells.calls_of(calls))["broken"] == 1  # an application error is not retried


def test_worker_dying_on_every_attempt_is_reported_after_the_retries(local_ray, tmp_path):
    folder, calls = tmp_path / "cells", tmp_path / "calls"
    cells = [Cell("sq-0", ray_cells.square, {"key": "sq-0", "calls": str(calls), "x": 2}),
             Cell("always-dies", ray_cells.die_always, {"key": "always-dies", "calls": str(calls)}),
             Cell("needs-it", ray_cells.square, {"key": "needs-it", "calls": str(calls), "x": 1},
                  after=("always-dies",))]
    with pytest.raises(GridError) as err:
        run_grid(cells, CellStore(folder), RayExecutor(max_retries=1), title="dying worker")
    assert err.value.failed.keys() == {"always-dies"} and "after 1 retries" in err.value.failed["always-dies"]
    assert err.value.skipped == ["needs-it"]
    assert Counter(ray_cells.calls_of(calls)) == {"sq-0": 1, "always-dies": 2}
    assert [p.stem for p in folder.glob("*.json")] == ["sq-0"]


def test_two_drivers_never_run_a_cell_twice(local_ray, tmp_path):
    """Two runs of the same grid at the same time: every cell is computed exactly once (the lock file)."""
    folder, calls = tmp_path / "cells", tmp_path / "calls"
    out: list = []

    def drive() -> None:
        out.append(run_grid(_grid(folder, calls, n=3, sleep=1.0), CellStore(folder),
                            RayExecutor(poll_seconds=0.2), title="driver"))

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(out) == 2 and out[0] == out[1]
    assert Counter(ray_cells.calls_of(calls)) == {"sq-0": 1, "sq-1": 1, "sq-2": 1, "total": 1}


def test_lock_file_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "cell.lock"
    a, b = CellLock(path, stale_seconds=60), CellLock(path, stale_seconds=60)
    assert a.acquire() and not b.acquire()
    a.release()
    assert not path.exists() and b.acquire()
    b.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x"}))
    c = CellLock(path, stale_seconds=60)
    assert c.acquire()  # its holder's process is gone
    c.release()


def test_bad_input_is_a_clear_error(local_ray, tmp_path):
    with pytest.raises(MedsecError, match="unknown --executor 'spark'; expected local or ray"):
        make_executor("spark")
    with pytest.raises(MedsecError, match="--address is for --executor ray"):
        make_executor("local", "127.0.0.1:6379")
    with pytest.raises(MedsecError, match="no Ray cluster can be reached"):
        check_address("127.0.0.1:1")
    with pytest.raises(MedsecError, match="expected HOST:PORT"):
        check_address("nonsense")
    # a results folder the workers cannot write: nothing runs, nothing is half-written
    folder, calls = tmp_path / "cells", tmp_path / "calls"
    store = CellStore(folder)
    folder.rmdir()
    folder.write_text("a file where the results folder should be")
    with pytest.raises(MedsecError, match="cannot use the shared folders.*is not a folder on node"):
        RayExecutor().run(_grid(folder, calls), store, _progress())
    assert not calls.exists()


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MedsecError, match=r"needs Ray, which is not installed: pip install 'medsec\[ray\]'"):
        require_ray()


# the fields of a cell that measure the run rather than compute its result: where and how long it ran
_RUN_FIELDS = {"seconds", "train_seconds", "adaptive_seconds", "defence_fit_seconds", "from_cache",
               "defence_from_cache", "checkpoint", "path", "victim_checkpoint"}


def _numbers(cell: dict) -> dict:
    return {k: v for k, v in cell.items() if k not in _RUN_FIELDS}


def _tiny_levy(tmp_path, name: str) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"""
profile: tiny
cache_dir: {tmp_path / name / 'cache'}
data: {{image_size: 16, n_train: 48, n_val: 16, n_test: 16}}
train: {{epochs: 1, batch_size: 16, patience: 1, augment: false}}
model: {{width: 0.125, depth: 0.25}}
victims: {{chest14: {{arch: resnet20}}, brain-mri: {{arch: unet}}}}
reproduce: {{n_test: 4, steps: 2, restarts: 1, original_steps: 2, curve_multipliers: [2.0], n_curve: 2,
             n_samples: 2, rows: [mgm-chest14, rbf-brain-mri]}}
""")
    return cfg


def test_reproduce_on_ray_writes_the_same_cells_as_local(local_ray, tmp_path):
    """`medsec reproduce --executor ray` on a small grid (victims, defences, two rows) gives the local cells."""
    from typer.testing import CliRunner

    from medsec.cli import app

    runner = CliRunner()
    outs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        outs[name] = tmp_path / name / "out"
        r = runner.invoke(app, ["reproduce", "--profile", str(_tiny_levy(tmp_path, name)), "--out",
                                str(outs[name]), "--device", "cpu", *extra])
        assert r.exit_code == 0, r.output
    local, remote = _files(outs["local"] / "cells"), _files(outs["ray"] / "cells")
    assert local.keys() == remote.keys() and len(local) == 6  # 2 victims, 2 defences, 2 rows
    for name in local:
        assert _numbers(remote[name]) == _numbers(local[name]), name
    assert json.loads((outs["ray"] / "results.json").read_text())[0]["id"] == "mgm-chest14"
    assert not list((outs["ray"] / "cells").glob("*.lock"))


def test_cli_unknown_executor_and_unreachable_address(tmp_path):
    from typer.testing import CliRunner

    from medsec.cli import app

    runner = CliRunner()
    cfg = _tiny_levy(tmp_path, "bad")
    r = runner.invoke(app, ["reproduce", "--profile", str(cfg), "--out", str(tmp_path / "o"), "--executor", "dask"])
    assert r.exit_code != 0 and "unknown --executor 'dask'" in str(r.exception)
    r = runner.invoke(app, ["transfer", "--profile", str(cfg), "--out", str(tmp_path / "o"), "--executor", "ray",
                            "--address", "127.0.0.1:1"])
    assert r.exit_code != 0 and "no Ray cluster can be reached" in str(r.exception)
    assert not (tmp_path / "o" / "cells").exists() or not list((tmp_path / "o" / "cells").iterdir())


def _progress():
    from medsec.studies.grid import GridProgress

    return GridProgress("bad folder", 5)
