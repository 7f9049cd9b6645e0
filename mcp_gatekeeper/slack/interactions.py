"""``POST /slack/interactions``: the Approve and Reject buttons of a Slack message.

Slack signs every request; this endpoint has no cookie, page key or same-origin check (Slack sends none of
them) and is authenticated by that signature alone (:mod:`.signature`), so the request is refused unless:
it is signed with the app's signing secret, its timestamp is inside the five-minute window, and its
signature was never seen before (a captured request replayed inside the window decides nothing).
Then the clicking Slack user must be on the allow-list (:mod:`.reviewers`), the button's call and arguments
digest must match the message the gatekeeper posted for that call, and the decision goes through the same
:meth:`~mcp_gatekeeper.gate.Gate.decide` as the page's (channel ``slack``, reviewer ``slack:<name>``), so a
stale button (changed arguments), a decided or an expired call are refused there. Reject first opens a
dialog for an optional reason (the agent reads it); its submission comes back here, signed like a click, and
decides. The answer is sent at once (Slack waits three seconds); why a click decided nothing is told to the
clicker alone (an ephemeral message, or under the dialog's field), and the message itself is rewritten by
the follower.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_gatekeeper.accounts import Reviewer
from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import (
    AlreadyDecidedError,
    CallNotFoundError,
    GatekeeperError,
    NotAllowedError,
    NotifierError,
    StoreError,
)
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Decision
from mcp_gatekeeper.passkeys import PasskeyError
from mcp_gatekeeper.slack.message import (
    APPROVE,
    REASON_BLOCK,
    REASON_INPUT,
    REJECT,
    REJECT_VIEW,
    ButtonValue,
    escape,
    reject_view,
)
from mcp_gatekeeper.slack.notifier import SlackFollower
from mcp_gatekeeper.slack.reviewers import ReviewerDirectory
from mcp_gatekeeper.slack.signature import WINDOW, verify
from mcp_gatekeeper.slack.webapi import SlackWebAPI
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.team import TeamDesk
from mcp_gatekeeper.webhttp import web_state

log = logging.getLogger(__name__)

PATH = "/slack/interactions"
MAX_REASON = 2000
"""A reason typed in Slack is cut to this many characters (the page's own limit)."""
MAX_BODY = 512 * 1024
"""Slack's interaction payloads carry the whole message; ours are far smaller than this."""


@dataclass
class SlackDesk:
    """What the endpoint needs: the signing secret, who may decide, and where decisions and answers go."""

    signing_secret: str
    reviewers: ReviewerDirectory
    api: SlackWebAPI
    channel_name: str
    store: Store
    gate: Gate
    clock: Clock
    follower: SlackFollower | None = None
    team: TeamDesk | None = None
    """On the approval service (``serve``): clicks are reviewer accounts' (the Slack member each account is
    mapped to, ``users link-slack``), decided through the :class:`TeamDesk` like the page's: groups, no
    self-review, and a quorum, where a click is one approval step signed by the service."""


@dataclass(frozen=True, slots=True)
class _Click:
    """A click on Approve or Reject, or the submission of the reject dialog (``submitted``, with its reason)."""

    team: str
    user: str
    action: str
    value: str
    channel: str
    ts: str
    trigger: str = ""
    submitted: bool = False
    reason: str | None = None


def _strings(*fields: Any) -> list[str] | None:
    strings = [f for f in fields if isinstance(f, str)]
    return strings if len(strings) == len(fields) else None


def _click(payload: Any) -> _Click | None:
    """The one button click of a ``block_actions`` payload, the reject dialog's submission, or ``None``."""
    if not isinstance(payload, dict):
        return None
    user, team = payload.get("user") or {}, payload.get("team") or {}
    if not isinstance(user, dict) or not isinstance(team, dict):
        return None
    who = _strings(team.get("id") or user.get("team_id"), user.get("id"))
    if who is None:
        return None
    if payload.get("type") == "view_submission":
        return _submission(who, payload.get("view"))
    actions, container = payload.get("actions") or [], payload.get("container") or {}
    if payload.get("type") != "block_actions" or not isinstance(container, dict):
        return None
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        return None
    fields = _strings(
        actions[0].get("action_id"), actions[0].get("value", ""), container.get("channel_id"),
        container.get("message_ts"), payload.get("trigger_id", ""),
    )  # fmt: skip
    if fields is None:
        return None
    action, value, channel, ts, trigger = fields
    return _Click(who[0], who[1], action, value, channel, ts, trigger=trigger)


def _submission(who: list[str], view: Any) -> _Click | None:
    """The reject dialog, submitted: the button it was opened from is in its ``private_metadata`` (Slack keeps
    the view; the request that brings it back is signed like any other)."""
    if not isinstance(view, dict) or view.get("callback_id") != REJECT_VIEW:
        return None
    try:
        meta = json.loads(view.get("private_metadata") or "")
        typed = view["state"]["values"][REASON_BLOCK][REASON_INPUT].get("value")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    fields = _strings(meta.get("v"), meta.get("ch"), meta.get("ts")) if isinstance(meta, dict) else None
    if fields is None or (typed is not None and not isinstance(typed, str)):
        return None
    reason = typed.strip()[:MAX_REASON] if typed else ""
    value, channel, ts = fields
    return _Click(who[0], who[1], REJECT, value, channel, ts, submitted=True, reason=reason or None)


def _answer(desk: SlackDesk, click: _Click | None, text: str) -> Response:
    """A 200 that Slack accepts, and ``text`` told to the clicker alone once the answer is sent."""

    async def tell() -> None:
        if click is None:
            return
        try:
            await desk.api.tell(click.channel, click.user, text)
        except NotifierError as e:
            log.warning("slack: could not tell %s why their click decided nothing: %s", click.user, e)

    return Response(status_code=200, background=BackgroundTask(tell))


def _refused(status: int, why: str) -> Response:
    return JSONResponse({"error": "refused", "message": why}, status_code=status)


async def interactions(request: Request) -> Response:
    desk: SlackDesk = request.app.state.slack
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return _refused(413, "the request body is too large")
        chunks.append(chunk)
    body = b"".join(chunks)
    signature = request.headers.get("x-slack-signature")
    verdict = verify(
        desk.signing_secret,
        timestamp=request.headers.get("x-slack-request-timestamp"),
        signature=signature,
        body=body,
        now=desk.clock.now(),
    )
    if not verdict.ok or signature is None:
        log.warning("slack: refused an interaction request: %s", verdict.why)
        return _refused(401, "not a valid Slack request")
    try:
        if not await desk.store.first_sighting(signature, keep=2 * WINDOW + 60):
            log.warning("slack: refused a replayed interaction request")
            return _refused(401, "not a valid Slack request")
    except StoreError as e:
        log.warning("slack: store unavailable for an interaction: %s", e)
        return _refused(503, "the gatekeeper's store is unavailable")
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError):
        return _refused(400, "the body has no payload")
    click = _click(payload)
    if click is None or click.action not in (APPROVE, REJECT):
        return Response(status_code=200)  # "Open in page" (a link button) and anything else: nothing to do
    return await _decide(desk, request, click)


async def _decide(desk: SlackDesk, request: Request, click: _Click) -> Response:
    def refuse(text: str) -> Response:
        if click.submitted:  # shown under the reason field of the dialog, which stays open
            return JSONResponse({"response_action": "errors", "errors": {REASON_BLOCK: text}})
        return _answer(desk, click, text)

    if desk.team is not None:
        return await _decide_team(desk, desk.team, request, click, refuse)
    reviewer = desk.reviewers.reviewer_for(click.team, click.user)
    if reviewer is None:
        log.warning("slack: %s/%s is not on the reviewers' list; their click decided nothing", click.team, click.user)
        return refuse("You are not on this gatekeeper's list of reviewers, so your click decided nothing.")
    value = ButtonValue.decode(click.value)
    if value is None:
        return refuse("This button is not one the gatekeeper made; nothing was decided.")
    try:
        link = await desk.store.notify_link(value.call_id, desk.channel_name)
        if link is None or (link.target, link.ref) != (click.channel, click.ts):
            return refuse("This message is not the gatekeeper's message for that call; nothing was decided.")
        approve = click.action == APPROVE
        if not approve and not click.submitted and click.trigger and await _ask_reason(desk, click, value):
            return Response(status_code=200)  # the dialog is open; its submission decides
        decision = Decision(
            approve=approve,
            decided_by=f"slack:{reviewer}",
            channel="slack",
            reason=None if approve else click.reason or "rejected in Slack",
            args_digest=value.args_digest,
            evidence={"slack_team": click.team, "slack_user": click.user},
        )
        await desk.gate.decide(value.call_id, decision)
    except AlreadyDecidedError as e:
        return refuse(await _why_not(desk, value.call_id, e))
    except CallNotFoundError:
        return refuse("There is no such call; nothing was decided.")
    except (StoreError, GatekeeperError) as e:
        log.warning("slack: deciding call %s failed: %s", value.call_id[:8], e)
        return refuse("The gatekeeper could not record the decision; nothing was decided. Try the page.")
    web_state(request).changes.notify()  # the page's live views update at once
    if desk.follower is not None:
        desk.follower.nudge()
    return Response(status_code=200)


async def _decide_team(
    desk: SlackDesk, team: TeamDesk, request: Request, click: _Click, refuse: Callable[[str], Response]
) -> Response:
    """A click on the approval service: the account mapped to the clicking Slack member decides, as on the page."""
    try:
        account: Reviewer | None = await desk.store.reviewers.by_slack(click.team, click.user)
    except StoreError as e:
        log.warning("slack: store unavailable for an interaction: %s", e)
        return refuse("The approval service could not look you up; nothing was decided. Try the page.")
    if account is None:
        log.warning(
            "slack: %s/%s is linked to no reviewer account; their click decided nothing", click.team, click.user
        )
        return refuse("Your Slack account is linked to no reviewer account of this approval service, so your click"
                      " decided nothing.")  # fmt: skip
    value = ButtonValue.decode(click.value)
    if value is None:
        return refuse("This button is not one the gatekeeper made; nothing was decided.")
    told = None
    try:
        link = await desk.store.notify_link(value.call_id, desk.channel_name)
        if link is None or (link.target, link.ref) != (click.channel, click.ts):
            return refuse("This message is not the gatekeeper's message for that call; nothing was decided.")
        if click.action == APPROVE:
            step = await team.approve(
                value.call_id, account, seen_digest=value.args_digest, arguments=None, session=None, channel="slack"
            )
            if not step.decided:
                told = (f"Your approval counts ({step.tally.count} of {step.needed}); another reviewer must approve"
                        " before the call runs.")  # fmt: skip
        else:
            if not click.submitted and click.trigger:
                await team.check(value.call_id, account, channel="slack")  # no dialog for who may not decide
            if not click.submitted and click.trigger and await _ask_reason(desk, click, value):
                return Response(status_code=200)  # the dialog is open; its submission decides
            await team.reject(
                value.call_id, account, session=None, reason=click.reason or "rejected in Slack", channel="slack"
            )
    except NotAllowedError as e:
        return refuse(f"{escape(str(e))}; your click decided nothing.")
    except PasskeyError:
        return refuse("This call needs your passkey: open it in the page to approve it. Your click decided nothing.")
    except AlreadyDecidedError as e:
        return refuse(await _why_not(desk, value.call_id, e))
    except CallNotFoundError:
        return refuse("There is no such call; nothing was decided.")
    except (StoreError, GatekeeperError) as e:
        log.warning("slack: deciding call %s failed: %s", value.call_id[:8], e)
        return refuse("The approval service could not record the decision; nothing was decided. Try the page.")
    web_state(request).changes.notify()
    if desk.follower is not None:
        desk.follower.nudge()
    if told is not None and not click.submitted:
        return _answer(desk, click, told)
    return Response(status_code=200)


async def _ask_reason(desk: SlackDesk, click: _Click, value: ButtonValue) -> bool:
    """Open the reject dialog (a reason for the agent, optional) if the call can still be rejected as shown;
    ``False`` when it cannot, or Slack did not open it: then the click rejects at once (or is refused)."""
    rec = await desk.store.get(value.call_id)
    if rec.state != "pending" or rec.args_digest != value.args_digest:
        return False
    meta = json.dumps({"v": click.value, "ch": click.channel, "ts": click.ts}, separators=(",", ":"))
    try:
        await desk.api.open_view(click.trigger, reject_view(rec, meta))
    except NotifierError as e:
        log.warning("slack: could not open the reject dialog (rejecting without a reason): %s", e)
        return False
    return True


async def _why_not(desk: SlackDesk, call_id: str, e: AlreadyDecidedError) -> str:
    if e.why == "stale_digest":
        return "The call's arguments are not the ones this message shows any more; nothing was decided. Open it in the page."
    if e.why == "expired":
        return "This call has expired; nothing was decided."
    try:
        rec = await desk.store.get(call_id)
    except StoreError:
        return f"This call is already {e.state or 'decided'}; your click decided nothing."
    by = f" by {escape(rec.decided_by)}" if rec.decided_by else ""
    return f"This call is already {rec.state}{by}; your click decided nothing."
