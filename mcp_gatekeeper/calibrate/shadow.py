"""The shadow policy: what a candidate policy would have done, recorded beside each live call, never acted on.

Two ways to have one, documented in the README ("Calibrate your gates"):

* a rule with ``shadow = true``: the active policy is the config without it; the shadow policy is the config
  with it in its place;
* ``[shadow] policy = "candidate.toml"``: a whole candidate config (its rules, defaults, risk and security
  limits) is the shadow policy.

The verdict is computed by the one judgement (:func:`mcp_gatekeeper.judgement.judge`) and recorded as a
:class:`ShadowVerdict`: ``allow``, ``hold``, ``deny``, ``refuse_invalid``, ``audit`` or ``error``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mcp_gatekeeper.config import GatekeeperConfig, load_config
from mcp_gatekeeper.errors import ConfigError
from mcp_gatekeeper.judgement import Judgement

ERROR = "error"

WOULD: dict[str, str] = {
    "allow": "would have passed",
    "hold": "would have held",
    "deny": "would have denied",
    "refuse_invalid": "would have refused (schema)",
    "audit": "would have run under audit review",
    ERROR: "shadow error (the call took the active policy's gate)",
}
"""How a recorded shadow action reads on the page and in ``show``/``explain``."""


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    """The shadow policy's verdict on one call (all None: no shadow policy ran)."""

    action: str | None = None
    rule: str | None = None
    reason: str | None = None

    NONE: ClassVar[ShadowVerdict]

    @classmethod
    def of(cls, j: Judgement) -> ShadowVerdict:
        v = j.verdict
        reason = v.deny_reason if j.kind in ("deny", "refuse_invalid") and v.deny_reason else None
        return cls(j.kind, v.rule, reason or (v.reasons[0] if v.reasons else None))

    @classmethod
    def failed(cls, error: BaseException) -> ShadowVerdict:
        return cls(ERROR, None, f"shadow error: {type(error).__name__}: {str(error)[:200]}")

    @property
    def words(self) -> str | None:
        return None if self.action is None else WOULD.get(self.action, self.action)


ShadowVerdict.NONE = ShadowVerdict()


def describe(action: str | None) -> str | None:
    """``hold`` → ``would have held`` (None stays None)."""
    return None if action is None else WOULD.get(action, action)


def shadow_config(config: GatekeeperConfig, config_path: str | os.PathLike[str] | None) -> GatekeeperConfig | None:
    """The shadow policy's config, or None when there is none. Fails closed: a candidate file that cannot be
    read or is invalid raises one :class:`ConfigError` naming ``shadow.policy`` and each bad field."""
    if config.shadow.policy is not None:
        base = Path(config_path).parent if config_path is not None else Path.cwd()
        path = Path(config.shadow.policy).expanduser()
        path = path if path.is_absolute() else base / path
        where = f"shadow.policy ({path})"
        if not path.is_file():
            raise ConfigError([f"{where}: no such file"])
        try:
            candidate = load_config(path)
        except ConfigError as e:
            raise ConfigError([f"{where}: {p}" for p in e.problems]) from None
        problems = []
        if candidate.shadow.policy is not None:
            problems.append(f"{where}: shadow.policy: a shadow policy cannot name a shadow policy of its own")
        problems.extend(
            f"{where}: rules[{i}].shadow: every rule of a shadow policy is in shadow already; remove 'shadow'"
            for i, rule in enumerate(candidate.rules)
            if rule.shadow
        )
        if problems:
            raise ConfigError(problems)
        return candidate
    if any(rule.shadow for rule in config.rules):
        rules = [rule.model_copy(update={"shadow": False}) if rule.shadow else rule for rule in config.rules]
        return config.model_copy(update={"rules": rules})
    return None
