"""Fixtures for the lab tests: a lab with its own prefix and state directory, always
taken down (processes by PID, namespaces) when the test ends, also on failure."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maglev.lab.topology import Lab, LabSpec, why_no_lab


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """``make_lab(encap="gre", backends=3, forwarder=False, weights=())`` -> an up Lab."""
    if reason := why_no_lab():
        pytest.skip(reason)
    labs: list[Lab] = []

    def make(wait_s: float = 30.0, **kw) -> Lab:
        state_dir = tmp_path / f"lab{len(labs)}"
        spec = LabSpec(prefix=f"mgt-lab{secrets.token_hex(2)}", state_dir=state_dir, **kw)
        lab = Lab(state_dir)
        labs.append(lab)
        lab.up(spec, wait_s=wait_s)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()
