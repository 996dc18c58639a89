"""The report of an audit: the verdict, the cascade's handled rates and the masking evidence."""

from __future__ import annotations

import json
from pathlib import Path

from medsec.report.document import Report, markdown_table
from medsec.studies.audit import AuditResult


def audit_report(res: AuditResult) -> Report:
    """The audit as a Markdown/HTML report."""
    rep = Report(f"medsec audit: {res.defence}")
    head = f"**Verdict: {res.verdict}**"
    if res.verdict == "broken":
        head += (f" — {res.best_attack!r} leaves {res.attacks[res.best_attack]:.1f}% of the attacked images handled "
                 f"(clean: {res.clean:.1f}%), at eps = {res.eps:g}.")
    elif res.verdict == "holds at this budget":
        head += (" — no attack in the cascade broke it at this eps. That is not a proof of robustness: try larger "
                 "budgets, more steps and attacks designed for this defence.")
    if res.masking:
        head += "\n\n**Gradient masking suspected:**\n\n" + "\n".join(f"- {m}" for m in res.masking)
    rep.add("Verdict", head)
    rep.add("Cascade", f"eps = {res.eps:g} (L_inf, [0,1] pixels), {res.n} test images. Handled = rejected by the "
            "detector or still correctly classified (clean: accepted and correct).\n\n"
            + markdown_table(["attack", "handled %"], [["clean (no attack)", res.clean],
                                                        *[[k, v] for k, v in res.attacks.items()]]))
    rep.add("Checks", "```json\n" + json.dumps(res.checks, indent=2, default=str) + "\n```")
    return rep


def write_audit_report(res: AuditResult, out: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html into `out`."""
    return audit_report(res).write(out)
