"""Control-plane actors added to every ``maglev run`` of this process.

A factory ``(run options, region name) -> ActorDef | None`` per actor (``actor_def`` in
``config_manager.py``, ``health_prober.py``, ``bgp_speaker.py``).  :func:`register` adds
them explicitly -- ``maglev run`` does, tests that need them do -- because importing a
module must not change other runs; :func:`unregister` takes them away again.
``maglev.actors.pipeline`` reads the list when it lays out a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maglev.actors.supervisor import ActorDef

Factory = Callable[[Any, str], "ActorDef | None"]

EXTRA_ACTORS: list[Factory] = []

# The control plane of `maglev run`, in start order.
CONTROL_PLANE = ("config", "health", "bgp")


def control_plane(names: tuple[str, ...] = CONTROL_PLANE) -> list[Factory]:
    """The factories of the named control-plane actors (all by default)."""
    from maglev.actors import bgp_speaker, config_manager, health_prober

    known: dict[str, Factory] = {"config": config_manager.actor_def, "health": health_prober.actor_def,
                                 "bgp": bgp_speaker.actor_def}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no control-plane actor {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in names]


def register(*names: str) -> None:
    """Add the named control-plane actors (all when none is named) to every ``maglev run``
    of this process."""
    for f in control_plane(names or CONTROL_PLANE):
        add(f)


def unregister(*names: str) -> None:
    for f in control_plane(names or CONTROL_PLANE):
        remove(f)


def add(factory: Factory) -> None:
    if factory not in EXTRA_ACTORS:
        EXTRA_ACTORS.append(factory)


def remove(factory: Factory) -> None:
    while factory in EXTRA_ACTORS:
        EXTRA_ACTORS.remove(factory)
