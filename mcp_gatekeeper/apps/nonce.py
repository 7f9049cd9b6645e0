"""The decision card's per-call nonce: what makes a click in the card, and nothing else, able to decide.

A nonce is 32 random bytes (URL-safe base64), minted when a held call's answer carries the card. The store keeps
only its SHA-256 (migration ``0009_app_nonces``) with the call id, the arguments digest and the principal it was
minted for, and an expiry (``TTL``, never past the call's deadline). :meth:`Nonces.check` refuses, naming why: an
unknown nonce, another call, another arguments digest, another principal, an expired or a used one. The checks
come before the nonce is spent, so a wrong attempt cannot burn the card's nonce; spending is one compare-and-set,
so two concurrent uses of the same nonce let exactly one through.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from mcp_gatekeeper.clock import Clock
from mcp_gatekeeper.models import CallRecord
from mcp_gatekeeper.store import AppNonce, Store

TTL = 600.0
"""A card's nonce is good for at most ten minutes (and never past its call's deadline)."""
KEEP_SPENT = 86400.0
"""Nonces that expired longer ago than this are dropped (each mint sweeps them), so the table stays small."""


def nonce_hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class NonceRefused:
    """Why a nonce was not accepted (the decide tool tells the caller, and audits it)."""

    why: str
    code: str


class Nonces:
    def __init__(self, store: Store, clock: Clock, *, ttl: float = TTL) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl

    async def mint(self, rec: CallRecord, *, principal: str | None) -> str:
        now = self.clock.now()
        expires = min(now + self.ttl, rec.deadline_at) if rec.deadline_at is not None else now + self.ttl
        nonce = secrets.token_urlsafe(32)
        await self.store.forget_app_nonces(before=now - KEEP_SPENT)
        await self.store.add_app_nonce(
            nonce_hash(nonce), call_id=rec.id, args_digest=rec.args_digest, principal=principal, expires_at=expires
        )
        return nonce

    async def check(
        self, nonce: object, *, call_id: str, args_digest: object, principal: str | None
    ) -> NonceRefused | AppNonce:
        """The stored nonce if ``nonce`` is good for this call, digest and principal (not spent yet)."""
        if not isinstance(nonce, str) or not nonce:
            return NonceRefused("no card nonce: only the decision card shown in the chat can decide", "no_nonce")
        row = await self.store.app_nonce(nonce_hash(nonce))
        if row is None:
            return NonceRefused("the card nonce is not one the gatekeeper issued", "unknown_nonce")
        if not hmac.compare_digest(row.call_id, call_id):
            return NonceRefused("the card nonce belongs to another call", "other_call")
        if not isinstance(args_digest, str) or not hmac.compare_digest(row.args_digest, args_digest):
            return NonceRefused("the card nonce was issued for other arguments (digest differs)", "other_digest")
        if row.principal != principal:
            return NonceRefused("the card nonce belongs to another client", "other_principal")
        if row.used_at is not None:
            return NonceRefused("the card nonce was already used", "replayed")
        if row.expires_at <= self.clock.now():
            return NonceRefused("the card nonce has expired; reload the card", "expired")
        return row

    async def spend(self, row: AppNonce) -> NonceRefused | None:
        """Spend a checked nonce: ``None`` if this use won (one compare-and-set; a concurrent use loses)."""
        now = self.clock.now()
        if await self.store.spend_app_nonce(row.nonce_hash, now=now):
            return None
        if row.expires_at <= now:
            return NonceRefused("the card nonce has expired; reload the card", "expired")
        return NonceRefused("the card nonce was already used", "replayed")
