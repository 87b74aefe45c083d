"""`tally serve`: the dashboard app on uvicorn, on a socket bound here so that an address
in use, or one that needs a token, is told before anything starts."""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from pipeline.config import Home
from pipeline.errors import ServeError
from pipeline.web.app import create_app

GRACE_SECONDS = 1  # open event streams are closed this long after Ctrl-C


class StoppingServer(uvicorn.Server):
    """uvicorn's server, except that SIGINT and SIGTERM end the event streams and then the
    process with status 0 (uvicorn raises the signal again once stopped)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop gracefully; a second Ctrl-C stops at once."""
        self.stopping.set()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def is_loopback(host: str) -> bool:
    """Whether `host` only listens to this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host headers a server on `host` answers: on loopback, only loopback names, so
    that a web page cannot rebind its own name to 127.0.0.1 and read the dashboard;
    elsewhere any (the token guards it)."""
    if not is_loopback(host):
        return ("*",)
    return tuple(dict.fromkeys((host, f"[{host}]" if ":" in host else host, *LOOPBACK_NAMES)))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or ServeError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                              type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host!r}: {exc.strerror}",
                         hint="give an IP address such as 127.0.0.1 or 0.0.0.0") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         hint=f"another program uses it? try --port {port + 1}" if port
                         else None) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The address a browser opens for a bound socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(home: Home, host: str, port: int, token: str,
          ready: Callable[[str], None]) -> None:
    """Serve the dashboard until SIGINT or SIGTERM; `ready` gets its URL once it listens."""
    token = token or home.serve.token
    if not is_loopback(host) and not token:
        raise ServeError(f"{host} is reachable from other machines: it needs a token",
                         hint="give --token SECRET (or [serve] token in config.toml); "
                              "without one, serve on 127.0.0.1")
    app, api = create_app(home, token, hosts=allowed_hosts(host))
    api.bundle()  # made before the first page asks for it
    sock = bind(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    server = StoppingServer(config, api.stopping)
    ready(url_of(sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
