"""The Slack channel: posts a message per held call and keeps it true to the call's fate.

:class:`SlackNotifier` is a notification channel (``[notify.slack]``): a held call gets an interactive
message (and an escalation a reply in its thread); the message's channel and timestamp are kept in the store.
:class:`SlackFollower` runs beside it in every process that has the channel: whenever a call with a message
is no longer pending (decided on the page, the CLI, in Slack, or expired), it rewrites the message with the
outcome and who decided (``chat.update``). A failure is logged and retried later (after Slack's
``Retry-After`` when it is rate limited); it never touches the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.errors import NotifierError, StoreError
from mcp_gatekeeper.models import CallRecord, NotifyLink
from mcp_gatekeeper.slack.message import decided_blocks, escape, fallback_text, held_blocks, outcome_words
from mcp_gatekeeper.slack.webapi import Posted, SlackWebAPI
from mcp_gatekeeper.store import Store

log = logging.getLogger(__name__)

RETRY_FIRST = 2.0
RETRY_MOST = 300.0


class SlackNotifier:
    """A notification channel: ``send`` is called by :class:`~mcp_gatekeeper.notify.Notifications`."""

    def __init__(
        self, name: str, api: SlackWebAPI, channel: str, store: Store, *, page_only: frozenset[str] = frozenset()
    ) -> None:
        self.page_only = page_only
        """Rules whose calls are decided on the page only (``confirm = "passkey"``: Slack cannot ask for one)."""
        self.name = name
        self.api = api
        self.channel = channel
        self.store = store
        self.posted = anyio.Event()
        """Set (and replaced) whenever a message is posted: the follower starts watching it."""

    async def send(self, event: str, call: CallRecord, text: str, url: str | None) -> None:
        if event == "held":
            await self._post_held(call, url)
        elif event == "escalated":
            link = await self.store.notify_link(call.id, self.name)
            if link is None:
                await self._post_held(call, url)
            else:
                await self.api.reply(Posted(link.target, link.ref), f"Still waiting: {escape(text)}")
        else:
            more = f" <{url}|Open in page>" if url else ""
            await self.api.post_message(
                self.channel,
                escape(text),
                [{"type": "section", "text": {"type": "mrkdwn", "text": escape(text) + more}}],
            )

    async def _post_held(self, call: CallRecord, url: str | None) -> None:
        posted = await self.api.post_message(
            self.channel, fallback_text(call), held_blocks(call, url, decide_here=call.rule not in self.page_only)
        )
        await self.store.add_notify_link(NotifyLink(call.id, self.name, posted.channel, posted.ts))
        self.posted.set()
        self.posted = anyio.Event()


class SlackFollower:
    """Rewrites a call's message with its outcome once it is decided anywhere; run it with :meth:`run`."""

    def __init__(
        self,
        notifier: SlackNotifier,
        *,
        link: Callable[[str], str | None] | None,
        clock: Clock,
        owner: str,
        poll: float = 1.0,
        idle: float = 30.0,
    ) -> None:
        self.notifier = notifier
        self._link = link
        self._clock = clock
        self._owner = owner
        self._poll = poll
        self._idle = idle
        self._nudged = anyio.Event()
        self._not_before: dict[str, tuple[float, float]] = {}
        """Per call: (monotonic time before which it is not retried, the next back-off)."""
        self.updated = anyio.Event()
        """Set (and replaced) after every round that updated a message (tests wait on it)."""

    def nudge(self) -> None:
        """A call was decided in this process: look now rather than at the next poll."""
        self._nudged.set()

    async def run(self) -> None:
        while True:
            try:
                asking, due = await self.notifier.store.notify_links_open(self.notifier.name)
                if due:
                    await self.update_once()
            except StoreError as e:
                log.warning("slack: cannot read the messages to update: %s", e)
                asking = 1
            except Exception:  # a bug here must never stop the process that holds calls: logged, tried again
                log.exception("slack: updating messages failed")
                asking = 1
            wait = self._poll if asking else self._idle
            with anyio.move_on_after(wait):
                async with anyio.create_task_group() as tg:

                    async def posted(tg: anyio.abc.TaskGroup = tg) -> None:
                        await self.notifier.posted.wait()
                        tg.cancel_scope.cancel()

                    async def nudged(tg: anyio.abc.TaskGroup = tg) -> None:
                        await self._nudged.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(posted)
                    tg.start_soon(nudged)
            self._nudged = anyio.Event()

    async def update_once(self) -> int:
        """Update every message whose call was decided (and is not waiting out a back-off); how many were."""
        n = self.notifier
        done = 0
        for link, call in await n.store.claim_notify_updates(n.name, by=self._owner):
            now = self._clock.monotonic()
            wait_until, backoff = self._not_before.get(call.id, (0.0, RETRY_FIRST))
            if now < wait_until:
                await n.store.settle_notify_link(link, shown_state=None)
                continue
            url = self._link(call.id) if self._link else None
            try:
                await n.api.update(
                    Posted(link.target, link.ref), escape(outcome_words(call)), decided_blocks(call, url)
                )
            except NotifierError as e:
                pause = e.retry_after if e.retry_after is not None else backoff
                self._not_before[call.id] = (now + pause, min(backoff * 2, RETRY_MOST))
                log.warning(
                    "slack: could not update the message of call %s (retrying in %g s): %s", call.id[:8], pause, e
                )
                await n.store.settle_notify_link(link, shown_state=None)
                continue
            self._not_before.pop(call.id, None)
            await n.store.settle_notify_link(link, shown_state=call.state)
            done += 1
        if done:
            self.updated.set()
            self.updated = anyio.Event()
        return done
