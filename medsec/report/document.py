"""A report is Markdown (readable as is) and the same content rendered as a standalone HTML page."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markdown as md

from medsec.paths import ensure_writable_dir, write_text_atomic

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right}
th{background:#eee} td:first-child,th:first-child{text-align:left}
img{max-width:100%} code,pre{background:#f4f4f4} pre{padding:.6em;overflow-x:auto}
.synthetic{background:#fff4d6;border:1px solid #e0b84c;padding:.5em 1em}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.1f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-style Markdown table; floats are shown with one decimal, NaN as n/a."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


@dataclass
class Report:
    """Sections of Markdown, written as report.md and report.html into one folder."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, body: str) -> None:
        """Append a section (a level-2 heading and its Markdown body)."""
        self.sections.append((heading, body))

    def markdown(self) -> str:
        """The whole report as Markdown."""
        parts = [f"# {self.title}\n"]
        parts += [f"## {h}\n\n{b.strip()}\n" for h, b in self.sections]
        return "\n".join(parts)

    def html(self) -> str:
        """The whole report as a standalone HTML page."""
        body = md.markdown(self.markdown(), extensions=["tables", "fenced_code"])
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body>{body}</body></html>")

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write report.md and report.html atomically; returns their paths."""
        out = ensure_writable_dir(out_dir)
        md_path, html_path = out / "report.md", out / "report.html"
        write_text_atomic(md_path, self.markdown())
        write_text_atomic(html_path, self.html())
        return md_path, html_path


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The provenance as a Markdown list plus the config in a code block."""
    lines = [f"- **{k}**: {v}" for k, v in prov.items() if k != "config"]
    return "\n".join(lines) + "\n\nConfig:\n\n```yaml\n" + prov.get("config", "").rstrip() + "\n```\n"
