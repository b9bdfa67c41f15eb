"""Loading a language-model checkpoint: each damaged part is one CheckpointError naming the file."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit import checkpoint
from rnnkit.checkpoint import CheckpointError
from rnnkit.data import build_tokenizer
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask, load_lm

TEXT = "the quick brown fox jumps over the lazy dog\n" * 12


def make_task(cell="lstm"):
    tok = build_tokenizer("char", TEXT)
    model = LanguageModel(LMConfig(vocab_size=tok.vocab_size, cell=cell, embedding_size=8,
                                   hidden_size=8, num_layers=2), rng=np.random.default_rng(0))
    return LMTask(model, tok, tok.encode(TEXT), None, batch_size=4, bptt=10)


@pytest.fixture
def saved(tmp_path):
    task = make_task()
    task.model.loss(*task.batches.batch(0))               # leaves a carried state to save
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"task": task.state_dict()})
    return path


def test_a_good_checkpoint_loads_from_its_file_or_its_folder(saved):
    model, tok, _ = load_lm(saved)
    assert tok.vocab_size == model.config.vocab_size and not model.training
    assert load_lm(saved.parent)[1] == tok


@pytest.mark.parametrize("damage,needle", [
    (lambda t: t.pop("task"), "not an rnnkit language-model checkpoint"),
    (lambda t: t["task"].pop("weights"), "no weights"),
    (lambda t: t["task"].__setitem__("model_config", [1]), "no model_config"),
    (lambda t: t["task"]["model_config"].pop("vocab_size"), "lacks 'vocab_size'"),
    (lambda t: t["task"]["model_config"].__setitem__("hidden_size", "8"), "not int"),
    (lambda t: t["task"]["model_config"].__setitem__("dtype", "float16"), "float16"),
    (lambda t: t["task"]["tokenizer"].__setitem__("chars", "abc"), "3 tokens"),
    (lambda t: t["task"]["tokenizer"].pop("chars"), "missing 'chars'"),
    (lambda t: t["task"]["weights"].__setitem__("decoder.bias", "text"), "not a numeric array"),
    (lambda t: t["task"]["weights"]["decoder.bias"].__setitem__(0, np.inf), "NaN or infinity"),
    (lambda t: t["task"]["weights"].pop("decoder.bias"), "missing: decoder.bias"),
])
def test_damaged_parts_are_one_clear_error(saved, damage, needle):
    tree = checkpoint.load(saved)
    damage(tree)
    checkpoint.save(saved, tree)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_lm(saved)
    assert str(saved) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("carried", [
    [np.zeros((2, 4, 8), np.float32)],                                  # an LSTM keeps h and c
    [np.zeros((2, 3, 8), np.float32)] * 2,                              # another batch size
    [np.zeros((1, 4, 8), np.float32)] * 2,                              # another depth
    "nonsense",
])
def test_a_carried_state_that_does_not_fit_is_refused(carried):
    task = make_task()
    state = task.state_dict()
    state["carried"] = carried
    with pytest.raises(ValueError, match="hidden state"):
        make_task().load_state_dict(state)


def test_a_fitting_carried_state_loads():
    for cell in ("lstm", "gru"):
        task = make_task(cell)
        task.model.loss(*task.batches.batch(0))
        other = make_task(cell)
        other.load_state_dict(task.state_dict())
        for a, b in zip(other.model.get_state(), task.model.get_state()):
            np.testing.assert_array_equal(a, b)
