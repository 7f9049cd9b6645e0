"""ntfy-compatible push: the exact request a phone's ntfy server receives (against a stand-in on 127.0.0.1),
with the short link as click target and action, a priority from the risk, and never an argument or a secret."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from standin import StandIn, serving

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.errors import NotifierError
from mcp_gatekeeper.models import CallRecord, NewCall, State
from mcp_gatekeeper.notify import Notifications
from mcp_gatekeeper.push import NtfySender
from mcp_gatekeeper.store import Store

pytestmark = pytest.mark.anyio

SECRET_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"  # a GitHub-token-shaped argument
LINK = "https://gk.example.com/c/0123456789ab.AAAAAAAAAAAAAAAA"


def _config(url: str, token: str | None = None) -> str:
    line = f'token = "{token}"\n' if token else ""
    return f'[[notify.ntfy]]\nname = "phone"\nurl = "{url}"\n{line}'


async def _held(tmp_path: Path, summary: str | None, risk: str = "high") -> CallRecord:
    async with Store.open(tmp_path / "gk.db", SystemClock()) as store:
        return await store.insert_call(
            NewCall(
                upstream="github",
                tool="create_secret",
                arguments={"name": "CI", "value": SECRET_TOKEN},
                gate="hard",
                risk=risk,
                rule="secrets",
                summary=summary,
            ),
            state=State.PENDING,
        )


async def test_the_ntfy_request_is_exact_and_carries_no_argument_or_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NTFY_TOKEN", "tk_stand_in_token")
    rec = await _held(tmp_path, summary=f"Store secret CI = {SECRET_TOKEN}")
    async with serving(StandIn()) as ntfy, httpx2.AsyncClient() as http:
        cfg = parse_config(_config(f"{ntfy.url}/gk-7f3a9c2e", token="${NTFY_TOKEN}"))
        notes = Notifications([NtfySender(cfg.notify.ntfy[0], http)], card_url=lambda _id: LINK)
        with anyio.fail_after(10):
            await notes.held(rec)
            await notes.escalated(rec, [])
    held, escalated = ntfy.requests
    assert (held.method, held.path) == ("POST", "/gk-7f3a9c2e")
    sent = {
        k: v
        for k, v in held.headers.items()
        if k not in ("host", "accept", "accept-encoding", "connection", "user-agent", "content-length")
    }
    assert sent == {
        "content-type": "text/plain; charset=utf-8",
        "title": "Call waiting for approval [high]",
        "priority": "4",
        "tags": "hourglass",
        "click": LINK,
        "actions": f"view, Open card, {LINK}, clear=true",
        "authorization": "Bearer tk_stand_in_token",
    }
    assert held.body.decode() == (
        f"Store secret CI = ⟦GitHub token: hidden⟧\nhigh risk, rule secrets · github/create_secret · call {rec.id[:8]}"
    )
    assert (
        escalated.headers["priority"] == "5" and escalated.headers["title"] == "Call STILL waiting for approval [high]"
    )
    for r in ntfy.requests:
        assert SECRET_TOKEN.encode() not in r.body and SECRET_TOKEN not in str(r.headers)
        assert b"CI" not in r.body.replace(b"secret CI", b"")  # the argument values themselves are not sent


async def test_without_a_summary_the_tool_is_named_and_without_a_token_no_authorization(tmp_path: Path) -> None:
    rec = await _held(tmp_path, summary=None, risk="low")
    async with serving(StandIn()) as ntfy, httpx2.AsyncClient() as http:
        sender = NtfySender(parse_config(_config(f"{ntfy.url}/t")).notify.ntfy[0], http)
        with anyio.fail_after(10):
            await sender.send("held", rec, "ignored", None)
    [r] = ntfy.requests
    assert "authorization" not in r.headers and "click" not in r.headers and "actions" not in r.headers
    assert r.headers["priority"] == "2"
    assert r.body.decode().startswith("create_secret on github\nlow risk")


async def test_a_failing_ntfy_server_is_a_notifier_error_and_never_stops_the_others(tmp_path: Path) -> None:
    rec = await _held(tmp_path, summary="x")
    async with serving(StandIn(script=[(503, {}, b"busy")])) as ntfy, httpx2.AsyncClient() as http:
        sender = NtfySender(parse_config(_config(f"{ntfy.url}/t")).notify.ntfy[0], http)
        with anyio.fail_after(10):
            with pytest.raises(NotifierError):
                await sender.send("held", rec, "x", None)
            ntfy.script.append((500, {}, b""))
            notes = Notifications([sender])
            await notes.held(rec)
    assert notes.failures == 1
