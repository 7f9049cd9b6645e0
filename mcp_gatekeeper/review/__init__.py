"""Review of the gate's record: the weekly review report and the review data export.

* :mod:`.fatigue`: reviewer fatigue signals over decision times (pure);
* :mod:`.weekly`: the weekly review's figures, from the store and :func:`mcp_gatekeeper.reports.stats`;
* :mod:`.charts`: small inline SVG charts (no script, every text escaped);
* :mod:`.render`: the weekly review as Markdown (for a pull request) and as one self-contained HTML page;
* :mod:`.export`: one JSON record per human decision, streamed, secrets redacted, with preference pairs;
  its versioned JSON Schema ships beside it (``decision-record.v1.schema.json``).
"""
