"""docs/metrics.md as data: the families it documents, with their type and labels."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(maglev_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \| (.*) \|$")


def documented() -> dict[str, dict]:
    """{family: {"type", "labels" (set), "conditional" (bool: 'Only when/under' rows)}}."""
    out = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            labels = {x.strip() for x in m.group(3).split(",")} - {"—", ""}
            out[m.group(1)] = {"type": m.group(2), "labels": labels, "conditional": " Only " in m.group(4)}
    return out
