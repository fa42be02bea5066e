"""An HTML contact sheet of a batch: one row per item with its input, mask, overlay and results side by side.

A single static file with relative links to the pictures next to it, so the output folder can be opened in a
browser, copied or zipped as it is. No scripts, no external resources.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["SheetRow", "write_contact_sheet"]

THUMB_PX: Final = 192  # the longest side of a picture on the sheet, in CSS pixels

_STYLE: Final = f"""
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }}
th {{ background: #eee; position: sticky; top: 0; }}
img {{ max-width: {THUMB_PX}px; max-height: {THUMB_PX}px; image-rendering: pixelated; display: block; }}
.state-succeeded {{ color: #1a7f37; }} .state-failed {{ color: #cf222e; }} .state-canceled {{ color: #777; }}
.meta {{ font-size: 0.85em; color: #555; max-width: 24em; word-break: break-word; }}
"""


@dataclass(frozen=True)
class SheetRow:
    """One item of the sheet; paths are relative to the sheet's folder (None: nothing to show)."""

    index: int
    task_id: str
    state: str
    prompt: str = ""
    input: str | None = None
    mask: str | None = None
    overlays: Sequence[str] = field(default_factory=tuple)
    results: Sequence[str] = field(default_factory=tuple)
    error: str | None = None


def _cell(paths: Sequence[str | None], alt: str) -> str:
    shown = [path for path in paths if path]
    if not shown:
        return "<td>—</td>"
    pictures = "".join(
        f'<a href="{html.escape(path)}"><img src="{html.escape(path)}" alt="{html.escape(alt)}" loading="lazy"></a>'
        for path in shown
    )
    return f"<td>{pictures}</td>"


def write_contact_sheet(path: Path, title: str, rows: Sequence[SheetRow]) -> Path:
    """Write the sheet to `path` (an .html file); returns it."""
    body = []
    for row in rows:
        meta = html.escape(row.prompt)
        if row.error:
            meta += f'<br><span class="state-failed">{html.escape(row.error)}</span>'
        body.append(
            "<tr>"
            f"<td>{row.index}</td>"
            f'<td><code>{html.escape(row.task_id)}</code><br><span class="state-{html.escape(row.state)}">'
            f"{html.escape(row.state)}</span></td>"
            f'<td class="meta">{meta}</td>'
            + _cell([row.input], "input")
            + _cell([row.mask], "mask")
            + _cell(list(row.overlays), "overlay")
            + _cell(list(row.results), "result")
            + "</tr>"
        )
    document = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        "<table><thead><tr><th>#</th><th>task</th><th>prompt</th><th>input</th><th>mask</th><th>overlay</th>"
        "<th>result</th></tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
