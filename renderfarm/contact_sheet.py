"""An HTML contact sheet of a batch: one row per item with its input, mask, overlay and results side by side.

A single static file with relative links to the pictures next to it, so the output folder can be opened in a
browser, copied or zipped as it is. No scripts, no external resources. A grid's axis values head their own columns
(so rows that differ only by seed or sampler can be told apart), and a two-axis "product" grid is laid out first as
an X/Y table, as the webui's X/Y plot does: the first axis down the rows, the second across the columns. Each
item's task id links to its page on the farm's dashboard (`<farm>/ui/jobs/<task id>`) when the farm's URL is known.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["SheetRow", "axis_label", "write_contact_sheet"]

THUMB_PX: Final = 192  # the longest side of a picture on the sheet, in CSS pixels

_STYLE: Final = f"""
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }}
th {{ background: #eee; position: sticky; top: 0; }}
img {{ max-width: {THUMB_PX}px; max-height: {THUMB_PX}px; image-rendering: pixelated; display: block; }}
.state-succeeded {{ color: #1a7f37; }} .state-failed {{ color: #cf222e; }} .state-canceled {{ color: #777; }}
.meta {{ font-size: 0.85em; color: #555; max-width: 24em; word-break: break-word; }}
.xy th[scope=row], .xy th[scope=col] {{ position: static; }}
h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
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
    axes: Mapping[str, str] = field(default_factory=dict)  # a grid item's value on each axis, as shown
    link: str | None = None  # the job's page on the dashboard


def axis_label(value: object) -> str:
    """An axis value as a header shows it: a picture by its file name, anything else as written."""
    name = getattr(value, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(value)


def _pictures(paths: Sequence[str | None], alt: str) -> str:
    """Thumbnails, each linked to its full-size picture; a dash when there is none."""
    shown = [path for path in paths if path]
    if not shown:
        return "—"
    return "".join(
        f'<a href="{html.escape(path)}"><img src="{html.escape(path)}" alt="{html.escape(alt)}" loading="lazy"></a>'
        for path in shown
    )


def _cell(paths: Sequence[str | None], alt: str) -> str:
    return f"<td>{_pictures(paths, alt)}</td>"


def _task(row: SheetRow) -> str:
    """The task id (linked to the job's dashboard page when known) and its state."""
    task = f"<code>{html.escape(row.task_id)}</code>"
    if row.link:
        task = f'<a href="{html.escape(row.link)}">{task}</a>'
    state = html.escape(row.state)
    return f'{task}<br><span class="state-{state}">{state}</span>'


def _xy_table(rows: Sequence[SheetRow], y_axis: str, x_axis: str) -> str:
    """The two-axis grid as the webui's X/Y plot lays it out: `y_axis` values head the rows, `x_axis` the columns."""
    ys = list(dict.fromkeys(row.axes.get(y_axis, "") for row in rows))
    xs = list(dict.fromkeys(row.axes.get(x_axis, "") for row in rows))
    by_point = {(row.axes.get(y_axis, ""), row.axes.get(x_axis, "")): row for row in rows}
    head = f"<th>{html.escape(y_axis)} \\ {html.escape(x_axis)}</th>" + "".join(
        f'<th scope="col">{html.escape(x)}</th>' for x in xs
    )
    lines = []
    for y in ys:
        cells = []
        for x in xs:
            row = by_point.get((y, x))
            if row is None:
                cells.append("<td>—</td>")
                continue
            cells.append(f"<td>{_pictures(list(row.results), 'result')}{_task(row)}</td>")
        lines.append(f'<tr><th scope="row">{html.escape(y)}</th>' + "".join(cells) + "</tr>")
    return (
        f'<h2>{html.escape(y_axis)} × {html.escape(x_axis)}</h2>\n<table class="xy"><thead><tr>{head}</tr></thead>'
        "<tbody>\n" + "\n".join(lines) + "\n</tbody></table>\n<h2>Every item</h2>\n"
    )


def write_contact_sheet(
    path: Path, title: str, rows: Sequence[SheetRow], *, axes: Sequence[str] = (), xy: bool = False
) -> Path:
    """Write the sheet to `path` (an .html file); returns it. `axes`: the grid's axis names, each a column of
    values; `xy`: lay a two-axis grid out as an X/Y table too (only a "product" grid fills one)."""
    body = []
    for row in rows:
        meta = html.escape(row.prompt)
        if row.error:
            meta += f'<br><span class="state-failed">{html.escape(row.error)}</span>'
        body.append(
            "<tr>"
            f"<td>{row.index}</td>"
            + f"<td>{_task(row)}</td>"
            + "".join(f"<td>{html.escape(row.axes.get(axis, ''))}</td>" for axis in axes)
            + f'<td class="meta">{meta}</td>'
            + _cell([row.input], "input")
            + _cell([row.mask], "mask")
            + _cell(list(row.overlays), "overlay")
            + _cell(list(row.results), "result")
            + "</tr>"
        )
    xy_table = _xy_table(rows, axes[0], axes[1]) if xy and len(axes) == 2 else ""
    axis_headers = "".join(f'<th scope="col">{html.escape(axis)}</th>' for axis in axes)
    document = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        + xy_table
        + "<table><thead><tr><th>#</th><th>task</th>"
        + axis_headers
        + "<th>prompt</th><th>input</th><th>mask</th><th>overlay</th>"
        "<th>result</th></tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
