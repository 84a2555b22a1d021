"""A strict parser of the Prometheus text exposition format (version 0.0.4), for tests."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+|NaN|\+Inf|-Inf)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, dict]:
    """Strict parse of the text format: HELP and TYPE before each family's samples, every
    sample line well-formed.  Returns {family: {"type", "help", "samples": [(labels, v)]}}."""
    fams: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in fams, f"family {name} twice"
            fams[name] = {"help": help_, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge", "histogram"), line
            fams[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            sample = m.group(1)
            if current and fams[current]["type"] == "histogram":  # NAME_bucket{le=...}, NAME_sum, NAME_count
                assert sample in (f"{current}_bucket", f"{current}_sum", f"{current}_count"), line
            else:
                assert sample == current and fams[current]["type"], f"sample outside its family: {line!r}"
            labels = dict(_LABEL.findall(m.group(3) or ""))
            if sample.endswith("_bucket"):
                assert "le" in labels, line
            fams[current]["samples"].append((labels, float(m.group(4))))
            if sample != current:
                fams[current].setdefault("parts", []).append((sample[len(current) + 1:], labels, float(m.group(4))))
    for name, f in fams.items():
        assert name.startswith("maglev_")
        if f["type"] == "counter":
            assert name.endswith("_total"), name
        if f["type"] == "histogram":  # cumulative buckets ending at +Inf == count
            parts = f.get("parts", [])
            buckets = [v for kind, _, v in parts if kind == "bucket"]
            count = [v for kind, _, v in parts if kind == "count"]
            assert buckets == sorted(buckets) and count and buckets[-1] == count[0], name
            assert [lab["le"] for kind, lab, _ in parts if kind == "bucket"][-1] == "+Inf", name
    return fams
