"""Stats in the viewer's calendar days: each bar of "Outcomes over time" is one local day (or, for the last
24 hours, one clock hour), today's calls are under today's date, and no bar lies in the future."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mcp_gatekeeper.reports import calendar_buckets, resolve_zone

from .conftest import Harness, new_call, refund_args

pytestmark = pytest.mark.anyio

AUCKLAND = ZoneInfo("Pacific/Auckland")


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_days_start_at_local_midnight_and_end_with_today() -> None:
    now = _at("2027-01-15T12:00:00")  # Auckland: 01:00 on the 16th
    starts, length = calendar_buckets(now, 14, AUCKLAND)
    assert length == 86400 and len(starts) == 14
    local = [datetime.fromtimestamp(s, AUCKLAND) for s in starts]
    assert all((d.hour, d.minute) == (0, 0) for d in local)
    assert local[-1].date().isoformat() == "2027-01-16" and starts[-1] <= now  # today, not tomorrow
    assert [b.date() - a.date() for a, b in itertools.pairwise(local)] == [timedelta(days=1)] * 13


def test_a_day_with_a_clock_change_is_23_hours_long() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    starts, _ = calendar_buckets(_at("2027-03-29T12:00:00"), 3, berlin)  # clocks went forward on the 28th
    assert [round((b - a) / 3600) for a, b in itertools.pairwise(starts)] == [24, 23]


def test_the_last_24_hours_are_clock_hours_ending_with_this_one() -> None:
    now = _at("2027-01-15T12:34:56")
    india = ZoneInfo("Asia/Kolkata")  # UTC+5:30: its hours start at :30 UTC
    starts, length = calendar_buckets(now, 1, india)
    assert length == 3600 and starts[0] <= now - 86400 < starts[1] and starts[-1] <= now < starts[-1] + 3600
    assert all(datetime.fromtimestamp(s, india).minute == 0 for s in starts)


@pytest.mark.parametrize(
    ("name", "offset", "expected"),
    [
        ("Pacific/Auckland", None, "Pacific/Auckland"),
        ("../../etc/passwd", 780, "UTC+13:00"),  # a path is not a zone: the browser's offset is used
        ("/etc/localtime", None, "UTC"),
        ("x" * 5000, None, "UTC"),
        ("Mars/Olympus_Mons", -300, "UTC-05:00"),
        ("", None, "UTC"),
    ],
)
def test_the_viewer_zone_falls_back_safely(name: str, offset: int | None, expected: str) -> None:
    assert str(resolve_zone(name, offset)) == expected


async def test_todays_calls_are_under_todays_date_in_the_viewers_zone(harness: Harness) -> None:
    clock = harness.clock
    clock.advance(_at("2027-01-15T10:30:00") - clock.now())  # type: ignore[attr-defined]
    await harness.hold(
        new_call(harness.policy, arguments=refund_args(order_id="1")), timeout=86400
    )  # 23:30 on the 15th in Auckland
    clock.advance(3600)  # type: ignore[attr-defined]  # 11:30 UTC: 00:30 on the 16th in Auckland
    await harness.hold(new_call(harness.policy, arguments=refund_args(order_id="2")), timeout=86400)
    clock.advance(1800)  # type: ignore[attr-defined]
    for query in ("tz=Pacific%2FAuckland", "tz=Nowhere%2FAtAll&utc_offset=780"):
        st = (await harness.client.get(f"/api/stats?days=14&{query}", headers=harness.bearer)).json()
        series = st["series"]
        assert len(series) == 14 and series[-1]["start"] <= clock.now()
        days = [datetime.fromtimestamp(b["start"], AUCKLAND).date().isoformat() for b in series[-2:]]
        assert days == ["2027-01-15", "2027-01-16"]
        assert [b["pending"] for b in series[-2:]] == [1, 1]
    st = (await harness.client.get("/api/stats?days=14&tz=UTC", headers=harness.bearer)).json()
    assert st["series"][-1]["pending"] == 2  # both on the 15th in UTC


async def test_a_bad_offset_is_refused(harness: Harness) -> None:
    r = await harness.client.get("/api/stats?days=14&utc_offset=99999", headers=harness.bearer)
    assert r.status_code == 400
