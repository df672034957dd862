"""Free ports for throwaway topologies (tests, benchmarks): never the example's fixed ports."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

_PORT = re.compile(r"^(\s*\w*port\s*=\s*)(\d+)", re.MULTILINE)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` (an address of this machine) that nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def topology_on_free_ports(src: Path, dst_dir: Path, *, brokers: str | None = None, curve: bool = True) -> Path:
    """Copy a topology file into ``dst_dir``, giving every port key a free port; return the copy's path.

    The copy's ``[security] keys_dir`` is the source's (an absolute path). ``brokers = "open"`` makes its
    gateways take any broker id in the clear (test rigs whose brokers have no keys; the nodes still use
    CURVE); ``curve=False`` leaves ``[security]`` and ``[[brokers]]`` out: every socket open, any broker id
    (to measure what CURVE costs).
    """
    text = absolute_keys_dir(src, src.read_text())
    if not curve:
        text = without_security(text)
    elif brokers is not None:
        text, n = re.subn(r'^(\[security\]\n(?:(?!\[)[^\n]*\n)*?)brokers = "[a-z]*"\n', rf'\1brokers = "{brokers}"\n',
                          text, flags=re.MULTILINE)
        if n == 0:
            text = re.sub(r"^\[security\]\n", f'[security]\nbrokers = "{brokers}"\n', text, flags=re.MULTILINE)
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


_KEYS_DIR = re.compile(r'^(\s*keys_dir\s*=\s*)"([^"]*)"', re.MULTILINE)


def absolute_keys_dir(src: Path, text: str) -> str:
    """Return topology text read from ``src`` with its ``keys_dir`` made absolute, for a copy written elsewhere (a
    relative ``keys_dir`` is relative to the topology file)."""
    def repl(m: re.Match[str]) -> str:
        return f'{m.group(1)}"{(src.parent / m.group(2)).resolve()}"'

    return _KEYS_DIR.sub(repl, text)


def without_security(text: str) -> str:
    """Return a topology's text without ``[security]`` (and its sub-tables), without its brokers' keys, and with
    only its operators of its ``[[brokers]]``: every socket open and any broker id, as a loopback topology without
    keys runs (docs/security.md); the operators stay, since only they may send admin commands."""
    out: list[str] = []
    block: list[str] | None = None  # a [[brokers]] entry being read

    def end_block() -> None:
        if block is not None and any(ln.replace(" ", "") == 'role="operator"\n' for ln in block):
            out.extend(ln for ln in block if not ln.startswith("public_key"))

    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            end_block()
            block = [] if line.startswith("[[brokers]]") else None
            skipping = line.startswith(("[security]", "[security."))
        if block is not None:
            block.append(line)
        elif not skipping:
            out.append(line)
    end_block()
    return "".join(out)


_SHARD = r'\[\[shards\]\]\nname = "{name}"\nsymbols = (\[[^\]]*\])\n(?:[a-z_]+ = [^\n]*\n)+'
_REPLICA_KEYS = ("order_port", "pub_port", "recovery_port", "repl_port")


def pairs_on_free_ports(src: Path, dst_dir: Path, zk_hosts: str, shards: tuple[str, ...], *,
                        brokers: str | None = None) -> Path:
    """Copy a topology of single matchers into ``dst_dir`` with ``shards`` as primary/secondary pairs on 127.0.0.1
    (replicas ``<shard>-1`` and ``<shard>-2``, each with a key pair of its own when the source has keys) and
    ``[zookeeper] hosts = [zk_hosts]``, every port free; return it. ``brokers`` as for
    :func:`topology_on_free_ports`.
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
        text = _pair_keys(src, text, name, dst_dir)
    text = absolute_keys_dir(src, text)
    paired = dst_dir / f"{src.stem}-pairs-src.toml"
    paired.write_text(text)
    path = topology_on_free_ports(paired, dst_dir, brokers=brokers)
    path.write_text(path.read_text() + f'\n[zookeeper]\nhosts = ["{zk_hosts}"]\n')
    return path


def _pair_keys(src: Path, text: str, shard: str, dst_dir: Path) -> str:
    # A pair's two matchers need key pairs of their own: made afresh in dst_dir/keys, beside a copy of the
    # source's node keys, with [security.nodes] listing them in place of the single matcher's.
    line = re.search(rf'^"matcher:{re.escape(shard)}" = "[^"]*"\n', text, re.MULTILINE)
    keys_dir = _KEYS_DIR.search(text)
    if line is None or keys_dir is None:
        return text
    from fabric.auth import new_key, write_key  # (only for a topology with keys)

    folder = dst_dir / "keys"
    source = Path(keys_dir.group(2))
    source = source if source.is_absolute() else src.parent / source
    if source.resolve() != folder.resolve():
        shutil.copytree(source, folder, dirs_exist_ok=True)
    lines = []
    for r in (1, 2):
        pair = new_key()
        write_key(folder, f"matcher-{shard}-{r}", pair, note="a test rig's key (topology.ports.pairs_on_free_ports)")
        lines.append(f'"matcher:{shard}-{r}" = "{pair.public}"\n')
    text = text.replace(line.group(0), "".join(lines))
    return _KEYS_DIR.sub(lambda m: f'{m.group(1)}"{folder.resolve()}"', text)
