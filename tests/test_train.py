"""The Trainer: exact resume at an epoch's last batch, no step past a limit, a failed plot."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from rnnkit import checkpoint
from rnnkit.data import build_tokenizer
from rnnkit.models.language_model import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask
from rnnkit.train import Trainer, TrainConfig

TEXT = "the quick brown fox jumps over the lazy dog\n" * 12


def make(cfg: TrainConfig, out):
    tok = build_tokenizer("char", TEXT)
    ids = tok.encode(TEXT)
    rng = np.random.default_rng(cfg.seed)
    model = LanguageModel(LMConfig(vocab_size=tok.vocab_size, embedding_size=8, hidden_size=8,
                                   num_layers=1, dropout=0.2), rng=rng)
    task = LMTask(model, tok, ids[:400], ids[400:], cfg.batch_size, cfg.bptt)
    return Trainer(task, cfg, out, rng=rng, log=lambda *a: None)


def losses(out) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


CFG = TrainConfig(batch_size=4, bptt=10, epochs=3, eval_interval=0, log_interval=1,
                  sample_length=0, schedule="exp", lr_gamma=0.5, lr_hold=1)


def test_resume_from_a_checkpoint_at_an_epochs_last_batch_is_exact(tmp_path):
    whole = make(CFG, tmp_path / "a")
    whole.fit()
    per_epoch = whole.task.batches.batches_per_epoch
    assert whole.step == 3 * per_epoch
    first = make(replace(CFG, max_steps=per_epoch), tmp_path / "b")
    first.fit()
    tree = checkpoint.load(tmp_path / "b" / "last.npz")
    assert tree["task"]["data"]["position"] == per_epoch          # saved before being counted
    rest = make(CFG, tmp_path / "b")
    rest.load_state(tree)
    assert (rest.epoch, rest.task.batches.position) == (1, 0)
    assert rest.opt.lr == CFG.lr * CFG.lr_gamma                    # the schedule stepped once
    rest.fit()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 3 * per_epoch + 1))
    assert all(a[s] == b[s] for s in a)


def test_a_resumed_run_at_its_limit_takes_no_step(tmp_path):
    first = make(replace(CFG, max_steps=5), tmp_path)
    first.fit()
    again = make(replace(CFG, max_steps=5), tmp_path)
    again.load_state(checkpoint.load(tmp_path / "last.npz"))
    assert again.finished() == "max_steps"
    before = (tmp_path / "last.npz").read_bytes()
    summary = again.fit()
    assert summary["step"] == 5 and summary["stopped_by"] == "max_steps"
    assert (tmp_path / "last.npz").read_bytes() == before
    assert max(losses(tmp_path)) == 5


def test_a_plot_that_cannot_be_drawn_does_not_stop_training(tmp_path, monkeypatch):
    import rnnkit.train as train_module

    def broken(history, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_module, "plot_history", broken)
    said = []
    trainer = make(replace(CFG, max_steps=4, eval_interval=2), tmp_path)
    trainer.log = said.append
    assert trainer.fit()["step"] == 4
    warnings = [s for s in said if "could not draw" in s]
    assert len(warnings) == 1                      # said once, not at every evaluation
