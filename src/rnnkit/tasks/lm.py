"""Language modelling as a Trainer task: a token stream, a LanguageModel, evaluation and samples.

    task = LMTask(model, tokenizer, train_ids, val_ids, batch_size=32, bptt=128)
    Trainer(task, TrainConfig(...), "runs/x", rng=rng).fit()

``evaluate_lm`` and ``load_lm`` serve ``rnnkit eval`` and ``rnnkit sample`` as well.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import checkpoint
from ..backend import to_numpy
from ..data import StreamBatcher, eval_batches, tokenizer_from_dict
from ..generate import SampleSettings, generate
from ..models.language_model import LanguageModel, LMConfig

KIND = "language_model"


def evaluate_lm(model: LanguageModel, ids: np.ndarray, batch_size: int, bptt: int) -> dict:
    """Mean loss (nats per token), perplexity and bits per token of ``model`` on the stream ``ids``.

    The stream is cut into ``batch_size`` parallel streams read in windows of ``bptt`` steps with
    the state carried across windows, as in training; the model's own carried state is kept."""
    saved = model.get_state()
    was_training = model.training
    model.eval()
    model.reset_state()
    total, count = 0.0, 0
    xp = model.xp
    for x, y in eval_batches(ids, batch_size, bptt):
        model.loss(xp.asarray(x), xp.asarray(y))
        total += model.criterion.total
        count += model.criterion.count
    model.set_state(saved)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits": loss / math.log(2),
            "tokens": count}


class LMTask:
    """What the Trainer needs to know about language modelling."""

    def __init__(self, model: LanguageModel, tokenizer, train_ids, val_ids, batch_size: int,
                 bptt: int, eval_batch_size: int | None = None, source: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.source = source or {}       # where the text came from (JSON), kept for --resume
        self.train_ids, self.val_ids = train_ids, val_ids
        self.bptt = bptt
        self.eval_batch_size = eval_batch_size or batch_size
        self.batches = StreamBatcher(train_ids, batch_size, bptt)
        # a model that has learned anything predicts far better than uniform: far worse is a blow-up
        self.explode_threshold = 3.0 * math.log(model.config.vocab_size) + 10.0
        self.unit = "char" if tokenizer.kind == "char" else ("byte" if tokenizer.kind == "byte"
                                                             else "word")

    def start_epoch(self, epoch: int) -> None:
        self.model.reset_state()

    def model_state(self):
        return self.model.get_state()

    def set_model_state(self, state) -> None:
        self.model.set_state(state)

    def evaluate(self) -> dict:
        if self.val_ids is None or len(self.val_ids) < 2:
            return {}
        bs = max(1, min(self.eval_batch_size, (len(self.val_ids) - 1) // 2))
        r = evaluate_lm(self.model, self.val_ids, bs, self.bptt)
        return {"val_loss": r["loss"], "val_ppl": r["perplexity"], f"val_bp{self.unit[0]}": r["bits"]}

    def sample(self, rng: np.random.Generator, length: int) -> str:
        prompt = self.tokenizer.encode("\n", unknown="skip") if self.tokenizer.kind != "byte" \
            else self.tokenizer.encode("\n")
        ids = list(generate(self.model, list(prompt[-1:]), SampleSettings(length=length,
                                                                         temperature=0.8), rng))
        return self.tokenizer.decode(ids)

    # -- checkpoint contents -------------------------------------------------------------------
    def state_dict(self) -> dict:
        carried = self.model.get_state()
        return {"kind": KIND,
                "model_config": self.model.config.to_dict(),
                "weights": {k: np.array(to_numpy(v)) for k, v in self.model.state_dict().items()},
                "carried": None if carried is None else [np.array(to_numpy(a)) for a in carried],
                "tokenizer": self.tokenizer.to_dict(),
                "source": self.source,
                "data": self.batches.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._check_carried(d["carried"])
        self.model.load_state_dict(d["weights"])
        self.model.set_state(d["carried"])
        self.batches.load_state_dict(d["data"])

    def _check_carried(self, carried) -> None:
        """The saved hidden state must fit this model and batch size: ``(L, B, H)`` arrays, two
        for an LSTM (h and c), one otherwise."""
        if carried is None:
            return
        c = self.model.config
        want = (c.num_layers, self.batches.batch_size, c.hidden_size)
        count = 2 if c.cell == "lstm" else 1
        if (not isinstance(carried, list) or len(carried) != count
                or any(not isinstance(a, np.ndarray) or a.shape != want for a in carried)):
            shapes = [getattr(a, "shape", a) for a in carried] if isinstance(carried, list) \
                else carried
            raise ValueError(f"the saved hidden state {shapes} does not fit this model "
                             f"({count} array(s) of shape {want})")


def lm_from_tree(tree, path) -> tuple[LMConfig, object, dict]:
    """``(config, tokenizer, task_tree)`` of a language-model checkpoint tree read from ``path``,
    every part checked, so that a damaged or foreign file is one ``CheckpointError`` naming it."""
    task = tree.get("task") if isinstance(tree, dict) else None
    if not isinstance(task, dict) or task.get("kind") != KIND:
        raise checkpoint.CheckpointError(f"{path}: not an rnnkit language-model checkpoint")
    for key, kind in (("model_config", dict), ("weights", dict), ("tokenizer", dict)):
        if not isinstance(task.get(key), kind):
            raise checkpoint.CheckpointError(f"{path}: damaged language-model checkpoint "
                                             f"(no {key})")
    config = checkpoint.config_from_dict(LMConfig, task["model_config"], str(path))
    weights = task["weights"]
    for name, w in weights.items():
        if not isinstance(w, np.ndarray) or not (np.issubdtype(w.dtype, np.floating)
                                                 or np.issubdtype(w.dtype, np.integer)):
            raise checkpoint.CheckpointError(f"{path}: damaged language-model checkpoint "
                                             f"(weight {name} is not a numeric array)")
        if np.issubdtype(w.dtype, np.floating) and not np.isfinite(w).all():
            raise checkpoint.CheckpointError(f"{path}: damaged language-model checkpoint "
                                             f"(weight {name} holds NaN or infinity)")
    try:
        tokenizer = tokenizer_from_dict(task["tokenizer"])
    except ImportError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise checkpoint.CheckpointError(f"{path}: damaged language-model checkpoint (its "
                                         f"tokenizer: {what})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise checkpoint.CheckpointError(
            f"{path}: damaged language-model checkpoint (its tokenizer has {tokenizer.vocab_size} "
            f"tokens but its model {config.vocab_size})")
    return config, tokenizer, task


def load_lm(path, device: str = "cpu"):
    """``(model, tokenizer, tree)`` from a checkpoint file or a run directory (its best, else last).

    Raises ``checkpoint.CheckpointError`` with one clear line for anything that is not a readable
    rnnkit language-model checkpoint."""
    path = resolve_checkpoint(path)
    tree = checkpoint.load(path)
    config, tokenizer, task = lm_from_tree(tree, path)
    try:
        model = LanguageModel(config, rng=np.random.default_rng(0), device=device)
        model.load_state_dict(task["weights"])
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path}: damaged language-model checkpoint ({e})") from e
    model.eval()
    return model, tokenizer, tree


def resolve_checkpoint(path) -> Path:
    """A run directory means its ``best.npz`` (or ``last.npz`` when there is no best)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.npz", "last.npz"):
            if (p / name).is_file():
                return p / name
        raise checkpoint.CheckpointError(f"{p}: no best.npz or last.npz in this directory")
    return p
