"""`maglev` — the command line.  Each command lives in its own module under ``cli/``
(installed as ``maglev_cli``) and is registered in ``COMMANDS`` below."""

from __future__ import annotations

import importlib

import click

from maglev import __version__
from maglev.errors import MaglevError

# (module, attribute) of every command.  A command module imports only what it needs,
# so `maglev table` does not pay for ZeroMQ or OpenTelemetry imports.
COMMANDS: list[tuple[str, str]] = [
    ("maglev_cli.table", "table"),
    ("maglev_cli.lab", "lab"),
    ("maglev_cli.backend_agent", "backend_agent"),
    ("maglev_cli.demo", "demo"),
    ("maglev_cli.replay", "replay"),
    ("maglev_cli.run", "run"),
    ("maglev_cli.ctl", "ctl"),
    ("maglev_cli.top", "top"),
    ("maglev_cli.whereis", "whereis"),
    ("maglev_cli.bgp", "bgp_speak"),
    ("maglev_cli.doctor", "doctor"),
    ("maglev_cli.conntrack", "conntrack"),
    ("maglev_cli.check", "check"),
]


class LazyGroup(click.Group):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._lazy = {attr.replace("_", "-"): (mod, attr) for mod, attr in COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            mod, attr = self._lazy[name]
            return getattr(importlib.import_module(mod), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        # Errors maglev raises on purpose become one clear line and exit 2, not a traceback.
        try:
            return super().invoke(ctx)
        except MaglevError as exc:
            # A config error lists one ``path: message`` per problem: one line each.
            lines = getattr(exc, "problems", None) or str(exc).splitlines() or [type(exc).__name__]
            for line in lines:
                click.echo(f"maglev: error: {line}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="maglev")
def cli() -> None:
    """maglev: the Maglev network load balancer (NSDI 2016) as actor processes."""


def main() -> None:
    cli.main(prog_name="maglev")
