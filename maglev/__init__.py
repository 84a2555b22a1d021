"""maglev: Google's Maglev network load balancer (NSDI 2016) as actor processes on
shared-memory rings, with the per-packet work in C through cffi."""

__version__ = "0.1.0"
