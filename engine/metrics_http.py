"""Serve a metrics registry over HTTP on a listening socket (prometheus_client's WSGI app).

The socket is made apart from the server so that `moor up` can make it: it binds the
address once (a free loopback port by default), prints it, and hands the socket to each
reducer it starts (pass_fds, MOOR_METRICS_FD). The address then stays the same across
reducer restarts, and no other process can take the port between a pick and a bind.
A reducer run on its own binds MOOR_METRICS_ADDR itself (engine.config.metrics_addr).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

__all__ = ["MetricsServer", "inherited", "listen", "serve", "url_of"]

log = logging.getLogger("moorage.metrics")


def listen(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to (host, port) and listening (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """Return the scrape URL of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Log nothing: a scrape every few seconds is not news."""


class MetricsServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server on a socket that arrives bound and listening."""

    daemon_threads = True  # a scrape in progress never holds the process up

    def __init__(self, sock: socket.socket, app: Any) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Quiet, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_bind()
        self.set_app(app)

    def server_bind(self) -> None:
        """Take the given socket's address (it is bound already; no DNS lookup)."""
        host, port = self.socket.getsockname()[:2]
        self.server_address = (host, port)
        self.server_name, self.server_port = host, port
        self.setup_environ()

    def close(self) -> None:
        """Stop serving and close this process's copy of the socket."""
        self.shutdown()
        self.server_close()


def serve(sock: socket.socket, registry: Any) -> MetricsServer:
    """Serve `registry` on `sock` from a daemon thread; return the server (close() stops)."""
    from prometheus_client import make_wsgi_app

    server = MetricsServer(sock, make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics: %s", url_of(sock))
    return server


def inherited(fd: int) -> socket.socket:
    """Return a socket of our own for a listening descriptor handed down by `moor up`."""
    return socket.socket(fileno=os.dup(fd))
