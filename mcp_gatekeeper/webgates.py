"""The page's API for what happens around a hold: audit reviews, leases and tool-definition pins.

* **Reviews** (``gate = "audit"``): the call already ran; a reviewer confirms it, or fails it so its
  compensation undoes it. ``POST /api/calls/{id}/review``.
* **Leases** ("approve and allow similar calls"): granted with an approval (``lease`` in the approve
  body, parsed here), listed and revoked. ``GET /api/leases``, ``POST /api/leases/{id}/revoke``.
* **Pins**: a tool whose definition changed since it was pinned is quarantined until a human accepts the
  new definition. ``GET /api/pins``, ``POST /api/pins/{upstream}/{tool}/repin``.

Also what a call's card needs beyond the stored record (:func:`call_detail`) and what the live view
needs beyond the pending queue (:func:`gates_snapshot`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mcp_gatekeeper.errors import AlreadyDecidedError, InvalidModificationError
from mcp_gatekeeper.models import (
    CallRecord,
    Decision,
    Lease,
    LeaseRequest,
    Pin,
    State,
    definition_diff,
    is_quarantine_hold,
)
from mcp_gatekeeper.store.queries import QueueRow
from mcp_gatekeeper.webhttp import (
    HEADLINE_ARGS_CAP,
    Problem,
    WebState,
    bounded_number,
    call_json,
    flag_param,
    json_body,
    principal,
    reason_of,
    row_headline,
    summary_secrets,
    web_state,
)
from mcp_gatekeeper.webredact import SecretHit, find_secrets

MAX_LEASE_SECONDS = 90 * 86400.0
"""The longest lease the page grants (90 days): longer standing approvals belong in the policy."""
MAX_LEASE_CALLS = 100_000
REVIEW_STATES = (State.UNDER_REVIEW, State.UNREVIEWED)
_SMALL_BODY = 16 * 1024
_DIFF_LINES = 400


# ---------------------------------------------------------------------------------------------- leases


def lease_request(body: dict[str, Any]) -> LeaseRequest | None:
    """The ``lease`` of an approve body, checked for shape (the gate checks whether it is allowed)."""
    raw = body.get("lease")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise Problem(422, "bad_lease", "lease must be an object: {envelope, seconds?, calls?}")
    if unknown := sorted(set(raw) - {"envelope", "seconds", "calls"}):
        raise Problem(422, "bad_lease", f"lease has unknown field(s) {unknown}")
    envelope = raw.get("envelope", {})
    if not isinstance(envelope, dict):
        raise Problem(422, "bad_lease", "lease.envelope must be an object of argument predicates")
    seconds = bounded_number(raw.get("seconds"), "lease.seconds", most=MAX_LEASE_SECONDS)
    calls = bounded_number(raw.get("calls"), "lease.calls", most=MAX_LEASE_CALLS, integer=True)
    if seconds is None and calls is None:
        raise Problem(422, "bad_lease", "a lease needs a duration (seconds) or a number of calls, or both")
    return LeaseRequest(
        envelope=envelope,
        seconds=None if seconds is None else float(seconds),
        calls=None if calls is None else int(calls),
    )


def check_lease(st: WebState, rec: CallRecord, decision: Decision) -> None:
    """The gate's own lease rules, answered as ``422 lease_refused`` before anything is decided."""
    try:
        st.gate.check_lease(rec, decision)
    except InvalidModificationError as e:
        raise Problem(422, "lease_refused", str(e)) from None


def _lease_offer(st: WebState, rec: CallRecord) -> dict[str, Any]:
    """May the card offer "approve and allow similar calls"? The gate's rules, asked with a valid bound."""
    probe = Decision(approve=True, decided_by="web", channel="web", lease=LeaseRequest(envelope={}, seconds=3600.0))
    try:
        st.gate.check_lease(rec, probe)
    except InvalidModificationError as e:
        return {"offered": False, "why_not": str(e)}
    return {
        "offered": True,
        "why_not": None,
        "max_seconds": MAX_LEASE_SECONDS,
        "max_calls": MAX_LEASE_CALLS,
        # the folder each path argument's default envelope keeps later calls `under` (normalised: a path
        # spelled src/../.git/x suggests .git, and `under` never covers a path that climbs out of its folder)
        "paths": st.policy.lease_paths(rec.arguments),
    }


def envelope_secrets(envelope: dict[str, Any]) -> list[SecretHit]:
    """Secret-looking values in an envelope, judged by the argument's name (``password``), not the operator's."""
    hits: list[SecretHit] = []
    for path, pred in envelope.items():
        key = str(path).rsplit(".", 1)[-1]
        if isinstance(pred, dict):
            for op, arg in pred.items():
                hits.extend(find_secrets(arg, (path, op), key))
        else:
            hits.extend(find_secrets(pred, (path,), key))
    return hits


def lease_status(lease: Lease, now: float) -> str:
    if lease.revoked_at is not None:
        return "revoked"
    if lease.expires_at is not None and lease.expires_at <= now:
        return "expired"
    if lease.calls_left is not None and lease.calls_left <= 0:
        return "used_up"
    return "active"


def _lease_json(
    lease: Lease, now: float, pins: dict[tuple[str, str], Pin], summaries: dict[str, Any]
) -> dict[str, Any]:
    out = lease.to_json()
    out["status"] = lease_status(lease, now)
    out["secrets"] = [h.to_json() for h in envelope_secrets(lease.envelope)]
    out["source_summary"] = summaries.get(lease.source_call or "")
    pin = pins.get((lease.upstream, lease.tool))
    out["tool_changed"] = pin is not None and (pin.quarantined or lease.tooldef_hash not in (None, pin.hash))
    return out


async def _leases_json(st: WebState, leases: list[Lease]) -> list[dict[str, Any]]:
    now = st.clock.now()
    pins = {(p.upstream, p.tool): p for p in await st.store.pins()}
    sources = sorted({x.source_call for x in leases if x.source_call})
    summaries: dict[str, Any] = dict(await st.store.queries.summaries(sources))
    return [_lease_json(x, now, pins, summaries) for x in leases]


async def list_leases(request: Request) -> Response:
    st = web_state(request)
    q = request.query_params
    past = flag_param(request, "all")
    leases = await st.store.leases(
        active_at=None if past else st.clock.now(), upstream=q.get("upstream") or None, tool=q.get("tool") or None
    )
    return JSONResponse({"leases": await _leases_json(st, leases), "now": st.clock.now()})


async def revoke_lease(request: Request) -> Response:
    st = web_state(request)
    await json_body(request, _SMALL_BODY)
    try:
        lease = await st.store.revoke_lease(
            request.path_params["lease_id"], by=principal(request).reviewer, channel=principal(request).channel
        )
    except AlreadyDecidedError as e:
        raise Problem(409, "already_revoked", str(e)) from None
    st.changes.notify()
    [out] = await _leases_json(st, [lease])
    return JSONResponse(out)


# ---------------------------------------------------------------------------------------------- pins


def page_diff(old: Any, new: Any) -> list[str]:
    """The definition diff for the page, capped."""
    lines = definition_diff(old, new)
    if len(lines) > _DIFF_LINES:
        lines = [*lines[:_DIFF_LINES], f"… {len(lines) - _DIFF_LINES} more diff lines not shown"]
    return lines


async def _held_for_quarantine(st: WebState) -> dict[tuple[str, str], int]:
    return await st.store.queries.held_by_quarantine()


def _pin_json(pin: Pin, held: dict[tuple[str, str], int]) -> dict[str, Any]:
    out = pin.to_json()
    out["diff"] = page_diff(pin.definition, pin.pending_definition) if pin.quarantined else None
    out["held"] = held.get((pin.upstream, pin.tool), 0)
    return out


async def list_pins(request: Request) -> Response:
    st = web_state(request)
    pins = await st.store.pins(
        upstream=request.query_params.get("upstream") or None, quarantined_only=flag_param(request, "quarantined")
    )
    held = await _held_for_quarantine(st)
    return JSONResponse({"pins": [_pin_json(p, held) for p in pins], "now": st.clock.now()})


async def repin(request: Request) -> Response:
    st = web_state(request)
    await json_body(request, _SMALL_BODY)
    upstream, tool = request.path_params["upstream"], request.path_params["tool"]
    try:
        pin = await st.store.repin(upstream, tool, by=principal(request).reviewer, channel=principal(request).channel)
    except AlreadyDecidedError as e:
        raise Problem(409, "not_quarantined", str(e)) from None
    st.changes.notify()
    return JSONResponse(_pin_json(pin, await _held_for_quarantine(st)))


# ---------------------------------------------------------------------------------------------- reviews


async def review(request: Request) -> Response:
    st = web_state(request)
    body = await json_body(request, _SMALL_BODY)
    outcome = body.get("outcome")
    if outcome not in ("confirm", "fail"):
        raise Problem(422, "bad_outcome", 'outcome must be "confirm" or "fail"')
    reason = reason_of(body)
    try:
        rec = await st.gate.review(
            request.path_params["call_id"],
            ok=outcome == "confirm",
            by=principal(request).reviewer,
            channel=principal(request).channel,
            reason=reason,
        )
    except AlreadyDecidedError as e:
        raise Problem(409, "not_under_review", str(e), state=e.state) from None
    st.changes.notify()
    return JSONResponse(await call_detail(st, rec))


def quarantine_of(rec: CallRecord) -> dict[str, Any] | None:
    """A call held because its tool's definition changed: the proxy's message and its diff."""
    if not is_quarantine_hold(rec.reasons):
        return None
    message, _, diff = rec.reasons[0].partition("Changes:\n")
    return {"message": message.strip(), "diff": diff.splitlines()}


def _review_json(st: WebState, rec: CallRecord, attempts: int) -> dict[str, Any]:
    rule = st.policy.rule_named(rec.rule)
    compensate = rule.compensate if rule else None
    return {
        "window_closes_at": rec.deadline_at if rec.state in REVIEW_STATES else None,
        "rule_known": rule is not None,
        "on_timeout": rule.on_review_timeout if rule else None,
        "irreversible_ok": rule.irreversible_ok if rule else None,
        "compensate": {"tool": compensate.tool, "upstream": compensate.upstream or rec.upstream}
        if compensate
        else None,
        "attempts": attempts,
    }


async def tool_definition(st: WebState, rec: CallRecord) -> dict[str, Any] | None:
    """The tool's definition as the upstream gave it when the call was made (its pin, or the changed
    definition a quarantined call was held under): title, description, input schema, annotations.
    ``as_called`` is false unless this is known to be that version (the call recorded no definition hash, or
    the tool was re-pinned since)."""
    pins = [p for p in await st.store.pins(upstream=rec.upstream) if p.tool == rec.tool]
    if not pins:
        return None
    pin = pins[0]
    if rec.tooldef_hash is not None and rec.tooldef_hash == pin.pending_hash and pin.pending_definition is not None:
        definition, as_called = pin.pending_definition, True
    else:
        definition, as_called = pin.definition, rec.tooldef_hash is not None and rec.tooldef_hash == pin.hash
    return {
        "title": definition.get("title"),
        "description": definition.get("description"),
        "input_schema": definition.get("inputSchema"),
        "annotations": definition.get("annotations"),
        "hash": pin.pending_hash if definition is pin.pending_definition else pin.hash,
        "as_called": as_called,
    }


async def call_detail(st: WebState, rec: CallRecord) -> dict[str, Any]:
    """A call for its card: the record, secrets, and what the page offers or warns about."""
    out = call_json(rec, detail=True, policy=st.policy)
    out["tool_definition"] = await tool_definition(st, rec)
    escalation, attempts = await st.store.queries.escalation_and_attempts(rec.id)
    out["escalation"] = escalation
    out["lease_offer"] = _lease_offer(st, rec) if rec.state == State.PENDING else None
    out["review"] = _review_json(st, rec, attempts) if rec.gate == "audit" else None
    quarantine = quarantine_of(rec)
    if quarantine is not None:
        pins = [p for p in await st.store.pins(upstream=rec.upstream) if p.tool == rec.tool]
        quarantine["still_quarantined"] = bool(pins and pins[0].quarantined)
    out["quarantine"] = quarantine
    return out


async def gates_snapshot(st: WebState) -> dict[str, Any]:
    """For the live view: calls to review, rollbacks that failed, quarantined tools."""
    reviews = await st.store.queries.review_queue(arguments_cap=HEADLINE_ARGS_CAP)
    failed = await st.store.queries.rollbacks_failed(arguments_cap=HEADLINE_ARGS_CAP)
    quarantined = await st.store.pins(quarantined_only=True)

    def row(r: QueueRow) -> dict[str, Any]:
        return {
            "id": r.id,
            "state": r.state,
            "created_at": r.created_at,
            "deadline_at": r.deadline_at,
            "risk": r.risk,
            "upstream": r.upstream,
            "tool": r.tool,
            "summary": r.summary,
            "summary_secrets": summary_secrets(r.summary),
            **row_headline(r.tool, r.upstream, r.summary, r.short_arguments, r.input_schema),
        }

    return {
        "reviews": [row(r) for r in reviews],
        "rollback_failed": [row(r) for r in failed],
        "quarantined": [
            {"upstream": p.upstream, "tool": p.tool, "changed_at": p.changed_at} for p in quarantined if p.quarantined
        ],
    }
