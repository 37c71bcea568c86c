"""The ``simlearn-serve`` command as a library function: check the address and token, bind, load, serve.

The address and the token are checked, and the socket is bound, before torch is imported and the gallery embedded,
so that a refused address or a port in use fails in one line at once rather than after seconds of imports or
minutes of embedding (this module imports neither torch nor the service at its top). SIGTERM and Ctrl-C stop the
server gracefully (requests in flight are answered, for at most ``shutdown_timeout`` seconds) and the command then
returns normally: exit status 0.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from rich.console import Console

from simlearn.errors import UserError

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

__all__ = ["bind", "check_address", "is_loopback", "make_server", "open_lines", "run_server", "serve"]

#: The shortest bearer token accepted: 16 characters of ``secrets.token_urlsafe`` are 96 bits.
MIN_TOKEN_CHARS = 16
_TOKEN_HINT = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: Any, token: str | None) -> int:
    """The port as an int, after refusing (one line each) a bad port, a non-local address without a token and a
    token too short to be a secret."""
    if isinstance(port, bool) or not str(port).strip().isdigit() or not 0 <= int(str(port)) <= 65535:
        raise UserError(f"port={port!r} is not a TCP port; give an integer from 1 to 65535 (0: any free port).")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"auth_token has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}; {_TOKEN_HINT}.")
    if not is_loopback(host) and token is None:
        raise UserError(
            f"host={host} makes the service reachable from other machines, so it needs an access token: add "
            f"auth_token=<secret> (or set SIMLEARN_SERVE_TOKEN; clients send 'Authorization: Bearer <secret>'; "
            f"{_TOKEN_HINT}), or keep the default host=127.0.0.1."
        )
    return int(str(port))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or a :class:`UserError` saying why not."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UserError(
            f"host={host} is not an address of this machine ({error.strerror}); e.g. host=127.0.0.1."
        ) from error
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); the port is in use or the address is not "
            f"this machine's: choose another port=… (or host=…)."
        ) from error
    sock.set_inheritable(True)
    return sock


@contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """While the server runs, SIGINT and SIGTERM ask it to stop. uvicorn installs its own handlers while it serves
    and, once it has shut down, raises the signal again to the handlers it found: these, which make that a normal
    return (exit status 0) instead of death by SIGTERM or a KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM as Ctrl-C for the duration (main thread only): a start stopped while it embeds the gallery ends with
    one line and exit status 0, like one stopped by Ctrl-C, rather than by death from the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_server(
    app: Any, log_level: str = "warning", access_log: bool = False, shutdown_timeout: float = 5.0
) -> uvicorn.Server:
    """A uvicorn server for ``app``: run it with :func:`run_server`, stop it with ``server.should_exit = True``."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=shutdown_timeout,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


def run_server(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve on the bound ``sock`` until SIGINT/SIGTERM (in the main thread) or ``server.should_exit``."""
    with _stop_on_signals(server):
        server.run(sockets=[sock])


def open_lines(host: str, port: int) -> str:
    """Where to open the page, for the start-up line: the address itself, or for an address of every interface
    (0.0.0.0, ::), which no browser can open, this machine's loopback and the form to use from other machines."""
    try:
        unspecified = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        unspecified = False
    if not unspecified:
        shown = f"[{host}]" if ":" in host else host
        return f"open http://{shown}:{port}/ in a browser"
    local = "[::1]" if ":" in host else "127.0.0.1"
    return (
        f"open http://{local}:{port}/ in a browser on this machine, or from another machine http://<this host>:{port}/"
    )


def serve(cfg: DictConfig) -> None:
    """The whole command: check, bind, load the model and the gallery, serve until stopped."""
    token = cfg.get("auth_token") or None
    token = str(token) if token is not None else None
    host = str(cfg.get("host") or "127.0.0.1")
    port = check_address(host, cfg.get("port", 8000), token)
    # torch, FastAPI and the model only now: a refused address is answered before seconds of imports
    from simlearn.serve.app import create_app
    from simlearn.serve.service import open_service

    sock = bind(host, port)
    try:
        try:
            with _interrupt_on_sigterm():
                service = open_service(cfg)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the gallery was embedded: the saved parts stay
            Console().print(
                "simlearn-serve: stopped before serving; the gallery embeddings saved so far are reused next time",
                highlight=False,
            )
            return
        app = create_app(service, token)
        bound_host, bound_port = sock.getsockname()[:2]
        gallery = service.gallery
        skipped = f", {gallery.skipped} unreadable file(s) skipped" if gallery.skipped else ""
        console = Console()
        console.print(
            f"simlearn-serve: {service.size} gallery items of {service.source}{skipped}; model {service.model.path} "
            f"on {service.device}; search: {service.method}",
            highlight=False,
            soft_wrap=True,
        )
        auth = " (access token required)" if token else ""
        console.print(
            f"{open_lines(bound_host, bound_port)}{auth}; API docs at /docs; stop with Ctrl-C or SIGTERM",
            highlight=False,
            soft_wrap=True,
        )
        server = make_server(
            app,
            log_level=str(cfg.get("log_level") or "warning"),
            access_log=bool(cfg.get("access_log", False)),
            shutdown_timeout=float(cfg.get("shutdown_timeout") or 5),
        )
        run_server(server, sock)
        console.print("simlearn-serve: stopped", highlight=False)
    finally:
        sock.close()
