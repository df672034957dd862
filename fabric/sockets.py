"""Sending and receiving ZeroMQ messages on the nodes' hot paths.

pyzmq's ``Socket.send_multipart`` and ``recv_multipart`` pass every frame
through Python-level checks and combine their flags as ``enum.IntFlag``
values, which costs several microseconds per message; a node sends or receives
one message per broker, per matcher and per topic on every turn of its loop.
These two functions do the same with the compiled socket's own methods and
plain integer flags, several times cheaper for a send.

Frames are ``bytes``; nothing else is accepted (no ``Frame`` objects, no
routing ids), which is all the nodes use.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _Socket

from fabric.auth import user_id

__all__ = ["readable", "recv_frames", "recv_routed", "send_frames"]

_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_send = _Socket.send
_recv = _Socket.recv
_get = _Socket.get


def send_frames(sock: zmq.Socket[Any], frames: Sequence[bytes], flags: int = 0) -> None:
    """Send ``frames`` as one ZeroMQ message (``flags``: 0, or ``zmq.NOBLOCK`` to raise ``zmq.Again``)."""
    flags = int(flags)
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], _SNDMORE | flags)
    _send(sock, frames[last], flags)


def recv_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """Receive one waiting ZeroMQ message's frames without blocking; raise ``zmq.Again`` when none waits."""
    parts = [_recv(sock, _NOBLOCK)]
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, _NOBLOCK))
    return parts


def readable(poller: zmq.Poller, socks: Sequence[zmq.Socket[Any]], timeout_ms: int) -> set[zmq.Socket[Any]]:
    """Return the sockets of ``socks`` with a message waiting, polling up to ``timeout_ms`` only when none has.

    A busy node finds messages waiting on most turns: asking each socket is much cheaper than a poll.
    ``poller`` must hold ``socks`` (registered for ``POLLIN``).
    """
    waiting = {s for s in socks if _get(s, _EVENTS) & _POLLIN}  # type: ignore[operator]  # an int option
    if waiting:
        return waiting
    return {s for s, _ in poller.poll(timeout_ms)}


def recv_routed(sock: zmq.Socket[Any], known: Container[bytes]) -> tuple[list[bytes], str | None]:
    """Receive one waiting message of a ROUTER without blocking, and who sent it when the peer is new.

    Return its frames (the peer's routing id first) and, when that id is not in ``known``, the ``User-Id``
    the ZAP handler gave the peer's connection (``None`` for a known peer, or a connection without one): a
    peer's identity is read once, not on every message. Raise ``zmq.Again`` when none waits.
    """
    ident = _recv(sock, _NOBLOCK)
    parts = [ident]
    user = None
    if ident not in known and _get(sock, _RCVMORE):
        frame = sock.recv(_NOBLOCK, copy=False)
        parts.append(frame.bytes)
        user = user_id(frame)
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, _NOBLOCK))
    return parts, user
