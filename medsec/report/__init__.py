"""Reports: figures, one document builder (Markdown rendered to HTML beside it), one module per study's report."""

from medsec.report.document import Report, markdown_table

__all__ = ["Report", "markdown_table"]
