"""Backend health checks: TCP connect, HTTP GET, UDP request/response, with rise/fall.

* :class:`CheckSpec` / :func:`run_check` -- one probe with a hard timeout (checks.py);
* :class:`RiseFall` -- hysteresis (state.py);
* :class:`Prober` -- deduplicated, bounded-concurrency scheduling (prober.py).

The health-prober actor (maglev/actors/health_prober.py) runs a Prober and sends its
verdicts to the config manager, which rebuilds the tables without dead backends.
"""

from maglev.health.checks import CheckSpec, Result, run_check
from maglev.health.prober import Prober
from maglev.health.state import RiseFall

__all__ = ["CheckSpec", "Prober", "Result", "RiseFall", "run_check"]
