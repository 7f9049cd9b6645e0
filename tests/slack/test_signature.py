"""Slack's v0 request signature: Slack's own published example, the window, and what an attacker might send."""

from __future__ import annotations

from mcp_gatekeeper.slack.signature import WINDOW, sign, verify

# Slack's worked example ("Verifying requests from Slack"): a slash command's body, signed with a sample secret
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_STAMP = "1531420618"
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_slacks_published_example_verifies() -> None:
    assert sign(DOC_SECRET, DOC_STAMP, DOC_BODY) == DOC_SIGNATURE
    assert verify(DOC_SECRET, timestamp=DOC_STAMP, signature=DOC_SIGNATURE, body=DOC_BODY, now=1531420618.0).ok


def test_the_window_is_five_minutes_either_way() -> None:
    t = float(DOC_STAMP)
    for now, ok in ((t + WINDOW, True), (t - WINDOW, True), (t + WINDOW + 1, False), (t - WINDOW - 1, False)):
        assert verify(DOC_SECRET, timestamp=DOC_STAMP, signature=DOC_SIGNATURE, body=DOC_BODY, now=now).ok is ok


def test_what_an_attacker_might_send_is_refused() -> None:
    now = float(DOC_STAMP)
    bad = [
        (DOC_SECRET, DOC_STAMP, DOC_SIGNATURE, DOC_BODY + b"&x=1"),  # body changed after signing
        (DOC_SECRET, "1531420619", DOC_SIGNATURE, DOC_BODY),  # timestamp changed (it is signed too)
        (DOC_SECRET, DOC_STAMP, DOC_SIGNATURE.upper(), DOC_BODY),  # hex is compared exactly
        (DOC_SECRET, DOC_STAMP, DOC_SIGNATURE.replace("v0=", "v1="), DOC_BODY),  # another version
        (DOC_SECRET, DOC_STAMP, DOC_SIGNATURE[3:], DOC_BODY),  # no version prefix
        (DOC_SECRET, DOC_STAMP, "", DOC_BODY),
        (DOC_SECRET, None, DOC_SIGNATURE, DOC_BODY),
        (DOC_SECRET, "", DOC_SIGNATURE, DOC_BODY),
        (DOC_SECRET, "1531420618.0", DOC_SIGNATURE, DOC_BODY),  # not whole seconds
        (DOC_SECRET, "-1531420618", DOC_SIGNATURE, DOC_BODY),
        (DOC_SECRET, "１５３１４２０６１８", DOC_SIGNATURE, DOC_BODY),  # full-width digits pass isdigit() alone
        (DOC_SECRET, DOC_STAMP, DOC_SIGNATURE + "é", DOC_BODY),  # non-ASCII in the header
        ("", DOC_STAMP, sign("", DOC_STAMP, DOC_BODY), DOC_BODY),  # an empty secret never verifies
        ("another-secret", DOC_STAMP, DOC_SIGNATURE, DOC_BODY),
    ]
    for secret, stamp, signature, body in bad:
        assert not verify(secret, timestamp=stamp, signature=signature, body=body, now=now).ok, (stamp, signature)
