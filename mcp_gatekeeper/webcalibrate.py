"""The page's Calibrate view: suggestions with their evidence and replay, and shadow verdicts against what
humans decided. ``GET /api/calibrate?days=30``. Read-only: nothing here changes a rule or a call.

Suggested TOML is shown with secret-looking values masked (an envelope lists values humans approved); the
CLI's ``mcp-gatekeeper suggest --reveal`` prints them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_gatekeeper.calibrate.compare import compare
from mcp_gatekeeper.calibrate.rules_toml import masked
from mcp_gatekeeper.calibrate.suggest import (
    ALLOW_MIN_DECISIONS,
    ALLOW_MIN_UNCHANGED,
    DENY_MIN_DECISIONS,
    TIMEOUT_MIN_HELD,
    TIMEOUT_MIN_RATE,
    suggestions,
)
from mcp_gatekeeper.webhttp import Problem, web_state
from mcp_gatekeeper.webredact import redact

MAX_DAYS = 365


def _masked_toml(text: str) -> tuple[str, bool]:
    """The TOML with secret-looking envelope values masked (judged by the argument's name, as on the card)."""
    shown = masked(
        text, lambda name, value: redact({name: value}, lambda secret: f"masked, {len(secret)} characters")[name]
    )
    return shown, shown != text


async def calibrate(request: Request) -> Response:
    st = web_state(request)
    raw = request.query_params.get("days", "30")
    try:
        days = float(raw)
    except ValueError:
        raise Problem(422, "bad_request", "days must be a number") from None
    if not 0 < days <= MAX_DAYS:
        raise Problem(422, "bad_request", f"days must be between 0 and {MAX_DAYS}")
    now = st.clock.now()
    since = now - days * 86400.0
    policy = st.policy
    found = await suggestions(
        st.store, policy.config, since=since, now=now, own_files=policy.own_files, home_dir=policy.home_dir
    )
    out: list[dict[str, Any]] = []
    for s in found:
        item = s.to_json()
        item["toml"], item["masked"] = _masked_toml(s.toml)
        out.append(item)
    shadow = await compare(st.store, since=since, until=now)
    return JSONResponse(
        {
            "since": since,
            "until": now,
            "days": days,
            "suggestions": out,
            "shadow": shadow.to_json(),
            "thresholds": {
                "allow_min_decisions": ALLOW_MIN_DECISIONS,
                "allow_min_unchanged": ALLOW_MIN_UNCHANGED,
                "deny_min_decisions": DENY_MIN_DECISIONS,
                "timeout_min_held": TIMEOUT_MIN_HELD,
                "timeout_min_rate": TIMEOUT_MIN_RATE,
            },
        }
    )
