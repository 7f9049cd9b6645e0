"""Small inline SVG charts for the weekly review: no script, no external reference, every text escaped.

Colours are SVG presentation attributes (never ``style=``), so the charts draw under the approval page's
Content-Security-Policy (``style-src 'self'``) as well as in the self-contained file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

OUTCOME_COLOURS: dict[str, str] = {
    "approved": "#2e7d32",
    "modified": "#1565c0",
    "rejected": "#c62828",
    "expired": "#ef6c00",
    "cancelled": "#757575",
    "pending": "#6a1b9a",
}
LABEL_CHARS = 28
_INVISIBLE = frozenset(
    [*range(0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF]
)


def visible(text: str) -> str:
    """Control, bidi and invisible characters shown as ``\\uXXXX`` (so a name cannot hide or reorder text)."""
    return "".join(
        f"\\u{ord(c):04x}" if ord(c) in _INVISIBLE or 0xE0000 <= ord(c) <= 0xE007F else c
        for c in text.replace("\n", " ")
    )


def esc(text: object) -> str:
    """Text for HTML or SVG: invisible characters made visible, then ``& < > " '`` escaped."""
    return html.escape(visible(str(text)), quote=True)


def _short(text: str, n: int = LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _legend(series: Sequence[str], x: int, y: int) -> list[str]:
    out = []
    for i, name in enumerate(series):
        lx = x + i * 96
        out.append(f'<rect x="{lx}" y="{y}" width="10" height="10" fill="{OUTCOME_COLOURS.get(name, "#999")}"/>')
        out.append(f'<text x="{lx + 14}" y="{y + 9}" font-size="11">{esc(name)}</text>')
    return out


def stacked_rows(title: str, rows: Sequence[tuple[str, dict[str, int]]], series: Sequence[str]) -> str:
    """One horizontal bar per row, split by ``series`` (each bar is the row's share: rates, not volume)."""
    label_w, bar_w, row_h = 190, 400, 22
    height = 44 + row_h * max(1, len(rows))
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {label_w + bar_w + 60} {height}" width="{label_w + bar_w + 60}"'
        f' height="{height}" aria-label="{esc(title)}"><title>{esc(title)}</title>',
        *_legend(series, label_w, 6),
    ]
    for i, (label, counts) in enumerate(rows):
        y = 28 + i * row_h
        total = sum(counts.get(s, 0) for s in series)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end">{esc(_short(label))}</text>'
        )
        x = float(label_w)
        for s in series:
            n = counts.get(s, 0)
            if not n or not total:
                continue
            w = bar_w * n / total
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{OUTCOME_COLOURS.get(s, "#999")}">'
                f"<title>{esc(f'{label}: {n} {s}')}</title></rect>"
            )
            x += w
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 14}" font-size="11">{total}</text>')
    if not rows:
        parts.append(f'<text x="{label_w}" y="42" font-size="12">nothing to draw</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_columns(title: str, columns: Sequence[tuple[str, dict[str, int]]], series: Sequence[str]) -> str:
    """One column per entry (a day), stacked by ``series``, on a shared scale (volume)."""
    col_w, chart_h, top = 56, 160, 28
    width = 40 + col_w * max(1, len(columns))
    peak = max((sum(c.get(s, 0) for s in series) for _, c in columns), default=0) or 1
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {max(width, 600)} {chart_h + top + 24}" width="{max(width, 600)}"'
        f' height="{chart_h + top + 24}" aria-label="{esc(title)}"><title>{esc(title)}</title>',
        *_legend(series, 40, 6),
        f'<text x="4" y="{top + 10}" font-size="10">{peak}</text>',
        f'<line x1="36" y1="{top + chart_h}" x2="{width}" y2="{top + chart_h}" stroke="#888"/>',
    ]
    for i, (label, counts) in enumerate(columns):
        x = 40 + i * col_w
        y = float(top + chart_h)
        for s in series:
            n = counts.get(s, 0)
            if not n:
                continue
            h = chart_h * n / peak
            y -= h
            parts.append(
                f'<rect x="{x + 6}" y="{y:.1f}" width="{col_w - 12}" height="{h:.1f}" fill="{OUTCOME_COLOURS.get(s, "#999")}">'
                f"<title>{esc(f'{label}: {n} {s}')}</title></rect>"
            )
        parts.append(
            f'<text x="{x + col_w / 2:.0f}" y="{top + chart_h + 16}" font-size="10" text-anchor="middle">{esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(title: str, buckets: Sequence[tuple[str, int]], colour: str = "#1565c0") -> str:
    """Vertical bars with their counts (the time-to-decision histogram)."""
    col_w, chart_h, top = 76, 120, 12
    width = 10 + col_w * max(1, len(buckets))
    peak = max((n for _, n in buckets), default=0) or 1
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {chart_h + top + 36}" width="{width}"'
        f' height="{chart_h + top + 36}" aria-label="{esc(title)}"><title>{esc(title)}</title>',
    ]
    for i, (label, n) in enumerate(buckets):
        x = 10 + i * col_w
        h = chart_h * n / peak
        y = top + chart_h - h
        parts.append(f'<rect x="{x + 6}" y="{y:.1f}" width="{col_w - 12}" height="{h:.1f}" fill="{colour}"/>')
        parts.append(f'<text x="{x + col_w / 2:.0f}" y="{y - 2:.1f}" font-size="10" text-anchor="middle">{n}</text>')
        parts.append(
            f'<text x="{x + col_w / 2:.0f}" y="{top + chart_h + 16}" font-size="10" text-anchor="middle">{esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
