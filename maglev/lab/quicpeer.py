"""A QUIC server and client (aioquic, a test dependency: docs/development.md) for the lab
test of QUIC connection-ID routing (tests/lab/test_quic_lab.py, docs/datapath.md).

    python -m maglev.lab.quicpeer server --host VIP --port 4433 --name be1 --server-id 0a01 \\
        --sid-offset 1 --cid-length 9 --cert C --key K --stats FILE
    python -m maglev.lab.quicpeer client --host VIP --port 4433 --bytes N --local-port P \\
        --migrate-port Q --migrate-at 0.3 --timeout S

The server issues connection IDs that carry its server ID (the QUIC-LB draft's plaintext
scheme: ``--cid-length`` bytes, the ID at byte ``--sid-offset``).  aioquic draws every
connection ID it issues from ``os.urandom(connection_id_length)`` in
``aioquic.quic.connection``; the server gives that module an ``os`` whose ``urandom``
writes the server ID into requests of exactly the connection-ID length (``--cid-length``
9 keeps them apart from the 8-byte path challenges and 16-byte reset tokens).  The
server answers ``GET N`` on a stream with its name and N bytes, and writes the client
addresses each connection came from to ``--stats``.

The client connects from ``--local-port``, asks for ``--bytes``, and after receiving the
fraction ``--migrate-at`` moves to a new UDP socket bound to ``--migrate-port`` and to a new
connection ID (active connection migration, RFC 9000 section 9); it prints one JSON line:
the server's name, the bytes received, whether it migrated, and the time taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

ALPN = ["maglev-quic-test"]


def embed_server_id(server_id: bytes, offset: int, cid_length: int) -> None:
    """Make aioquic issue connection IDs with ``server_id`` at ``offset`` (see above)."""
    import aioquic.quic.connection as qc

    if offset + len(server_id) > cid_length:
        raise ValueError("the server ID does not fit the connection ID")
    real = os.urandom

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def urandom(n: int) -> bytes:
            b = bytearray(real(n))
            if n == cid_length:
                b[offset:offset + len(server_id)] = server_id
            return bytes(b)

    qc.os = _Os()  # type: ignore[assignment]


def make_cert(cert: Path, key: Path) -> None:
    """A self-signed certificate for the test server (the client does not verify it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maglev-quic-test")])
    now = datetime.datetime.now(datetime.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=7)).sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


async def _server(a: argparse.Namespace) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    embed_server_id(bytes.fromhex(a.server_id), a.sid_offset, a.cid_length)
    peers: list[list[str]] = []
    cids: set[str] = set()

    class Server(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.peers: list[str] = []
            peers.append(self.peers)
            self.requests: dict[int, bytes] = {}

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            where = f"{addr[0]}:{addr[1]}"
            if where not in self.peers:
                self.peers.append(where)
            super().datagram_received(data, addr)

        def quic_event_received(self, event: Any) -> None:
            for c in self._quic._host_cids:
                cids.add(c.cid.hex())
            if isinstance(event, StreamDataReceived):
                buf = self.requests.get(event.stream_id, b"") + event.data
                self.requests[event.stream_id] = buf
                if b"\n" in buf:
                    n = int(buf.split()[1])
                    body = f"{a.name}\n".encode()
                    self._quic.send_stream_data(event.stream_id, body + bytes(n), end_stream=True)
                    self.transmit()

    conf = QuicConfiguration(is_client=False, alpn_protocols=ALPN, connection_id_length=a.cid_length)
    conf.load_cert_chain(a.cert, a.key)
    await serve(a.host, a.port, configuration=conf, create_protocol=Server)
    stats = Path(a.stats)
    while True:
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": a.name, "connections": peers, "cids": sorted(cids)}))
        tmp.replace(stats)
        await asyncio.sleep(0.2)


async def _client(a: argparse.Namespace) -> dict[str, Any]:
    from aioquic.asyncio import QuicConnectionProtocol, connect
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    done = asyncio.get_running_loop().create_future()
    state: dict[str, Any] = {"received": 0, "migrated": False, "server": "", "dcids": []}
    extra: list[asyncio.BaseTransport] = []

    class Client(QuicConnectionProtocol):
        def quic_event_received(self, event: Any) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            data = event.data
            if not state["server"] and b"\n" in data:
                name, _, data = data.partition(b"\n")
                state["server"] = name.decode()
            state["received"] += len(data)
            if not state["migrated"] and state["received"] >= a.migrate_at * a.bytes:
                state["migrated"] = True
                asyncio.ensure_future(migrate(self))
            if event.end_stream and not done.done():
                done.set_result(True)

    async def migrate(proto: Client) -> None:
        """Move to a new socket (new source port) and a new connection ID."""
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", a.migrate_port))
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: proto, sock=s)
        extra.append(transport)
        state["dcids"].append(proto._quic._peer_cid.cid.hex())
        proto._quic.change_connection_id()
        state["dcids"].append(proto._quic._peer_cid.cid.hex())
        proto._quic.send_ping(1)
        proto.transmit()

    conf = QuicConfiguration(is_client=True, alpn_protocols=ALPN, verify_mode=ssl.CERT_NONE)
    t0 = time.monotonic()
    try:
        async with connect(a.host, a.port, configuration=conf, create_protocol=Client,
                           local_port=a.local_port, wait_connected=True) as proto:
            sid = proto._quic.get_next_available_stream_id()
            proto._quic.send_stream_data(sid, f"GET {a.bytes}\n".encode(), end_stream=True)
            proto.transmit()
            await asyncio.wait_for(done, a.timeout)
    finally:
        for t in extra:
            t.close()
    return {"ok": state["received"] == a.bytes, "bytes": state["received"], "server": state["server"],
            "migrated": state["migrated"], "dcids": state["dcids"], "seconds": round(time.monotonic() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maglev.lab.quicpeer")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=4433)
    s.add_argument("--name", required=True)
    s.add_argument("--server-id", required=True, help="hex")
    s.add_argument("--sid-offset", type=int, default=1)
    s.add_argument("--cid-length", type=int, default=9)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--stats", required=True)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=4433)
    c.add_argument("--bytes", type=int, default=2_000_000)
    c.add_argument("--local-port", type=int, required=True)
    c.add_argument("--migrate-port", type=int, required=True)
    c.add_argument("--migrate-at", type=float, default=0.3)
    c.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.role == "server":
        try:
            asyncio.run(_server(a))
        except KeyboardInterrupt:
            pass
        return 0
    try:
        r = asyncio.run(_client(a))
    except (TimeoutError, ConnectionError, OSError) as exc:
        r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(r))
    return 0 if r.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
