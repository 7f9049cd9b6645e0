"""Issue 13, "Approving the wrong thing", in a real browser (Debian chromium driven by Playwright).

Each test holds real calls at a running gate behind the page served by ``serve`` and asserts what the
upstream would receive (the held client's outcome) and what the store holds, never only what the page says.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_gatekeeper.clock import SystemClock
from mcp_gatekeeper.config import validate_config
from mcp_gatekeeper.gate import Gate
from mcp_gatekeeper.models import Approved, Refused, State
from mcp_gatekeeper.policy import Policy
from mcp_gatekeeper.proxy import tooldef_hash
from mcp_gatekeeper.store import Store
from mcp_gatekeeper.web import build_app, mint_login_url, serve
from mcp_gatekeeper.webauth import load_or_create_token

from .conftest import CONFIG, Harness, Holder, RecordingNotifier, call_for, new_call, refund_args

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="needs the playwright Python package (pip install playwright)"),
]

SLACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "channel": {"type": "string", "description": "Channel name"},
        "text": {"type": "string"},
    },
    "required": ["channel", "text"],
}


@dataclass
class Page:
    h: Harness
    base: str
    browser: Any
    dialogs: list[str]

    async def open(self, fragment: str = "") -> Any:
        """A fresh tab of a logged-in browser, loading ``/`` + ``fragment`` from scratch."""
        ctx = await self.browser.new_context(viewport={"width": 1280, "height": 900})
        login = await ctx.new_page()
        await login.goto(await mint_login_url(self.h.store, self.base))
        await login.wait_for_selector("#whoami:has-text('web:')", state="attached")
        page = await ctx.new_page()
        await login.close()

        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        await page.goto(f"{self.base}/{fragment}")
        return page

    async def hold(self, new: Any) -> tuple[Any, Holder]:
        return await self.h.hold(new)


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Page]:
    from playwright.async_api import async_playwright

    clock = SystemClock()
    policy = Policy(validate_config(CONFIG))
    home = tmp_path / "home"
    token = load_or_create_token(home)
    notifier = RecordingNotifier()
    async with Store.open(home / "gatekeeper.db", clock) as store:
        await store.register_instance("card-test")
        gate = Gate(store, policy, clock, notifier=notifier)
        app = build_app(store=store, gate=gate, policy=policy, token=token, port=0, clock=clock)
        async with gate.running(), anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: serve(
                app, host="127.0.0.1", port=0, allow_remote=False, task_status=task_status
            ))  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            async with httpx2.AsyncClient(base_url=base) as client, async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                harness = Harness(home, store, gate, policy, clock, app, token, notifier, tg, client)
                try:
                    yield Page(harness, base, browser, [])
                finally:
                    await browser.close()
            tg.cancel_scope.cancel()


def edit_file(path: str) -> Any:
    """A medium-risk call (an unknown write-like tool, held by the defaults): `a` approves it at once."""
    return {"path": path, "dryRun": False}


async def _card_of(page: Any, call_id: str) -> None:
    await page.wait_for_selector(f'.card [title="{call_id}"]', timeout=5000)


# ---------------------------------------------------------------------------------------------- the link


async def test_a_link_to_a_call_opens_that_call_and_a_approves_that_call(web: Page) -> None:
    h = web.h
    calls = []
    for name in ("a.txt", "b.txt", "c.txt"):
        calls.append(await web.hold(call_for(h.policy, "files", "edit_file", edit_file(f"/w/{name}"))))
    (first, first_holder), (second, _), (third, third_holder) = calls
    page = await web.open(f"#/queue/{third.id}")  # a fresh tab, before the live list has arrived
    await _card_of(page, third.id)
    await page.wait_for_selector(f'.qitem.sel[data-id="{third.id}"]')
    assert page.url.endswith(f"#/queue/{third.id}")
    await page.keyboard.press("a")
    outcome = await third_holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == edit_file("/w/c.txt")
    assert (await h.store.get(first.id)).state == State.PENDING
    assert (await h.store.get(second.id)).state == State.PENDING

    # a link to a call decided since: its card (decided), not the oldest waiting call; `a` does nothing
    page2 = await web.open(f"#/queue/{third.id}")
    await page2.wait_for_selector(
        f'.card [title="{third.id}"] >> xpath=ancestor::article//*[contains(@class, "decided-banner")]'
    )
    await page2.keyboard.press("a")
    await page2.click(f'.qitem[data-id="{first.id}"]')
    await _card_of(page2, first.id)
    assert page2.url.endswith(f"#/queue/{first.id}")  # choosing a call rewrites the URL to name it
    await page2.fill(".actions .reason", "wrong file")
    await page2.click(".actions .btn.reject")
    assert isinstance(await first_holder.outcome(), Refused)  # the stray `a` had not approved it
    assert (await h.store.get(second.id)).state == State.PENDING
    assert web.dialogs == []


async def test_a_slow_card_never_replaces_the_one_chosen_since(web: Page) -> None:
    """The oldest call's card is slow to load; the reviewer picks another. The late answer must not take
    the slot, and `a` approves the call whose card is on screen."""
    h = web.h
    (slow, slow_holder) = await web.hold(call_for(h.policy, "files", "edit_file", edit_file("/w/slow.txt")))
    (chosen, chosen_holder) = await web.hold(call_for(h.policy, "files", "edit_file", edit_file("/w/chosen.txt")))
    release = anyio.Event()
    asked = anyio.Event()

    async def hold_back(route: Any) -> None:
        asked.set()
        await release.wait()
        await route.continue_()

    ctx_page = await web.open("#/history")
    await ctx_page.route(f"**/api/calls/{slow.id}", hold_back)
    await ctx_page.click("#nav a[data-view='queue']")  # the queue opens the oldest call: held back
    with anyio.fail_after(5):
        await asked.wait()
    await ctx_page.click(f'.qitem[data-id="{chosen.id}"]')
    await _card_of(ctx_page, chosen.id)
    async with ctx_page.expect_response(f"**/api/calls/{slow.id}"):
        release.set()
    await ctx_page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(null)))")
    assert await ctx_page.locator(f'.card [title="{slow.id}"]').count() == 0
    await _card_of(ctx_page, chosen.id)
    await ctx_page.keyboard.press("a")
    assert isinstance(await chosen_holder.outcome(), Approved)
    assert (await h.store.get(slow.id)).state == State.PENDING
    assert not slow_holder.done.is_set()


# ---------------------------------------------------------------------------------------------- edit, then approve


async def test_edit_then_approve_sends_the_edit_after_the_diff_is_confirmed(web: Page) -> None:
    h = web.h
    rec, holder = await web.hold(new_call(h.policy, arguments=refund_args(amount=119.99)))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    await page.fill("#f-amount", "100")
    await page.wait_for_selector(".editor .diff .now")
    assert " ".join((await page.text_content(".editor .diff")).split()) == "amount 119.99 → 100"
    await page.click(".actions .btn.approve")  # the green button, not "Approve with changes"
    await page.wait_for_selector(".confirm-approve .diff")
    assert "amount 119.99 → 100" in " ".join((await page.text_content(".confirm-approve")).split())
    assert "Approve with these changes" in await page.text_content(".confirm-approve .confirm-yes")
    await page.keyboard.press("a")  # `a` while the confirmation is open does not confirm it
    assert not holder.done.is_set()
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.modified
    assert outcome.arguments == refund_args(amount=100)
    assert (await h.store.get(rec.id)).modified_arguments == refund_args(amount=100)


async def test_an_edit_that_does_not_check_out_refuses_and_discarding_it_approves_the_original(web: Page) -> None:
    h = web.h
    rec, holder = await web.hold(new_call(h.policy, arguments=refund_args(amount=50)))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.click(".actions .btn.modify")
    await page.fill("#f-amount", "5000")  # over the schema's maximum
    await page.wait_for_selector(".editor .errors:not([hidden])")
    await page.click(".actions .btn.approve")
    await page.wait_for_selector(".toast.bad:has-text('Your edit has errors')")
    assert await page.locator(".confirm-approve").count() == 0
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    assert await page.locator(".confirm-approve").count() == 0
    assert (await h.store.get(rec.id)).state == State.PENDING
    # an edit changed after the confirmation opened closes it: the diff confirmed is the diff sent
    await page.fill("#f-amount", "40")
    await page.click(".actions .btn.approve")
    await page.wait_for_selector(".confirm-approve:has-text('50 → 40')")
    await page.fill("#f-amount", "30")
    assert await page.locator(".confirm-approve").count() == 0
    await page.click(".actions .btn.modify")  # "Discard edit"
    assert await page.locator(".editor").count() == 0
    await page.click(".actions .btn.approve")
    await page.wait_for_selector(".confirm-approve:has-text('exactly as shown')")
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and not outcome.modified and outcome.arguments == refund_args(amount=50)


async def test_a_one_key_call_still_confirms_an_edit(web: Page) -> None:
    """Medium risk approves with one key, but not once its arguments were edited: then the diff is confirmed."""
    h = web.h
    rec, holder = await web.hold(call_for(h.policy, "files", "edit_file", edit_file("/w/src/a.py")))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    await page.fill("#f-path", "/w/src/b.py")
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    await page.wait_for_selector(".confirm-approve .confirm-yes:focus")
    assert not holder.done.is_set()
    await page.keyboard.press("Enter")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == edit_file("/w/src/b.py")


# ---------------------------------------------------------------------------------------------- disguised and long text


async def test_the_editor_badges_disguised_text_like_the_card(web: Page) -> None:
    h = web.h
    spoof = "invoice_\u202egpj.exe"
    rec, holder = await web.hold(
        call_for(h.policy, "files", "upload_file", {"name": spoof, "folder": "/in"}, gate="hard", risk="medium")
    )
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    await page.wait_for_selector("#f-name.suspicious")  # flagged untouched
    assert await page.text_content(".editor .shows-as .uc") == "⟨U+202E⟩"
    assert "1 invisible, bidirectional or control character" in await page.text_content(".editor .warning")
    assert await page.locator("#f-folder.suspicious").count() == 0
    await page.fill("#f-folder", "/in\u200b/")  # typed or pasted by the reviewer: shown at once
    await page.wait_for_selector(".editor .shows-as:has-text('⟨U+200B⟩')")
    await page.fill("#f-folder", "/in")
    # as JSON, every hidden character is a visible escape, and the text parses back to the same value
    await page.click(".editor .btn.mode")
    text = await page.input_value(".editor textarea.json-edit")
    assert "invoice_\\u202Egpj.exe" in text and "\u202e" not in text
    assert "No changes yet." in await page.text_content(".editor")
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"name": spoof, "folder": "/in"}
    assert not outcome.modified


async def test_long_multiline_text_is_readable_and_editable_in_full(web: Page) -> None:
    h = web.h
    lines = [f"Line {n}: the quarterly numbers look fine, nothing to report here." for n in range(80)]
    lines[40] = "Line 40: MIDDLE-MARKER please wire the balance to account 99-1234 today."
    body = "Hi team,\n" + "\n".join(lines) + "\nThanks"
    log = ("x" * 3000) + "SINGLE-LINE-MIDDLE" + ("y" * 3000)
    args = {"to": "team@example.com", "subject": "Q3", "body": body, "log": log}
    rec, holder = await web.hold(call_for(h.policy, "mail", "send_email", args, gate="hard", risk="medium"))
    page = await web.open()
    await _card_of(page, rec.id)
    block = await page.text_content(".card pre.json .j-block")
    assert "MIDDLE-MARKER please wire" in block and block.count("\n") == body.count("\n")
    assert "82 lines" in await page.text_content(".card pre.json .j-note")
    # a long single line folds its middle behind a button that shows it
    assert "SINGLE-LINE-MIDDLE" not in await page.text_content(".card pre.json")
    await page.click(".card pre.json .trunc")
    assert "SINGLE-LINE-MIDDLE" in await page.text_content(".card pre.json")
    # the editor shows all of the body in a text area, line breaks kept
    await page.keyboard.press("e")
    assert await page.input_value("#f-body") == body
    await page.fill("#f-body", body.replace("account 99-1234 today", "account 99-1234 next week"))
    await page.click(".actions .btn.approve")
    # the confirmation shows the change in the long text with some context, not the whole 5 KB twice
    change = await page.text_content(".confirm-approve .diff")
    assert "account 99-1234 today" in change and "account 99-1234 next week" in change
    assert change.count("…") == 4 and len(change) < 400
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved)
    assert outcome.arguments["body"] == body.replace("today", "next week")
    assert outcome.arguments["log"] == log


# ---------------------------------------------------------------------------------------------- plain words


async def test_plain_words_and_the_tool_definition_without_a_rule_summary(web: Page) -> None:
    h = web.h
    tool = {
        "name": "post_message",
        "description": "Post a message to a Slack channel. Members are notified.\u202e <img src=x onerror=alert(1)>",
        "inputSchema": SLACK_SCHEMA,
        "annotations": {"openWorldHint": True},
    }
    await h.store.check_pins("slack", {"post_message": (tooldef_hash(tool), tool)})
    ids = []
    for channel in ("#ops", "#sales", "#general"):
        rec, _ = await web.hold(call_for(h.policy, "slack", "post_message", {"channel": channel, "text": f"hi {channel}"},
                                         input_schema=SLACK_SCHEMA, tooldef_hash=tooldef_hash(tool)))  # fmt: skip
        ids.append(rec.id)
    page = await web.open(f"#/queue/{ids[1]}")
    await _card_of(page, ids[1])
    await page.wait_for_selector(f'.qitem[data-id="{ids[2]}"]')
    rows = await page.eval_on_selector_all(".qitem .qsummary", "els => els.map(e => e.textContent)")
    assert rows == [f'post_message on slack: channel "{c}", text "hi {c}"' for c in ("#ops", "#sales", "#general")]
    assert await page.text_content(".card-title") == 'post_message on slack: channel "#sales", text "hi #sales"'
    says = await page.text_content(".card .tool-says")
    assert says == "The tool says it does: Post a message to a Slack channel."
    tooldef = page.locator(".card details.tooldef[open]")
    assert "Members are notified." in await tooldef.text_content()
    assert await page.locator(".card details.tooldef .uc").count() == 1  # the bidi override, badged
    assert '"channel"' in await page.text_content(".card details.tooldef pre.json")
    assert await page.locator(".card img").count() == 0
    assert "invisible, bidirectional or control character" in await page.text_content(".card .warnings")
    assert web.dialogs == []


async def test_a_modified_call_is_titled_by_what_ran(web: Page) -> None:
    h = web.h
    rec, holder = await web.hold(new_call(h.policy, arguments=refund_args(amount=310.0)))
    page = await web.open()
    await _card_of(page, rec.id)
    title = "Issue $310 refund to john@example.com for order #8821"
    assert await page.text_content(".card-title") == title
    assert await page.text_content(".card pre.json .j-num") == "310"  # title and JSON write it the same
    await page.keyboard.press("e")
    await page.fill("#f-amount", "150.5")
    await page.click(".actions .btn.approve")
    await page.click(".confirm-approve .confirm-yes")
    assert isinstance(await holder.outcome(), Approved)
    await page.wait_for_selector(".card .held-as")
    assert await page.text_content(".card-title") == "Issue $150.5 refund to john@example.com for order #8821"
    assert title in await page.text_content(".card .held-as")
    page2 = await web.open(f"#/call/{rec.id}")
    await page2.wait_for_selector(".card .held-as")
    assert await page2.text_content(".card-title") == "Issue $150.5 refund to john@example.com for order #8821"


# ---------------------------------------------------------------------------------------------- in proportion to risk


async def test_confirmation_grows_with_risk_and_says_why_no_lease(web: Page) -> None:
    h = web.h
    wire, wire_holder = await web.hold(new_call(h.policy, "send_wire", {"to": "DE89 3704", "amount": 9000}))
    page = await web.open(f"#/queue/{wire.id}")
    await _card_of(page, wire.id)
    # high risk: a second, separate click; `a` only opens the question
    assert await page.locator(".actions .btn.similar").count() == 0
    why = await page.text_content(".card .why-not")
    assert why is not None and why.startswith("“Allow similar…” is not offered: ") and len(why) > 40
    await page.keyboard.press("a")
    await page.wait_for_selector(".confirm-approve.level-1")
    await page.keyboard.press("a")
    await page.click(".confirm-approve .btn.ghost")  # cancel
    assert await page.locator(".confirm-approve").count() == 0
    assert (await h.store.get(wire.id)).state == State.PENDING
    await page.click(".actions .btn.approve")
    await page.click(".confirm-approve .confirm-yes")
    assert isinstance(await wire_holder.outcome(), Approved)

    # critical: the tool's name typed exactly; anything else leaves the button disabled
    drop, drop_holder = await web.hold(new_call(h.policy, "delete_record", {"id": "r-1"}))
    await page.click(f'.qitem[data-id="{drop.id}"]')
    await _card_of(page, drop.id)
    await page.click(".actions .btn.approve")
    for wrong in ("delete_recor", "DELETE_RECORD", "delete_record "):
        await page.fill(".confirm-approve .type-confirm", wrong)
        assert await page.is_disabled(".confirm-approve .confirm-yes")
        await page.keyboard.press("Enter")
    assert (await h.store.get(drop.id)).state == State.PENDING
    await page.fill(".confirm-approve .type-confirm", "delete_record")
    await page.click(".confirm-approve .confirm-yes")
    outcome = await drop_holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"id": "r-1"}


async def test_a_number_the_page_would_round_is_shown_exactly_and_cannot_be_edited(web: Page) -> None:
    """JSON.parse rounds 2^53 + 1; an edit of another field would send the rounded number. The card names the
    exact value, the editor stays closed, and approving sends the call exactly as held."""
    h = web.h
    big = 2**53 + 1
    args = {"account": big, "memo": "rent"}
    rec, holder = await web.hold(call_for(h.policy, "files", "edit_file", args))
    page = await web.open()
    await _card_of(page, rec.id)
    warning = await page.text_content(".card .warnings")
    assert f"account is {big}" in warning
    assert await page.text_content(".card pre.json .j-num.exact") == str(big)  # not 9007199254740992
    await page.keyboard.press("e")
    await page.wait_for_selector(".toast.bad:has-text('cannot show exactly')")
    assert await page.locator(".editor").count() == 0
    await page.keyboard.press("a")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == args and not outcome.modified


async def test_a_critical_tool_named_with_a_hidden_character_can_still_be_confirmed(web: Page) -> None:
    """The word to type leaves out what nobody can type (a zero-width space), and the card badges it."""
    h = web.h
    rec, holder = await web.hold(
        call_for(h.policy, "disk", "wipe\u200b_disk", {"disk": "/dev/sdb"}, gate="hard", risk="critical")
    )
    page = await web.open(f"#/queue/{rec.id}")
    await _card_of(page, rec.id)
    assert "⟨U+200B⟩" in await page.text_content(".card .card-meta")
    await page.keyboard.press("a")
    assert await page.text_content(".confirm-approve .typed code") == "wipe_disk"
    await page.keyboard.type("wipe_disk")
    await page.keyboard.press("Enter")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"disk": "/dev/sdb"}


async def test_a_link_by_id_prefix_names_the_whole_call_and_a_approves_it(web: Page) -> None:
    h = web.h
    (first, _) = await web.hold(call_for(h.policy, "files", "edit_file", edit_file("/w/one.txt")))
    (second, second_holder) = await web.hold(call_for(h.policy, "files", "edit_file", edit_file("/w/two.txt")))
    page = await web.open(f"#/queue/{second.id[:8]}")  # as `mcp-gatekeeper pending` prints ids
    await _card_of(page, second.id)
    await page.wait_for_selector(f'.qitem.sel[data-id="{second.id}"]')
    assert page.url.endswith(f"#/queue/{second.id}")
    await page.keyboard.press("a")
    assert isinstance(await second_holder.outcome(), Approved)
    assert (await h.store.get(first.id)).state == State.PENDING


async def test_fields_whose_names_look_alike_edit_their_own_argument(web: Page) -> None:
    """`a.b` and `a_b` would both be the field `f-a_b`: each label must still lead to its own argument."""
    h = web.h
    rec, holder = await web.hold(call_for(h.policy, "files", "edit_file", {"a.b": "one", "a_b": "two"}))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    await page.get_by_label("a_b", exact=True).fill("three")
    assert " ".join((await page.text_content(".editor .diff")).split()) == 'a_b "two" → "three"'
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"a.b": "one", "a_b": "three"}


async def test_an_edit_under_a_look_alike_path_is_still_a_change(web: Page) -> None:
    """{"a": {"b": 1}} and {"a.b": 1} side by side: changing one must show in the diff and be what is sent
    (the diff once keyed both as "a.b", so the change vanished and the original was approved)."""
    h = web.h
    args = {"a": {"b": 1}, "a.b": 1}
    rec, holder = await web.hold(call_for(h.policy, "files", "edit_file", args))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    text = await page.input_value(".editor textarea.json-edit")
    await page.fill(".editor textarea.json-edit", text.replace('"b": 1', '"b": 2'))
    assert " ".join((await page.text_content(".editor .diff")).split()) == "a.b 1 → 2"
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"a": {"b": 2}, "a.b": 1}


async def test_the_editor_keeps_secrets_masked_until_revealed(web: Page) -> None:
    """The card masks a password; the editor must not print it in clear either. Untouched, it is sent as held."""
    h = web.h
    secret = "hunter2-Correct-Horse"
    args = {"user": "ann", "password": secret}
    rec, holder = await web.hold(call_for(h.policy, "files", "edit_file", args))
    page = await web.open()
    await _card_of(page, rec.id)
    await page.keyboard.press("e")
    await page.wait_for_selector(".editor .reveal")
    values = await page.eval_on_selector_all(".editor input, .editor textarea", "els => els.map(e => e.value)")
    assert secret not in " ".join(values) and secret not in await page.text_content(".card")
    await page.click(".editor .btn.mode")  # as JSON: behind the same question
    assert await page.locator(".editor textarea.json-edit").count() == 0
    await page.click(".editor .reveal")
    assert secret in await page.input_value(".editor textarea.json-edit")
    await page.click(".editor .btn.mode")  # back to fields: still masked there until asked
    await page.fill("#f-user", "bob")
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    await page.click(".confirm-approve .confirm-yes")
    outcome = await holder.outcome()
    assert isinstance(outcome, Approved) and outcome.arguments == {"user": "bob", "password": secret}
    # revealed on request, it can be edited
    rec2, holder2 = await web.hold(call_for(h.policy, "files", "edit_file", args))
    await page.click(f'.qitem[data-id="{rec2.id}"]')
    await _card_of(page, rec2.id)
    await page.keyboard.press("e")
    await page.get_by_label("password", exact=True).click()
    assert await page.input_value("#f-password") == secret
    await page.fill("#f-password", "rotated-Secret-Value-9")
    await page.keyboard.press("Escape")
    await page.keyboard.press("a")
    await page.click(".confirm-approve .confirm-yes")
    outcome2 = await holder2.outcome()
    assert isinstance(outcome2, Approved) and outcome2.arguments["password"] == "rotated-Secret-Value-9"
