"""Small HTML helpers of the dashboard's pages: escaping, the page frame, and formatting of times and numbers.

Pages are built as strings here, escaped at every interpolation (`esc`), so there is no template language to learn
and no build step. The frame's `<main>` is what `dashboard.js` refreshes: it fetches the same address with the
`X-Dashboard-Fragment` header and swaps in the answer, until the fragment says it is final (`data-final`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime

from scheduler.dashboard.access import CSRF_FIELD, Viewer

STATIC = "/ui/static"


def esc(value: object) -> str:
    """`value` as text, escaped for HTML (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def join(parts: Iterable[str]) -> str:
    return "".join(parts)


def csrf_input(viewer: Viewer) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(viewer.csrf)}">'


def post_button(viewer: Viewer, action: str, label: str, name: str) -> str:
    """A form with one button that POSTs to `action` with the page's CSRF token."""
    return (
        f'<form method="post" action="{esc(action)}" class="inline">{csrf_input(viewer)}'
        f'<button type="submit" name="{esc(name)}" data-testid="{esc(name)}">{esc(label)}</button></form>'
    )


def frame(title: str, viewer: Viewer | None, body: str, *, live: bool = False) -> str:
    """A whole page: header with navigation (when signed in), and `body` in `<main>`, refreshed while `live`."""
    nav = ""
    if viewer is not None:
        links = ['<a href="/ui/">Queue</a>']
        if viewer.operator:
            links.append('<a href="/ui/workers">Workers</a>')
        links.append('<a href="/docs">API docs</a>')
        role = " (operator)" if viewer.operator else ""
        nav = (
            f'<nav>{" ".join(links)}<span class="who" data-testid="tenant">{esc(viewer.tenant)}{role}</span>'
            f"{post_button(viewer, '/ui/signout', 'Sign out', 'signout')}</nav>"
        )
    refresh = ' data-refresh-ms="1000"' if live else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · renderfarm</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="{STATIC}/favicon.svg"><link rel="stylesheet" href="{STATIC}/dashboard.css">'
        f'<script src="{STATIC}/dashboard.js" defer></script></head>'
        f'<body><header><a class="brand" href="/ui/">renderfarm</a>{nav}</header>'
        f'<main id="live"{refresh}>{body}</main></body></html>'
    )


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def clock(value: datetime | str | None) -> str:
    """A time as `HH:MM:SS` UTC (with the date when not today), or an en dash."""
    when = parse_time(value) if isinstance(value, str) or value is None else value
    if when is None:
        return "–"
    when = when.astimezone(UTC)
    if when.date() == datetime.now(UTC).date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration in seconds, rounded for people: `0.4 s`, `12 s`, `3 min 5 s`."""
    if value is None:
        return "–"
    if value < 10:
        return f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


def eta(eta_s: float | None, eta_range_s: list[float] | None) -> str:
    """`eta_s` with its range when there is one: `12 s (8 s – 20 s)`."""
    if eta_s is None:
        return "–"
    if eta_range_s:
        return f"{seconds(eta_s)} ({seconds(eta_range_s[0])} – {seconds(eta_range_s[1])})"
    return seconds(eta_s)


def between(start: str | None, end: str | None) -> float | None:
    first, last = parse_time(start), parse_time(end)
    if first is None or last is None:
        return None
    return (last - first).total_seconds()
