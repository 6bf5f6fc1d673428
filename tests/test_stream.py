"""Stream rules: windows, stride, duplicates, gaps; batch splits never change the outcome."""

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import stream
from detector.stream import EntityState, StreamConfig, advance


def series(n, c=2, start=0, step=1000):
    ts = start + step * np.arange(n, dtype=np.int64)
    values = np.arange(n * c, dtype=np.float64).reshape(n, c)
    return ts, values


def test_first_window_completes_at_row_w_minus_1_and_holds_the_last_w_rows():
    ts, values = series(10)
    state = EntityState("e", 2)
    windows, stats = advance(state, ts, values, StreamConfig(window=4))
    assert [w.index for w in windows] == [3, 4, 5, 6, 7, 8, 9]
    np.testing.assert_array_equal(windows[0].values, values[0:4])
    np.testing.assert_array_equal(windows[-1].values, values[6:10])
    assert windows[0].start_ms == ts[0] and windows[0].ts_ms == ts[3]
    assert stats.accepted == 10 and stats.duplicates == 0
    assert len(state.ts) == 4 and state.last_ts_ms == ts[-1]


def test_stride_scores_every_kth_reading_after_the_first_window():
    ts, values = series(12)
    windows, _ = advance(EntityState("e", 2), ts, values, StreamConfig(window=4, stride=3))
    assert [w.index for w in windows] == [3, 6, 9]


def test_duplicates_and_out_of_order_are_skipped_and_counted():
    ts, values = series(6)
    state = EntityState("e", 2)
    advance(state, ts[:5], values[:5], StreamConfig(window=3))
    before = state.values.copy()
    windows, stats = advance(state, ts[[2, 4, 1]], values[[2, 4, 1]] + 100, StreamConfig(window=3))
    assert windows == [] and stats.duplicates == 3 and stats.accepted == 0
    np.testing.assert_array_equal(state.values, before)


def test_gap_restarts_the_window():
    ts, values = series(8)
    ts[5:] += 10_000_000
    windows, stats = advance(EntityState("e", 2), ts, values,
                             StreamConfig(window=3, max_gap_ms=60_000))
    assert stats.gaps == 1
    # rows 0..4 give windows at 2,3,4; after the gap rows 5,6,7 fill a new window at 7
    assert [w.index for w in windows] == [2, 3, 4, 7]
    np.testing.assert_array_equal(windows[-1].values, values[5:8])


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        StreamConfig(window=1)
    with pytest.raises(ValueError):
        StreamConfig(window=4, stride=0)
    with pytest.raises(ValueError):
        StreamConfig(window=4, max_gap_ms=0)


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    window=st.integers(min_value=2, max_value=6),
    stride=st.integers(min_value=1, max_value=4),
    dup_rows=st.lists(st.integers(min_value=0, max_value=39), max_size=5),
)
def test_any_batch_split_gives_the_same_windows(cuts, window, stride, dup_rows):
    ts, values = series(40)
    ts[20:] += 400_000  # one gap
    # replayed duplicates spliced in must not change anything
    order = list(range(40))
    for r in sorted(dup_rows):
        order.insert(r + 1, r)
    ts_in, values_in = ts[order], values[order]
    config = StreamConfig(window=window, stride=stride, max_gap_ms=300_000)
    whole, _ = advance(EntityState("e", 2), ts_in, values_in, config)
    state, parts = EntityState("e", 2), []
    bounds = [0, *sorted(cuts), len(ts_in)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            got, _ = advance(state, ts_in[a:b], values_in[a:b], config)
            parts.extend(got)
    assert [w.ts_ms for w in parts] == [w.ts_ms for w in whole]
    for x, y in zip(parts, whole):
        np.testing.assert_array_equal(x.values, y.values)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=-2, max_value=8), min_size=1, max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5),
    window=st.integers(min_value=2, max_value=6),
    stride=st.integers(min_value=1, max_value=4),
    max_gap=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
)
def test_the_in_order_shortcut_agrees_with_the_reading_by_reading_rules(
    steps, cuts, window, stride, max_gap
):
    """``advance`` skips its loop when a batch is in order with no gap; forcing the loop everywhere
    must give the same windows, counts and state, batch after batch."""
    ts = 1000 + np.cumsum(np.asarray(steps, dtype=np.int64))  # steps <= 0: duplicates, > max: gaps
    values = np.arange(2 * len(ts), dtype=np.float64).reshape(-1, 2)
    config = StreamConfig(window=window, stride=stride, max_gap_ms=max_gap)
    bounds = [0, *sorted(c for c in cuts if c < len(ts)), len(ts)]

    def run() -> tuple[list, list, EntityState]:
        state, windows, stats = EntityState("e", 2), [], []
        for a, b in zip(bounds, bounds[1:]):
            got, st_ = advance(state, ts[a:b], values[a:b], config)
            windows += [(w.index, w.ts_ms, w.start_ms, w.values.tolist()) for w in got]
            stats.append((st_.accepted, st_.duplicates, st_.gaps))
        return windows, stats, state

    fast = run()
    with patch.object(stream, "_in_order", lambda *a: False):
        slow = run()
    assert fast[:2] == slow[:2]
    a, b = fast[2], slow[2]
    assert (a.last_ts_ms, a.count, a.ts.tolist(), a.values.tolist()) == (
        b.last_ts_ms, b.count, b.ts.tolist(), b.values.tolist())
