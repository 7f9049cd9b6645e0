"""A passkey-confirmed quorum in real Chromium (a CDP virtual authenticator per reviewer), against real processes:
``serve`` is the approval service, a ``wrap`` process holds the agent's calls to the real feature server.

Two reviewers each register their own passkey and each confirm their own approval step with it: the call
forwards, once. Then a second call whose second assertion is for other arguments: the service refuses it, and
the same assertion written straight into the database as a correctly signed step of the second reviewer (the
home's key signs in local mode), with a correctly signed decision, is refused by the holder: nothing runs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, call_log, gatekeeper, gk_env, wrap_params

from mcp_gatekeeper.models import audit_body, audit_hash, canonical_json, digest
from mcp_gatekeeper.signatures import DecisionFacts, DecisionKeys, StepFacts

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]  # fmt: skip
SERVING = re.compile(r"approval service: (http://127\.0\.0\.1:\d+)/login")
PASSWORD = "a-long-enough-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, port: int) -> Path:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(
        f"""
[ui]
autostart = false
public_url = "http://localhost:{port}"
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
risk = "medium"
reviewers = ["ops"]
approvals = 2
confirm = "passkey"
"""
    )
    return cfg


def _add(home: Path, cfg: Path, name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gatekeeper", "users", "add", name, "--group", "ops", "--password-stdin",
         "--config", str(cfg)],
        input=PASSWORD + "\n", capture_output=True, text=True, env=gk_env(home), cwd=str(ROOT), check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def _reviewer(browser: Any, base: str, name: str) -> Any:
    """A browser context of its own with its own virtual authenticator, logged in, with a passkey registered."""
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    cdp = await ctx.new_cdp_session(page)
    await cdp.send("WebAuthn.enable", {"enableUI": False})
    await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {"options": {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
                     "isUserVerified": True, "automaticPresenceSimulation": True}},
    )  # fmt: skip
    await page.goto(f"{base}/")
    await page.wait_for_url("**/login")
    await page.fill("#username", name)
    await page.fill("#password", PASSWORD)
    await page.click("#login-btn")
    await page.wait_for_selector(f"#whoami:has-text('{name}')")
    await page.click("#passkey-register")  # the service asks for the password again before registering
    await page.fill("dialog#passkey-proof #passkey-password", PASSWORD)
    await page.click("#passkey-proof-ok")
    await page.wait_for_selector("#toast:has-text('Passkey registered')")
    return page


async def _approve(page: Any, base: str, call_id: str, toast: str) -> None:
    await page.goto(f"{base}/#/call/{call_id}")
    await page.wait_for_selector(f'.card [title="{call_id}"]')
    await page.click(".actions .btn.approve")
    await page.wait_for_selector(f".confirm-approve .confirm-yes, #toast:has-text('{toast}')")
    if await page.locator(".confirm-approve .confirm-yes").count():
        await page.click(".confirm-approve .confirm-yes")
    await page.wait_for_selector(f"#toast:has-text('{toast}')")


async def _api(page: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    got: dict[str, Any] = await page.evaluate(
        "async ([path, body]) => { try { return {ok: true, body: await window.GK.api(path, {json: body})}; }"
        " catch (e) { return {ok: false, status: e.status, body: e.body}; } }",
        [path, body],
    )
    return got


def _stored(response: dict[str, Any]) -> dict[str, str]:
    inner = response["response"]
    return {"credential_id": response["id"], "authenticator_data": inner["authenticatorData"],
            "client_data_json": inner["clientDataJSON"], "signature": inner["signature"]}  # fmt: skip


def _forge_second_step(db: Path, home: Path, call_id: str, passkey: dict[str, str]) -> None:
    """What a writer of the database with the home's key (local mode) but not bob's passkey writes: bob's step,
    signed, carrying his assertion for other arguments; the decision, signed, with its audit event chained."""
    signer = DecisionKeys.for_home(home).signer()
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        (args_digest,) = conn.execute("SELECT args_digest FROM calls WHERE id = ?", (call_id,)).fetchone()
        at = 1_900_000_000.0
        step = signer.seal_step(StepFacts(call_id, args_digest, "bob", 2, 0, at, "web"))
        conn.execute(
            "INSERT INTO call_approvals (call_id, reviewer, proposal_digest, at, round, step, channel, signature,"
            " passkey) VALUES (?, 'bob', ?, ?, 0, 2, 'web', ?, ?)",
            (call_id, args_digest, at, json.dumps(step), json.dumps(passkey)),
        )
        seal = signer.seal(DecisionFacts(call_id, "approved", args_digest, "bob", "web", at))
        conn.execute(
            "UPDATE calls SET state = 'approved', decided_at = ?, decided_by = 'bob', channel = 'web',"
            " decision_sig = ? WHERE id = ?",
            (at, canonical_json(seal), call_id),
        )
        (prev,) = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        detail = {"signature": seal, "evidence": {"approvals": ["alice", "bob"]}}
        body = audit_body(at=at, call_id=call_id, event="approved", actor="bob", channel="web", args_digest=args_digest,
                          detail=detail)  # fmt: skip
        conn.execute(
            "INSERT INTO audit (at, call_id, event, actor, channel, args_digest, detail, prev_hash, hash)"
            " VALUES (?, ?, 'approved', 'bob', 'web', ?, ?, ?, ?)",
            (at, call_id, args_digest, canonical_json(detail), prev, audit_hash(prev, body)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _row(db: Path, call_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM calls WHERE id LIKE ?", (call_id + "%",)).fetchone())
    finally:
        conn.close()


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_two_reviewers_confirm_their_own_steps_with_their_own_passkeys(home: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    port = _free_port()
    cfg = _config(tmp_path, port)
    for name in ("alice", "bob"):
        _add(home, cfg, name)
    db, log = home / "gatekeeper.db", tmp_path / "calls.jsonl"
    first, second = {"path": "/srv/motd", "content": "hello"}, {"path": "/srv/motd", "content": "bye"}
    results: list[types.CallToolResult] = []
    service_err = StderrWatcher()
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    try:
        with anyio.fail_after(180):
            async with (
                await anyio.open_process(
                    [sys.executable, "-m", "mcp_gatekeeper", "serve", "--port", str(port), "--config", str(cfg)],
                    env=gk_env(home), cwd=str(ROOT), stderr=service_err.file,
                ) as service,
                gatekeeper(params) as (client, watcher),
                async_playwright() as pw,
            ):  # fmt: skip
                await service_err.wait_for(SERVING)
                base = f"http://localhost:{port}"
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                try:
                    alice, bob = await _reviewer(browser, base, "alice"), await _reviewer(browser, base, "bob")

                    async def call(arguments: dict[str, Any]) -> None:
                        results.append(await client.call_tool("write_note", arguments))

                    # each confirms their own step with their own passkey: the call forwards, once
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call, first)
                        cid1 = _row(db, await watcher.held())["id"]
                        await _approve(alice, base, cid1, "1 of 2")
                        await _approve(bob, base, cid1, "Approved")
                    assert not results[0].is_error, _text(results[0])
                    steps = (
                        sqlite3.connect(db)
                        .execute(
                            "SELECT reviewer, step, json_extract(passkey, '$.credential_id') FROM call_approvals"
                            " WHERE call_id = ? ORDER BY seq",
                            (cid1,),
                        )
                        .fetchall()
                    )
                    assert [(r, s) for r, s, _ in steps] == [("alice", 1), ("bob", 2)]
                    assert len({c for _, _, c in steps}) == 2 and all(steps[0])  # two different passkeys

                    # the second assertion is for other arguments: refused by the service; forged into the
                    # database as bob's signed step, refused by the holder; nothing runs
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call, second)
                        row2 = _row(db, await watcher.held())
                        cid2 = row2["id"]
                        await _approve(alice, base, cid2, "1 of 2")
                        other = {**second, "content": "rm -rf /"}
                        fresh = await bob.evaluate(
                            "async ([id, args]) => await window.GK.passkeyAssertion({id}, args)", [cid2, other]
                        )
                        r = await _api(bob, f"/api/calls/{cid2}/approve",
                                       {"args_digest": row2["args_digest"], "passkey": fresh})  # fmt: skip
                        assert (r["ok"], r["status"], r["body"]["error"]) == (False, 403, "passkey_refused"), r
                        assert _row(db, cid2)["state"] == "pending"
                        assert digest(other) != row2["args_digest"]
                        _forge_second_step(db, home, cid2, _stored(fresh))
                    assert results[1].is_error and "each with their own passkey" in _text(results[1]), _text(results[1])
                    assert _row(db, cid2)["state"] == "denied"
                finally:
                    await browser.close()
                service.terminate()
    finally:
        service_err.close()
    assert [c["arguments"] for c in call_log(log) if c["tool"] == "write_note"] == [first]  # once, and only it
