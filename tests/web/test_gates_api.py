"""Reviews, leases and pins through the JSON API: every endpoint, every status, and what the card is told."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_gatekeeper.models import Decision, LeaseRequest, State
from mcp_gatekeeper.web import live_snapshot

from .conftest import (
    BASE,
    FILE_ARGS,
    PORT,
    TOOL_V2,
    Harness,
    call_for,
    new_call,
    quarantine_refunds,
    quarantined_call,
    ran_for_review,
    refund_args,
)

pytestmark = pytest.mark.anyio

LEASE = {"envelope": {"order_id": {"eq": "8821"}, "amount": {"lte": 750}}, "seconds": 3600, "calls": 5}


async def _under_review(h: Harness, tool: str = "write_file", **kw: Any) -> Any:
    args = FILE_ARGS if tool == "write_file" else {"ticket": "T-17", "body": "Closing as fixed."}
    upstream = "files" if tool == "write_file" else "tickets"
    return await ran_for_review(h.store, h.clock, call_for(h.policy, upstream, tool, args), **kw)


# ---------------------------------------------------------------------------------------------- reviews


async def test_review_card_says_what_ran_and_how_it_is_undone(harness: Harness) -> None:
    rec = await _under_review(harness, result={"content": [{"type": "text", "text": "wrote 27 bytes"}]})
    body = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()
    assert body["state"] == "under_review"
    assert body["gate"] == "audit"
    assert body["result"]["content"][0]["text"] == "wrote 27 bytes"
    assert body["review"] == {
        "window_closes_at": harness.clock.now() + 3600,
        "rule_known": True,
        "on_timeout": "keep",
        "irreversible_ok": False,
        "compensate": {"tool": "write_file", "upstream": "files"},
        "attempts": 0,
    }
    assert body["lease_offer"] is None and body["quarantine"] is None
    irreversible = await _under_review(harness, "post_comment")
    body = (await harness.client.get(f"/api/calls/{irreversible.id}", headers=harness.bearer)).json()
    assert body["review"]["compensate"] is None and body["review"]["irreversible_ok"] is True


async def test_confirm_then_second_review_is_409(harness: Harness) -> None:
    rec = await _under_review(harness)
    r = await harness.client.post(
        f"/api/calls/{rec.id[:10]}/review", headers=harness.bearer, json={"outcome": "confirm", "reason": "looks right"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "confirmed" and body["reason"] == "looks right"
    assert body["decided_by"].startswith("api:")
    last = (await harness.store.audit_events(call_id=rec.id))[-1]
    assert (last.event, last.actor, last.channel) == ("confirmed", body["decided_by"], "api")
    again = await harness.client.post(f"/api/calls/{rec.id}/review", headers=harness.bearer, json={"outcome": "fail"})
    assert again.status_code == 409
    assert again.json()["error"] == "not_under_review" and again.json()["state"] == "confirmed"
    assert (await harness.store.get(rec.id)).state == State.CONFIRMED


async def test_fail_records_the_reviewer_and_queues_the_undo(harness: Harness) -> None:
    rec = await _under_review(harness)
    headers = await harness.browser_headers()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/review", headers=headers, json={"outcome": "fail", "reason": "wrong file"}
    )
    assert r.status_code == 200, r.text
    row = await harness.store.get(rec.id)
    assert row.state == State.REVIEW_FAILED
    assert row.decided_by is not None and row.decided_by.startswith("web:")
    events = await harness.store.audit_events(call_id=rec.id)
    assert events[-1].event == "review_failed" and events[-1].detail == {"reason": "wrong file"}
    assert events[-1].actor == row.decided_by and events[-1].channel == "web"


async def test_unreviewed_call_can_still_be_reviewed(harness: Harness) -> None:
    rec = await _under_review(harness, window=60)
    harness.clock.advance(61)  # type: ignore[attr-defined]
    await harness.gate.sweep_once()
    assert (await harness.store.get(rec.id)).state == State.UNREVIEWED
    snap = await live_snapshot(harness.app.state.gk)
    assert [(c["id"], c["state"]) for c in snap["reviews"]] == [(rec.id, "unreviewed")]
    r = await harness.client.post(f"/api/calls/{rec.id}/review", headers=harness.bearer, json={"outcome": "confirm"})
    assert r.status_code == 200 and r.json()["state"] == "confirmed"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "bad_outcome"),
        ({"outcome": "approve"}, "bad_outcome"),
        ({"outcome": True}, "bad_outcome"),
        ({"outcome": "fail", "reason": 7}, "bad_reason"),
        ({"outcome": "fail", "reason": "x" * 2001}, "bad_reason"),
    ],
)
async def test_review_body_is_checked(harness: Harness, body: dict[str, Any], code: str) -> None:
    rec = await _under_review(harness)
    r = await harness.client.post(f"/api/calls/{rec.id}/review", headers=harness.bearer, json=body)
    assert r.status_code == 422 and r.json()["error"] == code
    assert (await harness.store.get(rec.id)).state == State.UNDER_REVIEW


async def test_review_of_unknown_or_held_call(harness: Harness) -> None:
    r = await harness.client.post("/api/calls/ffff0000/review", headers=harness.bearer, json={"outcome": "confirm"})
    assert r.status_code == 404
    held, holder = await harness.hold()
    r = await harness.client.post(f"/api/calls/{held.id}/review", headers=harness.bearer, json={"outcome": "confirm"})
    assert r.status_code == 409 and r.json()["state"] == "pending"
    assert not holder.done.is_set()
    r = await harness.client.post(
        f"/api/calls/{held.id}/review", headers={**harness.bearer, "content-type": "text/plain"}, content="{}"
    )
    assert r.status_code == 415


# ---------------------------------------------------------------------------------------------- leases


async def test_card_offers_a_lease_unless_critical_or_no_lease(harness: Harness) -> None:
    refund, _ = await harness.hold()
    delete, _ = await harness.hold(new_call(harness.policy, "delete_record", {"id": "r-1"}))
    wire, _ = await harness.hold(
        call_for(harness.policy, "orderdesk", "send_wire", {"iban": "DE00", "amount": 10}, client={})
    )
    offers = {}
    for rec in (refund, delete, wire):
        offers[rec.tool] = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()[
            "lease_offer"
        ]
    assert offers["issue_refund"]["offered"] is True and offers["issue_refund"]["why_not"] is None
    assert offers["delete_record"]["offered"] is False and "critical" in offers["delete_record"]["why_not"]
    assert offers["send_wire"]["offered"] is False and "no_lease" in offers["send_wire"]["why_not"]


async def test_approve_with_lease_then_list_and_revoke(harness: Harness) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest, "lease": LEASE}
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved"
    await holder.outcome()
    listed = (await harness.client.get("/api/leases", headers=harness.bearer)).json()
    [lease] = listed["leases"]
    assert lease["status"] == "active"
    assert lease["envelope"] == LEASE["envelope"]
    assert lease["expires_at"] == harness.clock.now() + 3600 and lease["calls_left"] == 5
    assert lease["source_call"] == rec.id
    assert lease["source_summary"] == "Issue $750 refund to john@example.com for order #8821"
    assert lease["created_by"].startswith("api:") and lease["tool_changed"] is False
    assert harness.policy.envelope_holds(lease["envelope"], refund_args(amount=500))
    assert not harness.policy.envelope_holds(lease["envelope"], refund_args(amount=751))

    headers = await harness.browser_headers()
    r = await harness.client.post(f"/api/leases/{lease['id']}/revoke", headers=headers, json={})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked" and r.json()["revoked_by"].startswith("web:")
    again = await harness.client.post(f"/api/leases/{lease['id']}/revoke", headers=headers, json={})
    assert again.status_code == 409 and again.json()["error"] == "already_revoked"
    assert (await harness.client.get("/api/leases", headers=harness.bearer)).json()["leases"] == []
    past = (await harness.client.get("/api/leases?all=1", headers=harness.bearer)).json()["leases"]
    assert [x["status"] for x in past] == ["revoked"]
    r = await harness.client.post("/api/leases/lnope/revoke", headers=harness.bearer, json={})
    assert r.status_code == 404
    r = await harness.client.get("/api/leases?all=maybe", headers=harness.bearer)
    assert r.status_code == 400


async def test_lease_status_expired_and_used_up(harness: Harness) -> None:
    a, _ = await harness.hold()
    await harness.gate.decide(
        a.id, Decision(approve=True, decided_by="web:x", channel="web", lease=LeaseRequest({}, seconds=60))
    )
    b, _ = await harness.hold(new_call(harness.policy, arguments=refund_args(order_id="9")))
    await harness.gate.decide(
        b.id, Decision(approve=True, decided_by="web:x", channel="web", lease=LeaseRequest({}, calls=1))
    )
    leases = await harness.store.leases()
    [used] = [x for x in leases if x.calls_left == 1]
    [timed] = [x for x in leases if x.expires_at is not None]
    assert await harness.store.use_lease(used.id, call_id=None)
    harness.clock.advance(61)  # type: ignore[attr-defined]
    past = (await harness.client.get("/api/leases?all=1", headers=harness.bearer)).json()["leases"]
    assert {x["id"]: x["status"] for x in past} == {used.id: "used_up", timed.id: "expired"}
    assert (await harness.client.get("/api/leases", headers=harness.bearer)).json()["leases"] == []


@pytest.mark.parametrize(
    ("lease", "code"),
    [
        ("an hour", "bad_lease"),
        ({"envelope": {}, "seconds": 60, "why": "x"}, "bad_lease"),
        ({"envelope": [], "seconds": 60}, "bad_lease"),
        ({"envelope": {}}, "bad_lease"),
        ({"envelope": {}, "seconds": 0}, "bad_lease"),
        ({"envelope": {}, "seconds": -5}, "bad_lease"),
        ({"envelope": {}, "seconds": True}, "bad_lease"),
        ({"envelope": {}, "seconds": "3600"}, "bad_lease"),
        ({"envelope": {}, "seconds": 10**9}, "bad_lease"),
        ({"envelope": {}, "calls": 2.5}, "bad_lease"),
        ({"envelope": {}, "calls": 0}, "bad_lease"),
        ({"envelope": {"amount": {"about": 5}}, "calls": 2}, "lease_refused"),
        ({"envelope": {"email": {"regex": "("}}, "calls": 2}, "lease_refused"),
    ],
)
async def test_bad_lease_is_422_and_the_call_stays_pending(harness: Harness, lease: Any, code: str) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest, "lease": lease}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == code
    assert (await harness.store.get(rec.id)).state == State.PENDING
    assert await harness.store.leases() == []
    assert not holder.done.is_set()


async def test_infinity_in_a_body_is_refused(harness: Harness) -> None:
    rec, _ = await harness.hold()
    body = '{"args_digest": "' + rec.args_digest + '", "lease": {"envelope": {}, "seconds": Infinity}}'
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers={**harness.bearer, "content-type": "application/json"}, content=body
    )
    assert r.status_code == 422 and r.json()["error"] == "bad_json"


async def test_lease_refused_for_critical_no_lease_and_with_a_rejection(harness: Harness) -> None:
    delete, _ = await harness.hold(new_call(harness.policy, "delete_record", {"id": "r-1"}))
    wire, _ = await harness.hold(call_for(harness.policy, "orderdesk", "send_wire", {"iban": "DE00"}))
    for rec in (delete, wire):
        r = await harness.client.post(
            f"/api/calls/{rec.id}/approve",
            headers=harness.bearer,
            json={"args_digest": rec.args_digest, "lease": {"envelope": {}, "calls": 3}},
        )
        assert r.status_code == 422 and r.json()["error"] == "lease_refused", r.text
        assert (await harness.store.get(rec.id)).state == State.PENDING
    r = await harness.client.post(f"/api/calls/{delete.id}/reject", headers=harness.bearer, json={"lease": LEASE})
    assert r.status_code == 422 and r.json()["error"] == "bad_lease"
    assert (await harness.store.get(delete.id)).state == State.PENDING


async def test_lease_with_modified_arguments(harness: Harness) -> None:
    rec, holder = await harness.hold()
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve",
        headers=harness.bearer,
        json={"args_digest": rec.args_digest, "arguments": refund_args(amount=500), "lease": LEASE},
    )
    assert r.status_code == 200, r.text
    assert r.json()["modified_arguments"] == refund_args(amount=500)
    await holder.outcome()
    assert len(await harness.store.leases()) == 1


async def test_lease_envelope_secrets_are_located(harness: Harness) -> None:
    rec, _ = await harness.hold(call_for(harness.policy, "vault", "rotate", {"password": "hunter22"}))
    envelope = {"password": {"eq": "hunter22"}, "note": "token ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"}
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve",
        headers=harness.bearer,
        json={"args_digest": rec.args_digest, "lease": {"envelope": envelope, "calls": 1}},
    )
    assert r.status_code == 200, r.text
    [lease] = (await harness.client.get("/api/leases", headers=harness.bearer)).json()["leases"]
    kinds = {tuple(x["path"]): x["kind"] for x in lease["secrets"]}
    assert kinds == {("password", "eq"): "value of 'password'", ("note",): "GitHub token"}


# ---------------------------------------------------------------------------------------------- pins


async def test_quarantined_tool_listed_with_diff_and_repinned(harness: Harness) -> None:
    await quarantine_refunds(harness.store)
    held, holder = await harness.hold(quarantined_call(harness.policy))
    r = await harness.client.get("/api/pins?quarantined=1", headers=harness.bearer)
    assert r.status_code == 200
    [pin] = r.json()["pins"]
    assert (pin["upstream"], pin["tool"], pin["quarantined"], pin["held"]) == ("orderdesk", "issue_refund", True, 1)
    assert any(line.startswith("+") and "audit@evil.test" in line for line in pin["diff"])
    assert any(line.startswith("-") and "to the customer's card.\"" in line for line in pin["diff"])
    assert pin["diff"][:2] == ["--- pinned definition", "+++ definition now"]

    [queued] = (await live_snapshot(harness.app.state.gk))["pending"]
    assert queued["id"] == held.id and queued["quarantined"] is True
    card = (await harness.client.get(f"/api/calls/{held.id}", headers=harness.bearer)).json()
    q = card["quarantine"]
    assert q["message"].startswith("QUARANTINED: the tool's definition changed") and "Changes" not in q["message"]
    assert any("audit@evil.test" in line for line in q["diff"]) and q["still_quarantined"] is True
    assert card["lease_offer"]["offered"] is False and "quarantined" in card["lease_offer"]["why_not"]
    r = await harness.client.post(
        f"/api/calls/{held.id}/approve",
        headers=harness.bearer,
        json={"args_digest": held.args_digest, "lease": {"envelope": {}, "calls": 2}},
    )
    assert r.status_code == 422 and r.json()["error"] == "lease_refused"

    headers = await harness.browser_headers()
    r = await harness.client.post("/api/pins/orderdesk/issue_refund/repin", headers=headers, json={})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quarantined"] is False and body["diff"] is None and body["pinned_by"].startswith("web:")
    again = await harness.client.post("/api/pins/orderdesk/issue_refund/repin", headers=headers, json={})
    assert again.status_code == 409 and again.json()["error"] == "not_quarantined"
    assert (await harness.client.get("/api/pins?quarantined=1", headers=harness.bearer)).json()["pins"] == []
    [pinned] = (await harness.client.get("/api/pins", headers=harness.bearer)).json()["pins"]
    assert pinned["definition"] == TOOL_V2
    card = (await harness.client.get(f"/api/calls/{held.id}", headers=harness.bearer)).json()
    assert card["quarantine"]["still_quarantined"] is False
    assert not holder.done.is_set()  # re-pinning does not decide the call held meanwhile


async def test_repin_unknown_tool_is_404_and_odd_names_route(harness: Harness) -> None:
    r = await harness.client.post("/api/pins/orderdesk/nope/repin", headers=harness.bearer, json={})
    assert r.status_code == 404
    odd = {"name": "a/b c", "description": "v1"}
    await harness.store.check_pins("orderdesk", {"a/b c": ("h1", odd)})
    await harness.store.check_pins("orderdesk", {"a/b c": ("h2", {**odd, "description": "v2"})})
    r = await harness.client.post("/api/pins/orderdesk/a%2Fb%20c/repin", headers=harness.bearer, json={})
    assert r.status_code == 200, r.text
    assert r.json()["tool"] == "a/b c" and r.json()["hash"] == "h2"
    r = await harness.client.get("/api/pins?quarantined=2", headers=harness.bearer)
    assert r.status_code == 400


# ---------------------------------------------------------------------------------------------- escalation, live view


async def test_escalation_level_and_shorter_deadline_reach_the_page(harness: Harness) -> None:
    rec, _ = await harness.hold(timeout=3600)
    sooner = harness.clock.now() + 300
    assert await harness.store.sweeps.claim_escalation(
        rec.id, level=1, deadline_at=sooner, escalate_at=None, channels=["oncall"]
    )
    card = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()
    assert card["escalation"] == 1 and card["deadline_at"] == sooner
    snap = await live_snapshot(harness.app.state.gk)
    assert [(c["id"], c["escalation"], c["deadline_at"], c["quarantined"]) for c in snap["pending"]] == [
        (rec.id, 1, sooner, False)
    ]


async def test_live_snapshot_lists_reviews_failed_rollbacks_and_quarantine(harness: Harness) -> None:
    soon = await _under_review(harness, window=60)
    late = await _under_review(harness, window=600)
    broken = await _under_review(harness, "post_comment")
    await harness.gate.review(broken.id, ok=False, by="web:x", channel="web", reason=None)
    await harness.store.transition(broken.id, [State.REVIEW_FAILED], State.ROLLING_BACK, event="rolling_back")
    await harness.store.transition(
        broken.id, [State.ROLLING_BACK], State.ROLLBACK_FAILED, event="rollback_failed", error="no compensation"
    )
    await quarantine_refunds(harness.store)
    snap = await live_snapshot(harness.app.state.gk)
    assert [c["id"] for c in snap["reviews"]] == [soon.id, late.id]
    assert [c["id"] for c in snap["rollback_failed"]] == [broken.id]
    assert snap["quarantined"] == [{"upstream": "orderdesk", "tool": "issue_refund", "changed_at": harness.clock.now()}]
    body = (await harness.client.get(f"/api/calls/{broken.id}", headers=harness.bearer)).json()
    assert body["state"] == "rollback_failed" and body["error"] == "no compensation"


# ---------------------------------------------------------------------------------------------- the security rules


def _targets(rec_id: str, lease_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"/api/calls/{rec_id}/review", {"outcome": "fail"}),
        (f"/api/leases/{lease_id}/revoke", {}),
        ("/api/pins/orderdesk/issue_refund/repin", {}),
    ]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"cookie": True, "Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{PORT + 1}"}, 403),
        ({"cookie": True, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"}, 403),
        ({"cookie": True}, 403),  # a cookie alone is not enough
        ({"bearer": True, "Origin": "http://evil.test"}, 403),
        ({"bearer": True, "Host": f"evil.test:{PORT}"}, 421),
        ({"cookie": True, "Sec-Fetch-Site": "same-origin", "Origin": BASE, "Host": f"localhost:{PORT + 1}"}, 421),
    ],
)
async def test_new_state_changes_need_host_auth_and_origin(
    harness: Harness, headers: dict[str, Any], status: int
) -> None:
    rec = await _under_review(harness)
    lease_call, _ = await harness.hold()
    await harness.gate.decide(
        lease_call.id, Decision(approve=True, decided_by="web:x", channel="web", lease=LeaseRequest({}, calls=3))
    )
    [lease] = await harness.store.leases()
    await quarantine_refunds(harness.store)
    sent = {k: v for k, v in headers.items() if k not in ("cookie", "bearer")}
    if headers.get("cookie"):
        sent.update(await harness.login())
    if headers.get("bearer"):
        sent.update(harness.bearer)
    for url, body in _targets(rec.id, lease.id):
        r = await harness.client.post(url, headers=sent, json=body)
        assert r.status_code == status, (url, r.text)
    assert (await harness.store.get(rec.id)).state == State.UNDER_REVIEW
    assert (await harness.store.lease(lease.id)).revoked_at is None
    assert (await harness.store.pins(quarantined_only=True))[0].quarantined
    for url in ("/api/leases", "/api/pins"):  # reads need no same-origin proof, but the same login and Host
        r = await harness.client.get(url, headers=sent)
        assert r.status_code == (200 if status == 403 else status), (url, r.text)


async def test_new_endpoints_are_in_the_openapi_document(harness: Harness) -> None:
    spec = (await harness.client.get("/api/openapi.json", headers=harness.bearer)).json()
    for path in ("/api/calls/{id}/review", "/api/leases", "/api/leases/{id}/revoke", "/api/pins",
                 "/api/pins/{upstream}/{tool}/repin"):  # fmt: skip
        assert path in spec["paths"], path
    approve = spec["paths"]["/api/calls/{id}/approve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "lease" in approve["properties"]


async def test_the_default_envelope_for_a_path_is_under_its_normalised_folder(harness: Harness) -> None:
    # issue 11, case 3: the page built `path glob ".../src/*"`, which also covered `src/../.git/hooks/...`
    attack = "/w/src/../.git/hooks/pre-commit"
    rec, _ = await harness.hold(call_for(harness.policy, "files", "edit_file", {"path": attack, "edits": []}))
    offer = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()["lease_offer"]
    assert offer["paths"] == {"path": "/w/.git/hooks"}  # the folder it really lands in, not src

    rec, holder = await harness.hold(call_for(harness.policy, "files", "edit_file", {"path": "/w/src/a.py"}))
    offer = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()["lease_offer"]
    assert offer["paths"] == {"path": "/w/src"}
    lease = {"envelope": {"path": {"under": offer["paths"]["path"]}}, "calls": 5}
    r = await harness.client.post(
        f"/api/calls/{rec.id}/approve", headers=harness.bearer, json={"args_digest": rec.args_digest, "lease": lease}
    )
    assert r.status_code == 200, r.text
    await holder.outcome()
    [granted] = (await harness.client.get("/api/leases", headers=harness.bearer)).json()["leases"]
    assert harness.policy.envelope_holds(granted["envelope"], {"path": "/w/src/b.py"})
    assert not harness.policy.envelope_holds(granted["envelope"], {"path": attack})
