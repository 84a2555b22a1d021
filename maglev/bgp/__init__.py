"""BGP-4 speaker that announces this machine's VIPs to its routers (paper section 2.2).

Public surface:

- :class:`Speaker` -- ``Speaker(config.bgp, on_event=...)``, ``await start()``,
  ``announce(prefix)``, ``withdraw(prefix)``, ``peers_state()``, ``await stop()``.
- :mod:`maglev.bgp.messages` -- the wire messages (OPEN, UPDATE, KEEPALIVE,
  NOTIFICATION, ROUTE-REFRESH) and :class:`Notify`, the protocol error.
- ``python -m maglev.bgp --config FILE --announce PREFIX`` -- a standalone speaker
  (see :mod:`maglev.bgp.__main__` and docs/bgp.md).
"""

from maglev.bgp.messages import Notify
from maglev.bgp.session import State
from maglev.bgp.speaker import Speaker, parse_prefix

__all__ = ["Notify", "Speaker", "State", "parse_prefix"]
