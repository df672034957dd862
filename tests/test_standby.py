"""Which of ranked redundant nodes does a job done once (the price history of two tickers)."""

from __future__ import annotations

import pytest

from fabric.standby import Standby


def test_the_first_node_is_always_active() -> None:
    s = Standby([], silence=3.0, now=0.0)
    assert s.active(0.0) and s.active(100.0) and s.silent(100.0) == []


def test_a_second_node_waits_out_the_silence_of_the_first_from_its_start() -> None:
    s = Standby(["ticker"], silence=3.0, now=10.0)
    assert not s.active(12.9), "the first counts as heard when the second starts"
    assert s.active(13.1) and s.silent(13.1) == ["ticker"]


def test_hearing_the_first_again_hands_the_job_back() -> None:
    s = Standby(["ticker"], silence=3.0, now=0.0)
    s.heard("ticker", 1.0)
    assert not s.active(3.5)
    assert s.active(4.5)
    s.heard("ticker", 9.0)
    assert not s.active(9.5)
    s.heard("ticker", 5.0)  # late news changes nothing
    assert s.last["ticker"] == 9.0
    s.heard("other", 20.0)  # not ahead of this one: ignored
    assert "other" not in s.last


def test_a_third_node_is_active_only_when_both_before_it_are_silent() -> None:
    s = Standby(["ticker", "ticker-b"], silence=1.0, now=0.0)
    s.heard("ticker-b", 1.5)
    assert not s.active(2.0) and s.silent(2.0) == ["ticker"]
    assert s.active(2.6)


def test_silence_must_be_positive() -> None:
    with pytest.raises(ValueError, match="silence"):
        Standby(["ticker"], silence=0, now=0.0)
