"""F2/F3/F4 and B6 against the approval page served for real by ``mcp-gatekeeper ui --port 0``.

A real ``wrap`` process holds a call; the page is another process on the same database. Attacks come from
Chromium (a logged-in victim visiting a cross-site page, a same-site page on another local port, a DNS-rebound
name) and from a plain socket with a bad Host. After every attack the call must still be pending in the store
and the upstream must have received nothing.
"""

from __future__ import annotations

import importlib.util
import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp.types as types
import pytest
from relkit import (
    GK,
    UI_READY,
    Served,
    call_row,
    db_of,
    events_of,
    received,
    served,
    text,
    wrap,
    write_config,
)

from mcp_gatekeeper.models import digest

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP evil.test 127.0.0.1",  # the attacker's DNS: evil.test resolves to us
]

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

CONFIG = """
[ui]
autostart = false
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
"""
NOTE = {"path": "/w/1", "content": "from the agent"}


@dataclass
class Scene:
    """The page process, the holding process, and one held call."""

    ui: Served
    gk: GK
    db: Path
    log: Path
    call_id: str
    args_digest: str
    token: str
    results: list[types.CallToolResult]

    @property
    def port(self) -> int:
        return int(self.ui.match.group(2))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def login(self) -> str:
        return self.ui.match.group(1)

    @property
    def approve_url(self) -> str:
        return f"{self.base}/api/calls/{self.call_id}/approve"

    def untouched(self) -> None:
        """The invariant after an attack: still pending, only 'held' in the audit, nothing reached the upstream."""
        assert call_row(self.db, self.call_id)["state"] == "pending"
        assert events_of(self.db, self.call_id) == ["held"]
        assert received(self.log, "write_note") == []
        assert self.results == []


@asynccontextmanager
async def scene(home: Path, tmp_path: Path) -> AsyncIterator[Scene]:
    cfg = write_config(tmp_path / "gk.toml", CONFIG)
    db, log = db_of(home), tmp_path / "calls.jsonl"
    results: list[types.CallToolResult] = []
    async with (
        served(home, ["ui", "--port", "0", "--config", str(cfg)], UI_READY) as ui,
        wrap(home, cfg, "feat", log) as gk,
        anyio.create_task_group() as tg,
    ):

        async def hold() -> None:
            results.append(await gk.client.call_tool("write_note", NOTE))

        tg.start_soon(hold)
        row = call_row(db, await gk.watcher.held())
        token = (home / "ui-token").read_text().strip()
        s = Scene(ui, gk, db, log, row["id"], row["args_digest"], token, results)
        try:
            yield s
        finally:
            if not results:  # end the hold so the client call returns (a decision of record, by the human)
                async with httpx2.AsyncClient(base_url=s.base) as http:
                    await http.post(
                        f"/api/calls/{s.call_id}/reject",
                        json={"reason": "test over"},
                        headers={"Authorization": f"Bearer {token}"},
                    )


async def raw_status(port: int, request: bytes) -> int:
    """Send bytes to the page's socket; the HTTP status of the answer (a client that sets any Host it likes)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive()
            data += chunk
    return int(data.split(b" ", 2)[1])


def raw_post(path: str, host: str | None, token: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1"]
    if host is not None:
        head.append(f"Host: {host}")
    head += [
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def test_f3_bad_host_is_refused_even_with_the_token(home: Path, tmp_path: Path) -> None:
    with anyio.fail_after(40):
        async with scene(home, tmp_path) as s:
            path = f"/api/calls/{s.call_id}/approve"
            body = {"args_digest": s.args_digest}
            for host in (f"evil.test:{s.port}", "evil.test", f"127.0.0.1.evil.com:{s.port}", "127.0.0.1", ""):
                status = await raw_status(s.port, raw_post(path, host, s.token, body))
                assert status == 421, (host, status)  # DNS rebinding / bad Host: misdirected, before auth
            status = await raw_status(s.port, raw_post(path, None, s.token, body))
            assert status in (400, 421), status  # no Host at all
            leak = (
                f"GET /api/calls?state=pending HTTP/1.1\r\nHost: evil.test:{s.port}\r\n"
                f"Authorization: Bearer {s.token}\r\nConnection: close\r\n\r\n"
            ).encode()
            assert await raw_status(s.port, leak) == 421  # nor can a rebound name read the queue
            s.untouched()


async def test_b6_stale_digest_is_refused_and_nothing_runs(home: Path, tmp_path: Path) -> None:
    with anyio.fail_after(40):
        async with scene(home, tmp_path) as s, httpx2.AsyncClient(base_url=s.base) as http:
            bearer = {"Authorization": f"Bearer {s.token}"}
            stale = digest({**NOTE, "content": "what the reviewer saw before"})
            r = await http.post(f"/api/calls/{s.call_id}/approve", json={"args_digest": stale}, headers=bearer)
            assert r.status_code == 409 and r.json()["error"] == "stale_digest", r.text
            r = await http.post(f"/api/calls/{s.call_id}/approve", json={}, headers=bearer)
            assert r.status_code == 422 and r.json()["error"] == "digest_required", r.text
            s.untouched()
            # the digest of what is really held approves it: it runs once, and a replay is refused
            r = await http.post(f"/api/calls/{s.call_id}/approve", json={"args_digest": s.args_digest}, headers=bearer)
            assert r.status_code == 200, r.text
            r = await http.post(f"/api/calls/{s.call_id}/approve", json={"args_digest": s.args_digest}, headers=bearer)
            assert r.status_code == 409, r.text
    assert received(s.log, "write_note") == [NOTE]
    assert not s.results[0].is_error and "wrote" in text(s.results[0])
    assert events_of(s.db, s.call_id) == ["held", "approved", "forwarding", "forwarded"]


def attack_page(target: str, args_digest: str) -> bytes:
    """Auto-submits a cross-origin form (text/plain, shaped as JSON) and fires a no-cors fetch, with cookies."""
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input name='{{"args_digest":"{args_digest}","x":"' value='"}}'>
</form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{args_digest: "{args_digest}"}})}})
  .finally(() => document.getElementById("f").submit());
</script></body></html>""".encode()


async def serve_pages(listener: anyio.abc.SocketListener, pages: dict[str, bytes]) -> None:
    """A tiny web server for the attacker's pages (any Host: it is evil.test and 127.0.0.1 at once)."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive()
                if not chunk:
                    return
                data += chunk
            body = pages.get(data.split(b" ", 2)[1].decode(), b"not found")
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            await stream.send(head.encode() + body)

    await listener.serve(handle)


# as the page's own script sends it: the cookie, and the page key this origin keeps in localStorage
FETCH_APPROVE = """async ([url, digest]) => (await fetch(url, {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json", "X-Gatekeeper-Key": localStorage.getItem("gk-page-key") || ""},
    body: JSON.stringify({args_digest: digest})})).status"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
@pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)")
async def test_f2_f3_csrf_same_site_and_dns_rebinding_in_chromium(home: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    with anyio.fail_after(60):
        async with scene(home, tmp_path) as s, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            try:
                ctx = await browser.new_context()
                page = await ctx.new_page()
                responses: list[tuple[str, int]] = []
                ctx.on("response", lambda r: responses.append((r.url, r.status)))

                # the human logs in: a session cookie, SameSite=Strict, HttpOnly, host-only
                await page.goto(s.login)
                await page.wait_for_url(f"{s.base}/#/queue")  # the page took its key out of the URL
                (cookie,) = [c for c in await ctx.cookies() if c["name"].startswith("gk_session_")]
                assert (cookie["sameSite"], cookie["httpOnly"], cookie["domain"]) == ("Strict", True, "127.0.0.1")
                assert "token=" not in page.url and "key=" not in page.url

                listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
                other = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio's typed attribute
                async with listener, anyio.create_task_group() as tg:
                    tg.start_soon(serve_pages, listener, {"/attack": attack_page(s.approve_url, s.args_digest)})
                    try:
                        # F2 cross-site: a page on another site, while the victim is logged in
                        await page.goto(f"http://evil.test:{other}/attack")
                        await page.wait_for_url(s.approve_url, timeout=10_000)
                        s.untouched()
                        # F2 same-site: a page on another port of 127.0.0.1 (Sec-Fetch-Site: same-site)
                        await page.goto(f"http://127.0.0.1:{other}/attack")
                        await page.wait_for_url(s.approve_url, timeout=10_000)
                        s.untouched()
                    finally:
                        tg.cancel_scope.cancel()
                posts = [status for url, status in responses if url == s.approve_url]
                assert len(posts) >= 2 and all(st in (401, 403) for st in posts), posts

                # F3 DNS rebinding: evil.test now resolves to the page's own address and port
                rebound = await page.goto(f"http://evil.test:{s.port}/")
                assert rebound is not None and rebound.status == 421
                status = await page.evaluate(
                    FETCH_APPROVE, [f"http://evil.test:{s.port}/api/calls/{s.call_id}/approve", s.args_digest]
                )
                assert status == 421
                s.untouched()

                # control: the real page, same origin, with the same cookie, can decide (the refusals were the guard)
                await page.goto(f"{s.base}/")
                assert await page.evaluate(FETCH_APPROVE, [s.approve_url, s.args_digest]) == 200
            finally:
                await browser.close()
    assert received(s.log, "write_note") == [NOTE]  # once, after the human's own approval
    row = call_row(s.db, s.call_id)
    assert row["state"] == "forwarded" and row["decided_by"].startswith("web:")
    assert not s.results[0].is_error
    # F4 token hygiene: the token file is private, and the token itself was never printed nor stored
    assert stat.S_IMODE((home / "ui-token").stat().st_mode) == 0o600
    assert s.token not in "".join(s.ui.watcher.lines) and s.token not in s.login
    for f in home.glob("gatekeeper.db*"):  # the database and its WAL
        assert s.token.encode() not in f.read_bytes(), f
