"""Who a Slack user is as a reviewer: the seam team mode's reviewer accounts will back.

Today an allow-list in the config (``[[notify.slack.reviewers]]``: workspace id, member id, reviewer name).
A directory answers ``None`` for anyone it does not know, and that user's click decides nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mcp_gatekeeper.config import SlackReviewer


class ReviewerDirectory(Protocol):
    def reviewer_for(self, team_id: str, user_id: str) -> str | None:
        """The reviewer name the Slack user ``user_id`` of workspace ``team_id`` decides as, or ``None``."""
        ...


class AllowList:
    """The configured allow-list: exact workspace and member ids, nothing else (no names, no emails)."""

    def __init__(self, reviewers: Iterable[SlackReviewer]) -> None:
        self._by_id = {(r.team, r.user): r.reviewer for r in reviewers}

    def reviewer_for(self, team_id: str, user_id: str) -> str | None:
        return self._by_id.get((team_id, user_id))
