"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

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


def pytest_unconfigure(config: pytest.Config) -> None:
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
