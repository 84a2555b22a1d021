"""The lab's HTTP backend: a tiny server that names itself in every reply.

``python -m maglev.lab.httpd --name be1 --port 80`` listens on every IPv4 and IPv6
address (one dual-stack socket), so it answers on its own address and on VIPs put on
``lo``.  The reply body is ``backend=<name>\\n``, also in the ``X-Backend`` header, so a
client can count how requests spread.  ``/size/N`` returns N bytes (for throughput).
"""

from __future__ import annotations

import argparse
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 256

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request: object, client_address: object) -> None:
        # a load generator (wrk) resets its keep-alive connections when it stops: not an error
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "maglev-lab"
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes: without TCP_NODELAY a keep-alive client
        # (wrk) waits ~40 ms per request for the delayed ACK (Nagle), measuring nothing of ours
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            body = f"backend={name}\n".encode()
            if self.path.startswith("/size/"):
                try:
                    n = max(0, min(int(self.path[6:]), 64 << 20))
                except ValueError:
                    self.send_error(400, "bad size")
                    return
                body = (body * (n // len(body) + 1))[:n]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Backend", name)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # quiet: the lab runs thousands
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=80)
    args = ap.parse_args(argv)
    server = _DualStackServer(("::", args.port), make_handler(args.name))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
