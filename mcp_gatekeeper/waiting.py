"""How to wait for a human without losing the client: pick a strategy per request (pure, no I/O).

Clients give up on a tool call at very different times: Claude Desktop after about 60 s and it ignores
progress; the TypeScript SDK after 60 s; Cursor and VS Code after about 5 minutes; Claude Code resets its
watchdog on progress. From the protocol era, ``clientInfo``, the declared capabilities and a table of
known client budgets, :func:`plan_wait` picks one of:

``hold``
    keep the request open, sending ``notifications/progress`` every heartbeat (the client resets on it);
``elicit``
    handshake era: ask in the client with a form (``in_client = "decide"``) or a URL to the approval card
    (``"notify"``), while still waiting for the web/CLI decision;
``input_required``
    2026-07-28: return an ``InputRequiredResult`` (form or URL) with a sealed ``requestState``;
``pending``
    wait until shortly before the client's budget runs out, then answer "waiting for approval, retry
    the identical call"; the held request stays decidable until its own deadline.

A client that declared MCP Apps, for a rule whose ``in_chat = "decide"``, gets ``pending`` at once: the
decision card in the chat renders from that answer (see :mod:`mcp_gatekeeper.apps`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from mcp_gatekeeper.config import ClientProfile, WaitingConfig

Strategy = Literal["hold", "elicit", "input_required", "pending"]

BUILTIN_CLIENTS: tuple[ClientProfile, ...] = (
    ClientProfile(name="claude-ai*", budget=60.0, progress_resets=False, label="Claude Desktop"),
    ClientProfile(name="claude-code*", budget=None, progress_resets=True, label="Claude Code"),
    ClientProfile(name="cursor*", budget=300.0, progress_resets=False, label="Cursor"),
    ClientProfile(name="Visual Studio Code*", budget=300.0, progress_resets=False, label="VS Code"),
    ClientProfile(name="vscode*", budget=300.0, progress_resets=False, label="VS Code"),
    ClientProfile(name="mcp-inspector*", budget=10.0, progress_resets=True, label="MCP Inspector"),
    ClientProfile(name="inspector*", budget=10.0, progress_resets=True, label="MCP Inspector"),
)
UNKNOWN_CLIENT = ClientProfile(name="*", budget=60.0, progress_resets=False, label="unknown client")


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What one request tells about its client."""

    name: str | None
    modern: bool  # 2026-07-28 (stateless) rather than the handshake era
    progress_token: bool
    elicit_form: bool
    elicit_url: bool
    can_push: bool  # a server→client request can be sent on this request (handshake era, live back-channel)
    apps: bool = False  # the client declared MCP Apps (io.modelcontextprotocol/ui): it renders the decision card


@dataclass(frozen=True, slots=True)
class WaitPlan:
    strategy: Strategy
    budget: float | None
    """Seconds this request may wait before answering "pending" (None: until the call's own deadline)."""
    profile: ClientProfile
    elicit_mode: Literal["form", "url"] | None = None
    heartbeats: bool = False


def profile_for(name: str | None, config: WaitingConfig) -> ClientProfile:
    """The configured profile first, then the built-in table, then the ``unknown`` row."""
    for profile in (*config.clients, *BUILTIN_CLIENTS):
        if name is not None and fnmatch.fnmatchcase(name.lower(), profile.name.lower()):
            return profile
    return config.unknown or UNKNOWN_CLIENT


def answer_within(profile: ClientProfile, config: WaitingConfig) -> float | None:
    """The client's budget minus a safety margin (never less than half the budget)."""
    if profile.budget is None:
        return None
    margin = min(config.margin, profile.budget / 2)
    return max(profile.budget - margin, 0.5)


def plan_wait(facts: ClientFacts, in_client: str, config: WaitingConfig, *, in_chat: str = "show") -> WaitPlan:
    profile = profile_for(facts.name, config)
    budget = answer_within(profile, config)
    heartbeats = facts.progress_token
    if facts.apps and in_chat == "decide":
        # the card renders from the held call's answer: answer "pending" now, so the human sees it at once
        return WaitPlan("pending", 0.0, profile, heartbeats=False)
    if facts.progress_token and profile.progress_resets:
        return WaitPlan("hold", None, profile, heartbeats=True)
    if in_client != "off":
        mode: Literal["form", "url"] | None = None
        if in_client == "decide" and facts.elicit_form:
            mode = "form"
        elif in_client == "notify" and facts.elicit_url:
            mode = "url"
        if mode is not None:
            if facts.modern:
                return WaitPlan("input_required", budget, profile, elicit_mode=mode, heartbeats=heartbeats)
            if facts.can_push:
                return WaitPlan("elicit", budget, profile, elicit_mode=mode, heartbeats=heartbeats)
    if budget is None:
        return WaitPlan("hold", None, profile, heartbeats=heartbeats)
    return WaitPlan("pending", budget, profile, heartbeats=heartbeats)
