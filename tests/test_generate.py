"""Sampling: the filters (temperature, top-k, top-p, greedy), determinism and batching."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.generate import SampleSettings, generate, generate_batch, next_token_probs, sample_next
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.nn import fused


def model():
    cfg = LMConfig(vocab_size=9, embedding_size=4, hidden_size=6, num_layers=2, dropout=0.0)
    m = LanguageModel(cfg, rng=np.random.default_rng(0))
    return m.eval()


class _OnTheDevice:
    """A stand-in for a CuPy array: NumPy refuses to convert one implicitly; ``.get()`` copies
    it to the host."""

    def __init__(self, a):
        self._a = a

    def get(self):
        return self._a

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


def test_probabilities_of_logits_on_the_device():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    settings = SampleSettings(top_k=3, temperature=0.7)
    np.testing.assert_array_equal(next_token_probs(_OnTheDevice(logits), settings),
                                  next_token_probs(logits, settings))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    p = next_token_probs(logits, SampleSettings(top_k=2))
    np.testing.assert_allclose(p, [[0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]])
    p = next_token_probs(logits, SampleSettings(top_p=0.8))       # 0.5 + 0.2 < 0.8 <= + 0.15
    np.testing.assert_allclose(p[0, :3], np.array([0.5, 0.2, 0.15]) / 0.85)
    assert np.all(p[0, 3:] == 0)
    p = next_token_probs(logits, SampleSettings(top_p=0.3))       # the top token alone
    np.testing.assert_allclose(p, [[1, 0, 0, 0, 0]])
    p = next_token_probs(logits, SampleSettings(temperature=0.5))
    want = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(p[0], want / want.sum())


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    draws = [int(sample_next(logits, SampleSettings(), np.random.default_rng(s))[0]) for s in range(3000)]
    freq = np.bincount(draws, minlength=3) / 3000
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)
    assert sample_next(logits, SampleSettings(greedy=True), np.random.default_rng(0))[0] == 0


def test_generate_is_a_pure_function_of_its_arguments():
    m = model()
    s = SampleSettings(length=20, top_k=5)
    a = list(generate(m, [1, 2, 3], s, np.random.default_rng(7)))
    b = list(generate(m, [1, 2, 3], s, np.random.default_rng(7)))
    assert a == b and len(a) == 20 and all(0 <= t < 9 for t in a)
    assert m.get_state() is None                               # the model was left alone


def test_greedy_continuation_matches_the_models_argmax():
    m = model()
    out = list(generate(m, [4], SampleSettings(length=5, greedy=True), np.random.default_rng(0)))
    seq = [4]
    for _ in range(5):
        m.reset_state()
        seq.append(int(np.argmax(m(np.array([seq]))[0, -1])))
    assert out == seq[1:]


def test_batched_sampling_and_empty_prompt():
    m = model()
    rows = generate_batch(m, [2, 5], SampleSettings(length=12), np.random.default_rng(1), num_samples=6)
    assert rows.shape == (6, 12)
    assert len({tuple(r) for r in rows}) > 1
    first = list(generate(m, [], SampleSettings(length=4), np.random.default_rng(2)))
    assert len(first) == 4


def test_bad_settings_and_prompts():
    with pytest.raises(ValueError):
        SampleSettings(temperature=0)
    with pytest.raises(ValueError):
        SampleSettings(top_p=0)
    with pytest.raises(ValueError, match="out of range"):
        list(generate(model(), [99], SampleSettings(length=2), np.random.default_rng(0)))


@pytest.mark.skipif(not fused.available(), reason="numba is not installed")
def test_one_pass_sampler_picks_the_inverse_cdf_token():
    """Batch 1 without filters draws with numba's one-pass sampler: the same token as the
    cumulative sum and search would pick for the same uniform draw."""
    rng = np.random.default_rng(4)
    for trial in range(500):
        V = int(rng.integers(1, 80))
        z = (rng.standard_normal(V) * rng.choice([0.1, 3.0, 30.0])).astype(np.float32)
        temperature = float(rng.choice([0.3, 1.0, 2.5]))
        u = float(rng.random())
        p = next_token_probs(z[None], SampleSettings(temperature=temperature))[0]
        cdf = np.cumsum(p)
        want = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), V - 1)
        got = fused.sample_row(z, 1.0 / temperature, u)
        if got != want:       # only where u lands within rounding of a boundary
            assert abs(cdf[min(got, want)] - u * cdf[-1]) < 1e-9, (trial, got, want)
