"""Reviewer accounts of team mode, as values: names, roles, groups, linked principals, password hashes.

A reviewer account is a person who decides held calls on the approval service (``mcp-gatekeeper serve``).
Its decisions are recorded under its name. Passwords are kept as scrypt hashes (per-account random salt,
``N=2**15, r=8, p=1``: about 32 MiB and tens of milliseconds per check) and compared in constant time.

An account may be *linked* to agent principals (see :mod:`mcp_gatekeeper.principals`): the exact principal
(``agent:alice-bot``, ``stdio:alice/claude-code``) or ``os:<user>`` for every stdio principal of that OS
user. With ``prevent_self_review`` a reviewer cannot decide a call made by a principal linked to them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

ROLES = ("reviewer", "admin")
"""``reviewer`` decides calls (in their groups); ``admin`` also manages accounts and sessions."""
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,62}")
_GROUP = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_PRINCIPAL = re.compile(r"[\x21-\x7e]{1,200}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_N, _R, _P = 2**15, 8, 1
_SALT, _DKLEN = 16, 32
_MAXMEM = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reviewer:
    """One reviewer account (never its password hash)."""

    name: str
    role: str
    groups: tuple[str, ...]
    principals: tuple[str, ...]
    created_at: float
    created_by: str
    password_changed_at: float
    slack: tuple[str, ...] = ()
    """The Slack members whose clicks are this account's, each ``WORKSPACE/MEMBER`` (Slack's ids)."""

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def linked_to(self, principal: str | None) -> bool:
        """Is ``principal`` (a call's) one of this reviewer's own agents? (see the module docstring)"""
        if not principal:
            return False
        for mine in self.principals:
            if mine == principal:
                return True
            if mine.startswith("os:") and principal.startswith(f"stdio:{mine[3:]}/"):
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "groups": list(self.groups),
            "principals": list(self.principals),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "password_changed_at": self.password_changed_at,
            "slack": list(self.slack),
        }


def account_problems(name: str, role: str, groups: list[str], principals: list[str]) -> list[str]:
    """What is wrong with an account's fields (empty: nothing), each naming the field."""
    problems = []
    if not _NAME.fullmatch(name):
        problems.append(f"name {name!r}: lower-case letters, digits, '.', '_', '-', starting with a letter")
    if role not in ROLES:
        problems.append(f"role {role!r}: one of {', '.join(ROLES)}")
    problems.extend(
        f"group {g!r}: lower-case letters, digits, '.', '_', '-'" for g in groups if not _GROUP.fullmatch(g)
    )
    problems.extend(
        f"principal {p!r}: printable ASCII without spaces" for p in principals if not _PRINCIPAL.fullmatch(p)
    )
    return problems


_SLACK = re.compile(r"[A-Z0-9]{2,32}/[A-Z0-9]{2,32}")


def slack_problems(identities: list[str]) -> list[str]:
    """What is wrong with Slack identities given for an account (``T0123/U0456``: Slack's workspace and member
    ids, never a name or an email, which anyone can take)."""
    return [
        f"slack {s!r}: WORKSPACE/MEMBER, Slack's ids (e.g. T0123ABC/U0456DEF)" for s in identities
        if not _SLACK.fullmatch(s)
    ]  # fmt: skip


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"the password needs at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password may have at most {MAX_PASSWORD} characters"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt>$<hash>`` of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(_SALT)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


_DUMMY = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
"""Checked against when an account does not exist, so an unknown name costs as long as a wrong password."""


def verify_password(password: str, stored: str | None) -> bool:
    """Does ``password`` match the stored hash? (constant time; ``None``: spends the same time, ``False``)"""
    encoded = stored or _DUMMY
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode("utf-8")[: MAX_PASSWORD * 4], salt=base64.b64decode(salt), n=int(n), r=int(r),
            p=int(p), maxmem=_MAXMEM, dklen=len(expected),
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected) and stored is not None
