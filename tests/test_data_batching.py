"""Truncated-BPTT batches: shapes, shifted targets, contiguous streams, coverage, resume."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.data import DataError, StreamBatcher, eval_batches


def _epoch(batcher):
    return [(x, y) for x, y in batcher]


@pytest.mark.parametrize("n,B,T", [(100, 4, 7), (1000, 20, 35), (37, 3, 5), (10, 5, 3),
                                   (64, 8, 7), (12, 1, 100)])
def test_shapes_targets_contiguity_and_coverage(n, B, T):
    ids = np.random.default_rng(n).integers(0, 50, n)
    b = StreamBatcher(ids, B, T)
    L = n // B
    batches = _epoch(b)
    assert len(batches) == b.batches_per_epoch == len(b) == -(-(L - 1) // T)
    for k, (x, y) in enumerate(batches):
        assert x.dtype == y.dtype == np.int64
        assert x.shape == y.shape and x.shape[0] == B and 1 <= x.shape[1] <= T
        if k < len(batches) - 1:
            assert x.shape[1] == T
    X = np.concatenate([x for x, _ in batches], axis=1)                  # (B, L - 1)
    Y = np.concatenate([y for _, y in batches], axis=1)
    # stream b starts at b * L; y is x shifted by one along it
    streams = np.stack([ids[b_ * L:(b_ + 1) * L] for b_ in range(B)])
    assert (X == streams[:, :-1]).all() and (Y == streams[:, 1:]).all()
    assert b.tokens_per_epoch == Y.size == B * (L - 1)
    # batch k+1 continues batch k: its first input is batch k's last target
    for (x0, y0), (x1, _) in zip(batches, batches[1:]):
        assert (x1[:, 0] == y0[:, -1]).all()
    # all B * L kept tokens are covered: each stream's first is only an input, its last only a target
    assert X.size + B == B * L == Y.size + B


def test_contiguity_by_position_in_the_stream():
    ids = np.arange(1000)                                     # id == position in the corpus
    x0, y0 = StreamBatcher(ids, 10, 7).batch(0)
    x1, _ = StreamBatcher(ids, 10, 7).batch(1)
    assert (x1[:, 0] == x0[:, -1] + 1).all()
    assert (y0 == x0 + 1).all()
    assert x0[:, 0].tolist() == [100 * b for b in range(10)]


def test_resume_gives_the_remaining_batches():
    ids = np.random.default_rng(0).integers(0, 30, 500)
    full = _epoch(StreamBatcher(ids, 4, 9))
    b = StreamBatcher(ids, 4, 9)
    it = iter(b)
    for _ in range(5):
        next(it)
    state = b.state_dict()
    assert state == {"epoch": 0, "position": 5}
    resumed = StreamBatcher(ids, 4, 9)
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(full) - 5
    for (x, y), (fx, fy) in zip(rest, full[5:]):
        assert (x == fx).all() and (y == fy).all()
    via_iter_from = list(StreamBatcher(ids, 4, 9).iter_from(5))
    assert all((x == fx).all() for (x, _), (fx, _) in zip(via_iter_from, full[5:]))


def test_epochs_roll_over():
    b = StreamBatcher(np.arange(50), 2, 6)
    first = _epoch(b)
    assert b.state_dict() == {"epoch": 0, "position": len(first)} and b.epoch_finished
    second = _epoch(b)                                        # the next for loop: epoch 1
    assert b.epoch == 1 and len(second) == len(first)
    assert all((x == fx).all() for (x, _), (fx, _) in zip(second, first))
    b.next_epoch()
    assert b.state_dict() == {"epoch": 2, "position": 0}
    with pytest.raises(ValueError, match="outside"):
        b.load_state_dict({"epoch": 0, "position": len(first) + 1})


def test_short_corpus_is_refused_with_the_numbers():
    with pytest.raises(DataError) as err:
        StreamBatcher(np.arange(39), 20, 35)
    msg = str(err.value)
    assert "39 tokens" in msg and "40" in msg and "--batch-size" in msg and "\n" not in msg
    StreamBatcher(np.arange(40), 20, 35)                      # exactly 2 tokens a stream is enough
    with pytest.raises(ValueError):
        StreamBatcher(np.arange(40), 0, 35)
    with pytest.raises(ValueError):
        StreamBatcher(np.arange(40), 2, 0)


@pytest.mark.parametrize("n,B,T", [(100, 4, 7), (101, 4, 7), (1000, 10, 35), (9, 1, 4), (5, 4, 2)])
def test_eval_batches_score_every_token_once(n, B, T):
    ids = np.arange(n)
    ev = eval_batches(ids, B, T)
    batches = list(ev)
    assert list(ev) and len(list(ev)) == len(batches)          # every loop is a full pass
    Y = np.concatenate([y for _, y in batches], axis=1)
    X = np.concatenate([x for x, _ in batches], axis=1)
    assert (Y == X + 1).all() and X.shape[0] == B
    scored = np.sort(Y.ravel())
    L = (n - 1) // B
    assert scored.tolist() == list(range(1, B * L + 1))       # each once, none at stream starts
    assert ev.tokens_per_epoch == Y.size == n - 1 - (n - 1) % B
    if B == 1:
        assert ev.tokens_per_epoch == n - 1
    with pytest.raises(DataError, match="batch size"):
        eval_batches(np.arange(B), B, T)
