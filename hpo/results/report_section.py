"""One section of ``hpo report``'s page: a title over a figure, a table or a note, and how a
list of them becomes the page's HTML.

A section holds exactly one of the three: a plotly figure, an HTML table (already escaped) or
a note saying why the figure cannot be drawn yet. plotly.js is embedded in the first figure
only, so the page opens offline and carries the library once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import plotly.graph_objects as go

#: The height of a figure that does not ask for its own, in pixels.
FIGURE_HEIGHT = 460


@dataclass(frozen=True)
class Section:
    """A titled part of the report.

    Attributes:
        title: The heading; ``Report.figures``, ``tables`` and ``notes`` list sections by it.
        figure: The plotly figure, or None.
        table: An HTML block (escaped by whoever built it), or "".
        note: Why there is neither, or "".
        height: The figure's height in pixels. Default ``FIGURE_HEIGHT``.
        caption: A sentence under the heading, or "".
    """

    title: str
    figure: go.Figure | None = None
    table: str = ""
    note: str = ""
    height: int = FIGURE_HEIGHT
    caption: str = ""


def sections_html(sections: list[Section]) -> str:
    """The sections as HTML, in order, plotly.js embedded once (in the first figure)."""
    parts: list[str] = []
    plotly_js_written = False
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.caption:
            parts.append(f'<p class="caption">{html.escape(section.caption)}</p>')
        if section.figure is not None:
            # Optuna sizes some figures by their number of parameters; let every figure fit
            # the page's width instead, at the height its section asks for.
            section.figure.update_layout(
                height=section.height, width=None, autosize=True, title=None
            )
            if section.figure.layout.margin.t is None:  # the builder chose none
                section.figure.update_layout(margin={"t": 30, "b": 50})
            parts.append(
                section.figure.to_html(
                    full_html=False,
                    include_plotlyjs=not plotly_js_written,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            plotly_js_written = True
        elif section.table:
            parts.append(section.table)
        else:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts.append("</section>")
    return "\n".join(parts)
