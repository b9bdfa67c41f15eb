"""``rnnkit train``: train a language model on a text file (or the built-in corpus), or resume one."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import checkpoint
from ..data import (DataError, build_tokenizer, default_corpus, read_text, split_train_val,
                    tokenizer_from_dict)
from ..models.language_model import LanguageModel, LMConfig
from ..tasks.lm import LMTask
from ..train import Trainer, TrainConfig

# The recommended CPU configuration (README, "Tiny Shakespeare"): the defaults of `rnnkit train`.
MODEL_DEFAULTS = dict(cell="lstm", embedding_size=128, hidden_size=512, num_layers=2, dropout=0.2,
                      tie_weights=False, init_range=0.0)
TRAIN_DEFAULTS = TrainConfig().to_dict()
RUN_DEFAULTS = dict(tokenizer="char", val_fraction=0.1, min_freq=1, max_vocab=0, dtype="float32",
                    device="cpu")
DEMO_MAX_TIME = 180.0           # the built-in corpus, no --max-time: a few minutes' demo
RESUMABLE = {"epochs", "max_steps", "max_time", "eval_interval", "log_interval", "sample_length"}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a language model on a text file",
                       description="Train a character- (or word-) level language model. With no "
                       "--data, trains for a few minutes on a built-in corpus (the Python standard "
                       "library's own source code).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = {**MODEL_DEFAULTS, **TRAIN_DEFAULTS, **RUN_DEFAULTS}

    def opt(*flags, **kw):
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        kw.setdefault("default", None)
        if dest in d and "help" in kw:
            kw["help"] += f" (default: {d[dest]})"
        return g.add_argument(*flags, **kw)

    g = p.add_argument_group("data")
    opt("--data", metavar="FILE", help="training text (UTF-8; any file with --tokenizer byte); "
        "default: a few MB of the Python standard library's source")
    opt("--val-data", metavar="FILE", help="validation text; default: the last --val-fraction of --data")
    opt("--val-fraction", type=float, help="share of the text held out for validation")
    opt("--tokenizer", choices=["char", "byte", "word", "jieba"], help="char: one token per "
        "character; byte: UTF-8 bytes (any file); word: whitespace words, newline as <eos>; jieba: "
        "Chinese words (pip install jieba)")
    opt("--min-freq", type=int, help="word/jieba: words seen fewer times become <unk>")
    opt("--max-vocab", type=int, help="word/jieba: keep the most frequent words only (0: all)")
    g = p.add_argument_group("model")
    opt("--model", dest="cell", choices=["lstm", "gru", "rnn"], help="recurrent cell")
    opt("--embedding-size", type=int, help="size of the token embeddings")
    opt("--hidden-size", type=int, help="units per recurrent layer")
    opt("--layers", dest="num_layers", type=int, help="stacked recurrent layers")
    opt("--dropout", type=float, help="dropout on embeddings, between layers and before the output")
    opt("--tie-weights", action="store_true", help="share the embedding and output matrices "
        "(needs --embedding-size equal to --hidden-size)")
    opt("--init-range", type=float, help="initialise every weight from U(-r, r) (0: PyTorch's defaults)")
    opt("--dtype", choices=["float32", "float64"], help="floating-point precision")
    opt("--device", choices=["cpu", "cuda"], help="where to compute (cuda needs CuPy)")
    g = p.add_argument_group("optimisation")
    opt("--batch-size", type=int, help="parallel streams per batch")
    opt("--bptt", type=int, help="steps of backpropagation through time per batch")
    opt("--optimizer", choices=["sgd", "adagrad", "rmsprop", "adam", "adamw"], help="optimiser")
    opt("--lr", type=float, help="learning rate")
    opt("--momentum", type=float, help="momentum (sgd, rmsprop)")
    opt("--weight-decay", type=float, help="weight decay")
    opt("--schedule", choices=["none", "step", "exp", "plateau"], help="learning-rate schedule: "
        "step (x gamma every --lr-step epochs), exp (x gamma every epoch after --lr-hold), "
        "plateau (x gamma when validation stops improving)")
    opt("--lr-gamma", type=float, help="factor of the schedule")
    opt("--lr-step", type=int, help="epochs between decays of 'step'")
    opt("--lr-hold", type=int, help="epochs at the full rate before 'exp' decays")
    opt("--lr-patience", type=int, help="evaluations without improvement before 'plateau' decays")
    opt("--clip-norm", type=float, help="clip the global gradient norm (0: off)")
    opt("--clip-value", type=float, help="clip each gradient entry to +-value (0: off)")
    g = p.add_argument_group("run")
    opt("--out", metavar="DIR", help="where checkpoints (last.npz, best.npz), metrics.jsonl and "
        "loss.png go; default: runs/NAME-OF-DATA")
    opt("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped (limits "
        "such as --max-steps, --max-time, --epochs may be raised)")
    opt("--force", action="store_true", help="start over in an --out that already holds a run")
    opt("--epochs", type=int, help="passes over the training text")
    opt("--max-steps", type=int, help="stop after this many steps in all (0: no limit)")
    opt("--max-time", type=float, help="stop after this many seconds of training in all, evaluation "
        f"excluded (0: no limit; {DEMO_MAX_TIME:.0f} s with the built-in corpus)")
    opt("--eval-interval", type=int, help="steps between evaluations and checkpoints; there is "
        "always one at the end of each epoch (0: only those)")
    opt("--log-interval", type=int, help="steps between lines of metrics.jsonl")
    opt("--sample-length", type=int, help="tokens of the sample shown at each evaluation (0: none)")
    opt("--seed", type=int, help="random seed (initialisation, dropout, batches)")
    opt("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(run=run)


def _explicit(args) -> dict:
    return {k: v for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("run", "command")}


def _fingerprint(text) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return hashlib.sha256(data).hexdigest()[:16]


def _prepare_data(run: dict, tokenizer=None):
    """Read the text of ``run`` (settings), split it, and encode it with ``tokenizer`` (built from
    the training split when None). Returns ``(tokenizer, train_ids, val_ids, description)``."""
    kind = run["tokenizer"]
    if run.get("data"):
        text, what = read_text(run["data"], kind), str(run["data"])
    else:
        text, what = default_corpus()
        if kind == "byte":
            text = text.encode("utf-8")
    fingerprint = _fingerprint(text)
    if run.setdefault("fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"{what} has changed since this run started; resuming would not "
                         "continue the same run")
    if run.get("val_data"):
        train_text, val_text = text, read_text(run["val_data"], kind)
    elif run["val_fraction"] > 0:
        cut = int(len(text) * (1 - run["val_fraction"]))
        train_text, val_text = text[:cut], text[cut:]
    else:
        train_text, val_text = text, None
    if tokenizer is None:
        opts = {}
        if kind in ("word", "jieba"):
            opts = {"min_freq": run["min_freq"], "max_size": run["max_vocab"] or None}
        tokenizer = build_tokenizer(kind, train_text, **opts)
    # characters absent from the training split cannot be predicted: they are left out
    unknown = {"unknown": "skip"} if kind == "char" else {}
    train_ids = tokenizer.encode(train_text, **unknown)
    val_ids = tokenizer.encode(val_text, **unknown) if val_text else None
    return tokenizer, train_ids, val_ids, what


def _progress(no_progress: bool):
    if no_progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda total, initial: tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def run(args) -> int:
    given = _explicit(args)
    if args.resume:
        return _resume(args, given)
    run = {**RUN_DEFAULTS, **{k: given[k] for k in list(RUN_DEFAULTS) + ["data", "val_data"]
                              if k in given}}
    if run["tokenizer"] in ("char", "byte") and any(k in given for k in ("min_freq", "max_vocab")):
        raise ValueError("--min-freq and --max-vocab apply to --tokenizer word or jieba")
    model_kw = {k: given.get(k, v) for k, v in MODEL_DEFAULTS.items()}
    train_cfg = TrainConfig.from_dict({**TRAIN_DEFAULTS, **{k: v for k, v in given.items()
                                                              if k in TRAIN_DEFAULTS}})
    if not run.get("data") and "max_time" not in given:
        train_cfg = replace(train_cfg, max_time=DEMO_MAX_TIME)
    _check_train_config(train_cfg)
    out = Path(given.get("out") or f"runs/{Path(run['data']).stem if run.get('data') else 'stdlib'}")
    if (out / "last.npz").exists() and not args.force:
        raise ValueError(f"{out} already holds a run: continue it with --resume {out}, or choose "
                         f"another --out, or pass --force to start over")

    tokenizer, train_ids, val_ids, what = _prepare_data(run)
    print(f"data: {what} | {len(train_ids):,} training and {0 if val_ids is None else len(val_ids):,} "
          f"validation tokens | {run['tokenizer']} tokenizer, vocabulary {tokenizer.vocab_size}")

    rng = np.random.default_rng(train_cfg.seed)
    config = LMConfig(vocab_size=tokenizer.vocab_size, dtype=run["dtype"], **model_kw)
    model = LanguageModel(config, rng=rng, device=run["device"])
    task = LMTask(model, tokenizer, train_ids, val_ids, train_cfg.batch_size, train_cfg.bptt,
                  source=run)
    print(f"model: {config.num_layers} x {config.hidden_size} {config.cell.upper()}, embedding "
          f"{config.embedding_size}, {model.num_parameters():,} parameters | out: {out}")
    if train_cfg.max_time and not run.get("data") and "max_time" not in given:
        print(f"no --data: training on the built-in corpus for {DEMO_MAX_TIME:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "best.npz", "loss.png"):
        (out / stale).unlink(missing_ok=True)
    (out / "run.json").write_text(json.dumps({"data": run, "model": config.to_dict(),
                                              "train": train_cfg.to_dict()}, indent=2) + "\n")
    trainer = Trainer(task, train_cfg, out, rng=rng, progress=_progress(args.no_progress))
    return _fit(trainer, task, out)


def _resume(args, given) -> int:
    out = Path(args.resume)
    path = out / "last.npz"
    if not path.is_file():
        raise ValueError(f"{out}: no last.npz to resume from")
    tree = checkpoint.load(path)
    try:
        task_state = tree["task"]
        run = dict(task_state["source"])
        saved = {**run, **task_state["model_config"], **tree["train_config"],
                 "out": str(out)}
        train_cfg = TrainConfig.from_dict({**tree["train_config"],
                                           **{k: given[k] for k in RESUMABLE if k in given}})
        config = LMConfig.from_dict(task_state["model_config"])
        tokenizer = tokenizer_from_dict(task_state["tokenizer"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a resumable rnnkit language-model run ({e})") from e
    # the same command again with --resume is fine; a different setting is not
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE | {"resume", "no_progress"}
                     and not (k in saved and _same(saved[k], v)))
    if changed:
        raise ValueError("a resumed run keeps its settings; these differ from the saved run: "
                         + ", ".join("--" + k.replace("_", "-") for k in changed))
    _check_train_config(train_cfg)
    tokenizer, train_ids, val_ids, what = _prepare_data(run, tokenizer)
    rng = np.random.default_rng(train_cfg.seed)
    model = LanguageModel(config, rng=rng, device=run["device"])
    task = LMTask(model, tokenizer, train_ids, val_ids, train_cfg.batch_size, train_cfg.bptt,
                  source=run)
    trainer = Trainer(task, train_cfg, out, rng=rng, progress=_progress(args.no_progress))
    trainer.load_state(tree)
    print(f"resuming {out} at step {trainer.step} (epoch {trainer.epoch + 1}), "
          f"{trainer.elapsed:.0f} s trained so far")
    return _fit(trainer, task, out)


def _same(saved, given) -> bool:
    """Whether a flag given again with --resume matches the saved setting (paths resolved)."""
    if isinstance(given, (str, Path)) and saved is not None:
        return str(saved) == str(given) or Path(str(saved)).resolve() == Path(str(given)).resolve()
    return saved == given


def _check_train_config(cfg: TrainConfig) -> None:
    if cfg.eval_interval < 0:
        raise ValueError(f"--eval-interval must be >= 0, got {cfg.eval_interval}")
    for name in ("batch_size", "bptt", "epochs", "log_interval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")


def _fit(trainer: Trainer, task: LMTask, out: Path) -> int:
    summary = trainer.fit()
    how = {"interrupt": "interrupted (Ctrl-C)", "max_time": "time limit reached",
           "max_steps": "step limit reached", "epochs": "all epochs done"}[summary["stopped_by"]]
    best = summary["best_val_loss"]
    print(f"{how}: step {summary['step']}, {summary['elapsed']:.0f} s of training"
          + (f", best validation loss {best:.4f}" if best != float("inf") else "")
          + f" | checkpoints in {out}")
    if summary["stopped_by"] != "interrupt":
        print("\nA sample from the model (rnnkit sample " + str(out) + "):\n")
        print(task.sample(np.random.default_rng(trainer.cfg.seed), 500))
    return 0
