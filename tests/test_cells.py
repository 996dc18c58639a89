from medsec.evaluation.cells import CellStore


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
