"""The lab's HTTP backend: a tiny server that names itself in every reply.

``python -m maglev.lab.httpd --name be1 --port 80`` listens on every IPv4 and IPv6
address (one dual-stack socket), so it answers on its own address and on VIPs put on
``lo``.  The reply body is ``backend=<name>\\n``, also in the ``X-Backend`` header, so a
client can count how requests spread.  ``/size/N`` returns N bytes (for throughput).

One asyncio event loop serves every connection (no thread per connection): the lab's
long-lived-connection tests keep hundreds of connections open, each asking ten times a
second, on a two-core machine shared with three forwarders.  HTTP/1.1 connections stay
open unless the client says ``Connection: close``; HTTP/1.0 ones close after the reply
unless it says ``Connection: keep-alive``.  A request head over 64 KiB or one that does
not parse gets ``400`` and the connection closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket

MAX_HEAD = 64 * 1024
MAX_SIZE = 64 << 20
CHUNK = 1 << 20


def _reply(status: str, name: str, body: bytes, keep: bool) -> bytes:
    return (f"HTTP/1.1 {status}\r\nServer: maglev-lab\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nX-Backend: {name}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode() + body


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    """(method, path, version, headers with lower-case names) of a request head, or None."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not path:
        return None
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if not sep:
            return None
        headers[k.strip().lower()] = v.strip()
    return method, path, version, headers


async def _serve(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_reply("400 Bad Request", name, b"request head too long\n", False))
                break
            except asyncio.IncompleteReadError:
                break  # the client closed
            req = parse_head(head[:-4])
            if req is None:
                writer.write(_reply("400 Bad Request", name, b"bad request\n", False))
                break
            method, path, version, headers = req
            conn = headers.get("connection", "").lower()
            keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
            if length := headers.get("content-length"):  # a body we do not need: read it away
                try:
                    await reader.readexactly(max(0, min(int(length), MAX_HEAD)))
                except (ValueError, asyncio.IncompleteReadError):
                    break
            body = f"backend={name}\n".encode()
            if path.startswith("/size/"):
                try:
                    n = max(0, min(int(path[6:]), MAX_SIZE))
                except ValueError:
                    writer.write(_reply("400 Bad Request", name, b"bad size\n", False))
                    break
                body = (body * (n // len(body) + 1))[:n]
            out = _reply("200 OK", name, b"" if method == "HEAD" else body, keep)
            for i in range(0, len(out), CHUNK):
                writer.write(out[i:i + CHUNK])
                await writer.drain()
            if not keep:
                break
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        writer.close()


def listening_socket(port: int, host: str = "::") -> socket.socket:
    """A dual-stack (IPv4 and IPv6) listening socket."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, port))
    s.listen(1024)
    return s


async def serve(name: str, sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    """Serve on ``sock`` until ``stop`` is set (or forever)."""
    server = await asyncio.start_server(lambda r, w: _serve(name, r, w), sock=sock, limit=MAX_HEAD)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.name, listening_socket(args.port), stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
