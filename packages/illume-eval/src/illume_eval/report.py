"""Self-contained HTML reports: image grids with verdicts, metric tables and curves.

Images are embedded as PNG data URIs and curves drawn as inline SVG, so a report is one file that
opens anywhere, needs no plotting library, and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from illume_core import atomic_write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 150px; font-size: 0.78em; border: 2px solid #ccc; border-radius: 4px; padding: 4px; }
.card.ok { border-color: #3a3; } .card.bad { border-color: #c33; }
.card img { width: 142px; height: 142px; image-rendering: pixelated; display: block; }
.verdict { font-weight: bold; } .ok .verdict { color: #282; } .bad .verdict { color: #b22; }
.note { color: #666; }
"""


def image_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Card:
    """One image of a grid. `verdict` True/False colours the card; None leaves it neutral."""

    images: Sequence[Image.Image]
    title: str
    verdict: bool | None = None
    note: str = ""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return html.escape(str(value))


def svg_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    width: int = 520,
    height: int = 240,
    ylabel: str = "",
) -> str:
    """Line chart of named (x, y) series as inline SVG."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return "<p class='note'>no data</p>"
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)
    left, right, top, bottom = 56, 12, 12, 28

    def sx(x):
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(y):
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * (height - top - bottom)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]
    parts = [
        f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg' style='background:#fff'>"
    ]
    parts.append(
        f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' fill='none' stroke='#999'/>"
    )
    for frac in (0, 0.5, 1):
        y = y_lo + frac * (y_hi - y_lo)
        parts.append(
            f"<text x='{left - 4}' y='{sy(y) + 4:.1f}' font-size='10' text-anchor='end'>{y:.3g}</text>"
        )
    for frac in (0, 0.5, 1):
        x = x_lo + frac * (x_hi - x_lo)
        parts.append(
            f"<text x='{sx(x):.1f}' y='{height - 10}' font-size='10' text-anchor='middle'>{x:.4g}</text>"
        )
    if ylabel:
        parts.append(f"<text x='12' y='{top + 10}' font-size='10'>{html.escape(ylabel)}</text>")
    for i, (name, s) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if math.isfinite(y))
        parts.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{path}'/>"
        )
        parts.append(
            f"<text x='{width - right - 4}' y='{top + 14 + 12 * i}' font-size='11' text-anchor='end' fill='{colour}'>{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


class HtmlReport:
    """Builds a report section by section; `write` saves it atomically."""

    def __init__(self, title: str):
        self.title = title
        self._body: list[str] = []

    def heading(self, text: str) -> HtmlReport:
        self._body.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def paragraph(self, text: str) -> HtmlReport:
        self._body.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(
        self, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None
    ) -> HtmlReport:
        if not rows:
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td class='num'>{_fmt(r.get(c, ''))}</td>"
                if isinstance(r.get(c), (int, float))
                else f"<td>{_fmt(r.get(c, ''))}</td>"
                for c in columns
            )
            + "</tr>"
            for r in rows
        )
        self._body.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def metrics(self, metrics: Mapping[str, object]) -> HtmlReport:
        return self.table([{"metric": k, "value": v} for k, v in metrics.items()])

    def grid(self, cards: Sequence[Card]) -> HtmlReport:
        items = []
        for card in cards:
            cls = "" if card.verdict is None else ("ok" if card.verdict else "bad")
            verdict = (
                ""
                if card.verdict is None
                else f"<div class='verdict'>{'correct' if card.verdict else 'wrong'}</div>"
            )
            imgs = "".join(
                f"<img src='{image_data_uri(im)}' alt='{html.escape(card.title)}'>"
                for im in card.images
            )
            note = f"<div class='note'>{html.escape(card.note)}</div>" if card.note else ""
            items.append(
                f"<div class='card {cls}'>{imgs}<div>{html.escape(card.title)}</div>{verdict}{note}</div>"
            )
        self._body.append(f"<div class='grid'>{''.join(items)}</div>")
        return self

    def curves(
        self, series: Mapping[str, Sequence[tuple[float, float]]], ylabel: str = ""
    ) -> HtmlReport:
        self._body.append(svg_curves(series, ylabel=ylabel))
        return self

    def html(self) -> str:
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self._body)}</body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.html())
