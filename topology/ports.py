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


_SHARD = r'\[\[shards\]\]\nname = "{name}"\nsymbols = (\[[^\]]*\])\n(?:[a-z_]+ = [^\n]*\n)+'
_REPLICA_KEYS = ("order_port", "pub_port", "recovery_port", "repl_port")


def pairs_on_free_ports(src: Path, dst_dir: Path, zk_hosts: str, shards: tuple[str, ...]) -> Path:
    """Copy a topology of single matchers into ``dst_dir`` with ``shards`` as primary/secondary pairs on 127.0.0.1
    (replicas ``<shard>-1`` and ``<shard>-2``) and ``[zookeeper] hosts = [zk_hosts]``, every port free; return it.
    """
    text = src.read_text()
    for k, name in enumerate(shards):
        single = re.search(_SHARD.format(name=re.escape(name)), text)
        if single is None:
            raise ValueError(f"{src}: no single-matcher shard {name!r} to make a pair of")
        block = [f'[[shards]]\nname = "{name}"\nsymbols = {single.group(1)}\n']
        for r in (1, 2):
            ports = "".join(f"{key} = {7300 + 10 * k + 4 * (r - 1) + i}\n" for i, key in enumerate(_REPLICA_KEYS))
            block.append(f'\n[[shards.replicas]]\nname = "{name}-{r}"\nhost = "127.0.0.1"\n{ports}')
        text = text.replace(single.group(0), "".join(block))  # (placeholder ports: all made free below)
    paired = dst_dir / f"{src.stem}-pairs-src.toml"
    paired.write_text(text)
    path = topology_on_free_ports(paired, dst_dir)
    path.write_text(path.read_text() + f'\n[zookeeper]\nhosts = ["{zk_hosts}"]\n')
    return path
