"""Getting in, and being put out, through real processes: ``wrap``/``ui`` serve the page, ``login`` prints a
link for it from another terminal, ``sessions --revoke`` ends a session (a real Chromium sees its page end).

The store file is the only thing the processes share; the page is reached over 127.0.0.1 with httpx2 (as
curl would) and with Chromium.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from harness import FEATURE_SERVER, ROOT, StderrWatcher, cli, gatekeeper, gk_env, wrap_params

from mcp_gatekeeper.webauth import reviewer_label

pytestmark = pytest.mark.anyio

LINK = re.compile(r"(http://127\.0\.0\.1:(\d+))/login\?token=[A-Za-z0-9_-]+")
CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _config(tmp_path: Path, port: int = 0) -> Path:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(f'[ui]\nautostart = true\nport = {port}\n[[rules]]\nname = "all"\ntool = "*"\ngate = "allow"\n')
    return cfg


async def _log_in(client: httpx2.AsyncClient, link: str) -> dict[str, str]:
    """Open a login link as a browser would; what its page then sends: the cookie and the page key."""
    r = await client.get(link)
    assert r.status_code == 303, r.text
    key = r.headers["location"].partition("#key=")[2]
    return {"Cookie": r.headers["set-cookie"].split(";")[0], "X-Gatekeeper-Key": key}


async def test_login_prints_a_link_for_the_page_a_wrap_process_serves(home: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (_client, watcher):
            started = await watcher.wait_for(LINK)
            base, port = started.group(1), started.group(2)
            assert "mcp-gatekeeper login" in started.string  # the startup line says how to get a new link

            # the link scrolled away (or went to a client's log): another terminal asks for a fresh one
            _, out, err = await cli(home, "login")
            fresh = LINK.search(out)
            assert fresh is not None and fresh.group(1) == base, out
            assert "works once" in err
            async with httpx2.AsyncClient(base_url=base) as client:
                session = await _log_in(client, out.strip())
                me = await client.get("/api/session", headers=session)
                assert me.status_code == 200 and me.json()["reviewer"] == f"web:{reviewer_label()}"
                again = await client.get(out.strip().removeprefix(base))  # a link works once
                assert again.status_code == 401 and "mcp-gatekeeper login" in again.text

                # `ui` while the page is served: a clear sentence, no traceback
                rc, _, err = await cli(home, "ui", "--port", port, check=False)
                assert rc == 3 and "already served at " + base in err and "mcp-gatekeeper login" in err, err
                assert "Traceback" not in err

                # the session is listed, and ending it from the CLI ends it in the serving process
                _, listing, _ = await cli(home, "sessions")
                (sid,) = re.findall(r"^([0-9a-f]{12})  ", listing, re.M)
                await cli(home, "sessions", "--revoke", sid)
                assert (await client.get("/api/session", headers=session)).status_code == 401

                # the link printed at start-up still opens the page once
                await _log_in(client, started.group(0))
    # nobody serves the page any more: `login` says so, and how to start it
    rc, out, err = await cli(home, "login", check=False)
    assert rc == 3 and out == "" and "mcp-gatekeeper ui" in err


async def test_ui_on_a_port_another_program_holds_says_so(home: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        with anyio.fail_after(30):
            rc, _, err = await cli(home, "ui", "--port", str(port), check=False)
    assert rc == 3 and f"port {port}" in err and "--port" in err and "Traceback" not in err, err


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
@pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)")
async def test_revoking_from_the_cli_ends_a_live_browser_session(home: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    watcher = StderrWatcher()
    argv = [sys.executable, "-m", "mcp_gatekeeper", "ui", "--port", "0", "--config", str(_config(tmp_path))]
    with anyio.fail_after(90):
        async with await anyio.open_process(argv, env=gk_env(home), cwd=str(ROOT), stderr=watcher.file) as ui:
            try:
                await watcher.wait_for(LINK)
                _, link, _ = await cli(home, "login")
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                    try:
                        page = await (await browser.new_context()).new_page()
                        await page.goto(link.strip())
                        await page.wait_for_selector(f"#whoami:has-text('web:{reviewer_label()}')")
                        await page.wait_for_selector("#live.on")
                        await page.goto(page.url.split("#")[0] + "#/sessions")
                        row = await page.wait_for_selector("tr.session-row.current")
                        assert row is not None and "this browser" in (await row.inner_text()).lower()
                        (cookie,) = [c for c in await page.context.cookies() if c["name"].startswith("gk_session_")]
                        stolen = {"Cookie": f"{cookie['name']}={cookie['value']}"}
                        key = await page.evaluate("localStorage.getItem('gk-page-key')")
                        assert key and key not in page.url  # the page took its key out of the URL
                        base = LINK.search(link)
                        assert base is not None
                        async with httpx2.AsyncClient(base_url=base.group(1)) as c:
                            # what a page on another port gets from this browser: the cookie, not the key
                            assert (await c.get("/api/calls", headers=stolen)).status_code == 401
                            both = {**stolen, "X-Gatekeeper-Key": key}
                            assert (await c.get("/api/calls", headers=both)).status_code == 200

                        await cli(home, "sessions", "--all")
                        # the page learns it at once over its live stream, and asks for a new login
                        await page.wait_for_selector(".login-box >> text=This session has ended")
                        assert "mcp-gatekeeper login" in await page.inner_text(".login-box")
                        # and what the browser still holds opens nothing, replayed from a script
                        async with httpx2.AsyncClient(base_url=base.group(1)) as c:
                            assert (await c.get("/api/calls", headers=both)).status_code == 401
                    finally:
                        await browser.close()
            finally:
                ui.terminate()
                watcher.close()


async def test_a_cookie_from_one_page_is_refused_by_another_ports_page(home: Path, tmp_path: Path) -> None:
    """Two gatekeeper pages on one machine share the database; a cookie (sent by the browser to every port,
    or replayed from a script with forged headers) opens only the page it was issued by."""
    cfg = _config(tmp_path)
    argv = [sys.executable, "-m", "mcp_gatekeeper", "ui", "--port", "0", "--config", str(cfg)]
    watchers = [StderrWatcher(), StderrWatcher()]
    with anyio.fail_after(60):
        async with (
            await anyio.open_process(argv, env=gk_env(home), cwd=str(ROOT), stderr=watchers[0].file) as first,
            await anyio.open_process(argv, env=gk_env(home), cwd=str(ROOT), stderr=watchers[1].file) as second,
        ):
            try:
                links = [(await w.wait_for(LINK)) for w in watchers]
                (a, a_port), (b, b_port) = [(m.group(1), m.group(2)) for m in links]
                assert a_port != b_port
                async with httpx2.AsyncClient(base_url=a) as at_a, httpx2.AsyncClient(base_url=b) as at_b:
                    session = await _log_in(at_a, links[0].group(0))
                    value = session["Cookie"].partition("=")[2]
                    assert (await at_a.get("/api/session", headers=session)).status_code == 200
                    for name in (f"gk_session_{a_port}", f"gk_session_{b_port}"):  # even with the page key
                        forged = {**session, "Cookie": f"{name}={value}", "Origin": b, "Sec-Fetch-Site": "same-origin"}
                        assert (await at_b.get("/api/session", headers=forged)).status_code == 401, name
                        r = await at_b.post("/api/logout", headers=forged, json={})
                        assert r.status_code == 401, name
                    # and the page on the other port still has its own one-time link
                    own = await _log_in(at_b, links[1].group(0))
                    assert (await at_b.get("/api/session", headers=own)).status_code == 200
            finally:
                for proc in (first, second):
                    proc.terminate()
                for w in watchers:
                    w.close()
