"""The weekly review as Markdown (to paste into a pull request) and as one self-contained HTML page.

The HTML has its CSS inline and its charts as inline SVG: no script, no link, no image, nothing fetched.
On the approval page the same body is served with the stylesheet linked instead (the page's CSP allows no
inline style). Every name, reason and label is escaped (``charts.esc`` in HTML, ``md`` in Markdown).
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

from mcp_gatekeeper.calibrate.suggest import Suggestion, evidence_line
from mcp_gatekeeper.reports import OUTCOMES
from mcp_gatekeeper.review.charts import esc, histogram, stacked_columns, stacked_rows, visible
from mcp_gatekeeper.review.weekly import RATES, WeeklyReview, masked_toml

CSS_FILE = Path(__file__).resolve().parent.parent / "static" / "review.css"
"""The report's stylesheet: inlined in the file, linked from the page (``/static/review.css``)."""
SUGGESTIONS_MISSING = "Calibration suggestions were not computed for this report (no config at hand)."
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def md(text: object) -> str:
    """Text for a Markdown table cell or line: invisible characters shown, Markdown and HTML neutralised."""
    s = visible(str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def visible_lines(text: str) -> str:
    """Multi-line text with each line's invisible characters shown (the newlines kept)."""
    return "\n".join(visible(line) for line in text.split("\n"))


def esc_block(text: str) -> str:
    """Multi-line text for a ``<pre>``: escaped, invisible characters shown, the newlines kept."""
    return html.escape(visible_lines(text), quote=True)


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.0f}%"


def _secs(x: float | None) -> str:
    if x is None:
        return "–"
    if x < 90:
        return f"{x:.1f} s"
    if x < 5400:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def _headline(r: WeeklyReview) -> list[tuple[str, str]]:
    v, t = r.volume, r.time_to_decision
    return [
        ("Calls", str(v["total"])),
        ("Ran without a person", str(v["allowed"])),
        ("Denied by policy", str(v["denied"])),
        ("Held for a person", str(v["held"])),
        ("Audit-gated (ran, then reviewed)", str(v["audit"])),
        ("Human decisions", str(r.decisions)),
        ("Timed out", str(r.held.get("expired", 0))),
        ("Escalated calls", str(r.escalations.get("calls", 0))),
        ("Median time to decide", _secs(t.get("median"))),
        ("90th percentile", _secs(t.get("p90"))),
    ]


# ---------------------------------------------------------------------------------------------- Markdown


def markdown(r: WeeklyReview) -> str:
    out = [
        "## Weekly gate review",
        "",
        f"{_when(r.since)} to {_when(r.until)}",
        "",
        "| | |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in _headline(r)),
        "",
        "### Per rule",
        "",
    ]
    if r.rules:
        out += [
            "| Rule | Held | Approved | Modified | Rejected | Timed out | Escalated |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r.rules:
            cells = [f"{row.counts[o]} ({_pct(row.rate(o))})" for o in RATES]
            out.append(f"| {md(row.rule)} | {sum(row.counts.values())} | {' | '.join(cells)} | {row.escalated} |")
    else:
        out.append("No call was held in this period.")
    out += ["", "### Busiest tools", ""]
    if r.tools:
        out += ["| Tool | Calls | Held | Ran without a person | Denied |", "|---|---:|---:|---:|---:|"]
        for u in r.tools:
            out.append(
                f"| {md(u['upstream'])} / {md(u['tool'])} | {u['total']} | {u['held'] or 0} | {u['allowed'] or 0}"
                f" | {u['denied'] or 0} |"
            )
    else:
        out.append("No call in this period.")
    out += ["", "### Escalations", ""]
    e = r.escalations
    out.append(
        f"{e.get('events', 0)} escalation step(s) fired on {e.get('calls', 0)} call(s)"
        + (f"; deadlines shortened {e['deadline_shortened']} time(s)." if e.get("deadline_shortened") else ".")
    )
    if e.get("calls"):
        ended = ", ".join(f"{n} {o}" for o, n in e["outcomes"].items() if n)
        out.append(f"Escalated calls ended: {ended}.")
    out += ["", "### Reviewer fatigue", ""]
    t = r.thresholds
    out.append(
        f"Flags: ≥ {_pct(t.fast_share)} of decisions in under {t.fast_seconds:g} s, ≥ {t.approval_run} approvals"
        f" in a row, ≥ {t.per_hour} decisions in one hour."
    )
    out.append("")
    if r.reviewers:
        out += [
            "| Reviewer | Decisions | Rejected | Fast | Longest approval run | Per hour (mean / peak) | Median | Channels | Flags |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for f in r.reviewers:
            out.append(
                f"| {md(f.reviewer)} | {f.decisions} | {f.rejections} | {f.fast} | {f.longest_approval_run} |"
                f" {f.per_active_hour:.1f} / {f.peak_hour} | {_secs(f.median_seconds)} | {md(', '.join(f.channels))} |"
                f" {'**' + md('; '.join(f.flags)) + '**' if f.flags else 'none'} |"
            )
    else:
        out.append("No human decision in this period.")
    out += ["", "### Latest rejections", ""]
    if r.rejections:
        for x in r.rejections:
            out.append(
                f"- {_when(x['decided_at'])}: {md(x['upstream'])} / {md(x['tool'])} ({md(x['rule'] or 'defaults')}),"
                f" by {md(x['reviewer'])}: {md(x['reason']) if x['reason'] else 'no reason given'}"
            )
    else:
        out.append("None.")
    out += ["", "### Rules that never or always reject", ""]
    out += _hint_lines(r, markdown=True)
    out += ["", "### Calibration suggestions", ""]
    out += _suggestion_lines(r, markdown=True)
    out.append("")
    return "\n".join(out)


def _hint_lines(r: WeeklyReview, *, markdown: bool) -> list[str]:
    q = md if markdown else esc
    lines = []
    for h in r.never_rejected:
        lines.append(f"- {q(h['rule'])}: {h['decisions']} decisions, none rejected or edited (a candidate to relax)")
    for h in r.always_rejected:
        lines.append(f"- {q(h['rule'])}: all {h['decisions']} decisions rejected (a candidate for deny)")
    for h in r.timeouts:
        lines.append(
            f"- {q(h['rule'])}: {h['expired']} of {h['finished']} held calls timed out ({_pct(h['timeout_rate'])});"
            " its timeout or its reviewers are off"
        )
    return lines or ["- none"]


NO_SUGGESTION = "No suggestion: the evidence of this period does not call for a change."


def _evidence(s: Suggestion) -> str:
    rp = s.replay
    return (
        f"{evidence_line(s.evidence)}; replay of the period with it: {rp.changed} of {rp.replayed} call(s) would"
        f" change, {len(rp.against_humans)} that a human rejected would run"
    )


def _fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in ``text`` (so the text cannot close it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _suggestion_md(s: Suggestion) -> list[str]:
    toml = visible_lines(masked_toml(s.toml))
    fence = _fence(toml)
    return [
        f"- **{md(s.title)}** ({md(s.placement)}): {md(_evidence(s))}",
        "",
        f"  {fence}toml",
        *(f"  {line}" for line in toml.splitlines()),
        f"  {fence}",
    ]


def _suggestion_lines(r: WeeklyReview, *, markdown: bool) -> list[str]:
    if r.suggestions is None:
        return [SUGGESTIONS_MISSING if markdown else esc(SUGGESTIONS_MISSING)]
    if not r.suggestions:
        return [NO_SUGGESTION]
    if markdown:
        return [line for s in r.suggestions for line in _suggestion_md(s)]
    return [
        f"- <strong>{esc(s.title)}</strong> ({esc(s.placement)}): {esc(_evidence(s))}"
        f"<pre><code>{esc_block(masked_toml(s.toml))}</code></pre>"
        for s in r.suggestions
    ]


# ---------------------------------------------------------------------------------------------- HTML


def html_body(r: WeeklyReview) -> str:
    """The report's ``<main>``: the same for the file and the page."""
    parts = [
        '<main class="review">',
        "<h1>Weekly gate review</h1>",
        f'<p class="period">{esc(_when(r.since))} to {esc(_when(r.until))}</p>',
        '<dl class="figures">',
        *(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in _headline(r)),
        "</dl>",
        "<h2>Held calls per day</h2>",
        stacked_columns(
            "Held calls per day, by outcome",
            [(_day(d["start"])[5:], {o: int(d[o]) for o in OUTCOMES}) for d in r.series],
            OUTCOMES,
        ),
        "<h2>Per rule</h2>",
    ]
    if r.rules:
        parts.append(
            stacked_rows("How each rule's held calls ended", [(row.rule, row.counts) for row in r.rules], OUTCOMES)
        )
        parts.append(
            "<table><thead><tr><th>Rule</th><th>Held</th><th>Approved</th><th>Modified</th><th>Rejected</th>"
            "<th>Timed out</th><th>Escalated</th></tr></thead><tbody>"
        )
        for row in r.rules:
            cells = "".join(f"<td>{row.counts[o]} <small>{_pct(row.rate(o))}</small></td>" for o in RATES)
            parts.append(
                f'<tr><th scope="row">{esc(row.rule)}</th><td>{sum(row.counts.values())}</td>{cells}'
                f"<td>{row.escalated}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No call was held in this period.</p>")
    parts.append("<h2>Busiest tools</h2>")
    if r.tools:
        parts.append(
            "<table><thead><tr><th>Tool</th><th>Calls</th><th>Held</th><th>Ran without a person</th><th>Denied</th>"
            "</tr></thead><tbody>"
        )
        for u in r.tools:
            parts.append(
                f'<tr><th scope="row">{esc(u["upstream"])} / {esc(u["tool"])}</th><td>{u["total"]}</td>'
                f"<td>{u['held'] or 0}</td><td>{u['allowed'] or 0}</td><td>{u['denied'] or 0}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No call in this period.</p>")
    e = r.escalations
    parts += [
        "<h2>Escalations</h2>",
        f"<p>{e.get('events', 0)} escalation step(s) fired on {e.get('calls', 0)} call(s).</p>",
        "<h2>Time to decide</h2>",
        histogram("Time to decide", [(b["label"], int(b["count"])) for b in r.time_to_decision.get("histogram", [])]),
        "<h2>Reviewer fatigue</h2>",
    ]
    t = r.thresholds
    parts.append(
        f'<p class="note">Flags: ≥ {_pct(t.fast_share)} of decisions in under {t.fast_seconds:g} s,'
        f" ≥ {t.approval_run} approvals in a row, ≥ {t.per_hour} decisions in one hour.</p>"
    )
    if r.reviewers:
        parts.append(
            "<table><thead><tr><th>Reviewer</th><th>Decisions</th><th>Rejected</th><th>Fast</th>"
            "<th>Longest approval run</th><th>Per hour (mean / peak)</th><th>Median</th><th>Channels</th><th>Flags</th>"
            "</tr></thead><tbody>"
        )
        for f in r.reviewers:
            flags = "".join(f'<span class="flag">{esc(x)}</span>' for x in f.flags) if f.flags else "<span>none</span>"
            row_class = ' class="flagged"' if f.flags else ""
            parts.append(
                f'<tr{row_class}><th scope="row">{esc(f.reviewer)}</th>'
                f"<td>{f.decisions}</td><td>{f.rejections}</td><td>{f.fast}</td><td>{f.longest_approval_run}</td>"
                f"<td>{f.per_active_hour:.1f} / {f.peak_hour}</td><td>{esc(_secs(f.median_seconds))}</td><td>{esc(', '.join(f.channels))}</td>"
                f"<td>{flags}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No human decision in this period.</p>")
    parts.append("<h2>Latest rejections</h2>")
    if r.rejections:
        parts.append("<ul>")
        for x in r.rejections:
            parts.append(
                f"<li>{esc(_when(x['decided_at']))}: {esc(x['upstream'])} / {esc(x['tool'])}"
                f" ({esc(x['rule'] or 'defaults')}), by {esc(x['reviewer'])}:"
                f" {esc(x['reason']) if x['reason'] else 'no reason given'}</li>"
            )
        parts.append("</ul>")
    else:
        parts.append("<p>None.</p>")
    parts += ["<h2>Rules that never or always reject</h2>", "<ul>"]
    parts += [f"<li>{line[2:]}</li>" for line in _hint_lines(r, markdown=False)]
    parts += ["</ul>", '<h2 id="suggestions">Calibration suggestions</h2>']
    lines = _suggestion_lines(r, markdown=False)
    if r.suggestions:
        parts += ["<ul>", *(f"<li>{line[2:]}</li>" for line in lines), "</ul>"]
    else:
        parts += [f"<p>{line}</p>" for line in lines]
    parts.append("</main>")
    return "\n".join(parts)


def html_document(r: WeeklyReview, *, stylesheet_href: str | None = None) -> str:
    """A whole HTML document: the CSS inline (a file that stands alone), or linked for the page's CSP."""
    css = (
        f'<link rel="stylesheet" href="{esc(stylesheet_href)}">'
        if stylesheet_href is not None
        else f"<style>{CSS_FILE.read_text(encoding='utf-8')}</style>"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Weekly gate review {esc(_day(r.since))} to {esc(_day(r.until))}</title>{css}</head>\n<body>\n"
        f"{html_body(r)}\n</body></html>\n"
    )
