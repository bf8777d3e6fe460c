"""Running an app with uvicorn: in the foreground (`facelab serve`) or on a background thread
(tests, benchmarks).

The listening socket is bound before anything slow happens, so a port in use is one clear
error at once, and port 0 gives a free port whose number the caller reads back.
"""

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from facelab.errors import FacelabError

log = logging.getLogger(__name__)
# concurrent connections, more get 503: each may hold an upload of up to --max-upload-mb in memory
MAX_CONNECTIONS = 64


def check_port(port: int) -> int:
    """`port` if it is a TCP port number (0: any free one), else a FacelabError."""
    if not 0 <= port <= 65535:
        raise FacelabError(f"--port: {port} is not a port number (0-65535)")
    return port


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); FacelabError naming the option when it cannot be."""
    check_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise FacelabError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    # a restart may bind while the last run's connections linger in TIME_WAIT; a port another
    # process listens on is still refused
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise FacelabError(f"--port: cannot listen on {host}:{port} "
                           f"({e.strerror or e})") from None
    return sock


def base_url(sock: socket.socket) -> str:
    """http://host:port of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: FastAPI, sock: socket.socket, max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve `app` on the bound socket until SIGINT or SIGTERM; the app's lifespan then finishes
    the queued photos and closes the gallery."""
    server = uvicorn.Server(_config(app, max_connections, access_log=True))
    server.run(sockets=[sock])


@contextmanager
def run_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                  max_connections: int = MAX_CONNECTIONS, timeout: float = 30.0
                  ) -> Iterator[str]:
    """Serve `app` on a background thread while the block runs; yields its base URL
    (`http://127.0.0.1:PORT`, a free port unless `port` is given). On leaving, the server stops
    (its lifespan closes the app) and the thread is joined."""
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, max_connections, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="facelab-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise FacelabError(f"the server on {base_url(sock)} did not start")
            time.sleep(0.01)
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _config(app: FastAPI, max_connections: int, access_log: bool) -> uvicorn.Config:
    # log_config None: uvicorn's records go through facelab's logging set-up, one format
    return uvicorn.Config(app, log_config=None, access_log=access_log,
                          limit_concurrency=max_connections, timeout_graceful_shutdown=30)
