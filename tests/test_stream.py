"""ShardStream: one shard's topics delivered in tseq order, once, whatever road each message took."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fabric.stream import REPLAY_TIMEOUT_S, ShardStream

X = b"X0\x00"
T = b"TTCS\x00"


def test_in_order_messages_are_delivered_at_once() -> None:
    s: ShardStream[str] = ShardStream(0)
    assert s.offer(X, 1, 10, "a", in_order=True, now=0) == ["a"]
    assert s.offer(X, 2, 12, "b", in_order=True, now=0) == ["b"]
    assert s.delivered(X) == 2 and s.replay is None


def test_duplicate_from_the_other_road_is_dropped() -> None:
    s: ShardStream[str] = ShardStream(0)
    assert s.offer(X, 5, 50, "r", in_order=False, now=0) == ["r"]  # the first message sets the start
    assert s.offer(X, 5, 50, "r", in_order=True, now=0) == []
    assert s.offer(X, 6, 51, "p", in_order=True, now=0) == ["p"]


def test_reply_ahead_of_the_stream_is_held_without_a_replay_and_released_in_order() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.offer(X, 1, 1, "1", in_order=True, now=0)
    assert s.offer(X, 3, 7, "3", in_order=False, now=0) == []  # a reply: the stream may not be there yet
    assert s.replay is None
    assert s.offer(X, 2, 5, "2", in_order=True, now=0) == ["2", "3"]


def test_gap_on_the_ordered_road_asks_for_the_missing_seq_range() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.offer(X, 1, 10, "1", in_order=True, now=0)
    assert s.offer(X, 4, 40, "4", in_order=True, now=0) == []
    assert s.replay is not None and (s.replay.first, s.replay.last) == (11, 39)
    r = s.due(now=1.0)
    assert r is not None and r.sent == 1.0
    assert s.due(now=1.5) is None  # asked already, not yet timed out
    assert s.due(now=1.0 + REPLAY_TIMEOUT_S) is r  # unanswered: asked again
    out = s.replayed([(X, 2, 20, "2"), (T, 1, 21, "t"), (X, 3, 30, "3")], last=39, done=True, now=2.0)
    assert out == ["2", "3", "4"] and s.replay is None and s.delivered(X) == 4


def test_heartbeat_reveals_a_lost_tail_and_starts_a_silent_topic() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.follow(X)
    s.heartbeat(100, {X: 7}, now=0)
    assert s.started(X) and s.delivered(X) == 7 and s.replay is None  # what came before we joined is not ours
    s.offer(X, 8, 101, "8", in_order=True, now=0)
    s.heartbeat(105, {X: 9}, now=0)  # tseq 9 was published and lost
    assert s.replay is not None and (s.replay.first, s.replay.last) == (102, 105)


def test_unavailable_replay_skips_to_what_is_held() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.offer(X, 1, 1, "1", in_order=True, now=0)
    s.offer(X, 5, 9, "5", in_order=True, now=0)
    s.offer(X, 6, 10, "6", in_order=True, now=0)
    assert s.unavailable(now=0) == ["5", "6"]
    assert s.skipped == 3 and s.replay is None and s.delivered(X) == 6


def test_jump_after_a_snapshot_drops_what_it_covers() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.start(T, 0, 0)  # from the start of the day
    s.offer(T, 4, 40, "4", in_order=True, now=0)
    s.offer(T, 6, 60, "6", in_order=True, now=0)
    assert s.jump(T, 5, 50) == ["6"]
    assert s.delivered(T) == 6


def test_restart_starts_every_topic_again_from_one() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.offer(T, 1, 1, "a", in_order=True, now=0)
    s.offer(T, 3, 3, "c", in_order=True, now=0)
    s.restart()
    assert s.replay is None and s.delivered(T) == 0
    assert s.offer(T, 1, 1, "a2", in_order=True, now=0) == ["a2"]


@given(st.integers(1, 60), st.randoms(use_true_random=False), st.floats(0.0, 0.6))
def test_any_arrival_order_and_loss_delivers_each_message_once_in_order(n: int, rng: random.Random,
                                                                        loss: float) -> None:
    # Two roads (a reply road that may run ahead, the stream that may lose messages) and replays of what
    # the stream lost: every message comes out once, in tseq order.
    s: ShardStream[int] = ShardStream(0)
    seqs = {t: 10 + 2 * t for t in range(1, n + 1)}
    arrivals = [(t, rng.random() < 0.5) for t in range(1, n + 1)]  # (tseq, also sent on the reply road)
    out: list[int] = []
    out += s.offer(X, 1, seqs[1], 1, in_order=True, now=0)  # the first message fixes the start
    for t, by_reply in arrivals[1:]:
        if by_reply and rng.random() < 0.5:
            out += s.offer(X, t, seqs[t], t, in_order=False, now=0)
        if rng.random() >= loss:
            out += s.offer(X, t, seqs[t], t, in_order=True, now=0)
    s.heartbeat(seqs[n], {X: n}, now=0)
    now = 0.0
    while s.replay is not None:
        now += REPLAY_TIMEOUT_S  # each replay answered, the next one asked for at once
        r = s.due(now=now)
        assert r is not None
        part = [(X, t, q, t) for t, q in seqs.items() if r.first <= q <= r.last]
        out += s.replayed(part, r.last, True, now=now)
        s.heartbeat(seqs[n], {X: n}, now=now)
    assert out == list(range(1, n + 1))


def test_heartbeat_behind_what_was_delivered_follows_the_restarted_shard() -> None:
    s: ShardStream[str] = ShardStream(0)
    for t in range(1, 6):
        s.offer(X, t, 10 * t, str(t), in_order=True, now=0)
    s.heartbeat(30, {X: 3}, now=0)  # the matcher came back at tseq 3: 4 and 5 were lost from its journal
    assert s.rewinds == 1 and s.delivered(X) == 3
    assert s.offer(X, 4, 31, "4'", in_order=True, now=0) == ["4'"]  # a new message, not a duplicate
