"""One health probe: TCP connect, HTTP GET, UDP request/response, with a hard timeout.

Each probe runs under ``asyncio.timeout`` covering connect, send and receive together, and
closes its socket in ``finally`` -- a probe can neither hang nor leak a descriptor.  Errors
are sorted into two kinds (:class:`Result.local`): the backend failed (refused, reset,
timeout, wrong status), or *we* failed (out of file descriptors, buffers, memory).  Local
failures never count against a backend: GLB Director's checker once ran out of
descriptors and declared every backend dead (github.com/github/glb-director PR #124).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from dataclasses import dataclass

from maglev.config import Backend, HealthCheck, Instance, Vip

# errno values that describe this machine, not the backend.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
MAX_HTTP_HEAD = 4096


@dataclass(frozen=True)
class CheckSpec:
    """Everything that defines a probe.  Equal specs are probed once (deduplication)."""

    type: str  # tcp | http | udp
    address: str
    port: int
    path: str = "/"
    expect_status: int = 200
    send: str = ""
    expect: str = ""
    interval_s: float = 1.0
    timeout_s: float = 0.5
    rise: int = 2
    fall: int = 3
    # through_tunnel (maglev/health/tunnel.py): the encapsulation ("" = a direct probe),
    # the VIP probed through it, our (outer and inner) source address, VXLAN settings.
    tunnel: str = ""
    vip: str = ""
    source: str = ""
    vni: int = 0
    vxlan_port: int = 0

    @classmethod
    def for_backend(cls, vip: Vip, backend: Backend, health: HealthCheck | None = None,
                    instance: Instance | None = None) -> CheckSpec | None:
        """The probe of ``backend`` under ``health`` (default: ``vip``'s ``[vip.health]``; a
        pooled VIP's backend has its pool's); None when there is no check or no port to
        probe (VIP port 0 and health.port 0).  A ``through_tunnel`` check needs
        ``instance`` (its source address)."""
        h = vip.health if health is None else health
        port = h.port or vip.port
        if h.type == "none" or not port:
            return None
        tunnel = {}
        if h.through_tunnel and h.type == "tcp":
            tunnel = {"tunnel": vip.encap, "vip": vip.address, "source": instance.source_ipv4 if instance else "",
                      "vni": vip.vxlan_vni if vip.encap == "vxlan" else 0,
                      "vxlan_port": vip.vxlan_port if vip.encap == "vxlan" else 0}
        return cls(
            **tunnel,
            type=h.type,
            address=backend.address,
            port=port,
            # Only the parameters the type uses take part in equality (dedup).
            path=h.path if h.type == "http" else "/",
            expect_status=h.expect_status if h.type == "http" else 200,
            send=h.send if h.type == "udp" else (h.query if h.type == "dns" else ""),
            expect=h.expect if h.type == "udp" else "",
            interval_s=h.interval_ms / 1000,
            timeout_s=h.timeout_ms / 1000,
            rise=h.rise,
            fall=h.fall,
        )

    def describe(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.tunnel:
            return f"tcp://{self.vip}:{self.port} via {self.tunnel} to {host}"
        extra = f" GET {self.path}" if self.type == "http" else (f" A {self.send}" if self.type == "dns" else "")
        return f"{self.type}://{host}:{self.port}{extra}"


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str
    local: bool = False  # the prober failed, not the backend: do not count it


def _os_error(exc: OSError) -> Result:
    if exc.errno in LOCAL_ERRNOS:
        return Result(False, f"local error: {exc.strerror or exc}", local=True)
    name = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
    return Result(False, (name.lower() + ": " if name else "") + str(exc.strerror or exc))


async def _tcp(spec: CheckSpec) -> Result:
    if spec.tunnel:
        return await _through_tunnel(spec)
    _, writer = await asyncio.open_connection(spec.address, spec.port)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # a reset on close still proves the connect worked
    return Result(True, "connected")


async def _http(spec: CheckSpec) -> Result:
    reader, writer = await asyncio.open_connection(spec.address, spec.port)
    try:
        host = f"[{spec.address}]" if ipaddress.ip_address(spec.address).version == 6 else spec.address
        writer.write(
            f"GET {spec.path} HTTP/1.0\r\nHost: {host}:{spec.port}\r\n"
            "User-Agent: maglev-health\r\nConnection: close\r\n\r\n".encode("latin-1", "replace")
        )
        await writer.drain()
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        return Result(False, "status line too long")
    except asyncio.IncompleteReadError as exc:
        line = exc.partial
        if not line:
            return Result(False, "connection closed before a status line")
    finally:
        writer.close()
    parts = line[:MAX_HTTP_HEAD].decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        return Result(False, f"not an HTTP status line: {line[:60]!r}")
    status = int(parts[1])
    if status != spec.expect_status:
        return Result(False, f"HTTP {status}, expected {spec.expect_status}")
    return Result(True, f"HTTP {status}")


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]):
        self.done = done

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and friends
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp(spec: CheckSpec) -> Result:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProbe(done), remote_addr=(spec.address, spec.port))
    try:
        transport.sendto(spec.send.encode())
        data = await done
    finally:
        transport.close()
    want = spec.expect.encode()
    if want and not data.startswith(want):
        return Result(False, f"reply {data[:40]!r} does not start with {want[:40]!r}")
    return Result(True, f"reply of {len(data)} bytes")


def dns_query(name: str, qid: int) -> bytes:
    """A standard query (RD set) for ``name``'s A record (RFC 1035 4.1)."""
    labels = [x for x in name.rstrip(".").split(".") if x]
    qname = b"".join(bytes([len(x)]) + x.encode("ascii") for x in labels) + b"\0"
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"


async def _dns(spec: CheckSpec) -> Result:
    """Up when the server answers our query (same ID, QR set) with RCODE 0 (NOERROR)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    qid = random.getrandbits(16)
    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProbe(done), remote_addr=(spec.address, spec.port))
    try:
        transport.sendto(dns_query(spec.send or ".", qid))
        data = await done
    finally:
        transport.close()
    if len(data) < 12 or int.from_bytes(data[:2], "big") != qid or not data[2] & 0x80:
        return Result(False, f"not a DNS reply to our query ({len(data)} bytes)")
    rcode = data[3] & 0x0F
    if rcode:
        return Result(False, f"DNS RCODE {rcode}")
    return Result(True, f"DNS NOERROR, {int.from_bytes(data[6:8], 'big')} answers")


async def _through_tunnel(spec: CheckSpec) -> Result:
    from maglev.health import tunnel

    if not spec.source:
        return Result(False, "through_tunnel needs instance.source_ipv4", local=True)
    try:
        ok, detail = await tunnel.probe(spec)
    except PermissionError as exc:
        return Result(False, f"local error: raw sockets need CAP_NET_RAW ({exc.strerror}); the prober opens "
                             "them at its start, so start the run holding it", local=True)
    return Result(ok, detail)


_PROBES = {"tcp": _tcp, "http": _http, "udp": _udp, "dns": _dns}


async def run_check(spec: CheckSpec) -> Result:
    """Probe once; never raises (except cancellation), always within ``spec.timeout_s``."""
    probe = _PROBES.get(spec.type)
    if probe is None:
        return Result(False, f"unknown check type {spec.type!r}", local=True)
    try:
        async with asyncio.timeout(spec.timeout_s):
            return await probe(spec)
    except TimeoutError:
        return Result(False, f"timeout after {spec.timeout_s * 1000:.0f} ms")
    except OSError as exc:
        return _os_error(exc)
    except (ValueError, UnicodeError) as exc:
        return Result(False, f"bad reply: {exc}")
