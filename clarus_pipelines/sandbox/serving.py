"""Serve an ASGI app with uvicorn from a background thread (tests, the demo, the sandbox CLI).

`serve_in_thread(app)` binds the socket itself (port 0 picks a free port, so the URL is
known before uvicorn starts), waits until uvicorn reports it has started, and returns a
`ServedApp` whose `stop()` shuts the server down gracefully and joins the thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


@dataclass
class ServedApp:
    """A running server: `url` is e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""

    url: str
    host: str
    port: int
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit, then wait for the thread (forcing exit if it lingers)."""
        self.server.should_exit = True
        self.thread.join(timeout / 2)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout / 2)
        if self.thread.is_alive():
            log.warning("server at %s did not stop within %.1fs", self.url, timeout)

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and self.server.started and not self.server.should_exit

    def __enter__(self) -> "ServedApp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout_s: float = 15.0,
    log_level: str = "warning",
    name: str = "uvicorn",
) -> ServedApp:
    """Start `app` on (host, port) in a daemon thread; return once it accepts connections.

    Raises RuntimeError if the server did not start in time (e.g. the port is taken or the
    app's lifespan startup failed).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="auto", access_log=False, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"{name}:{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{bound_port} exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError(f"server on {host}:{bound_port} did not start within {startup_timeout_s}s")
        time.sleep(0.01)
    url_host = f"[{host}]" if ":" in host else host
    return ServedApp(url=f"http://{url_host}:{bound_port}", host=host, port=bound_port, server=server, thread=thread)
