"""A small HTTP/1.1 client for model calls: exclusive connections and a whole-call deadline.

Why not a shared `httpx.Client`: its connection pool queues callers once `max_connections` are
busy, and httpcore's sync pool can close a connection it has already handed to a queued request
(encode/httpcore#1110): that request then hangs for its whole read timeout. Here every call
takes a connection for itself from an idle stack (or opens a new one), uses it alone, and puts it
back: no connection is ever visible to two calls, so no pass of another thread can close it, and
no caller waits for a connection unless the model was given `max_connections`.

Each idle entry is an httpcore `ConnectionPool` limited to one connection (it handles keep-alive
expiry, server-side disconnects and proxies), driven by one thread at a time.

The whole-call deadline lives in the network backend: every connect, read and write is given the
time left until the call's deadline, so a body sent one byte at a time cannot hold a call past
its `timeout` (httpcore's own timeouts bound each operation, not the call).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ssl
import threading
import time
import typing
import urllib.request
from collections.abc import Iterable, Iterator

import httpcore
import httpx

__all__ = [
    "CallDeadlineExceeded",
    "ConnectionSource",
    "HttpResponse",
    "own_source",
    "shared_source",
]

# Seconds an idle connection is kept for reuse. Servers close idle keep-alive connections after
# ~5 s (llama.cpp, uvicorn, nginx's default is 75 s); closing ours first avoids racing them.
KEEPALIVE_EXPIRY_S = 4.0


class CallDeadlineExceeded(httpcore.TimeoutException):
    """The call's whole-call deadline passed before a connect, read or write could start."""


class _DeadlineBackend(httpcore.NetworkBackend):
    """The default sync backend with every operation clamped to `deadline` (monotonic s)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self.deadline: float | None = None

    def remaining(self, timeout: float | None, what: str) -> float | None:
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CallDeadlineExceeded(f"no time left to {what}")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self.remaining(timeout, "connect"), local_address, socket_options
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self.remaining(timeout, "connect"), socket_options
        )
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.remaining(timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.remaining(timeout, "write"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._backend.remaining(timeout, "start TLS")
        )
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _Connection:
    """One keep-alive connection (an httpcore pool of one), used by one call at a time."""

    __slots__ = ("backend", "idle_since", "pool")

    def __init__(self, proxy: httpcore.Proxy | None) -> None:
        self.backend = _DeadlineBackend()
        self.pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            proxy=proxy,
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=self.backend,
        )
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a socket that is already gone
            self.pool.close()


class HttpResponse:
    """A response being read: status, headers (lower-case names) and the body in chunks.

    `close()` ends the call and gives the connection back (closing it if the body was not
    read to the end); it is idempotent, and a context manager calls it.
    """

    def __init__(
        self, source: ConnectionSource, connection: _Connection, response: httpcore.Response
    ) -> None:
        self.status = response.status
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in response.headers
        }
        self._source = source
        self._connection: _Connection | None = connection
        self._response = response

    def iter_bytes(self) -> Iterator[bytes]:
        """The body as it arrives; reads stop at the call's deadline."""
        return self._response.iter_stream()

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self._response.iter_stream())

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            self._response.close()
        finally:
            connection.backend.deadline = None
            self._source.release(connection)

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ConnectionSource:
    """Idle keep-alive connections to one origin, handed out one call each.

    `max_connections=None`: a call never waits; it reuses an idle connection or opens one.
    With a number, at most that many calls are in flight and the others wait (until their own
    deadline) on a semaphore, never on a shared connection.
    """

    def __init__(self, proxy: httpcore.Proxy | None, max_connections: int | None) -> None:
        self._proxy = proxy
        self._lock = threading.Lock()
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = (
            threading.BoundedSemaphore(max_connections) if max_connections is not None else None
        )
        self.max_connections = max_connections

    def request(
        self,
        url: httpcore.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        timeout: float,
    ) -> HttpResponse:
        """POST `body` to `url` and return once the response headers are in.

        `timeout` (seconds) bounds the whole call, first byte to last, body reading included.
        Raises httpcore's exceptions (`CallDeadlineExceeded` is a `TimeoutException`).
        """
        deadline = time.monotonic() + timeout
        connection = self._acquire(deadline, timeout)
        try:
            connection.backend.deadline = deadline
            extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout}}
            headers = [*headers, (b"Content-Length", str(len(body)).encode("ascii"))]
            response = connection.pool.handle_request(
                httpcore.Request(b"POST", url, headers=headers, content=body, extensions=extensions)
            )
        except BaseException:
            connection.backend.deadline = None
            self.release(connection)
            raise
        return HttpResponse(self, connection, response)

    def _acquire(self, deadline: float, timeout: float) -> _Connection:
        if self._slots is not None and not self._slots.acquire(timeout=timeout):
            raise httpcore.PoolTimeout(
                f"all {self.max_connections} connections (max_connections) stayed busy for "
                f"the whole timeout of {timeout:g}s"
            )
        try:
            with self._lock:
                if self._idle:
                    return self._idle.pop()  # the most recently used: the least likely to expire
            return _Connection(self._proxy)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def release(self, connection: _Connection) -> None:
        now = time.monotonic()
        connection.idle_since = now
        expired: list[_Connection] = []
        with self._lock:
            self._idle.append(connection)
            while self._idle and now - self._idle[0].idle_since > KEEPALIVE_EXPIRY_S:
                expired.append(self._idle.popleft())
        if self._slots is not None:
            self._slots.release()
        for stale in expired:
            stale.close()

    def close_idle(self) -> None:
        """Close every idle connection; calls in flight keep theirs."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
        for connection in idle:
            connection.close()

    @property
    def idle_count(self) -> int:
        """How many connections wait idle for reuse."""
        with self._lock:
            return len(self._idle)


_shared_lock = threading.Lock()
_shared: dict[tuple[str, str, int, str | None], ConnectionSource] = {}


def shared_source(url: httpx.URL) -> ConnectionSource:
    """The process-wide `ConnectionSource` (no connection limit) for the origin of `url`.

    Models built for the same server, even one per agent or per step, reuse each other's
    idle connections instead of opening new ones.
    """
    proxy_url = _proxy_for(url)
    key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80), proxy_url)
    with _shared_lock:
        source = _shared.get(key)
        if source is None:
            source = _shared[key] = ConnectionSource(_proxy(proxy_url), None)
        return source


def own_source(url: httpx.URL, max_connections: int) -> ConnectionSource:
    """A `ConnectionSource` of its own, limited to `max_connections` calls in flight."""
    return ConnectionSource(_proxy(_proxy_for(url)), max_connections)


def _proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment (`HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`) gives `url`."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _proxy(proxy_url: str | None) -> httpcore.Proxy | None:
    if proxy_url is None:
        return None
    url = httpx.URL(proxy_url)
    auth = (url.username, url.password) if url.username else None
    return httpcore.Proxy(str(url.copy_with(username=None, password=None)), auth=auth)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; one context serves every connection.
    return httpx.create_ssl_context()
