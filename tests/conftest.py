"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# ../shared/corpus beside the checkout (CI lays shared/ beside the clone as well).
CORPUS = Path(os.environ.get("MAGLEV_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    pcaps = CORPUS / "pcaps"
    if not pcaps.is_dir():
        pytest.skip(f"the packet corpus is not at {pcaps} (set MAGLEV_CORPUS to its folder)")
    return pcaps


@pytest.fixture
def netns():
    """A NetnsSet torn down after the test, also on failure; skips with the reason when
    namespaces cannot be made here."""
    from maglev.testing.netns import NetnsSet, why_no_netns

    if reason := why_no_netns():
        pytest.skip(reason)
    with NetnsSet() as ns:
        yield ns
