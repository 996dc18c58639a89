"""Reports: one Markdown source per report, rendered to HTML beside it."""

from medsec.report.document import Report, markdown_table, run_provenance

__all__ = ["Report", "markdown_table", "run_provenance"]
