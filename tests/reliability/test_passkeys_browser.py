"""Passkeys in real Chromium (a CDP virtual authenticator), against real processes: ``ui`` serves the page,
``wrap`` holds the call and forwards it to the real feature server.

A reviewer registers a passkey on the page and approves a ``confirm = "passkey"`` call: the upstream receives
it. Then the attacks, each of which must never reach the upstream: approving through the API without a passkey;
an assertion made for one call replayed onto another; an assertion for the arguments shown, sent with other
arguments; and the same two written straight into the database with a valid Ed25519 decision signature (the
local key is in the home), so that only the holder's own re-check of the assertion stands in the way.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from relkit import GK, UI_READY, call_row, db_of, events_of, received, served, text, wrap, write_config
from softauthn import as_response

from mcp_gatekeeper.models import audit_body, audit_hash, canonical_json, digest
from mcp_gatekeeper.signatures import DecisionFacts, DecisionKeys

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.browser,
    pytest.mark.anyio,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package"),
]
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path / "gk.toml",
        f"""
[ui]
autostart = false
port = {port}
public_url = "http://localhost:{port}"
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
confirm = "passkey"
""",
    )


async def _hold(gk: GK, out: list[types.CallToolResult], args: dict[str, Any]) -> None:
    out.append(await gk.client.call_tool("write_note", args))


async def _api(page: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A JSON POST from the page itself (its cookie and page key, as the page's own requests send them)."""
    got: dict[str, Any] = await page.evaluate(
        "async ([path, body]) => { try { return {ok: true, body: await window.GK.api(path, {json: body})}; }"
        " catch (e) { return {ok: false, status: e.status, body: e.body}; } }",
        [path, body],
    )
    return got


def _forge(db: Path, home: Path, call_id: str, *, modified: dict[str, Any] | None, passkey: dict[str, Any]) -> None:
    """What an attacker with the database and the home's signing key (local mode) but no passkey writes: an
    approval with a correctly signed decision and a correctly chained audit event, carrying a borrowed assertion."""
    signer = DecisionKeys.for_home(home).signer()
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        (args_digest,) = conn.execute("SELECT args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()
        (prev,) = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        at = 1_900_000_000.0
        (who,) = conn.execute("SELECT reviewer FROM passkeys LIMIT 1").fetchone()  # the reviewer it impersonates
        to_run = args_digest if modified is None else digest(modified)
        seal = signer.seal(DecisionFacts(call_id, "approved", to_run, who, "web", at))
        detail: dict[str, Any] = {"passkey": passkey, "signature": seal}
        if modified is not None:
            detail["modified_args_digest"] = to_run
        conn.execute(
            "UPDATE calls SET state = 'approved', decided_at = ?, decided_by = ?, channel = 'web', decision_sig = ?,"
            " modified_arguments = ? WHERE id = ?",
            (at, who, canonical_json(seal), None if modified is None else canonical_json(modified), call_id),
        )
        body = audit_body(at=at, call_id=call_id, event="approved", actor=who, channel="web", args_digest=args_digest,
                          detail=detail)  # fmt: skip
        conn.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (?, ?, 'approved', ?, 'web', ?, ?, ?, ?)",
            (at, call_id, who, args_digest, canonical_json(detail), prev, audit_hash(prev, body)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_passkey_confirmed_approval_forwards_and_tampered_ones_do_not(home: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    port = _free_port()
    cfg = _config(tmp_path, port)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    first, second, third = ({"path": f"/n/{i}", "content": f"note {i}"} for i in (1, 2, 3))
    with anyio.fail_after(120):
        async with (
            served(home, ["ui", "--port", str(port), "--config", str(cfg)], UI_READY) as ui,
            wrap(home, cfg, "feat", log) as gk,
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            try:
                ctx = await browser.new_context()
                page = await ctx.new_page()
                cdp = await ctx.new_cdp_session(page)
                await cdp.send("WebAuthn.enable", {"enableUI": False})
                await cdp.send(
                    "WebAuthn.addVirtualAuthenticator",
                    {"options": {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                                 "hasUserVerification": True, "isUserVerified": True,
                                 "automaticPresenceSimulation": True}},
                )  # fmt: skip
                await page.goto(ui.match.group(1).replace("127.0.0.1", "localhost"))
                await page.wait_for_selector("#whoami:has-text('web:')", state="attached")

                # register a passkey on the page
                await page.click("#passkey-register")
                await page.wait_for_selector("#toast:not([hidden])")
                assert "Passkey registered" in (await page.text_content("#toast") or ""), await page.text_content(
                    "#toast"
                )
                (reviewer, count) = sqlite3.connect(db).execute("SELECT reviewer, COUNT(*) FROM passkeys").fetchone()
                assert count == 1 and reviewer.startswith("web:")

                # approve a passkey-confirmed call from its card: the upstream receives it
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_hold, gk, results, first)
                    cid1 = call_row(db, await gk.watcher.held())["id"]
                    await page.goto(f"http://localhost:{port}/#/call/{cid1}")
                    await page.wait_for_selector(f'.card [title="{cid1}"]')
                    await page.click(".actions .btn.approve")
                    confirm = page.locator(".confirm-approve .confirm-yes")
                    with anyio.move_on_after(2):  # a higher-risk call asks once more
                        await confirm.wait_for()
                        await confirm.click()
                assert not results[0].is_error, text(results[0])
                assert received(log, "write_note") == [first]
                approval = next(e for e in _audit(db, cid1) if e["event"] == "approved")
                stored = json.loads(approval["detail"])["passkey"]
                assert set(stored) == {"credential_id", "authenticator_data", "client_data_json", "signature"}

                async with anyio.create_task_group() as tg:
                    tg.start_soon(_hold, gk, results, second)
                    row2 = call_row(db, await gk.watcher.held())
                    cid2 = row2["id"]
                    # the API without a passkey, and with the first call's assertion: refused by the page
                    r = await _api(page, f"/api/calls/{cid2}/approve", {"args_digest": row2["args_digest"]})
                    assert (r["ok"], r["status"], r["body"]["error"]) == (False, 403, "passkey_refused")
                    replayed = as_response(stored)
                    r = await _api(page, f"/api/calls/{cid2}/approve",
                                   {"args_digest": row2["args_digest"], "passkey": replayed})  # fmt: skip
                    assert (r["ok"], r["status"]) == (False, 403), r
                    # an assertion over the arguments shown, sent with other arguments: refused by the page
                    fresh = await page.evaluate("async ([id]) => await window.GK.passkeyAssertion({id}, null)", [cid2])
                    other = {**second, "content": "rm -rf /"}
                    r = await _api(page, f"/api/calls/{cid2}/approve",
                                   {"args_digest": row2["args_digest"], "arguments": other, "passkey": fresh})  # fmt: skip
                    assert (r["ok"], r["status"]) == (False, 403), r
                    assert call_row(db, cid2)["state"] == "pending"
                    # the same, written into the database with a valid decision signature: the holder refuses
                    _forge(db, home, cid2, modified=other, passkey=_stored(fresh))
                assert results[1].is_error and "passkey" in text(results[1]), text(results[1])
                assert call_row(db, cid2)["state"] == "denied"
                assert events_of(db, cid2)[-1] == "unverified_approval"

                async with anyio.create_task_group() as tg:
                    tg.start_soon(_hold, gk, results, third)
                    cid3 = call_row(db, await gk.watcher.held())["id"]
                    _forge(db, home, cid3, modified=None, passkey=stored)  # the first call's assertion, replayed
                assert results[2].is_error and "passkey" in text(results[2])
                assert call_row(db, cid3)["state"] == "denied"
            finally:
                await browser.close()
    assert received(log, "write_note") == [first]  # only the honest approval ever ran


def _audit(db: Path, call_id: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit WHERE call_id = ? ORDER BY seq", (call_id,))]
    finally:
        conn.close()


def _stored(response: dict[str, Any]) -> dict[str, str]:
    inner = response["response"]
    return {"credential_id": response["id"], "authenticator_data": inner["authenticatorData"],
            "client_data_json": inner["clientDataJSON"], "signature": inner["signature"]}  # fmt: skip
