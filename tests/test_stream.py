"""ShardStream: one shard's topics delivered in tseq order, once, whatever road each message took."""

from __future__ import annotations

import random

import pytest
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


def test_heartbeat_of_a_new_run_behind_what_was_delivered_follows_the_restarted_shard() -> None:
    s: ShardStream[str] = ShardStream(0)
    s.heartbeat(0, {X: 0}, now=0, run=7)
    for t in range(1, 6):
        s.offer(X, t, 10 * t, str(t), in_order=True, now=0)
    s.heartbeat(30, {X: 3}, now=0, run=8)  # a new run, behind: it lost 4 and 5 from its journal
    assert s.rewinds == 1 and s.delivered(X) == 3
    assert s.offer(X, 4, 31, "4'", in_order=True, now=0) == ["4'"]


def test_heartbeat_of_the_same_run_behind_what_was_delivered_is_stale_not_a_restart() -> None:
    # The chaos test's double fill: the matcher sent its heartbeat, then answered a batch; the gateway read the
    # batch's reports from the reply first, then the heartbeat. Following it "from there" delivered them twice.
    s: ShardStream[str] = ShardStream(0)
    s.heartbeat(0, {X: 0}, now=0, run=7)
    for t in range(1, 6):
        s.offer(X, t, 10 * t, str(t), in_order=True, now=0)
    s.heartbeat(30, {X: 3}, now=0, run=7)
    assert (s.rewinds, s.stale, s.delivered(X)) == (0, 1, 5)
    assert s.offer(X, 4, 40, "4", in_order=True, now=0) == []  # the PUB copy: a duplicate, dropped


def test_heartbeat_of_a_pairs_new_primary_behind_what_was_delivered_is_stale() -> None:
    # A pair's new primary (a new run, epoch 2) holds everything its predecessor published: behind means stale.
    s: ShardStream[str] = ShardStream(0)
    s.heartbeat(0, {X: 0}, now=0, run=7, epoch=1)
    for t in range(1, 6):
        s.offer(X, t, 10 * t, str(t), in_order=True, now=0)
    s.heartbeat(30, {X: 3}, now=0, run=9, epoch=2)
    assert (s.rewinds, s.stale, s.delivered(X)) == (0, 1, 5)
    assert s.offer(X, 5, 50, "5", in_order=True, now=0) == []


# ------------------------------------------------------------------ without replays: recovery by snapshot


def test_without_replays_a_gap_makes_the_topic_wait_for_a_snapshot() -> None:
    s: ShardStream[str] = ShardStream(0, replays=False)
    s.start(X, 0, 0)
    assert s.offer(X, 1, 1, "1", in_order=True, now=0) == ["1"]
    assert s.offer(X, 3, 3, "3", in_order=True, now=0) == []  # 2 was lost
    assert s.replay is None and s.due(now=99.0) is None  # nothing to ask a replay of
    assert s.holes == {X} and s.waiting(X) and s.gaps == 1
    assert s.offer(X, 4, 4, "4", in_order=True, now=0) == []  # held, and not another gap
    assert s.offer(X, 4, 4, "4", in_order=True, now=0) == []
    assert s.gaps == 1 and s.duplicates == 1
    assert s.offer(T, 1, 5, "t", in_order=True, now=0) == ["t"]  # the other topics go on
    assert s.jump(X, 3, 3) == ["4"]  # the snapshot has 3
    assert s.holes == set() and not s.waiting(X) and s.delivered(X) == 4
    assert s.offer(X, 5, 6, "5", in_order=True, now=0) == ["5"]


def test_without_replays_what_a_jump_leaves_behind_a_lost_message_is_a_new_hole() -> None:
    s: ShardStream[str] = ShardStream(0, replays=False)
    s.hold(X)  # before the first snapshot
    for t in (3, 4, 6):  # 5 lost
        assert s.offer(X, t, t, str(t), in_order=True, now=0) == []
    assert s.holes == set() and s.gaps == 0  # holding for a snapshot is not a gap
    assert s.jump(X, 2, 2) == ["3", "4"]
    assert s.holes == {X} and s.waiting(X) and s.gaps == 1 and s.delivered(X) == 4
    assert s.jump(X, 6, 6) == [] and s.holes == set() and s.delivered(X) == 6


def test_hold_drops_what_is_held_and_the_next_jump_may_go_back() -> None:
    s: ShardStream[str] = ShardStream(0, replays=False)
    for t in range(1, 6):
        s.offer(X, t, t, str(t), in_order=True, now=0)
    s.offer(X, 8, 8, "8", in_order=True, now=0)  # a hole, with 8 held
    assert s.holes == {X}
    s.hold(X)  # the caller takes it from there (and the publisher may have started over)
    assert s.holes == set() and s.waiting(X) and s.delivered(X) == 5
    assert s.offer(X, 1, 1, "1'", in_order=True, now=0) == []  # below what was delivered: held, not a duplicate
    assert s.offer(X, 2, 2, "2'", in_order=True, now=0) == []
    assert s.duplicates == 0
    assert s.jump(X, 1, 1) == ["2'"]  # behind what was delivered: the snapshot says where the topic stands
    assert s.delivered(X) == 2 and not s.waiting(X)


def test_hold_max_drops_the_oldest_held_which_shows_after_the_jump() -> None:
    s: ShardStream[str] = ShardStream(0, replays=False, hold_max=3)
    s.hold(X)
    for t in range(1, 6):
        s.offer(X, t, t, str(t), in_order=True, now=0)
    assert len(s.topics[X].held) == 3  # 3, 4, 5
    assert s.jump(X, 0, 0) == []  # 1 and 2 are gone: the snapshot is older than what is left
    assert s.holes == {X}
    assert s.jump(X, 3, 3) == ["4", "5"] and s.holes == set()


def test_without_replays_a_heartbeat_showing_a_lost_tail_makes_the_topic_wait() -> None:
    s: ShardStream[str] = ShardStream(0, replays=False)
    s.offer(X, 1, 1, "1", in_order=True, now=0)
    s.heartbeat(3, {X: 2}, now=0)
    assert s.replay is None and s.holes == {X} and s.gaps == 1
    s.heartbeat(9, {X: 0}, now=0)  # a waiting topic stands where its snapshot will say: not a rewind
    assert s.rewinds == 0 and s.waiting(X)


def test_hold_max_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ShardStream(0, hold_max=0)


@given(st.integers(1, 80), st.randoms(use_true_random=False), st.floats(0.0, 0.5))
def test_without_replays_snapshots_and_deliveries_cover_every_message_once_in_order(n: int, rng: random.Random,
                                                                                    loss: float) -> None:
    # A client of a feed without replays: on a hole it holds the topic and asks a snapshot, answered a few
    # publications later as of the publisher's state then. Deliveries and snapshots together walk 1..n in order.
    s: ShardStream[int] = ShardStream(0, replays=False)
    s.hold(X)
    events: list[tuple[str, int]] = []  # ("msg", tseq) delivered, ("snap", tseq) a snapshot applied
    answer_at: int | None = 0  # publication count at which the awaited snapshot is answered
    offered: list[int] = []
    for t in range(1, n + 1):
        if rng.random() >= loss:
            offered.append(t)
            events += [("msg", m) for m in s.offer(X, t, t, t, in_order=True, now=0)]
        if X in s.holes:
            s.hold(X)
            answer_at = t + rng.randrange(4)
        if answer_at is not None and t >= answer_at:
            answer_at = None
            events.append(("snap", t))
            events += [("msg", m) for m in s.jump(X, t, t)]
            if X in s.holes:
                s.hold(X)
                answer_at = t + rng.randrange(4)
    at = 0
    for what, t in events:
        assert (t == at + 1) if what == "msg" else (t >= at), events
        at = t
    if not s.waiting(X):  # no hole left open: everything offered after the last snapshot came out
        last_snap = max(t for what, t in events if what == "snap")
        assert [t for what, t in events if what == "msg" and t > last_snap] == [t for t in offered if t > last_snap]
        assert at == s.delivered(X) and not s.topics[X].held


def test_deposed_is_an_older_epoch_from_the_current_reigns_first_seq_on() -> None:
    from fabric.stream import deposed

    assert not deposed(0, 5, 0, 0), "a single matcher: epoch 0 throughout"
    assert not deposed(1, 49, 2, 50), "below the reign's first seq both primaries published the same"
    assert deposed(1, 50, 2, 50) and deposed(1, 90, 2, 50)
    assert not deposed(2, 90, 2, 50) and not deposed(3, 90, 2, 50), "the current or a newer primary's"
