"""CurveZMQ authentication: key files, the ZAP handler, and CURVE servers and clients.

Every node and every broker has a CURVE key pair (``zmq.curve_keypair``). A
socket that listens (a CURVE *server*) proves itself with its secret key and
asks this process's ZAP handler (:class:`Zap`) whether a connecting peer's
public key is allowed in its *domain*; the handler answers with the user id
ZeroMQ then attaches to every message of that connection (the ``User-Id``
property of a frame). A socket that dials (a CURVE *client*) must know the
public key of the server it dials, so a stranger cannot pose as a node
either.

- :class:`KeyPair`, :func:`load_key`, :func:`write_key`: key pairs, and key
  files in ZeroMQ's certificate format (``zmq.auth.load_certificate`` reads
  them too): ``NAME.key_secret`` holds both keys, ``NAME.key`` the public one.
- :class:`Keyring`: one side's keys: its own pair, and the public key of every
  server it may dial, by address. :meth:`Keyring.serve` makes a socket a CURVE
  server, :meth:`Keyring.connect` dials an address as a CURVE client (an
  address with no known server key is dialled in the clear: the market data
  feeds, open to anyone).
- :func:`zap`: the ZAP handler of a ZeroMQ context, started on first use; its
  :meth:`Zap.allow` says which keys a domain admits and the user id of each.

Keys travel as Z85 text (40 characters), as topology files and key files
write them.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = [
    "KEY_LEN",
    "KeyPair",
    "Keyring",
    "Zap",
    "check_public_key",
    "load_key",
    "new_key",
    "user_id",
    "write_key",
    "zap",
]

log = logging.getLogger("exfab.auth")

KEY_LEN = 40  # a CURVE key (32 bytes) in Z85
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (RFC 27)
_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyPair(NamedTuple):
    """A CURVE key pair, each key as Z85 text."""

    public: str
    secret: str


def new_key() -> KeyPair:
    """Return a fresh key pair."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def check_public_key(text: object) -> str | None:
    """Return why ``text`` is not a CURVE public key in Z85, or ``None`` when it is one."""
    if not isinstance(text, str):
        return f"must be a string of {KEY_LEN} Z85 characters"
    if len(text) != KEY_LEN:
        return f"is {len(text)} characters long: a CURVE key in Z85 is {KEY_LEN} (exfab keys new makes one)"
    bad = sorted(set(text) - _Z85)
    if bad:
        return f"has characters Z85 does not use: {' '.join(repr(c) for c in bad)}"
    return None


def write_key(folder: str | Path, name: str, pair: KeyPair, *, note: str = "") -> tuple[Path, Path]:
    """Write ``NAME.key`` (the public key) and ``NAME.key_secret`` (both, readable by the owner only).

    ``note`` is written as comment lines at the top of both files (say there what the key is for).
    Return the two paths, public first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head = [f"#   exfab key {name!r}, made {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"]
    head += [f"#   {line}" for line in note.splitlines()]
    public = folder / f"{name}.key"
    secret = folder / f"{name}.key_secret"
    public.write_text("\n".join([*head, "#   ZeroMQ CURVE public certificate", "", "metadata", "curve",
                                 f'    public-key = "{pair.public}"', ""]))
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([*head, "#   ZeroMQ CURVE **secret** certificate: give it to no one", "", "metadata",
                           "curve", f'    public-key = "{pair.public}"', f'    secret-key = "{pair.secret}"', ""]))
    return public, secret


def load_key(path: str | Path) -> KeyPair:
    """Read a secret key file (``NAME.key_secret``, as :func:`write_key` or ``zmq.auth`` writes them).

    Raises
    ------
    ValueError
        When the file cannot be read, holds no secret key, or its keys are not a pair.
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError:
        raise ValueError(f"{path}: no such key file (exfab keys new makes one)") from None
    except ValueError:
        raise ValueError(f"{path}: not a key file: it has no public-key line") from None
    if secret is None:
        raise ValueError(f"{path}: holds a public key only: give the NAME.key_secret file")
    pair = KeyPair(public.decode("ascii"), secret.decode("ascii"))
    for what, key in (("public", pair.public), ("secret", pair.secret)):
        why = check_public_key(key)
        if why is not None:
            raise ValueError(f"{path}: its {what} key {why}")
    if zmq.curve_public(pair.secret.encode("ascii")).decode("ascii") != pair.public:
        raise ValueError(f"{path}: its public key is not the secret key's")
    return pair


class Keyring:
    """One side's CURVE keys: its own pair, and the public key of each server it dials, by address.

    Parameters
    ----------
    own
        This node's (or broker's) key pair.
    servers
        ``{address: server public key}``: every address this side dials as a CURVE client
        (``tcp://host:port``, exactly as it is passed to :meth:`connect`).
    """

    __slots__ = ("own", "servers")

    def __init__(self, own: KeyPair, servers: Mapping[str, str]) -> None:
        self.own = own
        self.servers = dict(servers)

    def serve(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` a CURVE server whose peers the context's ZAP handler admits in ``domain``.

        Call it before ``bind``, and make sure the socket's context has its :func:`zap` handler
        allowing that domain's keys: without one, libzmq would admit any key.
        """
        sock.curve_server = True
        sock.curve_secretkey = self.own.secret.encode("ascii")
        sock.zap_domain = domain.encode()

    def connect(self, sock: zmq.Socket[Any], address: str) -> None:
        """Dial ``address``: as a CURVE client when a server key is known for it, else in the clear.

        One socket may dial several servers: libzmq takes the server key set when each ``connect`` is made.
        """
        server = self.servers.get(address)
        if server is not None:
            sock.curve_secretkey = self.own.secret.encode("ascii")
            sock.curve_publickey = self.own.public.encode("ascii")
            sock.curve_serverkey = server.encode("ascii")
        sock.connect(address)


def connect(sock: zmq.Socket[Any], address: str, keys: Keyring | None) -> None:
    """Dial ``address`` with ``keys`` (:meth:`Keyring.connect`), or in the clear when there are none."""
    if keys is None:
        sock.connect(address)
    else:
        keys.connect(sock, address)


def user_id(frame: zmq.Frame) -> str | None:
    """Return the ``User-Id`` ZAP gave the connection ``frame`` came on, ``None`` when it had none."""
    try:
        uid = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return uid if isinstance(uid, str) and uid else None


class Zap(threading.Thread):
    """A context's ZAP handler: a small thread answering libzmq's authentication requests (RFC 27).

    It admits a CURVE peer whose public key :meth:`allow` listed for the socket's ZAP domain, with the
    user id given there, and refuses everything else (other mechanisms, other domains, unknown keys).
    Start it with :func:`zap`, which makes one per context.
    """

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        super().__init__(name="zap", daemon=True)
        self.ctx = ctx
        self._allowed: dict[bytes, dict[bytes, bytes]] = {}  # domain -> raw 32-byte key -> user id
        self._ready = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        self.refused = 0  # handshakes refused, for logs and tests

    def allow(self, domain: str, keys: Mapping[str, str]) -> None:
        """Admit in ``domain`` every public key of ``keys`` (``{Z85 key: user id}``), besides those admitted."""
        table = dict(self._allowed.get(domain.encode(), {}))
        table.update({z85.decode(k): uid.encode() for k, uid in keys.items()})
        self._allowed = {**self._allowed, domain.encode(): table}  # one assignment: the thread reads either

    def stop(self) -> None:
        """Ask the thread to end (within 0.2 s)."""
        self._stop = True

    def run(self) -> None:
        try:
            sock = self.ctx.socket(zmq.REP)
            sock.linger = 0
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop:
                if not sock.poll(200):
                    continue
                sock.send_multipart(self._answer(sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(0)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:  # not a ZAP request: answer its id, if any, with a refusal
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism, *credentials = frames
        user = None
        if mechanism == b"CURVE" and len(credentials) == 1:
            user = self._allowed.get(domain, {}).get(credentials[0])
        if user is None:
            self.refused += 1
            who = z85.encode(credentials[0]).decode() if mechanism == b"CURVE" and credentials else "no key"
            log.warning("refused a %s connection from %s in domain %s (%s): not a key this domain admits",
                        mechanism.decode(errors="replace"), address.decode(errors="replace"),
                        domain.decode(errors="replace") or "(none)", who)
            return [version, request_id, b"400", b"unknown key", b"", b""]
        return [version, request_id, b"200", b"OK", user, b""]


_zaps: weakref.WeakKeyDictionary[zmq.Context[Any], Zap] = weakref.WeakKeyDictionary()
_zaps_lock = threading.Lock()


def zap(ctx: zmq.Context[Any]) -> Zap:
    """Return the ZAP handler of ``ctx``, starting it the first time (a context has one: libzmq asks one address).

    An asyncio context is served through a plain one sharing its libzmq context.
    """
    with _zaps_lock:
        z = _zaps.get(ctx)
        if z is None:
            plain = ctx if type(ctx) is zmq.Context else zmq.Context.shadow(ctx.underlying)
            z = Zap(plain)
            z.start()
            z._ready.wait()
            if z._error is not None:
                raise RuntimeError(f"cannot start the ZAP handler: {z._error}")
            _zaps[ctx] = z
        return z
