"""Helpers for the tests that drive a real NIC backend (AF_PACKET, AF_XDP) over a veth
pair between two network namespaces."""

from __future__ import annotations

from typing import Any


def why_no_afxdp() -> str:
    """Why AF_XDP cannot run here ("" when it can), also when its driver is not built."""
    try:
        from maglev.nic.afxdp import why_no_afxdp as why
    except ImportError as e:
        return f"no AF_XDP driver: {e}"
    return why()


def veth_pair(netns: Any, macs: tuple[bytes, bytes] | None = None,
              addrs: tuple[str, str] | None = None) -> tuple[Any, Any, Any]:
    """Namespaces ``a`` and ``b`` of the NetnsSet ``netns`` joined by veth a0 -- b0, with
    IPv6 off (no router solicitations or MLD to disturb exact counts), and the given MAC
    addresses and /24 IPv4 addresses; returns (netns, a, b)."""
    a, b = netns.add("a"), netns.add("b")
    netns.veth(a, "a0", b, "b0")
    if macs is not None:
        a.exec("ip", "link", "set", "a0", "address", macs[0].hex(":"))
        b.exec("ip", "link", "set", "b0", "address", macs[1].hex(":"))
    for ns, dev in ((a, "a0"), (b, "b0")):
        ns.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")
    if addrs is not None:
        a.addr("a0", f"{addrs[0]}/24")
        b.addr("b0", f"{addrs[1]}/24")
    return netns, a, b
