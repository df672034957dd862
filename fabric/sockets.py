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

from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _Socket

__all__ = ["readable", "recv_frames", "send_frames"]

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
