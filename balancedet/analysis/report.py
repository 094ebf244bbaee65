"""``analysis.json`` (every number) and ``report.html`` (one self-contained page, images embedded)."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Section", "jsonable", "write_html", "write_json"]


@dataclass
class Section:
    """One part of the report: an ``<h2>`` title, paragraphs, an optional table (first row = header)
    and the PNG files to embed."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (JSON has neither) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(analysis: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(jsonable(analysis), indent=1, allow_nan=False))


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "img{max-width:100%;display:block;margin:0.5em 0}table{border-collapse:collapse;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f0f0f0}"
    "section{border-top:1px solid #ddd;margin-top:1.5em}"
)


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def write_html(title: str, intro: list[str], sections: list[Section], path: Path) -> None:
    """A page with ``title``, the ``intro`` paragraphs, and each section with its PNGs inlined as base64."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(p)}</p>" for p in intro),
    ]
    for section in sections:
        parts.append(f'<section id="{html.escape(section.key)}"><h2>{html.escape(section.title)}</h2>')
        parts.extend(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
        parts.append(_table(section.table))
        parts.extend(_image(image) for image in section.images)
        parts.append("</section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
