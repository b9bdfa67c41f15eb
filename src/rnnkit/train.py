"""One Trainer for every task: loop, evaluation, progress, metrics, checkpoints, resume, NaN guard.

A *task* brings what is particular to it (see ``tasks/``): the model (forward -> ``loss``,
``backward``, ``params``, ``grads``, ``state_dict``), a batch stream that can save its position,
an evaluation, and optionally a short sample to show. The Trainer does the rest, the same way for
all of them::

    for each step:  batch -> loss = model.loss(batch) -> model.backward() -> clip -> update -> log
    every eval_interval steps and at each epoch's end: evaluate, log, save `last` (and `best`
    by validation loss)

Checkpoints hold the model's config and weights, the task's data (vocabulary, stream position,
carried hidden state), the optimiser's and schedule's state, the random generator's state and the
step, so ``resume`` continues exactly: a run stopped and resumed computes the same losses, step for
step, as one that never stopped. Ctrl-C finishes the current step, saves ``last`` and exits.
A loss that is NaN or explodes stops the run with a message, and the last good checkpoint stays.
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import checkpoint, optim
from .plot import plot_history


@dataclass(frozen=True)
class TrainConfig:
    """How to train (saved with the checkpoint; the command line maps its flags onto these)."""
    batch_size: int = 64
    bptt: int = 100
    optimizer: str = "adam"            # sgd | adagrad | rmsprop | adam | adamw
    lr: float = 2e-3
    momentum: float = 0.0              # sgd / rmsprop
    weight_decay: float = 0.0
    schedule: str = "none"             # none | step | exp | plateau
    lr_gamma: float = 0.5              # factor of step / exp / plateau
    lr_step: int = 1                   # epochs between steps of `step`
    lr_hold: int = 1                   # epochs at the full rate before `exp` decays (Zaremba: 4)
    lr_patience: int = 1               # evaluations without improvement before `plateau` decays
    clip_norm: float = 5.0             # 0: off
    clip_value: float = 0.0            # 0: off
    epochs: int = 10
    max_steps: int = 0                 # 0: no limit
    max_time: float = 0.0              # seconds of training; 0: no limit
    eval_interval: int = 100           # steps between evaluations and checkpoints (0: none but
                                       # the one at the end of each epoch, which always happens)
    log_interval: int = 10             # steps between lines of metrics.jsonl
    sample_length: int = 200           # characters/words of the sample shown at each evaluation
    seed: int = 1337

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def limit_reached(cfg: TrainConfig, step: int, epoch: int, elapsed: float):
    """Which limit of ``cfg`` a run at ``step`` / ``epoch`` / ``elapsed`` seconds has reached:
    "max_steps", "max_time", "epochs", or None while it may go on."""
    if cfg.max_steps and step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_time and elapsed >= cfg.max_time:
        return "max_time"
    if epoch >= cfg.epochs:
        return "epochs"
    return None


class TrainingStopped(RuntimeError):
    """The run stopped on its own (NaN/exploding loss): the message says why and what was kept."""


def make_optimizer(cfg: TrainConfig, params, grads):
    name = cfg.optimizer.lower()
    if name == "sgd":
        return optim.SGD(params, grads, lr=cfg.lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    if name == "adagrad":
        return optim.Adagrad(params, grads, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "rmsprop":
        return optim.RMSprop(params, grads, lr=cfg.lr, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay)
    if name == "adam":
        return optim.Adam(params, grads, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return optim.AdamW(params, grads, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd, adagrad, rmsprop, adam, adamw)")


def make_schedule(cfg: TrainConfig, opt):
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return optim.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.schedule == "exp":
        return optim.ExponentialLR(opt, gamma=cfg.lr_gamma, start=max(cfg.lr_hold - 1, 0))
    if cfg.schedule == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=cfg.lr_gamma, patience=cfg.lr_patience)
    raise ValueError(f"unknown schedule {cfg.schedule!r} (none, step, exp, plateau)")


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:             # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:             # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    """Train ``task`` by ``config``, writing checkpoints and metrics into ``out_dir``."""

    def __init__(self, task, config: TrainConfig, out_dir, *, rng: np.random.Generator,
                 progress=None, log=print):
        """``progress``: a tqdm-like factory ``(total=, initial=) -> bar``, or None for log lines
        only; ``log``: where evaluation lines go without a bar."""
        self.task, self.cfg, self.out = task, config, Path(out_dir)
        self.rng = rng                 # the Generator the model's dropout draws from
        self.log = log
        self.progress = progress
        model = task.model
        self.opt = make_optimizer(config, model.params, model.grads)
        self.schedule = make_schedule(config, self.opt)
        self.step = 0
        self.epoch = 0
        self.elapsed = 0.0
        self.best_val = math.inf
        self.history: list[dict] = []
        self.last_good_step = None
        self._last_eval_step = None
        self._plot_failed = False

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a resumed run needs, as a tree for ``checkpoint.save``."""
        return {
            "task": self.task.state_dict(),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.opt.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "rng": self.rng.bit_generator.state,
            "progress": {"step": self.step, "epoch": self.epoch, "elapsed": self.elapsed,
                         "best_val": None if math.isinf(self.best_val) else self.best_val},
        }

    def load_state(self, tree: dict) -> None:
        self.task.load_state_dict(tree["task"])
        self.opt.load_state_dict(tree["optimizer"])
        if self.schedule is not None and tree.get("schedule") is not None:
            self.schedule.load_state_dict(tree["schedule"])
        self.rng.bit_generator.state = tree["rng"]
        p = tree["progress"]
        self.step, self.epoch, self.elapsed = int(p["step"]), int(p["epoch"]), float(p["elapsed"])
        self.best_val = math.inf if p["best_val"] is None else float(p["best_val"])
        self._reload_history()
        # a checkpoint written at an epoch's last batch was saved before the epoch was counted
        # (a run that stopped right there, or that was killed after that save): count it now,
        # as the unbroken run did just after saving
        if self.task.batches.epoch_finished:
            self._end_epoch()

    def finished(self):
        """The limit this run has reached ("max_steps", "max_time", "epochs"), or None."""
        return limit_reached(self.cfg, self.step, self.epoch, self.elapsed)

    def _reload_history(self) -> None:
        """Keep the metrics of the steps the checkpoint covers; drop any logged after it (a run
        killed between checkpoints logged steps that the resumed run will log again)."""
        path = self.out / "metrics.jsonl"
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:       # a line cut short by a crash
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= self.step:
                    rows.append(row)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.history = rows
        evals = [r["step"] for r in rows if r.get("eval")]
        self._last_eval_step = self.last_good_step = evals[-1] if evals else None

    def save(self, name: str) -> Path:
        path = self.out / f"{name}.npz"
        checkpoint.save(path, self.state())
        return path

    # -- logging ------------------------------------------------------------------------------
    def _record(self, row: dict) -> None:
        self.history.append(row)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until epochs, ``max_steps`` or ``max_time`` run out, or Ctrl-C. Returns a summary."""
        cfg, batches = self.cfg, self.task.batches
        self.out.mkdir(parents=True, exist_ok=True)
        total = cfg.epochs * batches.batches_per_epoch
        total = min(total, cfg.max_steps) if cfg.max_steps else total
        bar = self.progress(total=total, initial=min(self.step, total)) if self.progress else None
        try:
            stopped_by = self._loop(bar)
        finally:
            if bar is not None:
                bar.close()
        return {"stopped_by": stopped_by or "epochs", "step": self.step, "epoch": self.epoch,
                "elapsed": self.elapsed, "best_val_loss": self.best_val}

    def _loop(self, bar):
        cfg, task, model = self.cfg, self.task, self.task.model
        batches = task.batches
        meter = _Meter()
        # a resumed run that has already reached a limit takes no further step
        stopped_by = self._limit_reached()
        model.train()
        with _StopFlag() as stop:
            while stopped_by is None and self.epoch < cfg.epochs:
                if batches.position == 0:
                    task.start_epoch(self.epoch)             # e.g. reset the carried state
                for x, y in batches:
                    loss = self._train_step(x, y)
                    self.elapsed += meter.tick(y.size)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"loss {loss:.3f} | {meter.rate:,.0f} tok/s | "
                                            f"lr {self.opt.lr:.3g}")
                    if self.step % cfg.log_interval == 0:
                        self._record({"step": self.step, "epoch": self._epoch_progress(), "loss": loss,
                                      "lr": self.opt.lr, "time": round(self.elapsed, 3),
                                      "tokens_per_s": round(meter.rate, 1)})
                    stopped_by = self._limit_reached() or ("interrupt" if stop.requested else None)
                    scheduled = (bool(cfg.eval_interval) and self.step % cfg.eval_interval == 0
                                 or batches.epoch_finished)
                    if scheduled or stopped_by:
                        self._evaluate_and_save(bar, scheduled=scheduled)
                        meter.restart()
                    if stopped_by:
                        break
                else:                                         # the epoch ran to its end
                    self._end_epoch()
            if self._last_eval_step != self.step:
                self._evaluate_and_save(bar, scheduled=False)
        return stopped_by

    def _end_epoch(self) -> None:
        """Count a finished epoch: the next one starts at its first batch; step-wise schedules
        step once."""
        self.epoch += 1
        self.task.batches.load_state_dict({"epoch": self.epoch, "position": 0})
        if self.schedule is not None and not isinstance(self.schedule, optim.ReduceLROnPlateau):
            self.schedule.step()

    def _train_step(self, x, y) -> float:
        """forward -> loss -> backward -> clip -> update; refuses a NaN or exploding loss."""
        cfg, model = self.cfg, self.task.model
        loss = model.loss(x, y)
        if not math.isfinite(loss) or loss > self.task.explode_threshold:
            raise TrainingStopped(self._bad_loss_message(loss))
        model.backward()
        if cfg.clip_norm:
            norm = optim.clip_grad_norm(model.grads, cfg.clip_norm)
            if not math.isfinite(norm):
                raise TrainingStopped(self._bad_loss_message(norm, what="gradient norm"))
        if cfg.clip_value:
            optim.clip_grad_value(model.grads, cfg.clip_value)
        self.opt.step()
        self.step += 1
        return loss

    def _epoch_progress(self) -> float:
        """Epochs done, with the fraction of the current one (1.5: halfway through the second)."""
        b = self.task.batches
        return round(self.epoch + b.position / b.batches_per_epoch, 4)

    def _limit_reached(self):
        """A step or time limit reached (epochs are counted by the loop itself)."""
        reached = limit_reached(self.cfg, self.step, self.epoch, self.elapsed)
        return None if reached == "epochs" else reached

    def _evaluate_and_save(self, bar, scheduled: bool) -> None:
        """Evaluate, log, checkpoint. Only ``scheduled`` evaluations (every ``eval_interval``
        steps) drive the plateau schedule, so an extra one at a stop changes nothing a resumed
        run would compute."""
        model, task = self.task.model, self.task
        carried = task.model_state()                     # validation must not disturb training
        model.eval()
        metrics = task.evaluate()
        sample = task.sample(np.random.default_rng([self.cfg.seed, self.step]),
                             self.cfg.sample_length) if self.cfg.sample_length else None
        model.train()
        task.set_model_state(carried)
        row = {"eval": True, "step": self.step, "epoch": self._epoch_progress(),
               "time": round(self.elapsed, 3),
               "lr": self.opt.lr, **metrics}
        val = metrics.get("val_loss")
        if scheduled and val is not None and isinstance(self.schedule, optim.ReduceLROnPlateau):
            self.schedule.step(val)
        improved = val is not None and val < self.best_val
        if improved:
            self.best_val = val
        self._record(row)
        self.save("last")
        if improved:
            self.save("best")
        self.last_good_step = self._last_eval_step = self.step
        shown = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in row.items() if k not in ("time", "eval"))
        write = bar.write if bar is not None else self.log
        write(f"[eval] {shown}{'  (best)' if improved else ''}")
        if sample:
            write("[sample] " + sample.replace("\n", "\n         "))
        try:
            plot_history(self.history, self.out / "loss.png")
        except (OSError, RuntimeError, ValueError) as e:   # a picture is not worth stopping for
            if not self._plot_failed:
                write(f"[warning] could not draw {self.out / 'loss.png'}: {e}")
            self._plot_failed = True

    def _bad_loss_message(self, value, what="loss") -> str:
        kept = (f"the last good checkpoint is {self.out / 'last.npz'} (step {self.last_good_step})"
                if self.last_good_step is not None else "no checkpoint was written yet")
        return (f"training stopped at step {self.step + 1}: the {what} is {value:.4g}; "
                f"{kept}. Try a lower --lr or --clip-norm.")


class _Meter:
    """Tokens per second over the steps since the last restart (evaluations excluded)."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.t0 = self.t_last = time.perf_counter()
        self.tokens = 0
        self.rate = 0.0

    def tick(self, tokens: int) -> float:
        """Count a step's tokens; return the seconds since the previous tick."""
        now = time.perf_counter()
        dt, self.t_last = now - self.t_last, now
        self.tokens += tokens
        self.rate = self.tokens / max(now - self.t0, 1e-9)
        return dt
