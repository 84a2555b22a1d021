"""`maglev bgp-speak` (hidden): the BGP speaker as its own process, for the lab and for
debugging against a router.  The same program as ``python -m maglev.bgp``; every argument
is passed through (``maglev bgp-speak --help``).  See docs/bgp.md."""

from __future__ import annotations

import click


@click.command(
    "bgp-speak",
    hidden=True,
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bgp_speak(args: tuple[str, ...]) -> None:
    """Run the BGP speaker alone (see python -m maglev.bgp --help)."""
    from maglev.bgp.__main__ import main

    raise SystemExit(main(list(args), prog="maglev bgp-speak"))
