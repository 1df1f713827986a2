r"""A self-contained HTML report: headings, tables and figures in one file.

:func:`write_html_report` writes :class:`Section` s of paragraphs, :class:`RawHTML`
snippets, :class:`~lolaray.evaluation.tables.MetricTable` s and plotly figures
(:mod:`~lolaray.evaluation.figures`), with plotly.js inlined once: the page opens offline
(no CDN) and can be logged as a single MLflow artifact. Files are written beside their
target and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from lolaray.evaluation.tables import MetricTable

__all__ = [
    "RawHTML",
    "Section",
    "write_figure_html",
    "write_html_report",
]

# ------------------------------------------------------------------------------ report


class RawHTML(str):
    """A snippet of HTML inserted into a report as is (not escaped)."""


@dataclass
class Section:
    """A report section: a heading and its items, in order.

    Items: a ``str`` (a paragraph, escaped), a :class:`RawHTML` snippet, a
    :class:`MetricTable` (an HTML table captioned with its metric) or a plotly figure.
    """

    heading: str
    items: Sequence[Any] = ()


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
nav ul { columns: 2; }
table.metric-table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
table.metric-table caption { text-align: left; font-weight: 600; padding: .3rem 0; }
table.metric-table th, table.metric-table td { border: 1px solid #ccc; padding: .25rem .6rem; }
table.metric-table th { background: #f4f4f4; }
table.metric-table td.num { text-align: right; }
.figure { margin: 1rem 0; }
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _figure_div(fig: go.Figure, *, div_id: str, include_plotlyjs: bool) -> str:
    height = fig.layout.height or 450
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=include_plotlyjs,
        include_mathjax=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target, then rename: a reader never sees a half-written report.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp creates the file 0600; a report is meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_html_report(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[Section | tuple[str, Sequence[Any]]],
    *,
    description: str | None = None,
) -> Path:
    r"""Writes one self-contained HTML report: a title, a table of contents, then each
    section's heading and items (paragraphs, tables, figures).

    plotly.js is inlined once, before the first figure, and every later figure reuses
    it, so the file opens without network access (no CDN) and stays one artifact.

    Arguments:
        path: The output file (written atomically; parent folders are created).
        title: The report title.
        sections: :class:`Section` objects or ``(heading, items)`` pairs.
        description: An optional introductory paragraph.

    Returns:
        The path written.
    """

    path = Path(path)
    used: set[str] = set()
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if description:
        body.append(f"<p>{html.escape(description)}</p>")

    sections = [s if isinstance(s, Section) else Section(*s) for s in sections]
    anchors = [_slug(s.heading, used) for s in sections]
    if sections:
        links = "".join(
            f'<li><a href="#{a}">{html.escape(s.heading)}</a></li>' for s, a in zip(sections, anchors)
        )
        body.append(f"<nav><ul>{links}</ul></nav>")

    figures = 0
    for section, anchor in zip(sections, anchors):
        body.append(f'<h2 id="{anchor}">{html.escape(section.heading)}</h2>')
        for item in section.items:
            if isinstance(item, go.Figure):
                div = _figure_div(item, div_id=f"figure-{figures}", include_plotlyjs=figures == 0)
                body.append(f'<div class="figure">{div}</div>')
                figures += 1
            elif isinstance(item, MetricTable):
                body.append(item.to_html(caption=item.metric))
            elif isinstance(item, RawHTML):
                body.append(str(item))
            elif isinstance(item, str):
                body.append(f"<p>{html.escape(item)}</p>")
            else:
                raise TypeError(
                    f"section {section.heading!r}: cannot render an item of type {type(item).__name__} "
                    "(expected str, RawHTML, MetricTable or plotly Figure)"
                )

    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    _atomic_write(path, document)
    return path


def write_figure_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Writes one figure as a self-contained HTML file (plotly.js inlined; an MLflow
    figure artifact)."""

    path = Path(path)
    _atomic_write(path, pio.to_html(fig, full_html=True, include_plotlyjs=True, include_mathjax=False))
    return path
