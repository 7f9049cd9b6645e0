"""Team mode's commands: ``users add/list/remove/passwd`` (reviewer accounts) and ``serve`` (the approval service).

A password is never taken from the command line (argv is visible to every user in ``ps``): it is asked on
the terminal twice, or read from the first line of standard input with ``--password-stdin``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio

from mcp_gatekeeper import accounts, hostos
from mcp_gatekeeper.config import GatekeeperConfig, load_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.serve import open_runtime

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _load(args: argparse.Namespace) -> GatekeeperConfig:
    return load_config(getattr(args, "config", None))


def _actor() -> str:
    return f"cli:{hostos.os_user()}"


def read_password(args: argparse.Namespace) -> str:
    """The new password: stdin's first line with ``--password-stdin``, else asked twice on the terminal."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ConfigError(["password: no terminal to ask on; pipe it with --password-stdin"])
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError(["password: the two entries differ"])
    problem = accounts.password_problem(password)
    if problem:
        raise ConfigError([f"password: {problem}"])
    return password


def cmd_users(args: argparse.Namespace) -> int:
    config = _load(args)
    by = _actor()

    async def go() -> int:
        async with open_runtime(config, register=False) as rt:
            reviewers = rt.store.reviewers
            if args.action == "list":
                found = await reviewers.list_reviewers()
                if args.json:
                    sys.stdout.write(json.dumps([r.to_json() for r in found], indent=2) + "\n")
                    return EXIT_OK
                if not found:
                    print("no reviewer accounts (add one: mcp-gatekeeper users add NAME)")
                for r in found:
                    groups = ",".join(r.groups) or "-"
                    linked = ",".join(r.principals) or "-"
                    slack = f"  slack={','.join(r.slack)}" if r.slack else ""
                    print(f"{r.name:<20} {r.role:<9} groups={groups}  principals={linked}{slack}")
                return EXIT_OK
            if args.action == "add":
                problems = accounts.account_problems(args.name, args.role, args.group or [], args.principal or [])
                problems += accounts.slack_problems(args.slack or [])
                if problems:
                    raise ConfigError(problems)
                password = read_password(args)
                added = await reviewers.add(
                    args.name, role=args.role, groups=args.group or [], principals=args.principal or [],
                    password_hash=accounts.hash_password(password), by=by, channel="cli", slack=args.slack or [],
                )  # fmt: skip
                print(f"added {added.role} {added.name}")
                return EXIT_OK
            if args.action == "link-slack":
                if problems := accounts.slack_problems([args.slack]):
                    raise ConfigError(problems)
                account = await reviewers.link_slack(args.name, args.slack, unlink=args.unlink, by=by, channel="cli")
                print(f"{account.name}: slack {', '.join(account.slack) or '(none)'}")
                return EXIT_OK
            if args.action == "remove":
                ended = await reviewers.remove(args.name, by=by, channel="cli")
                print(f"removed {args.name}; ended {len(ended)} session(s)")
                return EXIT_OK
            # passwd
            if await reviewers.get(args.name) is None:
                print(f"mcp-gatekeeper: no account named {args.name!r}", file=sys.stderr)
                return EXIT_REFUSED
            password = read_password(args)
            ended = await reviewers.set_password(args.name, accounts.hash_password(password), by=by, channel="cli")
            print(f"changed the password of {args.name}; ended {len(ended)} session(s)")
            return EXIT_OK

    return anyio.run(go)


def public_host(url: str) -> str:
    """The ``Host`` a browser sends for ``url``: only ``https://NAME[:PORT]`` with nothing after the name."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(
            [
                f"--public-url {url!r}: give the https:// address of the TLS reverse proxy, e.g. https://gk.example.com (or http://localhost:PORT for this machine alone)"
            ]
        )
    return parts.netloc.lower()


def cmd_serve(args: argparse.Namespace) -> int:
    """The approval service: the page and API for every gatekeeper sharing this store, for reviewer accounts."""
    from mcp_gatekeeper import web
    from mcp_gatekeeper.team import TeamDesk
    from mcp_gatekeeper.webauth import is_loopback
    from mcp_gatekeeper.webhttp import TeamSite

    config = _load(args)
    url = args.public_url or config.ui.public_url
    # http://localhost:PORT is this machine's own address (no proxy; browsers treat it as a secure context, so it
    # serves passkeys): the service then stays on loopback, as without a public URL
    local = url is not None and urlsplit(url).scheme == "http" and urlsplit(url).hostname == "localhost"
    site = TeamSite(public_host=public_host(url) if url and not local else None)
    if not is_loopback(args.host) and site.public_host is None:
        raise ConfigError(
            [f"--host {args.host!r}: the approval service listens beyond loopback only behind a TLS reverse proxy;"
             " give its address with --public-url https://..."]
        )  # fmt: skip

    async def go() -> int:
        async with open_runtime(config, label="service") as rt, anyio.create_task_group() as tg:
            if await rt.store.reviewers.count() == 0:
                print(
                    "mcp-gatekeeper: no reviewer accounts yet; add one with: mcp-gatekeeper users add NAME --role admin",
                    file=sys.stderr,
                )
            token = web.load_or_create_token(rt.home)
            if rt.slack is not None:  # Slack's buttons decide as the accounts their members are mapped to
                rt.slack.team = TeamDesk(rt.store, rt.gate, rt.policy)
            app = web.build_app(
                store=rt.store, gate=rt.gate, policy=rt.policy, token=token, port=args.port, clock=rt.clock, team=site,
                links=rt.links if rt.slack is not None else None, slack=rt.slack,
            )  # fmt: skip
            port: int = await tg.start(
                lambda task_status: web.serve(
                    app, host=args.host, port=args.port, allow_remote=site.public_host is not None,
                    task_status=task_status,
                )
            )  # fmt: skip
            where = f"https://{site.public_host}" if site.public_host else web.page_url(args.host, port)
            print(
                f"mcp-gatekeeper: approval service: {where}/login (listening on {args.host}:{port})",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_OK

    return anyio.run(go)


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Add ``users`` (and its actions) to the top-level parser's subcommands."""
    us = with_config(sub.add_parser("users", help="team mode: reviewer accounts of the approval service"))
    acts = us.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = with_config(acts.add_parser("add", help="add a reviewer account (the password is asked, never argv)"))
    add.add_argument("name")
    add.add_argument("--role", choices=accounts.ROLES, default="reviewer")
    add.add_argument("--group", action="append", metavar="G", help="a reviewer group (repeatable)")
    add.add_argument(
        "--principal",
        action="append",
        metavar="P",
        help="an agent principal of this person (agent:NAME, stdio:USER/CLIENT, os:USER); repeatable;"
        " with prevent_self_review they cannot decide its calls",
    )
    add.add_argument(
        "--slack",
        action="append",
        metavar="TEAM/USER",
        help="a Slack member (workspace id/member id) whose button clicks are this account's; repeatable",
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    ln = with_config(acts.add_parser("link-slack", help="map a Slack member to an account (or --unlink it)"))
    ln.add_argument("name")
    ln.add_argument("slack", metavar="TEAM/USER", help="Slack's workspace id and member id, e.g. T0123ABC/U0456DEF")
    ln.add_argument("--unlink", action="store_true", help="remove the mapping instead")
    ls = with_config(acts.add_parser("list", help="list the accounts"))
    ls.add_argument("--json", action="store_true")
    rm = with_config(acts.add_parser("remove", help="remove an account (its sessions end)"))
    rm.add_argument("name")
    pw = with_config(acts.add_parser("passwd", help="set an account's password (its sessions end)"))
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    us.set_defaults(func=cmd_users)

    sv = with_config(
        sub.add_parser("serve", help="team mode: the approval service (page and API for reviewer accounts)")
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback only with --public-url)")
    sv.add_argument("--port", type=int, default=8766, help="port to listen on (default 8766)")
    sv.add_argument(
        "--public-url",
        metavar="https://NAME",
        help="the address reviewers open, served by a TLS reverse proxy in front of this one: only that Host is"
        " answered, and cookies are Secure (default: [ui] public_url)",
    )
    sv.set_defaults(func=cmd_serve)
