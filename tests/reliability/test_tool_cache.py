"""A call must not be refused as "unknown tool" because a client listed the (paginated) tools at the same moment.

Seen in the A5 crash loop: at start-up the SDK client lists the first page of tools (to validate structured
output) while other calls arrive; one call to ``slow`` (page 2 of the feature server's list) was denied with
"unknown tool 'slow'". Failing closed, but wrong. Reproduced here in-process, in a fixed order: the call's
tool refresh is made to wait on the store (another connection holds the write lock) while the client's
``tools/list`` of page 1 replaces the proxy's tool cache.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import mcp.types as types
import pytest
from relkit import stack, text

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

CONFIG = """
[ui]
autostart = false
[[rules]]
name = "slow-passes"
tool = "slow"
gate = "allow"
"""


async def test_a_concurrent_tools_list_does_not_make_a_real_tool_unknown(tmp_path: Path) -> None:
    results: list[types.CallToolResult] = []
    with anyio.fail_after(30):
        async with stack(tmp_path, CONFIG) as s:
            page = await s.client.list_tools()  # a client that reads page 1 only (slow is on page 2)
            assert "slow" not in [t.name for t in page.tools] and page.next_cursor
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    results.append(await s.client.call_tool("slow", {"steps": 0, "delay": 0}))

                with s.backing.view.writes_held():  # the store is briefly busy (another process is writing)
                    tg.start_soon(call)
                    await anyio.wait_all_tasks_blocked()  # the call has re-listed the tools, and waits to pin them
                    tg.start_soon(s.client.list_tools)
                    await anyio.wait_all_tasks_blocked()  # the client's page-1 listing replaced the cache
            ran = [c for c in s.upstream.state.calls if c["tool"] == "slow"]
    assert not results[0].is_error, text(results[0])
    assert len(ran) == 1
