"""Log formats (logfmt, journal, JSON) and the warning rate limit; `maglev run` end to end:
every stderr line of the supervisor and every actor is one event in the chosen format."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from maglev.telemetry import logs

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def record(level: int = logging.WARNING, msg: str = "backend down", **kv) -> logging.LogRecord:
    r = logging.LogRecord("maglev.test", level, "/x.py", 7, msg, None, None)
    r.kv = kv
    return r


def test_logfmt_journal_and_json_carry_level_actor_instance():
    r = record(backend="198.18.1.11", why="connect refused")
    lf = logs.LogfmtFormatter("health", "edge1").format(r)
    assert lf.startswith("ts=") and "level=warning instance=edge1 actor=health" in lf
    assert 'why="connect refused"' in lf and "backend=198.18.1.11" in lf
    j = logs.JournalFormatter("health", "edge1").format(r)
    assert j.startswith("<4>level=warning instance=edge1 actor=health") and "ts=" not in j
    assert logs.JournalFormatter("x").format(record(logging.ERROR)).startswith("<3>")
    assert logs.JournalFormatter("x").format(record(logging.INFO)).startswith("<6>")
    obj = json.loads(logs.JsonFormatter("health", "edge1").format(r))
    assert obj["level"] == "warning" and obj["instance"] == "edge1" and obj["actor"] == "health"
    assert obj["msg"] == "backend down" and obj["why"] == "connect refused" and isinstance(obj["pid"], int)


def test_a_key_value_never_shadows_a_line_field():
    r = record(actor="worker-3", pid=99)
    obj = json.loads(logs.JsonFormatter("supervisor", "mg1").format(r))
    assert obj["actor"] == "supervisor" and obj["actor_"] == "worker-3" and obj["pid_"] == 99
    assert "actor=supervisor" in logs.LogfmtFormatter("supervisor").format(r)


def test_an_exception_stays_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        r = logging.LogRecord("m", logging.ERROR, "/x.py", 1, "failed", None, sys.exc_info())
    for f in (logs.LogfmtFormatter("a"), logs.JournalFormatter("a"), logs.JsonFormatter("a")):
        out = f.format(r)
        assert "\n" not in out and "boom" in out


def test_rate_limit_per_call_site_reports_what_it_suppressed():
    t = [0.0]
    rl = logs.RateLimit(burst=5, window_s=10.0, clock=lambda: t[0])
    passed = [rl.filter(record()) for _ in range(20)]
    assert passed.count(True) == 5
    other = logging.LogRecord("maglev.test", logging.WARNING, "/x.py", 8, "other site", None, None)
    assert rl.filter(other)  # another call site has its own budget
    assert all(rl.filter(record(logging.INFO)) for _ in range(50))  # info is not limited
    t[0] = 10.5
    r = record()
    assert rl.filter(r) and r.kv["suppressed"] == 15
    r2 = record()
    assert rl.filter(r2) and "suppressed" not in r2.kv


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        logs.make_formatter("a", "", "xml")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "journal"])
def test_maglev_run_logs_one_event_per_line(tmp_path, fmt):
    err = tmp_path / "stderr"
    env = {**os.environ, "MAGLEV_RUN_DIR": str(tmp_path / "run"), "MAGLEV_STATE_DIR": str(tmp_path / "state")}
    with open(err, "w") as f:
        if fmt == "journal":  # what systemd sets when stderr is the journal: auto picks it
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        args = ["--log-format", fmt] if fmt == "json" else []
        r = subprocess.run([*CLI, "run", "--workers", "2", "--nic", "gen:seconds=1", "--json", "-v", *args],
                           stdout=subprocess.PIPE, stderr=f, env=env, text=True, timeout=120)
    assert r.returncode == 0, err.read_text()[-2000:]
    lines = [x for x in err.read_text().splitlines() if x]
    assert lines, "no log lines at -v"
    actors = set()
    for line in lines:
        if fmt == "json":
            obj = json.loads(line)
            assert {"level", "actor", "pid", "msg"} <= set(obj), line
            actors.add(obj["actor"])
            assert obj["instance"] == "mg1", line  # the supervisor's lines too
        else:
            assert line[0] == "<" and line[2] == ">" and not line[3:].startswith("ts="), line
            assert " instance=mg1 " in line, line
            actors.add(line.split("actor=")[1].split()[0])
    assert "supervisor" in actors and "steering" in actors and "worker-0" in actors, actors
