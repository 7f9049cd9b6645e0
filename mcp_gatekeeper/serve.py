"""The composition root: opens the store, builds the gate, upstreams, proxy and page, runs them together.

Nothing else in the package wires objects together; the CLI calls into here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2

from mcp_gatekeeper import hostos, names, signatures
from mcp_gatekeeper.calibrate.shadow import shadow_config
from mcp_gatekeeper.clock import Clock, SystemClock
from mcp_gatekeeper.config import GatekeeperConfig, TelemetryConfig, UpstreamConfig, check_store_url, expand_env
from mcp_gatekeeper.errors import ConfigError, UpstreamError
from mcp_gatekeeper.fastlane import FastLane
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.links import Links, link_key
from mcp_gatekeeper.notify import Notifications
from mcp_gatekeeper.ownfiles import OwnFiles
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.principals import DEFAULT_AGENT, AgentTokens, BearerCheck
from mcp_gatekeeper.principals import TOKEN_FILE as AGENT_TOKEN_FILE
from mcp_gatekeeper.proxy import Proxy
from mcp_gatekeeper.push import NtfySender
from mcp_gatekeeper.sealing import KEY_FILE, load_or_create_key
from mcp_gatekeeper.signatures import DecisionKeys
from mcp_gatekeeper.slack.interactions import SlackDesk
from mcp_gatekeeper.slack.notifier import SlackFollower, SlackNotifier
from mcp_gatekeeper.slack.reviewers import AllowList
from mcp_gatekeeper.slack.webapi import SlackWebAPI
from mcp_gatekeeper.store import Store, default_home
from mcp_gatekeeper.telemetry import NO_TELEMETRY, Telemetry
from mcp_gatekeeper.upstream import Upstream
from mcp_gatekeeper.webauth import TOKEN_FILE

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


@dataclass
class Runtime:
    """What every long-running command shares: config, policy, store, gate, clock, home."""

    config: GatekeeperConfig
    policy: Policy
    store: Store
    gate: Gate
    clock: Clock
    home: Path
    links: Links | None = None
    """The notifications' signed short links (the page checks them)."""
    slack: SlackDesk | None = None
    """What the page's Slack endpoint needs, when ``[notify.slack]`` is configured."""


def db_path(home: Path) -> Path:
    return home / "gatekeeper.db"


STORE_ENV = "MCP_GATEKEEPER_STORE"


def store_location(config: GatekeeperConfig, home: Path) -> tuple[str, str]:
    """Where the store is (a SQLite file's path or a ``postgresql://`` URL) and the setting that said so:
    ``$MCP_GATEKEEPER_STORE``, else ``[store] url``, else the data home's file."""
    for key, url in ((STORE_ENV, os.environ.get(STORE_ENV)), ("[store] url", config.store.url)):
        if not url:
            continue
        try:
            check_store_url(url)
        except ValueError as e:
            raise ConfigError([f"{key}: {e}"]) from None
        return (url[len("sqlite://") :], key) if url.lower().startswith("sqlite://") else (url, key)
    return str(db_path(home)), "the data home"


@contextlib.asynccontextmanager
async def open_store(
    config: GatekeeperConfig, home: Path | None = None, clock: Clock | None = None
) -> AsyncIterator[Store]:
    """Only the store, where :func:`store_location` says (for commands that read it and start nothing else:
    ``replay``, ``suggest``); every command opens it here or through :func:`open_runtime`, never by path."""
    location, key = store_location(config, home or default_home())
    async with Store.open(location, clock or SystemClock(), key=key) as store:
        yield store


def describe_location(config: GatekeeperConfig, home: Path) -> str:
    """Where the store is, for people: the file's path, or the URL without its password, and which setting said so."""
    location, key = store_location(config, home)
    if "://" not in location:
        return location if key == "the data home" else f"{location} ({key})"
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(location)
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}" if parts.password else f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return f"{urlunsplit((parts.scheme, netloc, parts.path, '', ''))} ({key})"


def own_files(
    home: Path, config_path: str | os.PathLike[str] | None, agent_token_files: Sequence[str] = ()
) -> OwnFiles:
    """What the built-in ``protect-own-files`` rule guards: the data home, the database and its ``-wal``/``-shm``,
    the token and key files (the HTTP agents' token files too, wherever they are) and the config file, each as
    spelled and as its symlinks resolve; and the folders the user's config file is looked for in, even when
    there is none yet (an agent that wrote one there would set the next start's policy)."""
    db = db_path(home)
    files: list[Path] = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    files += [home / TOKEN_FILE, home / KEY_FILE, home / AGENT_TOKEN_FILE, home / signatures.KEY_FILE]
    files += [Path(f).expanduser() for f in agent_token_files]  # an agent reading one could act as that agent
    if config_path is not None:
        files.append(Path(config_path))

    def spellings(p: Path) -> list[str]:
        return list(dict.fromkeys([os.path.abspath(p), os.path.realpath(p)]))

    dirs = [home, *hostos.config_dirs()]
    return OwnFiles(
        dirs=tuple(dict.fromkeys(s for d in dirs for s in spellings(d))),
        files=tuple(s for f in files for s in spellings(f)),
    )


def decision_keys(config: GatekeeperConfig, home: Path) -> DecisionKeys:
    """What this process signs decisions with and which signatures it trusts (``[team]``; see signatures.py)."""
    team = config.team
    return DecisionKeys.for_home(
        home, signing_key=team.signing_key, decision_keys=team.decision_keys, retired_keys=team.retired_keys
    )


def build_policy(config: GatekeeperConfig, home: Path, config_path: str | os.PathLike[str] | None) -> Policy:
    """The policy with the gatekeeper's own files protected (a loud warning every time that is turned off)."""
    if not config.security.protect_own_files:
        log.warning(
            "[security] protect_own_files = false: tool calls may read or change the gatekeeper's own database,"
            " tokens and config (%s); an agent that reads the ui-token can approve its own calls",
            home,
        )
    agent_files = [a.token_file for a in config.agents if a.token_file is not None]
    if config.team.signing_key is not None:  # a tool call that read it could sign approvals
        agent_files.append(config.team.signing_key)
    return Policy(config, own_files=own_files(home, config_path, agent_files))


def build_shadow(config: GatekeeperConfig, home: Path, config_path: str | os.PathLike[str] | None) -> Policy | None:
    """The shadow policy (rules with ``shadow = true``, or ``[shadow] policy``), or None; fails closed."""
    candidate = shadow_config(config, config_path)
    if candidate is None:
        return None
    agent_files = [a.token_file for a in config.agents if a.token_file is not None]
    return Policy(candidate, own_files=own_files(home, config_path, agent_files))


@contextlib.asynccontextmanager
async def open_runtime(
    config: GatekeeperConfig,
    *,
    home: Path | None = None,
    clock: Clock | None = None,
    label: str = "gatekeeper",
    register: bool = True,
    poll_interval: float = 0.02,
    config_path: str | None = None,
) -> AsyncIterator[Runtime]:
    """Open the store (recovering a dead neighbour's calls), start the gate's watcher and the heartbeat."""
    home = home or default_home()
    clock = clock or SystemClock()
    policy = build_policy(config, home, config_path)
    location, key = store_location(config, home)
    async with Store.open(location, clock, key=key) as store, contextlib.AsyncExitStack() as stack:
        store.fsync_every_call = config.store.fsync_every_call
        if register:
            await store.register_instance(label, config_path)
            recovered = await store.recover_orphans()
            if recovered:
                log.warning("recovered %d call(s) left by a gatekeeper process that died (never executed)", recovered)
        keys = decision_keys(config, home)
        if register:  # made now, not by the first decision (which could come when the disk is full)
            keys.prepare()
        http = await stack.enter_async_context(httpx2.AsyncClient())
        # the long-running processes tell humans about calls; a one-shot command (list, approve, …) does not
        links = short_links(config, home) if register else None
        slack = build_slack(config, http, store) if register else None
        extra: list[Any] = [NtfySender(n, http) for n in config.notify.ntfy]
        # a shared store (team mode) is decided on a page of another home, which cannot check this home's signed
        # links: notifications name the call's card there (``[ui] public_url``) instead
        card = links if key == "the data home" or links is None else config.card_url
        notifier = Notifications.from_config(
            config.notify, http=http, card_url=card, extra=[*extra, slack] if slack else extra
        )
        gate = Gate(
            store,
            policy,
            clock,
            notifier=notifier,
            poll_interval=poll_interval,
            heartbeat_interval=config.heartbeat_interval,
            keys=keys,
        )
        desk = (
            slack_desk(config, slack, gate, links, clock, owner=store.instance_id or label) if slack and links else None
        )
        async with gate.running(), anyio.create_task_group() as tg:
            tg.start_soon(store.run_checkpoints)
            if register:
                tg.start_soon(_heartbeat, store)
            if desk is not None and desk.follower is not None:
                tg.start_soon(desk.follower.run)
            try:
                yield Runtime(
                    config=config, policy=policy, store=store, gate=gate, clock=clock, home=home, links=links,
                    slack=desk,
                )  # fmt: skip
            finally:
                tg.cancel_scope.cancel()


def short_links(config: GatekeeperConfig, home: Path) -> Links:
    """The signed short links of this home, pointing at ``[ui] public_url`` or the page's own address."""
    from mcp_gatekeeper.webauth import page_url

    base = config.ui.public_url or page_url(config.ui.host, config.ui.port)
    return Links(link_key(load_or_create_key(home)), base)


def build_slack(config: GatekeeperConfig, http: httpx2.AsyncClient, store: Store) -> SlackNotifier | None:
    """The Slack channel, when configured (its bot token read now: an unset variable stops the start)."""
    sc = config.notify.slack
    if sc is None:
        return None
    api = SlackWebAPI(http, api_url=sc.api_url, token=expand_env(sc.bot_token), timeout=sc.timeout)
    page_only = frozenset(r.name for r in config.rules if r.name is not None and r.confirm == "passkey")
    return SlackNotifier(sc.name, api, sc.channel, store, page_only=page_only)


def slack_desk(
    config: GatekeeperConfig,
    slack: SlackNotifier,
    gate: Gate,
    links: Links,
    clock: Clock,
    *,
    owner: str,
    poll: float = 1.0,
) -> SlackDesk:
    """The Slack endpoint's parts, and the follower that rewrites messages once their calls are decided."""
    sc = config.notify.slack
    assert sc is not None
    secret = expand_env(sc.signing_secret)
    if not secret.strip():
        raise ConfigError(["notify.slack.signing_secret: empty (set MCP_GATEKEEPER_SLACK_SIGNING_SECRET)"])
    follower = SlackFollower(slack, link=links, clock=clock, owner=owner, poll=poll)
    return SlackDesk(
        signing_secret=secret, reviewers=AllowList(sc.reviewers), api=slack.api,
        channel_name=sc.name, store=gate.store, gate=gate, clock=clock, follower=follower,
    )  # fmt: skip


@contextlib.contextmanager
def telemetry_for(config: TelemetryConfig) -> Iterator[Telemetry]:
    """``[telemetry]``: OpenTelemetry when enabled (imported only then), else nothing at all."""
    if not config.enabled:
        yield NO_TELEMETRY
        return
    try:
        import opentelemetry.sdk  # noqa: F401  # the otel extra (the API alone comes with the MCP SDK)

        from mcp_gatekeeper import otel
    except ImportError as e:
        raise ConfigError(
            [
                "telemetry.enabled: OpenTelemetry is not installed; install the extra:"
                " pip install 'mcp-gatekeeper-proxy[otel]' (or set enabled = false)"
            ]
        ) from e
    with otel.open_telemetry(config) as telemetry:
        yield telemetry


async def _heartbeat(store: Store) -> None:
    while True:
        await anyio.sleep(HEARTBEAT_SECONDS)
        try:
            await store.heartbeat()
            await store.recover_orphans()
        except Exception:  # liveness bookkeeping never stops the proxy
            log.warning("heartbeat failed", exc_info=True)


@contextlib.asynccontextmanager
async def connected_upstreams(
    upstream_configs: dict[str, UpstreamConfig], proxy: Proxy, *, require_all: bool
) -> AsyncIterator[dict[str, Upstream]]:
    """Start and connect every upstream; with ``require_all`` a failure to connect is fatal."""
    async with contextlib.AsyncExitStack() as stack:
        ups: dict[str, Upstream] = {}
        for name, cfg in upstream_configs.items():
            up = Upstream(name, cfg, proxy.hooks())
            ups[name] = await stack.enter_async_context(up.running())
        proxy.upstreams = ups
        errors: list[str] = []

        async def connect(up: Upstream) -> None:
            try:
                await up.connect()
                await proxy.refresh_tools(up)
            except Exception as e:
                errors.append(f"{up.name}: {e}")

        async with anyio.create_task_group() as tg:
            for up in ups.values():
                tg.start_soon(connect, up)
        if errors:
            if require_all or len(errors) == len(ups):
                raise UpstreamError("could not start upstream(s): " + "; ".join(errors))
            for e in errors:
                log.error("upstream unavailable (its tools are not listed until it answers): %s", e)
        yield ups


async def start_ui_if_possible(runtime: Runtime, tg: anyio.abc.TaskGroup, *, force: bool = False) -> int | None:
    """Serve the approval page if ``[ui] autostart`` (or ``force``) and the port is free; the bound port.

    The process that serves it says so in the store (``mcp-gatekeeper login`` finds it there) and prints a
    one-time login link; one that finds the port taken prints a link for the page served there.
    """
    ui = runtime.config.ui
    if not (ui.autostart or force):
        return None
    from mcp_gatekeeper import web

    token = web.load_or_create_token(runtime.home)
    app = web.build_app(
        store=runtime.store, gate=runtime.gate, policy=runtime.policy, token=token, port=ui.port, clock=runtime.clock,
        links=runtime.links, slack=runtime.slack,
    )  # fmt: skip
    try:
        port: int = await tg.start(
            lambda task_status: web.serve(
                app, host=ui.host, port=ui.port, allow_remote=ui.allow_remote, task_status=task_status
            )
        )
    except OSError as e:
        if force:
            raise
        log.info("approval page not started here (%s); another gatekeeper process probably serves it", e)
        base = web.page_url(ui.host, ui.port)
        if base in await runtime.store.page_urls():
            link = await web.mint_login_url(runtime.store, base)
            print(f"mcp-gatekeeper: approval page: {link} (served by another process)", file=sys.stderr)
        else:
            print(
                f"mcp-gatekeeper: approval page: port {ui.port} is taken (by a gatekeeper that is starting, or by"
                " another program); run 'mcp-gatekeeper login' for a link to the page wherever it is served",
                file=sys.stderr,
            )
        return None
    base = web.page_url(ui.host, port)
    if runtime.links is not None and not ui.public_url:
        runtime.links.base_url = base  # the port bound (``port = 0``: a free one) is where the links lead
    await runtime.store.serving_page(base)
    link = await web.mint_login_url(runtime.store, base)
    print(
        f"mcp-gatekeeper: approval page: {link} (works once; for a new one run: mcp-gatekeeper login)",
        file=sys.stderr,
        flush=True,
    )
    return port


async def run_proxy(
    config: GatekeeperConfig,
    upstream_configs: dict[str, UpstreamConfig],
    *,
    label: str,
    http: tuple[str, int] | None = None,
    home: Path | None = None,
    require_all: bool = True,
    config_path: str | None = None,
) -> None:
    """``wrap`` and ``run``: serve the proxy on stdio (or Streamable HTTP) until the client goes away."""
    if not upstream_configs:
        raise ConfigError(["upstreams: no upstream to proxy (add [upstreams.NAME] to the config, or use wrap)"])
    problems = names.unreached(config, upstream_configs)
    for problem in problems:
        print(f"mcp-gatekeeper: WARNING: {problem.message()}", file=sys.stderr, flush=True)
    config = names.holding_unreached(config, problems)
    shadow = build_shadow(config, home or default_home(), config_path)
    async with (
        open_runtime(config, home=home, label=label, config_path=config_path) as rt,
        contextlib.AsyncExitStack() as stack,
    ):
        for problem in problems:
            await rt.store.note_problem(problem.to_json())
        telemetry = stack.enter_context(telemetry_for(config.telemetry))
        proxy = Proxy(
            config=config,
            policy=rt.policy,
            gate=rt.gate,
            clock=rt.clock,
            state_key=load_or_create_key(rt.home),
            shadow=shadow,
            telemetry=telemetry,
        )
        async with (
            connected_upstreams(upstream_configs, proxy, require_all=require_all),
            anyio.create_task_group() as tg,
        ):
            with contextlib.suppress(Exception):
                await start_ui_if_possible(rt, tg)
            tg.start_soon(proxy.compensator.run)
            server = proxy.build_server()
            if http is None:
                async with FastLane(proxy).running() as lane:
                    await lane.serve_stdio(server, proxy.init_options(server))
            else:
                await serve_http(server, host=http[0], port=http[1], tokens=http_agents(config, rt.home))
            tg.cancel_scope.cancel()


def http_agents(config: GatekeeperConfig, home: Path) -> AgentTokens | None:
    """Who may call ``run --http``: the configured agents, else the generated token; None only if opted out."""
    if config.http.allow_unauthenticated_loopback:
        log.warning(
            "http.allow_unauthenticated_loopback = true: ANY local process can call the MCP endpoint without a token;"
            " its calls belong to the principal 'unauthenticated/<clientInfo name>'"
        )
        print(
            "mcp-gatekeeper: WARNING: the MCP endpoint accepts calls without a token (http.allow_unauthenticated_loopback)",
            file=sys.stderr,
            flush=True,
        )
        return None
    tokens = AgentTokens.load(list(config.agents), home)
    if tokens.generated is not None:
        print(
            f"mcp-gatekeeper: HTTP agents authenticate with 'Authorization: Bearer <token>'; agent {DEFAULT_AGENT!r}"
            f" has the token in {tokens.generated}",
            file=sys.stderr,
            flush=True,
        )
    return tokens


async def serve_http(server: Any, *, host: str, port: int, tokens: AgentTokens | None) -> None:
    """Serve the proxy as Streamable HTTP at ``/mcp`` (both eras; Host and Origin checked against loopback).

    Every request needs an agent's bearer token (401 otherwise) unless ``tokens`` is None (the loopback opt-out).
    """
    import socket

    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError([f"--http {host}:{port}: the MCP endpoint only binds a loopback address"])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{bound}", f"localhost:{bound}", f"[::1]:{bound}"],
        allowed_origins=[f"http://127.0.0.1:{bound}", f"http://localhost:{bound}", f"http://[::1]:{bound}"],
    )
    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    cfg = uvicorn.Config(
        BearerCheck(app, tokens) if tokens is not None else app, log_config=None, access_log=False, lifespan="on"
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"mcp-gatekeeper: serving MCP at http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    await uvicorn.Server(cfg).serve(sockets=[sock])
