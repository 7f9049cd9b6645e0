"""``mcp-gatekeeper report`` and ``export`` through ``main([...])`` on a real data home."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mcp_gatekeeper.cli import main
from mcp_gatekeeper.clock import FakeClock
from mcp_gatekeeper.store import Store

from .conftest import API_KEY, BEARER, PASSWORD, REFUND_DEF, History, secret_args


async def _seed(home: Path) -> None:
    clock = FakeClock(time.time() - 3600)
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("seed")
        await store.check_pins("orderdesk", {"issue_refund": ("h-refund-1", REFUND_DEF)})
        h = History(store, clock)
        await h.held(rule="refunds", decision="approved", wait=1, arguments=secret_args("1"))
        await h.held(rule="refunds", decision="modified", wait=30, reviewer="bob", arguments=secret_args("2"),
                     modified={**secret_args("2"), "amount": 1})  # fmt: skip
        await h.held(rule="refunds", decision="rejected", wait=8, reviewer="bob", reason=f"no: {BEARER}")


@pytest.fixture
def seeded(home: Path) -> Path:
    import anyio

    anyio.run(_seed, home)
    return home


def test_report_md_to_stdout_and_html_to_a_file(
    seeded: Path, no_ui_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(no_ui_config), "--since", "7d", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("## Weekly gate review") and "| refunds | 3 | 1 (33%) | 1 (33%) | 1 (33%) | 0 (0%) | 0 |" in out
    )
    target = tmp_path / "review.html"
    assert main(["report", "--config", str(no_ui_config), "--format", "html", "--out", str(target)]) == 0
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<style>" in page and "<script" not in page
    assert BEARER.split()[1] not in page


def test_report_refuses_a_bad_period(seeded: Path, no_ui_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--config", str(no_ui_config), "--since", "last week"]) == 2
    assert "--since" in capsys.readouterr().err


def test_export_streams_redacted_lines(
    seeded: Path, no_ui_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--config", str(no_ui_config), "--format", "jsonl", "--since", "7d"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [json.loads(line)["decision"] for line in lines] == ["approved", "modified", "rejected"]
    assert "exported 3 decision(s)" in captured.err
    for secret in (API_KEY, PASSWORD, BEARER.split()[1]):
        assert secret not in captured.out
    target = tmp_path / "pairs.jsonl"
    assert main(["export", "--config", str(no_ui_config), "--only", "modified", "--out", str(target)]) == 0
    [record] = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert record["preference_pair"]["chosen"]["amount"] == 1
    assert record["tool_description"] == REFUND_DEF["description"]
