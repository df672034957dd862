"""Free ports for throwaway topologies (tests, benchmarks): never the example's fixed ports."""

from __future__ import annotations

import re
import socket
from pathlib import Path

_PORT = re.compile(r"^(\s*\w*port\s*=\s*)(\d+)", re.MULTILINE)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` (an address of this machine) that nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def topology_on_free_ports(src: Path, dst_dir: Path) -> Path:
    """Copy a topology file into ``dst_dir``, giving every port key a free port; return the copy's path."""
    text = src.read_text()
    mapping: dict[str, int] = {}
    taken: set[int] = set()

    def repl(m: re.Match[str]) -> str:
        old = m.group(2)
        if old not in mapping:
            p = free_port()
            while p in taken:
                p = free_port()
            taken.add(p)
            mapping[old] = p
        return f"{m.group(1)}{mapping[old]}"

    dst = dst_dir / src.name
    dst.write_text(_PORT.sub(repl, text))
    return dst
