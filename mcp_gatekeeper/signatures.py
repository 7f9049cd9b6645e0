"""Signed decisions: the deciding side signs each decision with Ed25519; the holder checks it before forwarding.

The signature covers :func:`statement`, a canonical encoding of exactly what was decided: the call id, the
decision (``approved`` / ``rejected``), the digest of the arguments that will run (the reviewer's modified
arguments, else the call's own), who decided, through which channel, when, and the quorum step if any. Change
any of them in the database afterwards and the signature no longer matches.

- The **private key** lives in a file (PEM, PKCS#8) readable by its owner only: ``<home>/decision-key``,
  created when a gatekeeper process starts in local mode (else on first use) with the same atomic
  private-file-then-link step as the token files, or the file
  ``[team] signing_key`` names. A key file that others can read is refused (like ssh): it signs nothing and
  verifies nothing, so a decision made with it never runs.
- The **trusted public keys**: ``[team] decision_keys`` (the approval service's keys; the gatekeeper then has
  no use for a private key, and an agent on its machine cannot sign), else the local key's own public key.
  Public keys are written ``ed25519:<base64url of the 32 raw bytes>`` (``mcp-gatekeeper keys show``).

In local mode the private key sits in the same home as the database, so signing protects only against an
attacker who can write the database but not read the home (a copied or shared database file, a SQL-only hole);
an agent with a shell as the same user can read the key. In team mode the key is on the service's host only.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcp_gatekeeper import hostos
from mcp_gatekeeper.errors import GatekeeperError, StoreError
from mcp_gatekeeper.models import AuditEvent, canonical_json

KEY_FILE = "decision-key"
"""The local signing key's file name in the data home."""
PREFIX = "ed25519:"
DOMAIN = "mcp-gatekeeper decision v1\n"
"""Prepended to every signed statement, so a signature over anything else never verifies as a decision."""
STEP_DOMAIN = "mcp-gatekeeper approval step v1\n"
"""Prepended to every signed quorum step: a step never verifies as a decision, nor a decision as a step."""


class SigningKeyError(GatekeeperError):
    """The signing key cannot be used (unreadable, malformed, or readable by other users)."""


class SigningKeyUnavailable(SigningKeyError, StoreError):
    """The signing key could not be made: the data home cannot be written (disk full, read-only). Like the store
    being unwritable, nothing is decided and it is worth trying again once the fault is gone (CLI exit 3)."""


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What a decision says, as the signature covers it."""

    call_id: str
    decision: str
    """``approved`` or ``rejected``."""
    args_digest: str
    """Digest of the arguments that run: the modified arguments if the reviewer edited them, else the call's."""
    decided_by: str
    channel: str
    decided_at: float
    step: int | None = None
    """The approval's place in a quorum (``approvals = N``), or ``None`` for a single decision."""


def statement(facts: DecisionFacts) -> bytes:
    """The bytes a decision signature covers (domain-separated canonical JSON)."""
    body = {
        "call_id": facts.call_id,
        "decision": facts.decision,
        "args_digest": facts.args_digest,
        "decided_by": facts.decided_by,
        "channel": facts.channel,
        "decided_at": facts.decided_at,
        "step": facts.step,
    }
    return (DOMAIN + canonical_json(body)).encode("utf-8")


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What one approval step of a quorum (``approvals = N``) says, as its signature covers it."""

    call_id: str
    proposal_digest: str
    """Digest of the arguments this step approves (the call's own, or the round's edit)."""
    reviewer: str
    step: int
    """The step's place in its round (1 for the first approval)."""
    round: int
    """The round of approvals (0: the call's own arguments; each edit that changes them starts the next)."""
    at: float
    channel: str


def step_statement(facts: StepFacts) -> bytes:
    """The bytes a step signature covers (domain-separated canonical JSON)."""
    body = {
        "call_id": facts.call_id,
        "proposal_digest": facts.proposal_digest,
        "reviewer": facts.reviewer,
        "step": facts.step,
        "round": facts.round,
        "at": facts.at,
        "channel": facts.channel,
    }
    return (STEP_DOMAIN + canonical_json(body)).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_text(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64url>``: how a public key is written in the config and shown by ``keys show``."""
    return PREFIX + _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key (16 hex characters of its SHA-256), stored beside each signature."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public(text: str) -> Ed25519PublicKey:
    """A public key written ``ed25519:<base64url>``; ``ValueError`` naming what is wrong."""
    if not text.startswith(PREFIX):
        raise ValueError(f"a decision key is written '{PREFIX}<base64url>', got {text[:20]!r}")
    try:
        raw = _unb64(text[len(PREFIX) :])
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"decision key {text[:20]!r}...: not base64url") from e
    if len(raw) != 32:
        raise ValueError(f"decision key {text[:20]!r}...: {len(raw)} bytes, an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def _check_private(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"the decision signing key {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):o});"
            f" it is not used. Make it private (chmod 600 {path}), or, if others may have read it, move it"
            " away so a new one is made and trust the new public key instead"
        )


def load_private(path: Path, *, create: bool) -> Ed25519PrivateKey:
    """The signing key at ``path`` (created first, mode 0600, when ``create`` and it is missing)."""
    if create:
        make_private(path)
    try:
        _check_private(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise SigningKeyError(f"cannot read the decision signing key {path}: {e}") from e
    except ValueError as e:
        raise SigningKeyError(f"the decision signing key {path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the decision signing key {path} is not an Ed25519 key")
    return key


def make_private(path: Path) -> None:
    """Make a new signing key at ``path`` (mode 0600) unless one is there; :class:`SigningKeyUnavailable` if the
    file cannot be written."""
    if path.exists():
        return
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        hostos.publish_new_secret(path, pem.decode("ascii"))  # two processes starting together agree on one
    except OSError as e:
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise SigningKeyUnavailable(
            f"cannot create the decision signing key {path}: {e.strerror or e}{full}; nothing was decided"
        ) from e


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs decisions with one private key."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def seal(self, facts: DecisionFacts) -> dict[str, Any]:
        """The signature record stored with the decision (row and audit event)."""
        sig = self.key.sign(statement(facts))
        return {"v": 1, "alg": "ed25519", "key": key_id(self.public), "sig": _b64(sig), "at": facts.decided_at,
                "step": facts.step}  # fmt: skip

    def seal_step(self, facts: StepFacts) -> dict[str, Any]:
        """The signature record stored with one approval step (its row and its ``approval_given`` event)."""
        sig = self.key.sign(step_statement(facts))
        return {"v": 1, "alg": "ed25519", "key": key_id(self.public), "sig": _b64(sig), "at": facts.at,
                "kind": "step"}  # fmt: skip


def _check_seal(seal: Any, message: bytes, trusted: Mapping[str, Ed25519PublicKey], what: str) -> str | None:
    if not isinstance(seal, dict):
        return f"the {what} is not signed"
    if seal.get("v") != 1 or seal.get("alg") != "ed25519":
        return f"the {what}'s signature is of an unknown kind"
    key = trusted.get(str(seal.get("key")))
    if key is None:
        return f"the {what} was signed by a key that is not trusted ({str(seal.get('key'))[:16]})"
    try:
        key.verify(_unb64(str(seal.get("sig"))), message)
    except (InvalidSignature, binascii.Error, ValueError):
        return f"the {what}'s signature does not match what the record says"
    return None


def check_step(facts: StepFacts, seal: Any, trusted: Mapping[str, Ed25519PublicKey]) -> str | None:
    """``None`` if ``seal`` is a valid signature over the approval step ``facts`` by a ``trusted`` key, else why not."""
    return _check_seal(seal, step_statement(facts), trusted, f"approval step {facts.step} by {facts.reviewer}")


def check(facts: DecisionFacts, seal: Any, trusted: Mapping[str, Ed25519PublicKey]) -> str | None:
    """``None`` if ``seal`` is a valid signature over ``facts`` by one of ``trusted`` (by key id), else why not."""
    if not isinstance(seal, dict):
        return "the decision is not signed"
    if seal.get("v") != 1 or seal.get("alg") != "ed25519":
        return "the decision's signature is of an unknown kind"
    key = trusted.get(str(seal.get("key")))
    if key is None:
        return f"the decision was signed by a key that is not trusted ({str(seal.get('key'))[:16]})"
    if seal.get("step") != facts.step:
        return "the decision's signature is for another quorum step"
    try:
        key.verify(_unb64(str(seal.get("sig"))), statement(facts))
    except (InvalidSignature, binascii.Error, ValueError):
        return "the decision's signature does not match what the record says was decided"
    return None


@dataclass(frozen=True)
class DecisionKeys:
    """What one process signs with and trusts: built once per process (``serve.open_runtime``).

    The private key is loaded (and, at the default path, created) on first use, so a gatekeeper that only holds
    calls in team mode never makes one.
    """

    signing_path: Path
    create: bool
    """Make the key at ``signing_path`` when missing (the home's default key; never a configured path)."""
    configured: tuple[str, ...] = ()
    """``[team] decision_keys``: when given, the only keys a holder trusts; the local key is not among them."""
    retired: tuple[str, ...] = ()
    """``[team] retired_keys``: trusted by ``audit --verify`` for old decisions, never for forwarding."""
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_home(
        cls, home: Path, *, signing_key: str | None = None, decision_keys: Sequence[str] = (),
        retired_keys: Sequence[str] = (),
    ) -> DecisionKeys:  # fmt: skip
        path = Path(signing_key).expanduser() if signing_key else home / KEY_FILE
        return cls(path, signing_key is None, tuple(decision_keys), tuple(retired_keys))

    def prepare(self) -> None:
        """At a gatekeeper's start: make the home's key now if this process will sign or trust it (local mode),
        so a decision taken later, when the disk may be full, never has to write a file; raises
        :class:`SigningKeyUnavailable`. In team mode (``decision_keys``) or with a configured key, nothing."""
        if self.create and not self.configured:
            make_private(self.signing_path)

    def signer(self) -> Signer:
        """The private key (cached once loaded); raises :class:`SigningKeyError`."""
        cached = self._cache.get("signer")
        if cached is None:
            cached = self._cache["signer"] = Signer(load_private(self.signing_path, create=self.create))
        assert isinstance(cached, Signer)
        return cached

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The keys whose decisions may run, by key id; raises :class:`SigningKeyError` if the local key is unusable."""
        keys = [parse_public(k) for k in self.configured] if self.configured else [self.signer().public]
        return {key_id(k): k for k in keys}

    def audit_trusted(self) -> dict[str, Ed25519PublicKey]:
        """What ``audit --verify`` accepts: the trusted keys and the retired ones."""
        return {**self.trusted(), **{key_id(k): k for k in map(parse_public, self.retired)}}

    def check(self, facts: DecisionFacts, seal: Any) -> str | None:
        try:
            trusted = self.trusted()
        except SigningKeyError as e:
            return str(e)
        return check(facts, seal, trusted)

    def check_step(self, facts: StepFacts, seal: Any) -> str | None:
        try:
            trusted = self.trusted()
        except SigningKeyError as e:
            return str(e)
        return check_step(facts, seal, trusted)

    def step_checker(self, *, own: bool = False) -> Callable[[StepFacts, Any], str | None]:
        """:meth:`check_step` with the keys resolved once; ``own``: this process's own key is trusted too (the
        service checking the steps it signed itself, whatever its ``decision_keys`` say mid-rotation)."""
        why: str | None = None
        try:
            trusted = self.trusted()
        except SigningKeyError as e:
            trusted, why = {}, str(e)
        if own:
            try:
                mine = self.signer().public
            except SigningKeyError:
                pass
            else:
                trusted = {**trusted, key_id(mine): mine}
        if not trusted and why is not None:
            problem = why
            return lambda _facts, _seal: problem
        return lambda facts, seal: check_step(facts, seal, trusted)


def facts_of(
    *, call_id: str, approved: bool, args_digest: str, modified_digest: str | None, decided_by: str | None,
    channel: str | None, decided_at: float | None, step: int | None = None,
) -> DecisionFacts:  # fmt: skip
    """The facts of a decision as a record or an audit event states them (missing values never match a signature)."""
    return DecisionFacts(
        call_id=call_id,
        decision="approved" if approved else "rejected",
        args_digest=modified_digest or args_digest,
        decided_by=decided_by or "",
        channel=channel or "",
        decided_at=decided_at if decided_at is not None else -1.0,
        step=step,
    )


def check_events(
    events: Sequence[AuditEvent], *, signed_since: int, trusted: Mapping[str, Ed25519PublicKey]
) -> list[str]:
    """Every decision event whose signature fails, one line each (``audit --verify``).

    A decision recorded after ``signed_since`` (the last event before signing began) must be signed by a key of
    ``trusted``; an older one is checked if it carries a signature.
    """
    problems = []
    for e in events:
        seal = e.detail.get("signature")
        if seal is None and e.seq <= signed_since:
            continue
        facts = facts_of(
            call_id=e.call_id or "", approved=e.event == "approved", args_digest=e.args_digest or "",
            modified_digest=e.detail.get("modified_args_digest"), decided_by=e.actor, channel=e.channel,
            decided_at=seal.get("at") if isinstance(seal, dict) else None,
            step=seal.get("step") if isinstance(seal, dict) else None,
        )  # fmt: skip
        why = check(facts, seal, trusted)
        if why is not None:
            problems.append(f"event {e.seq} ({e.event} of call {(e.call_id or '')[:12]}): {why}")
    return problems


def check_step_events(
    events: Sequence[AuditEvent], *, signed_since: int, trusted: Mapping[str, Ed25519PublicKey]
) -> list[str]:
    """Every quorum step (``approval_given`` event) whose signature fails, one line each (``audit --verify``).

    A step recorded after ``signed_since`` (the last event before steps were signed, migration
    ``0014_quorum_steps``) must be signed by a key of ``trusted``; an older one is checked if it carries a signature.
    """
    problems = []
    for e in events:
        seal = e.detail.get("signature")
        if seal is None and e.seq <= signed_since:
            continue
        facts = step_facts_of(
            call_id=e.call_id, proposal_digest=e.detail.get("proposal_digest"), reviewer=e.actor,
            step=e.detail.get("step"), round=e.detail.get("round"), at=seal.get("at") if isinstance(seal, dict) else None,
            channel=e.channel,
        )  # fmt: skip
        why = check_step(facts, seal, trusted)
        if why is not None:
            problems.append(f"event {e.seq} (approval_given of call {(e.call_id or '')[:12]}): {why}")
    return problems


def step_facts_of(
    *, call_id: Any, proposal_digest: Any, reviewer: Any, step: Any, round: Any, at: Any, channel: Any
) -> StepFacts:
    """The facts of a step as a row or an audit event states them (missing or mistyped values never match)."""
    return StepFacts(
        call_id=str(call_id or ""),
        proposal_digest=str(proposal_digest or ""),
        reviewer=str(reviewer or ""),
        step=step if isinstance(step, int) else -1,
        round=round if isinstance(round, int) else -1,
        at=float(at) if isinstance(at, (int, float)) else -1.0,
        channel=str(channel or ""),
    )


__all__ = [
    "KEY_FILE",
    "DecisionFacts",
    "DecisionKeys",
    "Signer",
    "SigningKeyError",
    "SigningKeyUnavailable",
    "StepFacts",
    "check",
    "check_events",
    "check_step",
    "check_step_events",
    "facts_of",
    "key_id",
    "load_private",
    "make_private",
    "parse_public",
    "public_text",
    "statement",
    "step_facts_of",
    "step_statement",
]
