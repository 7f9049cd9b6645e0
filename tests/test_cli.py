"""The command line: decisions from another process, refusals with reasons, and safe terminal output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from harness import FEATURE_SERVER, call_log, cli, gatekeeper, wrap_params

from mcp_gatekeeper.cli import escape, main

CONFIG = """
[ui]
autostart = false
[[rules]]
name = "no-etc"
tool = "write_note"
when = { path = { glob = "/etc/*" } }
gate = "deny"
[[rules]]
name = "notes"
tool = "write_note"
gate = "hard"
summary = "Write {path}"
"""


def test_explain_names_rule_gate_risk_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[rules]]\nname = "big-refunds"\ntool = "issue_refund"\nwhen = { amount = { gt = 1000 } }\ngate = "hard"\nrisk = "critical"\n'
    )
    assert main(["explain", "--config", str(cfg), "issue_refund", "--args", '{"amount": 5000}', "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["action"], out["gate"], out["risk"], out["rule"]) == ("hold", "hard", "critical", "big-refunds")
    assert any("amount gt 1000" in r for r in out["reasons"])
    assert main(["explain", "--config", str(cfg), "issue_refund", "--args", '{"amount": 5}']) == 0
    text = capsys.readouterr().out
    assert "HOLD" in text and "no rule matched" in text  # small refund: built-in default (refund is a write)
    assert main(["explain", "--config", str(cfg), "read_file"]) == 0
    assert "ALLOW" in capsys.readouterr().out


def test_check_config_reports_every_bad_key_with_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[ui]\nport = 8765\n\n[[rules]]\ntool = "x"\ngate = "maybe"\n\n[[rules]]\ntool = "y"\ngate = "allow"\ncolour = "red"\n'
    )
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "rules[0].gate" in err and "line 6" in err
    assert "rules[1].colour" in err and "line 11" in err


def test_escape_neutralises_terminal_controls() -> None:
    nasty = "ok\x1b[2J\x1b]0;pwned\x07\rrm -rf /\u202egnp.exe\U000e0041"
    out = escape(nasty)
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out and "\U000e0041" not in out
    assert "\\u001b" in out and "\\u202e" in out


@pytest.mark.anyio
async def test_pending_show_approve_reject_from_another_process(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "calls.jsonl"
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher), anyio.create_task_group() as tg:
            results: dict[str, object] = {}

            async def call(key: str, args: dict[str, str]) -> None:
                results[key] = await client.call_tool("write_note", args)

            tg.start_soon(call, "a", {"path": "/tmp/a", "content": "\x1b[31mred\u202e"})
            a = await watcher.held()
            tg.start_soon(call, "b", {"path": "/tmp/b", "content": "b"})
            b = await watcher.held()

            _, out, _ = await cli(home, "pending", "--json")
            rows = json.loads(out)
            assert {r["id"][:8] for r in rows} == {a, b}
            for r in rows:
                assert {"id", "state", "upstream", "tool", "arguments", "created_at"} <= set(r)
                assert r["state"] == "pending" and r["upstream"] == "feat" and r["tool"] == "write_note"

            _, out, _ = await cli(home, "show", a)
            assert "\x1b" not in out and "\u202e" not in out and "\\u001b" in out  # escaped, visible
            _, out, _ = await cli(home, "pending")
            assert "Write /tmp/a" in out and "2 pending" in out

            rc, _, err = await cli(home, "approve", a, "--args", "{not json", check=False)
            assert rc == 2 and "not valid JSON" in err
            rc, _, err = await cli(home, "approve", a, "--args", json.dumps({"path": 3}), check=False)
            assert rc == 1 and "input schema" in err  # schema-invalid edit refused, call stays pending
            rc, _, err = await cli(
                home, "approve", a, "--args", json.dumps({"path": "/etc/x", "content": "c"}), check=False
            )
            assert rc == 1 and "denied by policy" in err  # an edit that lands in a deny rule is refused
            _, out, _ = await cli(home, "show", a, "--json")
            assert json.loads(out)["state"] == "pending"

            await cli(home, "approve", a)
            await cli(home, "reject", b, "--reason", "not today")
            rc, _, err = await cli(home, "approve", b, check=False)
            assert rc == 1 and "already rejected" in err
            rc, _, err = await cli(home, "approve", "zzzz", check=False)
            assert rc == 1 and "no call" in err
    assert [c["arguments"]["path"] for c in call_log(log) if c["tool"] == "write_note"] == ["/tmp/a"]
    b_text = results["b"].content[0].text  # type: ignore[attr-defined]
    assert results["b"].is_error and "not today" in b_text  # type: ignore[attr-defined]
    _, out, _ = await cli(home, "show", b, "--json")
    shown = json.loads(out)
    assert shown["decided_by"].startswith("cli:") and [e["event"] for e in shown["audit"]] == ["held", "rejected"]


KEY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"


@pytest.mark.anyio
async def test_show_masks_exactly_the_secret_and_reveals_it_on_request(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "gk.toml"
    cfg.write_text(CONFIG)
    log = tmp_path / "calls.jsonl"
    pem = f"-----BEGIN PRIVATE KEY-----\n{KEY}\n-----END PRIVATE KEY-----"
    note = {"path": "/tmp/keys", "content": f"Hi ops,\n{pem}\nInstall it today."}
    params = wrap_params(home, cfg, "feat", [sys.executable, str(FEATURE_SERVER), "--call-log", str(log)])
    with anyio.fail_after(60):
        async with gatekeeper(params) as (client, watcher), anyio.create_task_group() as tg:

            async def call() -> None:
                await client.call_tool("write_note", note)

            tg.start_soon(call)
            held = await watcher.held()
            _, shown, _ = await cli(home, "show", held)
            _, revealed, _ = await cli(home, "show", held, "--reveal")
            _, raw, _ = await cli(home, "show", held, "--json")
            _, pending, _ = await cli(home, "pending")
            await cli(home, "reject", held)
    assert KEY not in shown and "BEGIN PRIVATE KEY" not in shown
    masked = f"⟦private key (PEM): masked, {len(pem)} characters; show --reveal⟧"
    assert f'"content": "Hi ops,\\n{masked}\\nInstall it today."' in shown  # before and after stay readable
    assert "summary      Write /tmp/keys" in shown
    assert KEY in revealed and json.loads(raw)["arguments"] == note
    assert "Write /tmp/keys" in pending and KEY not in pending
