"""An argument envelope derived from approved calls: ``when`` predicates that cover what humans approved.

Each argument seen in the approved calls gets the narrowest predicate the config already has for its kind:

* a string that names a file: ``under`` the folders that held the approved files (lexically normalised, as
  the live check compares them; at most :data:`MAX_VALUES` folders, else no envelope);
* a list of such strings: ``"key[*]" = {under = [...]}`` (an allow rule needs every element inside);
* a string, boolean or mixed value with at most :data:`MAX_VALUES` distinct values: ``in = [...]``;
* a number: ``{gte = lowest, lte = highest}``;
* an object: its keys, the same way (``"options.mode"``).

Free text (more distinct strings than that, none a path) is left open; a key missing from a later call makes
the rule not match (the call is held as before). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mcp_gatekeeper import paths
from mcp_gatekeeper.config import EACH
from mcp_gatekeeper.models import canonical_json
from mcp_gatekeeper.policy import Policy

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MAX_VALUES = 5
"""Distinct values (or folders) an envelope lists for one argument; more: the argument is left open (text) or
no envelope is offered (a path)."""


class NoEnvelope(ValueError):
    """The approved calls cannot be covered by a tight envelope (a path argument spreads too wide)."""


def _folders(values: Sequence[Any], key: str, policy: Policy) -> list[str] | None:
    """The folders holding these path values (outermost only), None when the values are not paths."""
    folders: list[str] = []
    looked_like = False
    for v in values:
        found = policy.lease_paths({"v": v}).get("v") if isinstance(v, str) else None
        if found is None:
            if isinstance(v, str) and not _URL.match(v) and ("/" in v or "\\" in v):
                raise NoEnvelope(f"{key}: {v[:60]!r} names a file whose folder cannot bound later calls")
            continue
        looked_like = True
        folders.append(found)
    if not looked_like:
        return None
    if len(folders) != len(values):
        raise NoEnvelope(f"{key}: some values are paths, some are not")
    outer = sorted(set(folders), key=len)
    kept: list[str] = []
    for f in outer:
        if not any(paths.is_under(f, k) for k in kept):
            kept.append(f)
    if len(kept) > MAX_VALUES:
        raise NoEnvelope(f"{key}: approved files lie in {len(kept)} folders (more than {MAX_VALUES})")
    return sorted(kept)


def _one(key: str, values: Sequence[Any], policy: Policy, out: dict[str, Any]) -> None:
    if all(isinstance(v, Mapping) for v in values):
        for sub in sorted({k for v in values for k in v}):
            _one(f"{key}.{sub}", [v[sub] for v in values if sub in v], policy, out)
        return
    if all(isinstance(v, list) for v in values):
        items = [x for v in values for x in v]
        if items and all(isinstance(x, str) for x in items):
            folders = _folders(items, key, policy)
            if folders is not None:
                out[f"{key}{EACH}"] = {"under": folders[0] if len(folders) == 1 else folders}
                return
            distinct = sorted(set(items))
            if len(distinct) <= MAX_VALUES:
                out[f"{key}{EACH}"] = {"in": distinct}
        return
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        out[key] = {"gte": min(values), "lte": max(values)}
        return
    if all(isinstance(v, str) for v in values):
        folders = _folders(values, key, policy)
        if folders is not None:
            out[key] = {"under": folders[0] if len(folders) == 1 else folders}
            return
    distinct_json = {canonical_json(v): v for v in values}
    if len(distinct_json) <= MAX_VALUES:
        out[key] = {"in": [distinct_json[k] for k in sorted(distinct_json)]}


def derive(approved: Sequence[Mapping[str, Any]], policy: Policy) -> dict[str, Any]:
    """The ``when`` table covering ``approved`` (each a call's arguments); raises :class:`NoEnvelope`."""
    out: dict[str, Any] = {}
    for key in sorted({k for a in approved for k in a}):
        if "." in key or "[" in key or "]" in key or key.startswith(("any:", "all:")):
            raise NoEnvelope(f"argument name {key[:60]!r} cannot be written as a when key")
        _one(key, [a[key] for a in approved if key in a], policy, out)
    return out
