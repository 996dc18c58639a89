"""The grid runner: resume, atomic results, dependency order, failures reported after the rest finished."""

import json
from pathlib import Path

import pytest

from medsec.errors import MedsecError
from medsec.studies.grid import Cell, CellStore, GridError, LocalExecutor, run_grid

CALLS: list[str] = []


def square(n: int) -> dict:
    CALLS.append(f"square-{n}")
    return {"n": n, "square": n * n}


def fail(why: str) -> dict:
    CALLS.append("fail")
    raise RuntimeError(why)


def test_cells_resume_and_skip(tmp_path):
    store = CellStore(tmp_path / "cells")
    calls = []

    def work():
        calls.append(1)
        return {"acc": 0.5}

    assert store.compute("MGM/chest14 eps=0.02", work) == {"acc": 0.5}
    assert store.compute("MGM/chest14 eps=0.02", work) == {"acc": 0.5}
    assert len(calls) == 1
    store.path("MGM/chest14 eps=0.02").write_text("{broken")
    assert store.compute("MGM/chest14 eps=0.02", work) == {"acc": 0.5}
    assert len(calls) == 2
    assert not list((tmp_path / "cells").glob("*.tmp"))


def test_grid_runs_in_dependency_order_and_resumes(tmp_path):
    CALLS.clear()
    store = CellStore(tmp_path / "cells")
    cells = [Cell("row-3", square, {"n": 3}, after=("victim-2",)), Cell("victim-2", square, {"n": 2})]
    res = run_grid(cells, store, LocalExecutor(), title="t")
    assert res["row-3"]["square"] == 9 and res["victim-2"]["square"] == 4
    assert CALLS == ["square-2", "square-3"]  # the victim first
    assert json.loads((tmp_path / "cells" / "row-3.json").read_text())["square"] == 9
    CALLS.clear()
    assert run_grid(cells, store, title="t") == res  # resumed: nothing recomputed
    assert CALLS == []


def test_failed_cell_does_not_stop_the_others(tmp_path):
    CALLS.clear()
    store = CellStore(tmp_path / "cells")
    cells = [Cell("victim", fail, {"why": "no data"}), Cell("row-a", square, {"n": 1}, after=("victim",)),
             Cell("other", square, {"n": 5})]
    with pytest.raises(GridError) as e:
        run_grid(cells, store, title="study")
    assert "victim: RuntimeError: no data" in str(e.value)
    assert e.value.skipped == ["row-a"]
    assert CALLS == ["fail", "square-5"]  # the independent cell finished, the dependent one was skipped
    assert store.get("other") == {"n": 5, "square": 25}
    assert store.get("victim") is None and store.get("row-a") is None


def test_bad_grids_are_refused(tmp_path):
    store = CellStore(tmp_path / "cells")
    with pytest.raises(MedsecError, match="share the key"):
        run_grid([Cell("a", square, {"n": 1}), Cell("a", square, {"n": 2})], store, title="t")
    with pytest.raises(MedsecError, match="not file-safe"):
        run_grid([Cell("a/b", square, {"n": 1})], store, title="t")
    with pytest.raises(MedsecError, match="not in the grid"):
        run_grid([Cell("a", square, {"n": 1}, after=("b",))], store, title="t")
    with pytest.raises(MedsecError, match="cycle"):
        run_grid([Cell("a", square, {"n": 1}, after=("b",)), Cell("b", square, {"n": 1}, after=("a",))],
                 store, title="t")


def test_cell_digests_change_with_the_source_that_computes_results(tmp_path, monkeypatch):
    """A study's cells are keyed by medsec's source too: a cell written by other code is not reused; the
    report writers and the command line do not count."""
    import shutil

    import medsec
    import medsec.provenance as prov
    from medsec.config import load_config
    from medsec.studies.common import config_digest

    cfg = load_config("quick")
    root = Path(medsec.__file__).resolve().parent
    copy = tmp_path / "medsec"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def digest_of(tree: Path) -> tuple[str, str]:
        monkeypatch.setattr(prov, "__file__", str(tree / "provenance.py"))
        prov.source_digest.cache_clear()
        try:
            return prov.source_digest(), config_digest(cfg)
        finally:
            prov.source_digest.cache_clear()

    same = digest_of(copy)
    assert same == digest_of(root)  # the digest is of the content, not of where it lies
    (copy / "report" / "levy.py").write_text((copy / "report" / "levy.py").read_text() + "\n# wording\n")
    assert digest_of(copy) == same
    (copy / "attacks" / "apgd.py").write_text((copy / "attacks" / "apgd.py").read_text() + "\n# changed\n")
    changed = digest_of(copy)
    assert changed[0] != same[0] and changed[1] != same[1]


def test_victim_and_defence_caches_key_on_the_code_that_made_them(tmp_path, monkeypatch):
    """Cached data, victims and defences are keyed by the code that made them: an edit to an attack retrains no
    victim but refits the defences (some train on adversarial examples); an edit to the training code
    retrains the victims; a report edit changes nothing. A trained victim is found again under the same code."""
    import shutil

    import medsec
    import medsec.models.victims as victims
    import medsec.provenance as prov
    from medsec.config import load_config
    from medsec.models.victims import get_victim

    root = Path(medsec.__file__).resolve().parent
    copy = tmp_path / "medsec"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    kinds = {"data": ("data",), "victim": ("data", "models"), "defence": ("data", "models", "defences", "attacks")}

    def digests(tree: Path) -> dict[str, str]:
        monkeypatch.setattr(prov, "__file__", str(tree / "provenance.py"))
        prov.code_digest.cache_clear()
        try:
            return {k: prov.code_digest(*parts) for k, parts in kinds.items()}
        finally:
            prov.code_digest.cache_clear()

    def edit(rel: str) -> None:
        (copy / rel).write_text((copy / rel).read_text() + "\n# changed\n")

    base = digests(copy)
    assert base == digests(root)
    assert prov.code_digest("models", "data") == prov.code_digest("data", "models")  # a set, not a sequence
    edit("report/levy.py")
    assert digests(copy) == base
    edit("attacks/apgd.py")
    after_attack = digests(copy)
    assert after_attack["data"] == base["data"] and after_attack["victim"] == base["victim"]
    assert after_attack["defence"] != base["defence"]
    edit("models/training.py")
    after_training = digests(copy)
    assert after_training["data"] == base["data"] and after_training["victim"] != base["victim"]

    # the victim cache: the same code finds its victim again; other training code trains another one
    cfg = load_config("quick", {"cache_dir": str(tmp_path / "cache"), "data": {"n_train": 64, "n_val": 32,
                                "n_test": 32, "image_size": 16}, "train": {"epochs": 1}})
    first = get_victim(cfg, "chest2")
    again = get_victim(cfg, "chest2")
    assert again.from_cache and again.checkpoint == first.checkpoint
    monkeypatch.setattr(victims, "code_digest", lambda *parts: "0" * 12)  # as after an edit to the training code
    other = get_victim(cfg, "chest2")
    assert not other.from_cache and other.checkpoint != first.checkpoint
