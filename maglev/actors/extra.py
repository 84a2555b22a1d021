"""Control-plane actors added to every ``maglev run`` of this process.

A factory ``(run options, region name) -> ActorDef | None`` per actor; the config manager,
the health prober and the BGP speaker register theirs explicitly (``register()`` in each
module; importing a module must not change other runs).  ``maglev.actors.pipeline``
reads the list when it lays out a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maglev.actors.supervisor import ActorDef

Factory = Callable[[Any, str], "ActorDef | None"]

EXTRA_ACTORS: list[Factory] = []


def add(factory: Factory) -> None:
    if factory not in EXTRA_ACTORS:
        EXTRA_ACTORS.append(factory)


def remove(factory: Factory) -> None:
    while factory in EXTRA_ACTORS:
        EXTRA_ACTORS.remove(factory)
