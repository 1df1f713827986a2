"""The findings table written out: CSV, a text (Markdown) table, an HTML table for the study
report and the verdicts on an MLflow run, from the :class:`~lolaray.evaluation.findings.Finding`
rows that :func:`~lolaray.evaluation.findings.assess_findings` computes."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence

from lolaray.evaluation.findings import NOT_MEASURED, NOT_SHOWN, SHOWN, Finding

__all__ = ["findings_csv", "findings_html", "findings_metrics", "findings_text", "log_findings"]

_COLUMNS = ("finding", "statement", "verdict", "figures", "why", "test")


def _record(finding: Finding) -> tuple[str, ...]:
    return (
        str(finding.number),
        finding.statement,
        finding.verdict,
        finding.figures,
        finding.why,
        finding.test,
    )


def findings_csv(findings: Sequence[Finding]) -> str:
    """CSV, one row per finding: number, statement, verdict, figures, why, test."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    writer.writerows(_record(f) for f in findings)
    return buffer.getvalue()


def findings_text(findings: Sequence[Finding]) -> str:
    """A pipe table (valid Markdown) of number, finding, verdict and this run's figures."""
    header = ("#", "finding (paper)", "verdict", "this run")
    body = [
        (str(f.number), f.statement, f.verdict, f"{f.figures} — {f.why}" if f.figures != "—" else f.why)
        for f in findings
    ]
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(3)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join([*(c.ljust(w) for c, w in zip(cells, widths)), cells[3]]) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|---|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def findings_html(findings: Sequence[Finding], *, caption: str | None = None) -> str:
    """An HTML ``<table>`` (escaped): finding, verdict, figures, why and the test applied."""
    parts = ['<table class="metric-table findings">']
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append(
        "<thead><tr>"
        + "".join(f"<th>{h}</th>" for h in ("#", "finding (paper)", "verdict", "this run", "why", "test"))
        + "</tr></thead><tbody>"
    )
    colour = {SHOWN: "#dff0d8", NOT_SHOWN: "#f2dede", NOT_MEASURED: "#f4f4f4"}
    for f in findings:
        parts.append(
            f'<tr data-finding="{f.number}" data-verdict="{html.escape(f.verdict)}">'
            f'<td class="num">{f.number}</td><td class="key">{html.escape(f.statement)}</td>'
            f'<td class="key" style="background:{colour.get(f.verdict, "")}">{html.escape(f.verdict)}</td>'
            f"<td>{html.escape(f.figures)}</td><td>{html.escape(f.why)}</td><td>{html.escape(f.test)}</td></tr>"
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def findings_metrics(findings: Sequence[Finding]) -> dict[str, float]:
    """``finding/<n>_shown``: 1.0 shown, 0.0 not shown; a finding not measured has none."""
    return {
        f"finding/{f.number}_shown": 1.0 if f.verdict == SHOWN else 0.0
        for f in findings
        if f.verdict != NOT_MEASURED
    }


def log_findings(client, run_id: str, findings: Sequence[Finding]) -> None:
    """Put the verdicts on an MLflow run: the metrics of :func:`findings_metrics`, a tag
    ``finding/<n>`` = verdict per finding, and ``findings/shown`` = ``"k of m measured"``."""
    for key, value in findings_metrics(findings).items():
        client.log_metric(run_id, key, value)
    for f in findings:
        client.set_tag(run_id, f"finding/{f.number}", f.verdict)
    measured = [f for f in findings if f.verdict != NOT_MEASURED]
    shown = sum(f.verdict == SHOWN for f in measured)
    client.set_tag(run_id, "findings/shown", f"{shown} of {len(measured)} measured")
