"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from maglev.testing import unique

REPO = Path(__file__).resolve().parent.parent
# The packet corpus lives in the repository (tests/data/corpus: README, MANIFEST.tsv with
# each file's origin and licence, pcaps/); MAGLEV_CORPUS points the tests at another copy.
CORPUS = Path(os.environ.get("MAGLEV_CORPUS") or REPO / "tests" / "data" / "corpus")


def missing_test_data(reason: str) -> None:
    """Test data is absent: skip, or fail when ``CI`` is set (CI must run every test)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: test data must be present)", pytrace=False)
    pytest.skip(reason)


# Keep every run/state/lab directory the tests create out of /run and /var/lib: the suite
# must not touch a real maglev on this machine and must leave nothing behind.  Set before
# collection (pytest_configure), because some modules read these at import time.  The
# base path is short: ipc:// socket paths are limited to 107 bytes.
_RUN_DIR_VARS = {"MAGLEV_RUN_DIR": "run", "MAGLEV_STATE_DIR": "state", "MAGLEV_LAB_DIR": "lab"}
_saved_env: dict[str, str | None] = {}
_private_base: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    base = Path(tempfile.mkdtemp(prefix="mgt-", dir="/tmp"))
    _private_base.append(base)
    for key, sub in _RUN_DIR_VARS.items():
        _saved_env[key] = os.environ.get(key)
        if not os.environ.get(key):
            os.environ[key] = str(base / sub)
    # every connection table a run of this session keeps in /dev/shm is listed here
    # (maglev/rings/conntrack_shm.py), whatever state directory the test gave it
    _saved_env["MAGLEV_CT_RECORD"] = os.environ.get("MAGLEV_CT_RECORD")
    if not os.environ.get("MAGLEV_CT_RECORD"):
        os.environ["MAGLEV_CT_RECORD"] = str(base / "ct-segments")
    # The leak guard (maglev/testing/leaks.py): each test gets its own $MAGLEV_RECORD file
    from maglev.record import ENV
    from maglev.testing.leaks import Guard

    _saved_env[ENV] = os.environ.get(ENV)
    _guard.append(Guard(base / "leaks"))
    _between_tests()


_guard: list = []  # [maglev.testing.leaks.Guard] once configured
_RECORD_KEY = pytest.StashKey[str]()


def _between_tests() -> None:
    from maglev.record import ENV

    path = str(_guard[0].base / "rec" / "0")
    _guard[0].owners[path] = "the session (between tests)"
    os.environ[ENV] = path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    # before any fixture of the test is set up: what it makes is listed in its own file
    if _guard:
        item.stash[_RECORD_KEY] = _guard[0].start(item.nodeid)
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    # after the test's fixtures (and, at a module's last test, the module's) are torn down
    from maglev.testing.leaks import describe

    try:
        result = yield
    finally:
        leaks = []
        if _guard:
            leaks = _guard[0].check(item.stash.get(_RECORD_KEY, None), _fixture_scopes(item), nextitem is None)
            _between_tests()
    if leaks:
        pytest.fail(describe(leaks), pytrace=False)
    return result


class _Held:
    """A fixture of a wider scope than the test (module, package, session) that the test
    used, in the instance set up then: alive until pytest tears it down."""

    def __init__(self, fixturedef, cached) -> None:
        self.fixturedef, self.cached = fixturedef, cached

    def alive(self) -> bool:
        return self.fixturedef.cached_result is self.cached


class _Unknown:
    def alive(self) -> bool:
        return True


def _fixture_scopes(item: pytest.Item) -> tuple:
    """The fixtures of a wider scope than the test that it used and that are still set up
    after its teardown: what the test made may belong to one of them until it is torn down
    (an autouse fixture counts: it is in ``item.fixturenames`` too)."""
    try:
        defs = item._fixtureinfo.name2fixturedefs
        out = []
        for name in item.fixturenames:
            for fd in defs.get(name, ()):
                if fd.scope != "function" and fd.cached_result is not None:
                    out.append(_Held(fd, fd.cached_result))
        return tuple(out)
    except (AttributeError, TypeError):  # another pytest: judge at the session's end
        return (_Unknown(),)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _guard:
        return
    made, left = _guard[0].summary()
    terminalreporter.write_line(
        f"leak guard: the tests made {made} shm files, run folders, namespaces and links; "
        f"{len(left)} still there{': ' + ', '.join(left) if left else ''}; dropped "
        f"{_guard[0].dropped_tables} connection table(s) that stopped runs kept for adoption")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _guard:
        _guard[0].close()
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # connection tables kept in /dev/shm for adoption (maglev/rings/conntrack_shm.py) by
    # the runs of this session: the state directories list them
    from maglev.rings.conntrack_shm import remove_listed, remove_recorded

    for base in _private_base:
        remove_listed(str(base / "ct-segments"))
    roots = [str(b) for b in _private_base]
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None and getattr(factory, "_basetemp", None) is not None:
        roots.append(str(factory._basetemp))
    for root in roots:
        remove_recorded(root)
    for base in _private_base:
        shutil.rmtree(base, ignore_errors=True)



@pytest.fixture(autouse=True)
def _control_plane_registration_restored():
    """``maglev run`` invoked in the test process (CliRunner) registers the control-plane
    actors for every later run of the process (maglev/actors/extra.py): put the list back
    after each test, or a later test's pipeline starts a config manager and a prober it
    did not ask for (tests/actors/test_pipeline.py failed after tests/config's in-process
    runs)."""
    from maglev.actors.extra import EXTRA_ACTORS

    saved = list(EXTRA_ACTORS)
    yield
    EXTRA_ACTORS[:] = saved

@pytest.fixture
def leak_record():
    """``leak_record(uid, gid)``: a ``$MAGLEV_RECORD`` file for a process this test runs as
    another user (setpriv), who cannot write the test's own; the leak guard reads it with
    the test's record and finds the processes that carry it (maglev/testing/leaks.py).
    None outside the guard."""
    def make(uid: int, gid: int) -> str | None:
        return _guard[0].record_for(uid, gid) if _guard else None
    return make


@pytest.fixture
def shortdir():
    """A short private directory under /tmp: unix socket paths (control sockets in a run
    folder) are limited to 107 bytes, which pytest's tmp_path can exceed."""
    d = Path(tempfile.mkdtemp(prefix="mgs-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    pcaps = CORPUS / "pcaps"
    if not pcaps.is_dir():
        missing_test_data(f"the packet corpus is not at {pcaps} (set MAGLEV_CORPUS to its folder)")
    return pcaps


@pytest.fixture(scope="session")
def test_data_missing():
    """``test_data_missing(reason)``: skip, or fail when the ``CI`` variable is set."""
    return missing_test_data


@pytest.fixture
def netns():
    """A NetnsSet torn down after the test, also on failure; skips with the reason when
    namespaces cannot be made here."""
    from maglev.testing.netns import NetnsSet, why_no_netns

    if reason := why_no_netns():
        pytest.skip(reason)
    with NetnsSet() as ns:
        yield ns


@pytest.fixture
def make_lab(tmp_path: Path):
    """``make_lab(encap="gre", backends=3, forwarder=False, weights=())`` -> an up namespace
    lab (maglev.lab.topology) with its own prefix and state directory, always taken down
    (processes by PID, namespaces) when the test ends, also on failure; skips with the
    reason when there can be no lab here."""

    from maglev.lab.topology import Lab, LabSpec, why_no_lab

    if reason := why_no_lab():
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(wait_s: float = 30.0, **kw) -> Lab:
        state_dir = tmp_path / f"lab{len(labs)}"
        spec = LabSpec(prefix=unique.short("mgt-lab"), state_dir=state_dir, **kw)
        lab = Lab(state_dir)
        labs.append(lab)
        lab.up(spec, wait_s=wait_s)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


# Hypothesis: in CI (env CI set) every property test runs a fixed, reproducible set of
# examples (derandomize), so a landing never depends on the luck of a random search; local
# runs keep exploring new examples.  A falsifying example found locally is a real finding:
# fix the code or the property, then it is part of the CI set through @example if needed.
def _hypothesis_profiles() -> None:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


_hypothesis_profiles()
