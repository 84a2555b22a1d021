"""The high telemetry floor: what an operator reads about a running forwarder.

``metrics`` (one snapshot from shared memory: ``maglev ctl stats``, ``maglev top``),
``prometheus`` (the same snapshot as Prometheus text), ``whereis`` (where a flow goes, by
the data path's own C code) and ``ops`` (the control socket's ``stats``, ``trace`` and
``whereis`` operations, and the checking of trace requests).

Imports go down only: this floor may import ``maglev.actors``, ``maglev.rings``,
``maglev.datapath`` and the low telemetry floor ``maglev.telemetry`` (OpenTelemetry set-up,
span helpers, packet spans); none of those imports anything here
(tests/layout/test_imports.py).
"""
