"""One exception hierarchy.  Each class also inherits the builtin it refines, so callers
may catch either ``MaglevError`` or the usual builtin."""

from __future__ import annotations


class MaglevError(Exception):
    """Base class of every error maglev raises on purpose."""


class ConfigError(MaglevError, ValueError):
    """Invalid configuration.  ``problems`` lists one ``path: message`` string per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class NativeError(MaglevError, OSError):
    """A C kernel returned -errno."""


class PacketError(MaglevError, ValueError):
    """A packet or capture file could not be parsed."""


class ControlError(MaglevError, ValueError):
    """A control request was malformed or invalid; nothing was changed."""


class NotRootError(MaglevError, PermissionError):
    """The operation needs root (network namespaces, raw sockets)."""
