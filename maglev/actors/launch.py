"""Entry point of every actor process: ``python -m maglev.actors.launch SPEC_JSON``.

A fresh interpreter per actor (the supervisor never forks itself): see
:mod:`maglev.actors.base` for why.
"""

from __future__ import annotations

import sys

from maglev.actors.base import ActorSpec, load_target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m maglev.actors.launch SPEC_JSON", file=sys.stderr)
        return 2
    spec = ActorSpec.from_json(args[0])
    cls = load_target(spec.target)
    return cls(spec).main()


if __name__ == "__main__":
    sys.exit(main())
