"""Stats, secrets masking and the audit export."""

from __future__ import annotations

import pytest

from mcp_gatekeeper.models import Decision
from mcp_gatekeeper.webauth import keyed_hash
from mcp_gatekeeper.webredact import find_secrets, redact

from .conftest import FILE_ARGS, Harness, call_for, new_call, ran_for_review, refund_args

pytestmark = pytest.mark.anyio

GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
SK = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"


def test_find_secrets_patterns_and_key_names() -> None:
    args = {
        "headers": {"Authorization": f"Bearer {JWT}"},
        "cmd": f"export GITHUB_TOKEN={GHP} && aws --key {AWS}",
        "config": {"api_key": "q8Zr2Lm0Xv7Nw4Pt9Kc1", "password": "hunter2", "name": "plain words here"},
        "list": [SK],
    }
    hits = {(tuple(h.path), h.kind) for h in find_secrets(args)}
    assert (("headers", "Authorization"), "JSON Web Token") in hits
    assert (("cmd",), "GitHub token") in hits
    assert (("cmd",), "AWS access key id") in hits
    assert (("config", "api_key"), "value of 'api_key'") in hits
    assert (("config", "password"), "value of 'password'") in hits
    assert (("list", 0), "API secret key (sk-…)") in hits
    assert not any(p == ("config", "name") for p, _ in hits)


def test_secret_spans_are_utf16_offsets() -> None:
    text = f"😀 token {GHP}"
    [hit] = find_secrets({"note": text})
    assert text.encode("utf-16-le")[hit.start16 * 2 : hit.end16 * 2].decode("utf-16-le") == GHP


def test_redact_keeps_context_and_drops_the_secret() -> None:
    out = redact({"cmd": f"curl -H 'X: {GHP}' x"}, lambda v: keyed_hash("k", v))
    assert GHP not in out["cmd"]
    assert out["cmd"].startswith("curl -H 'X: ⟦GitHub token: hmac-sha256:")


async def test_card_reports_secret_locations(harness: Harness) -> None:
    rec, _ = await harness.hold(new_call(harness.policy, arguments=refund_args(email=f"john@example.com {GHP}")))
    body = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()
    [hit] = body["secrets"]["arguments"]
    assert hit["path"] == ["email"]
    assert hit["kind"] == "GitHub token"
    assert body["arguments"]["email"][hit["start"] : hit["end"]] == GHP


async def test_audit_export_has_hmacs_not_secrets(harness: Harness) -> None:
    rec, holder = await harness.hold(new_call(harness.policy, arguments=refund_args(email=f"a@b.c {AWS}")))
    await harness.client.post(
        f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={"reason": f"never send {GHP} again"}
    )
    await holder.outcome()
    r = await harness.client.get("/api/audit?export=1", headers=harness.bearer)
    assert r.status_code == 200
    assert "attachment" in r.headers["content-disposition"]
    assert AWS not in r.text and GHP not in r.text
    assert keyed_hash(harness.token, AWS) in r.text
    assert keyed_hash(harness.token, GHP) in r.text
    body = r.json()
    assert body["chain"]["ok"] is True
    assert [c["id"] for c in body["calls"]] == [rec.id]


async def test_audit_for_one_call_with_chain_status(harness: Harness) -> None:
    rec, holder = await harness.hold()
    await harness.client.post(f"/api/calls/{rec.id}/reject", headers=harness.bearer, json={})
    await holder.outcome()
    body = (await harness.client.get(f"/api/audit?call_id={rec.id[:10]}", headers=harness.bearer)).json()
    assert [e["event"] for e in body["events"]] == ["held", "rejected"]
    assert body["chain"]["ok"] is True
    assert (await harness.client.get("/api/audit?call_id=ffff0000", headers=harness.bearer)).status_code == 404


async def test_stats_rates_latency_and_fatigue(harness: Harness) -> None:
    decisions = [(True, None, 1.0), (True, refund_args(amount=10), 30.0), (False, None, 5.0), (True, None, 0.5)]
    for approve, edit, after in decisions:
        rec, holder = await harness.hold()
        harness.clock.advance(after)  # type: ignore[attr-defined]
        await harness.gate.decide(
            rec.id, Decision(approve=approve, decided_by="web:rev1", channel="web", arguments=edit)
        )
        await holder.outcome()
    rec, holder = await harness.hold(timeout=10)
    harness.clock.advance(11)  # type: ignore[attr-defined]
    await holder.outcome()
    await harness.hold()  # still pending
    r = await harness.client.get("/api/stats?days=1", headers=harness.bearer)
    assert r.status_code == 200
    st = r.json()
    assert st["totals"] == {"approved": 2, "modified": 1, "rejected": 1, "expired": 1, "cancelled": 0, "pending": 1}
    ttd = st["time_to_decision"]
    assert ttd["count"] == 4
    assert ttd["median"] == 3.0
    assert st["fatigue"]["fast_decisions"] == 2
    assert st["fatigue"]["longest_approval_run"] == 2
    [rule] = st["per_rule"]
    assert rule["rule"] == "refunds" and rule["rejected"] == 1
    assert sum(b["approved"] for b in st["series"]) == 2
    assert st["usage"][0]["tool"] == "issue_refund" and st["usage"][0]["held"] == 6


async def test_stats_flag_rules_that_time_out_and_count_escalations(harness: Harness) -> None:
    # refunds: 2 of 5 held calls time out (40%, over 5 calls): miscalibrated
    for i, fate in enumerate(["expire", "approve", "expire", "reject", "approve"]):
        rec, holder = await harness.hold(new_call(harness.policy, arguments=refund_args(order_id=str(i))), timeout=10)
        if i == 0:  # escalated twice; the second step shortens the deadline
            await harness.store.sweeps.claim_escalation(
                rec.id, level=1, deadline_at=None, escalate_at=None, channels=["stderr"]
            )
            await harness.store.sweeps.claim_escalation(
                rec.id, level=2, deadline_at=harness.clock.now() + 5, escalate_at=None, channels=["oncall"]
            )
        if fate == "expire":
            harness.clock.advance(11)  # type: ignore[attr-defined]
        else:
            await harness.gate.decide(rec.id, Decision(approve=fate == "approve", decided_by="web:r", channel="web"))
        await holder.outcome()
    # deletes: 1 of 1 timed out, too few calls to flag
    rec, holder = await harness.hold(new_call(harness.policy, "delete_record", {"id": "r-1"}), timeout=10)
    harness.clock.advance(11)  # type: ignore[attr-defined]
    await holder.outcome()
    # audit-gated calls are reviews, not holds: they stay out of the held totals
    done = await ran_for_review(
        harness.store, harness.clock, call_for(harness.policy, "files", "write_file", FILE_ARGS)
    )
    await harness.gate.review(done.id, ok=True, by="web:r", channel="web", reason=None)
    await ran_for_review(harness.store, harness.clock, call_for(harness.policy, "files", "write_file", FILE_ARGS))

    st = (await harness.client.get("/api/stats?days=1", headers=harness.bearer)).json()
    assert st["totals"] == {"approved": 2, "modified": 0, "rejected": 1, "expired": 3, "cancelled": 0, "pending": 0}
    rules = {r["rule"]: r for r in st["per_rule"]}
    assert set(rules) == {"refunds", "deletes"}
    assert rules["refunds"]["timeout_rate"] == 0.4 and rules["refunds"]["miscalibrated"] is True
    assert rules["refunds"]["escalated"] == 1 and rules["refunds"]["finished"] == 5
    assert rules["deletes"]["timeout_rate"] == 1.0 and rules["deletes"]["miscalibrated"] is False
    assert st["timeouts"]["miscalibrated"] == [
        {"rule": "refunds", "finished": 5, "expired": 2, "timeout_rate": 0.4, "escalated": 1}
    ]
    esc = st["escalations"]
    assert esc["events"] == 2 and esc["calls"] == 1 and esc["deadline_shortened"] == 1
    assert esc["by_level"] == [{"level": 1, "count": 1, "shortened": 0}, {"level": 2, "count": 1, "shortened": 1}]
    assert esc["outcomes"]["expired"] == 1
    assert st["reviews"]["confirmed"] == 1 and st["reviews"]["under_review"] == 1
    assert st["time_to_decision"]["count"] == 3  # the review is not a decision on a hold
    files = [u for u in st["usage"] if u["tool"] == "write_file"]
    assert files == [{"upstream": "files", "tool": "write_file", "total": 2, "held": 0, "allowed": 0, "denied": 0}]


KEY_LINES = (
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictG"
)
PEM = f"-----BEGIN PRIVATE KEY-----\n{KEY_LINES}\n-----END PRIVATE KEY-----"
MAIL = {
    "to": "ops@example.com",
    "subject": "Key rotation for staging",
    "body": f"Hi ops,\nthe new key:\n{PEM}\nInstall it today.\nThanks, Ana",
}


def _spans(value: dict[str, object]) -> list[tuple[tuple[str | int, ...], str]]:
    return [(h.path, value[str(h.path[0])][h.start : h.end]) for h in find_secrets(value)]  # type: ignore[index]


def test_a_pem_block_masks_from_begin_to_end_and_nothing_around_it() -> None:
    (hit,) = find_secrets(MAIL)
    assert hit.path == ("body",) and hit.kind == "private key (PEM)"
    assert MAIL["body"][hit.start : hit.end] == PEM  # exactly the block: not the greeting, not what follows
    assert MAIL["body"][: hit.start] == "Hi ops,\nthe new key:\n"
    assert MAIL["body"][hit.end :] == "\nInstall it today.\nThanks, Ana"
    out = redact(MAIL, lambda v: "x")
    assert out["subject"] == MAIL["subject"] and out["to"] == MAIL["to"]
    assert out["body"] == "Hi ops,\nthe new key:\n⟦private key (PEM): x⟧\nInstall it today.\nThanks, Ana"


def test_an_unterminated_pem_block_masks_to_the_end_and_nothing_before_it() -> None:
    body = f"Before the key.\n-----BEGIN RSA PRIVATE KEY-----\n{KEY_LINES}"
    assert _spans({"body": body}) == [(("body",), body[len("Before the key.\n") :])]


def test_two_blocks_and_other_pem_kinds_each_mask_only_themselves() -> None:
    ec = "-----BEGIN EC PRIVATE KEY-----\r\nMHcCAQEEIBkg\r\n-----END EC PRIVATE KEY-----"
    body = f"one {PEM} two {ec} three"
    assert [s for _, s in _spans({"body": body})] == [PEM, ec]
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"  # public: not a secret
    assert find_secrets({"body": f"chain: {cert}"}) == []


async def test_the_card_locates_only_the_key_and_never_in_subject_or_summary(harness: Harness) -> None:
    summary = "Email ops@example.com: Key rotation for staging"
    rec, _ = await harness.hold(call_for(harness.policy, "mail", "send_email", MAIL, summary=summary))
    body = (await harness.client.get(f"/api/calls/{rec.id}", headers=harness.bearer)).json()
    assert body["secrets"]["summary"] == [] and body["summary"] == summary
    (hit,) = body["secrets"]["arguments"]
    assert hit["path"] == ["body"] and body["arguments"]["body"][hit["start"] : hit["end"]] == PEM
