"""One way to open a TCP listener: the peer port and the metrics port both use it."""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio


async def bind_listener(
    host: str, port: int, *, backlog: int, error: Callable[[str, int, OSError], OSError]
) -> trio.SocketListener:
    """Listen on exactly host:port (0 picks a free port). Any failure, resolving included,
    raises `error(host, port, cause)`; the socket is closed then."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise error(host, port, exc) from exc
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        # Lets a restarted node rebind while old connections linger in TIME_WAIT; unlike
        # SO_REUSEPORT it never lets a second listener share the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise error(host, port, exc) from exc
    return trio.SocketListener(sock)
