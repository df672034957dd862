"""``exfab node``: the options it hands a node, and what a node that starts itself again runs."""

from __future__ import annotations

import sys

import pytest

from tools import cli


def test_node_hands_a_matcher_its_options_and_leaves_them_for_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.matcher

    seen: list[list[str]] = []
    monkeypatch.setattr(nodes.matcher, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["exfab", "node", "matcher"])
    argv = ["--topology", "t.toml", "--id", "A-1", "--fsync", "interval:10", "--ring-mb", "64", "--keep-finished",
            "10"]
    assert cli.main(["node", "matcher", *argv]) == 0
    assert seen == [argv]
    # A matcher whose ZooKeeper session ended runs `python -m nodes.matcher` with sys.argv[1:] again.
    assert sys.argv[1:] == argv


def test_node_refuses_a_matchers_options_for_another_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["node", "gateway", "--topology", "t.toml", "--id", "gw1", "--ring-mb", "64"]) == 2
    assert "--fsync, --ring-mb and --keep-finished are a matcher's options" in capsys.readouterr().err
