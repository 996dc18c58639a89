"""The report layer: one document builder (Markdown and HTML), figures written atomically."""

import numpy as np
import torch

from medsec.report import Report, markdown_table
from medsec.report.figures import heatmap, line_plot, sample_strip


def test_document_and_figures(tmp_path):
    rep = Report("title")
    rep.add("Table", markdown_table(["a", "b"], [["x", 1.25], ["y", float("nan")]]))
    md, html = rep.write(tmp_path)
    assert "| x | 1.2 |" in md.read_text() and "n/a" in md.read_text()
    assert html.read_text().startswith("<!doctype html>") and "<table>" in html.read_text()
    m = np.array([[10.0, np.nan], [90.0, 55.0]])
    for p in (heatmap(m, ["s1", "s2"], ["t1", "t2"], tmp_path / "f" / "h.png", "title", "target", "surrogate", "%"),
              line_plot({"a": [(0.1, 20.0), (0.05, 10.0)]}, tmp_path / "f" / "l.png", "eps", "%"),
              sample_strip(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), 0.1, tmp_path / "f" / "s.png")):
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "f").glob("*.tmp"))
