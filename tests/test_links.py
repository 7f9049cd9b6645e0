"""Signed short links: every notification carries one; a valid one only points the browser at a call's card
(a login is still needed, and the card opens after it); a forged or edited one is refused."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import parse_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.links import Links, link_key
from mcp_gatekeeper.models import CallRecord, NewCall, State
from mcp_gatekeeper.notify import Notifications, StderrChannel, WebhookSender
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.sealing import load_or_create_key
from mcp_gatekeeper.serve import short_links
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app
from mcp_gatekeeper.webauth import load_or_create_token, mint_login_url

pytestmark = pytest.mark.anyio

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


def test_a_link_binds_the_whole_call_id_and_needs_the_key(tmp_path: Path) -> None:
    links = Links(link_key(load_or_create_key(tmp_path)), "https://gk.example.com/")
    call = "0123456789abcdef0123456789"
    url = links.url(call)
    assert url.startswith("https://gk.example.com/c/0123456789ab.") and len(url) < 60
    short, mac = Links.parse(links.token(call)) or ("", "")
    assert short == call[:12] and links.verify(call, mac)
    # same short id, another call: the MAC says no (it binds the whole id, not the prefix)
    assert not links.verify("0123456789ab" + "f" * 14, mac)
    # another home's key makes other links
    other = Links(link_key(load_or_create_key(tmp_path / "other")), "https://gk.example.com")
    assert other.token(call) != links.token(call)
    # the home's sealing key is not used as is: a link's MAC is not a requestState seal
    assert link_key(load_or_create_key(tmp_path)) != load_or_create_key(tmp_path)
    for bad in ("", "0123456789ab", "0123456789ab.", "0123456789AB." + mac, "0123456789ab." + mac + "x", "../x.y"):
        assert Links.parse(bad) is None


def test_the_base_is_the_configured_public_address_or_the_page(tmp_path: Path) -> None:
    assert short_links(parse_config("[ui]\nport = 9000\n"), tmp_path).base_url == "http://127.0.0.1:9000"
    cfg = parse_config('[ui]\npublic_url = "https://gk.example.com/"\n')
    assert short_links(cfg, tmp_path).url("a" * 26).startswith("https://gk.example.com/c/aaaaaaaaaaaa.")


@dataclass
class Page:
    store: Store
    gate: Gate
    links: Links
    web: httpx2.AsyncClient

    async def held(self, **kw: str) -> CallRecord:
        return await self.gate.start_hold(
            NewCall(upstream="ops", tool="deploy", arguments={"env": "prod", **kw}, gate="hard", risk="high"),
            timeout=600,
        )


@asynccontextmanager
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    clock = SystemClock()
    home = tmp_path / "home"
    token = load_or_create_token(home)
    config = parse_config("[ui]\nautostart = false\n")
    links = short_links(config, home)
    async with Store.open(home / "gk.db", clock) as store:
        await store.register_instance("t")
        gate = Gate(store, Policy(config), clock, sweep_interval=None)
        app = build_app(store=store, gate=gate, policy=gate.policy, token=token, port=PORT, clock=clock, links=links)
        async with gate.running(), httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE) as web:
            yield Page(store, gate, links, web)


async def test_a_valid_link_points_at_the_card_and_opens_nothing(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        rec = await p.held()
        path = p.links.url(rec.id).removeprefix(BASE)
        went = await p.web.get(path)
        assert went.status_code == 303 and went.headers["location"] == f"/#/call/{rec.id}"
        cookies = went.headers.get_list("set-cookie")
        assert cookies == [f"gk_next_{PORT}={rec.id}; Path=/login; HttpOnly; SameSite=Lax; Max-Age=900"]
        # the link authenticates nothing: with what it set (and nothing else) the API still says 401
        for url in ("/api/calls", f"/api/calls/{rec.id}", "/api/session"):
            assert (await p.web.get(url, headers={"cookie": cookies[0].split(";")[0]})).status_code == 401
        approve = await p.web.post(
            f"/api/calls/{rec.id}/approve",
            headers={"cookie": cookies[0].split(";")[0], "origin": BASE, "sec-fetch-site": "same-origin"},
            json={"args_digest": rec.args_digest},
        )
        assert approve.status_code == 401
        assert (await p.store.get(rec.id)).state == State.PENDING
        # after a login, the page is sent to that call's card
        login = await mint_login_url(p.store, BASE)
        signed_in = await p.web.get(login.removeprefix(BASE), headers={"cookie": cookies[0].split(";")[0]})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"].endswith(f"&call={rec.id}")
        assert any(c.startswith(f"gk_next_{PORT}=;") for c in signed_in.headers.get_list("set-cookie"))


async def test_forged_and_edited_links_are_refused(tmp_path: Path) -> None:
    async with page(tmp_path) as p:
        a, b = await p.held(n="1"), await p.held(n="2")
        good = p.links.token(a.id)
        short, mac = good.split(".")
        forged = Links(b"\x00" * 32, BASE).token(a.id)
        for token in (
            forged,  # made without the home's key
            f"{b.id[:12]}.{mac}",  # a's MAC on b's id
            f"{short}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # one character changed
            f"{short[:-1]}0.{mac}" if short[-1] != "0" else f"{short[:-1]}1.{mac}",
            f"{a.id}.{mac}",  # the whole id: not the link's shape
            f"{short}",
        ):
            refused = await p.web.get(f"/c/{token}")
            assert refused.status_code == 404, token
            assert "set-cookie" not in refused.headers
        assert (await p.web.get(f"/c/{good}")).status_code == 303


async def test_every_notification_carries_the_link(tmp_path: Path) -> None:
    links = Links(link_key(load_or_create_key(tmp_path)), BASE)
    stream = io.StringIO()
    got: list[bytes] = []

    def hook(request: httpx2.Request) -> httpx2.Response:
        got.append(request.content)
        return httpx2.Response(200)

    cfg = parse_config('[[notify.webhooks]]\nname = "hook"\nurl = "http://127.0.0.1:9/hook"\nformat = "slack"\n')
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(hook)) as http:
        notes = Notifications(
            [StderrChannel(stream, command="mcp-gatekeeper"), WebhookSender(cfg.notify.webhooks[0], http)],
            card_url=links,
        )
        async with Store.open(tmp_path / "gk.db", SystemClock()) as store:
            rec = await store.insert_call(
                NewCall(upstream="ops", tool="deploy", arguments={}, gate="hard", risk="high"), state=State.PENDING
            )
            with anyio.fail_after(5):
                await notes.held(rec)
    assert links.url(rec.id) in stream.getvalue()
    assert links.url(rec.id).encode() in got[0]


async def test_behind_a_reverse_proxy_the_public_host_and_origin_are_accepted_and_no_other(tmp_path: Path) -> None:
    clock = SystemClock()
    home = tmp_path / "home"
    token = load_or_create_token(home)
    config = parse_config('[ui]\nautostart = false\npublic_url = "https://gk.example.com"\n')
    async with Store.open(home / "gk.db", clock) as store:
        await store.register_instance("t")
        gate = Gate(store, Policy(config), clock, sweep_interval=None)
        app = build_app(store=store, gate=gate, policy=gate.policy, token=token, port=PORT, clock=clock)
        async with (
            gate.running(),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="https://gk.example.com") as web,
        ):
            login = (await mint_login_url(store, "https://gk.example.com")).removeprefix("https://gk.example.com")
            opened = await web.get(login)
            assert opened.status_code == 303
            key = opened.headers["location"].partition("#key=")[2]
            session = {"cookie": opened.headers["set-cookie"].split(";")[0], "x-gatekeeper-key": key}
            assert (await web.get("/api/session", headers=session)).status_code == 200
            ok = await web.post("/api/logout", headers={**session, "origin": "https://gk.example.com"})
            assert ok.status_code == 200
            for origin in ("https://evil.example", "http://gk.example.com", "https://gk.example.com.evil.example"):
                refused = await web.post("/api/logout", headers={**session, "origin": origin})
                assert refused.status_code in (401, 403), origin
            assert (await web.get("/", headers={"host": "gk.example.com.evil.example"})).status_code == 421
