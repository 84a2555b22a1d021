"""The namespace lab: a client, a router, a maglev forwarder and backends in network
namespaces joined by veth pairs and a bridge (``maglev lab``, ``maglev demo``), plus the
backend decapsulation agent (``maglev backend-agent``).  See docs/lab.md."""
